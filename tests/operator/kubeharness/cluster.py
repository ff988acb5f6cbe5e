"""The controllers a cluster would run, against the KMock API server, plus the kubelet.

  * StatefulSet controller: pods <name>-0..N-1 (Parallel policy), claims from volumeClaimTemplates
    (reused by name, never deleted on scale-down with whenScaled=Retain), controller-revision-hash
    labels, updateRevision/observedGeneration status; OnDelete updates (pods change only when
    deleted);
  * Job controller: one pod at a time until success or backoffLimit;
  * garbage collector: objects whose owners are gone are deleted;
  * PVC protection: a claim is released only when no pod uses it;
  * kube-proxy: Service names point at a ready pod behind them;
  * the kubelet (kubelet.py).

Everything writes through the HTTP API, so the operator sees ordinary watch events.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import string
import time
from pathlib import Path
from typing import Any

import aiohttp

from kubeharness.addresses import AddressBook
from kubeharness.apiserver import PVC_FINALIZER, ApiServer
from kubeharness.kubelet import Kubelet

SYNC_PERIOD = 0.1

_PATHS = {
    "v1/pods": "/api/v1/namespaces/{ns}/pods",
    "v1/persistentvolumeclaims": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "v1/secrets": "/api/v1/namespaces/{ns}/secrets",
    "v1/configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "v1/services": "/api/v1/namespaces/{ns}/services",
    "apps/v1/statefulsets": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "batch/v1/jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
}


def _path(resource: str, ns: str, name: str | None = None, sub: str | None = None) -> str:
    if resource in _PATHS:
        base = _PATHS[resource].format(ns=ns)
    else:
        group_version, plural = resource.rsplit("/", 1)
        base = (
            f"/apis/{group_version}/namespaces/{ns}/{plural}"
            if "/" in group_version
            else f"/api/{group_version}/namespaces/{ns}/{plural}"
        )
    return base + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in obj.get("metadata", {}).get("ownerReferences") or [])


def _owner(kind: str, api_version: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Harness:
    def __init__(
        self,
        api: ApiServer,
        url: str,
        root: Path,
        *,
        binaries: dict[str, list[str]],
        base_env: dict[str, str],
    ) -> None:
        self.api = api
        self.url = url.rstrip("/")
        self.root = root
        self.addresses = AddressBook(root / "addresses.json")
        env = dict(base_env)
        env["ETCDOPERATOR_ADDRESS_MAP"] = str(self.addresses.path)
        self.kubelet = Kubelet(self, root, self.addresses, binaries, env)
        self.http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = open(root / "harness.log", "a", buffering=1)  # noqa: SIM115  (open for the harness's life)
        self.errors: list[str] = []
        self._rounds = 0

    def log(self, text: str) -> None:
        self._log.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    # -- HTTP ---------------------------------------------------------------------------------
    async def _req(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        assert self.http is not None
        headers = {"Content-Type": ctype} if body is not None else {}
        async with self.http.request(
            method, self.url + path, data=json.dumps(body) if body is not None else None, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400 and resp.status not in (404, 409):
                self.log(f"{method} {path} -> {resp.status} {text[:300]}")
            return json.loads(text) if text and resp.status < 400 else None

    async def create(self, resource: str, ns: str, body: dict[str, Any]) -> Any:
        return await self._req("POST", _path(resource, ns), body)

    async def patch(self, resource: str, ns: str, name: str, body: Any, sub: str | None = None) -> Any:
        return await self._req("PATCH", _path(resource, ns, name, sub), body, "application/merge-patch+json")

    async def patch_status(self, resource: str, ns: str, name: str, status: dict[str, Any]) -> Any:
        obj = self.api.get_object(resource, ns, name)
        if obj is None:
            return None
        return await self.patch(resource, ns, name, {"status": status}, sub="status")

    async def delete(self, resource: str, ns: str, name: str) -> Any:
        return await self._req("DELETE", _path(resource, ns, name), {"propagationPolicy": "Background"})

    async def remove_finalizer(self, resource: str, ns: str, name: str, finalizer: str) -> None:
        obj = self.api.get_object(resource, ns, name)
        if obj is None:
            return
        fins = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        await self.patch(resource, ns, name, {"metadata": {"finalizers": fins or None}})

    # -- loop ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop(), name="harness")

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (keep running; tests look at harness.errors)
                self.errors.append(repr(e))
                self.log(f"sync error: {e!r}")
            await asyncio.sleep(SYNC_PERIOD)

    async def sync(self) -> None:
        self._rounds += 1
        await self.sync_statefulsets()
        await self.sync_jobs()
        if self._rounds % 5 == 0:
            await self.sync_garbage()
        await self.sync_claims()
        await self.kubelet.sync()
        self.sync_services()
        self.addresses.write()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110  (shutting down)
                pass
        await self.kubelet.close()
        if self.http is not None:
            await self.http.close()
        self._log.close()

    # -- StatefulSets -------------------------------------------------------------------------
    async def sync_statefulsets(self) -> None:
        for sts in self.api.list_objects("apps/v1/statefulsets", copy_=False):
            meta, spec = sts["metadata"], sts["spec"]
            if meta.get("deletionTimestamp"):
                continue
            ns, name = meta["namespace"], meta["name"]
            tmpl = spec["template"]
            revision = f"{name}-{hashlib.sha256(json.dumps(tmpl, sort_keys=True).encode()).hexdigest()[:10]}"
            ports = [
                int(p["containerPort"]) for c in tmpl["spec"]["containers"] for p in c.get("ports") or []
            ]
            self.addresses.ensure_statefulset(ns, name, spec["serviceName"], ports)
            replicas = int(spec.get("replicas") or 0)
            pods = {
                p["metadata"]["name"]: p
                for p in self.api.list_objects("v1/pods", ns, copy_=False)
                if _owned_by(p, meta["uid"])
            }
            claims_tpl = spec.get("volumeClaimTemplates") or []
            policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
            for k in range(replicas):
                pod_name = f"{name}-{k}"
                if pod_name in pods:
                    continue
                if self.api.get_object("v1/pods", ns, pod_name) is not None:
                    continue  # the old pod of that name is still terminating
                blocked = False
                for t in claims_tpl:
                    claim_name = f"{t['metadata']['name']}-{name}-{k}"
                    claim = self.api.get_object("v1/persistentvolumeclaims", ns, claim_name)
                    if claim is not None and claim["metadata"].get("deletionTimestamp"):
                        blocked = True  # wait until the old claim is gone
                    elif claim is None:
                        cmeta = {
                            "name": claim_name,
                            "namespace": ns,
                            "labels": dict(t["metadata"].get("labels") or {}),
                        }
                        if policy.get("whenDeleted") == "Delete":
                            cmeta["ownerReferences"] = [_owner("StatefulSet", "apps/v1", sts)]
                        await self.create(
                            "v1/persistentvolumeclaims",
                            ns,
                            {
                                "apiVersion": "v1",
                                "kind": "PersistentVolumeClaim",
                                "metadata": cmeta,
                                "spec": t["spec"],
                            },
                        )
                if blocked:
                    continue
                pod_spec = json.loads(json.dumps(tmpl["spec"]))
                pod_spec["hostname"] = pod_name
                pod_spec["subdomain"] = spec["serviceName"]
                pod_spec.setdefault("volumes", [])
                for t in claims_tpl:
                    pod_spec["volumes"].append(
                        {
                            "name": t["metadata"]["name"],
                            "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{name}-{k}"},
                        }
                    )
                labels = dict(tmpl["metadata"].get("labels") or {})
                labels["controller-revision-hash"] = revision
                labels["statefulset.kubernetes.io/pod-name"] = pod_name
                await self.create(
                    "v1/pods",
                    ns,
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": pod_name,
                            "namespace": ns,
                            "labels": labels,
                            "annotations": dict(tmpl["metadata"].get("annotations") or {}),
                            "ownerReferences": [_owner("StatefulSet", "apps/v1", sts)],
                        },
                        "spec": pod_spec,
                    },
                )
                self.log(f"statefulset {ns}/{name}: created pod {pod_name} ({revision})")
            for pod_name, p in pods.items():
                k = int(pod_name.rsplit("-", 1)[1])
                if k >= replicas and not p["metadata"].get("deletionTimestamp"):
                    await self.delete("v1/pods", ns, pod_name)
                    self.log(f"statefulset {ns}/{name}: deleted pod {pod_name} (scale down)")
            if policy.get("whenScaled") == "Delete":
                for t in claims_tpl:
                    for c in self.api.list_objects("v1/persistentvolumeclaims", ns, copy_=False):
                        cname = c["metadata"]["name"]
                        prefix = f"{t['metadata']['name']}-{name}-"
                        if (
                            cname.startswith(prefix)
                            and cname[len(prefix) :].isdigit()
                            and int(cname[len(prefix) :]) >= replicas
                            and self.api.get_object("v1/pods", ns, f"{name}-{cname[len(prefix) :]}") is None
                        ):
                            await self.delete("v1/persistentvolumeclaims", ns, cname)
            live = [p for p in self.api.list_objects("v1/pods", ns, copy_=False) if _owned_by(p, meta["uid"])]
            ready = [
                p
                for p in live
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
            ]
            updated = [p for p in live if p["metadata"]["labels"].get("controller-revision-hash") == revision]
            status = {
                "observedGeneration": meta.get("generation", 1),
                "replicas": len(live),
                "readyReplicas": len(ready),
                "availableReplicas": len(ready),
                "currentReplicas": len(live) - len(updated),
                "updatedReplicas": len(updated),
                "updateRevision": revision,
                "currentRevision": (sts.get("status") or {}).get("currentRevision") or revision,
            }
            if len(updated) == len(live):
                status["currentRevision"] = revision
            if {k: (sts.get("status") or {}).get(k) for k in status} != status:
                await self.patch_status("apps/v1/statefulsets", ns, name, status)

    # -- Jobs ---------------------------------------------------------------------------------
    async def sync_jobs(self) -> None:
        for job in self.api.list_objects("batch/v1/jobs", copy_=False):
            meta, spec = job["metadata"], job["spec"]
            st = job.get("status") or {}
            if (
                meta.get("deletionTimestamp")
                or int(st.get("succeeded") or 0) > 0
                or any(
                    c.get("type") == "Failed" and c.get("status") == "True"
                    for c in st.get("conditions") or []
                )
            ):
                continue
            ns = meta["namespace"]
            pods = [p for p in self.api.list_objects("v1/pods", ns, copy_=False) if _owned_by(p, meta["uid"])]
            phases = [(p.get("status") or {}).get("phase") for p in pods]
            succeeded = phases.count("Succeeded")
            failed = phases.count("Failed")
            active = len(pods) - succeeded - failed
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if succeeded:
                await self.patch_status(
                    "batch/v1/jobs",
                    ns,
                    meta["name"],
                    {
                        "succeeded": succeeded,
                        "failed": failed,
                        "active": 0,
                        "completionTime": now,
                        "conditions": [
                            {"type": "SuccessCriteriaMet", "status": "True"},
                            {"type": "Complete", "status": "True", "lastTransitionTime": now},
                        ],
                    },
                )
                continue
            if failed > int(spec.get("backoffLimit", 6)):
                await self.patch_status(
                    "batch/v1/jobs",
                    ns,
                    meta["name"],
                    {
                        "failed": failed,
                        "active": 0,
                        "conditions": [
                            {
                                "type": "Failed",
                                "status": "True",
                                "reason": "BackoffLimitExceeded",
                                "lastTransitionTime": now,
                            }
                        ],
                    },
                )
                continue
            if active == 0:
                tmpl = spec["template"]
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                labels = dict(tmpl["metadata"].get("labels") or {})
                labels.update(
                    {
                        "job-name": meta["name"],
                        "batch.kubernetes.io/job-name": meta["name"],
                        "controller-uid": meta["uid"],
                    }
                )
                await self.create(
                    "v1/pods",
                    ns,
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": f"{meta['name']}-{suffix}",
                            "namespace": ns,
                            "labels": labels,
                            "ownerReferences": [_owner("Job", "batch/v1", job)],
                        },
                        "spec": tmpl["spec"],
                    },
                )
                self.log(f"job {ns}/{meta['name']}: started a pod (failed so far: {failed})")
            if {"active": active, "failed": failed} != {
                "active": st.get("active"),
                "failed": st.get("failed"),
            }:
                await self.patch_status(
                    "batch/v1/jobs",
                    ns,
                    meta["name"],
                    {"active": max(active, 1), "failed": failed, "startTime": st.get("startTime") or now},
                )

    # -- garbage collection and claim protection ----------------------------------------------
    async def sync_garbage(self) -> None:
        objs = self.api.all_objects()
        uids = {o["metadata"].get("uid") for _, o in objs}
        for res, o in objs:
            owners = o["metadata"].get("ownerReferences") or []
            if (
                owners
                and not o["metadata"].get("deletionTimestamp")
                and all(x.get("uid") not in uids for x in owners)
            ):
                resource = (
                    f"{res.group}/{res.version}/{res.plural}" if res.group else f"{res.version}/{res.plural}"
                )
                ns = o["metadata"].get("namespace")
                if ns:
                    self.log(f"gc: deleting {resource} {ns}/{o['metadata']['name']} (owner gone)")
                    await self.delete(resource, ns, o["metadata"]["name"])

    async def sync_claims(self) -> None:
        for c in self.api.list_objects("v1/persistentvolumeclaims", copy_=False):
            meta = c["metadata"]
            if not meta.get("deletionTimestamp") or PVC_FINALIZER not in (meta.get("finalizers") or []):
                continue
            in_use = any(
                v.get("persistentVolumeClaim", {}).get("claimName") == meta["name"]
                for p in self.api.list_objects("v1/pods", meta["namespace"], copy_=False)
                for v in p["spec"].get("volumes") or []
            )
            if not in_use:
                await self.remove_finalizer(
                    "v1/persistentvolumeclaims", meta["namespace"], meta["name"], PVC_FINALIZER
                )

    def sync_services(self) -> None:
        for svc in self.api.list_objects("v1/services", copy_=False):
            meta, spec = svc["metadata"], svc["spec"]
            selector = spec.get("selector") or {}
            if spec.get("clusterIP") == "None" or not selector:
                continue
            ns = meta["namespace"]
            ready = []
            for p in self.api.list_objects("v1/pods", ns, copy_=False):
                labels = p["metadata"].get("labels") or {}
                if p["metadata"].get("deletionTimestamp") or not all(
                    labels.get(k) == v for k, v in selector.items()
                ):
                    continue
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                ):
                    ready.append(p)
            ready.sort(key=lambda p: p["metadata"]["name"])
            for port in spec.get("ports") or []:
                target = None
                for p in ready:
                    rt = self.kubelet.runtime(ns, p["metadata"]["name"])
                    if rt is not None:
                        tp = port.get("targetPort", port["port"])
                        try:
                            target = f"127.0.0.1:{rt.host_port(tp)}"
                        except KeyError:
                            continue
                        break
                self.addresses.point_service(ns, meta["name"], int(port["port"]), target)
