"""A local dynamic volume provisioner (an external provisioner, like kind's local-path-provisioner).

- Installs the StorageClass `standard` (the default class; provisioner localkube.etcdstore.io/local-dir,
  volumeBindingMode **WaitForFirstConsumer**, reclaimPolicy Delete, allowVolumeExpansion true), unless a class of
  that name exists.
- A claim of one of its classes is provisioned once the scheduler has picked a node for its first pod
  (annotation volume.kubernetes.io/selected-node; a class with Immediate binding is provisioned at once): a
  directory `<root>/volumes/pvc-<uid>` owned by root, mode 0755 (as a fresh CSI filesystem: a non-root pod
  needs fsGroup to write to it), and a PV `pvc-<uid>` (hostPath, node affinity to the selected node, the claim's
  size and access modes, the class's reclaim policy) pre-bound to the claim; kube-controller-manager's PV
  controller completes the binding.
- Released PVs with reclaimPolicy Delete: the directory and the PV are deleted. Retain: both are kept.
- Expansion: a bigger request on a bound claim of an expandable class grows the PV's capacity and the claim's
  status.capacity (a directory has no size limit: capacity is bookkeeping; nothing enforces it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .nodeagent_kube import ApiError, Informer, Kube, parse_quantity
from .nodeagent_volumes import PROVISIONER

log = logging.getLogger("localkube.provisioner")
Obj = dict[str, Any]
CLASS_NAME = "standard"


def storage_class(binding_mode: str = "WaitForFirstConsumer") -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS_NAME,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding_mode,
        "allowVolumeExpansion": True,
    }


class Provisioner:
    def __init__(self, kube: Kube, root: Path, binding_mode: str = "WaitForFirstConsumer") -> None:
        self.kube = kube
        self.root = root / "volumes"
        self.root.mkdir(parents=True, exist_ok=True)
        self.binding_mode = binding_mode
        self.classes = Informer(kube, "/apis/storage.k8s.io/v1/storageclasses", name="storageclasses")
        self.claims = Informer(kube, "/api/v1/persistentvolumeclaims", name="pvcs")
        self.volumes = Informer(kube, "/api/v1/persistentvolumes", name="pvs")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[str] = set()

    async def start(self) -> None:
        try:
            await self.kube.create("/apis/storage.k8s.io/v1/storageclasses", storage_class(self.binding_mode))
        except ApiError as e:
            if e.status != 409:
                raise
        for inf in (self.classes, self.claims, self.volumes):
            inf.on_change = lambda *_: self._wake.set()
            inf.start()
        self._task = asyncio.create_task(self._loop(), name="provisioner")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with __import__("contextlib").suppress(asyncio.CancelledError):
                await self._task
        for inf in (self.classes, self.claims, self.volumes):
            await inf.stop()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("provisioner sync")
                await asyncio.sleep(1.0)
                self._wake.set()

    def _class(self, name: str | None) -> Obj | None:
        if not name:
            return None
        c = self.classes.items.get(f"/{name}")
        return c if c and c.get("provisioner") == PROVISIONER else None

    async def sync(self) -> None:
        pvs = {pv["metadata"]["name"]: pv for pv in self.volumes.list()}
        for pvc in self.claims.list():
            meta, spec = pvc["metadata"], pvc.get("spec") or {}
            cls = self._class(spec.get("storageClassName"))
            if cls is None or meta.get("deletionTimestamp"):
                continue
            if not spec.get("volumeName"):
                await self._provision(pvc, cls, pvs)
            else:
                await self._resize(pvc, cls, pvs.get(spec["volumeName"]))
        for pv in pvs.values():
            await self._reclaim(pv)

    async def _provision(self, pvc: Obj, cls: Obj, pvs: dict[str, Obj]) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        ann = meta.get("annotations") or {}
        node = ann.get("volume.kubernetes.io/selected-node")
        if cls.get("volumeBindingMode", "Immediate") == "WaitForFirstConsumer" and not node:
            return
        name = f"pvc-{meta['uid']}"
        if name in pvs or name in self._inflight:
            return
        self._inflight.add(name)
        try:
            d = self.root / name
            d.mkdir(exist_ok=True)
            os.chown(d, 0, 0)
            os.chmod(d, 0o755)
            size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            pv: Obj = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": name,
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                    "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"],
                },
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": cls.get("reclaimPolicy", "Delete"),
                    "storageClassName": cls["metadata"]["name"],
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "hostPath": {"path": str(d), "type": "Directory"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            if node:
                pv["spec"]["nodeAffinity"] = {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                                ]
                            }
                        ]
                    }
                }
            try:
                await self.kube.create("/api/v1/persistentvolumes", pv)
                log.info("provisioned %s for %s/%s (%s)", name, meta["namespace"], meta["name"], d)
            except ApiError as e:
                if e.status != 409:
                    raise
        finally:
            self._inflight.discard(name)

    async def _reclaim(self, pv: Obj) -> None:
        meta, spec = pv["metadata"], pv.get("spec") or {}
        if (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        phase = (pv.get("status") or {}).get("phase")
        fin = "external-provisioner.volume.kubernetes.io/finalizer"
        if (
            spec.get("persistentVolumeReclaimPolicy") == "Delete"
            and phase in ("Released", "Failed")
            and not meta.get("deletionTimestamp")
        ):
            path = (spec.get("hostPath") or {}).get("path")
            if path and Path(path).parent == self.root:
                shutil.rmtree(path, ignore_errors=True)
            try:
                await self.kube.delete(f"/api/v1/persistentvolumes/{meta['name']}")
                log.info("deleted %s (%s)", meta["name"], path)
            except ApiError as e:
                if e.status != 404:
                    raise
        if meta.get("deletionTimestamp") and fin in (meta.get("finalizers") or []):
            path = (spec.get("hostPath") or {}).get("path")
            if (
                spec.get("persistentVolumeReclaimPolicy") == "Delete"
                and path
                and Path(path).parent == self.root
            ):
                shutil.rmtree(path, ignore_errors=True)
            rest = [f for f in meta["finalizers"] if f != fin]
            try:
                await self.kube.merge_patch(
                    f"/api/v1/persistentvolumes/{meta['name']}",
                    {"metadata": {"finalizers": rest or None, "resourceVersion": meta["resourceVersion"]}},
                )
            except ApiError as e:
                if e.status not in (404, 409):
                    raise

    async def _resize(self, pvc: Obj, cls: Obj, pv: Obj | None) -> None:
        if pv is None or not cls.get("allowVolumeExpansion"):
            return
        want = ((pvc["spec"].get("resources") or {}).get("requests") or {}).get("storage")
        have = ((pv.get("spec") or {}).get("capacity") or {}).get("storage")
        status_cap = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
        if not want or not have or (pvc.get("status") or {}).get("phase") != "Bound":
            return
        if parse_quantity(want) > parse_quantity(have):
            await self.kube.merge_patch(
                f"/api/v1/persistentvolumes/{pv['metadata']['name']}",
                {"spec": {"capacity": {"storage": want}}},
            )
            have = want
        if status_cap and parse_quantity(status_cap) < parse_quantity(have):
            ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
            await self.kube.merge_patch(
                f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}/status",
                {
                    "status": {
                        "capacity": {"storage": have},
                        "allocatedResources": {"storage": have},
                        "allocatedResourceStatuses": None,
                        "conditions": None,
                    }
                },
            )
            log.info("expanded %s/%s to %s", ns, name, have)
