"""KMock as the API server, with the API-server semantics the operator relies on.

KMock's KubernetesEmulator stores objects and serves list/watch/get/create/patch/delete. Its docs
invite subclassing for "special field treatment"; this subclass adds what a real API server does
and the operator (and kopf) depend on:
  * metadata.uid, resourceVersion, generation (bumped when spec changes), creationTimestamp,
    generateName;
  * status subresource rules: PATCH .../status changes only status, PATCH on the object never
    changes status; .../scale changes spec.replicas;
  * JSON-patch `test` failures answer 422 (kopf's optimistic-concurrency protocol);
  * labelSelector on list and watch;
  * server-side apply (PATCH application/apply-patch+yaml with a fieldManager): creates a missing
    object; otherwise merges the configuration and removes what this manager applied before and
    no longer applies, unless another manager's last configuration still has it. Simplified:
    lists are atomic (the real API server merges keyed lists) and ownership is tracked per
    manager's last configuration, not managedFields; tests/k8s/test_operator_apply.py checks the
    operator's use of it on a real kube-apiserver;
  * custom resources are defaulted and validated against their CRD schema (422 on errors);
  * admission finalizers: kubernetes.io/pvc-protection on claims, and one on pods that the
    harness kubelet removes after the containers have stopped (graceful pod deletion).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import random
import string
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal import dicts as kdicts  # merge-patch semantics identical to KMock's own storage

from kubeharness.crdschema import default_and_validate

POD_FINALIZER = "harness.etcdstore.io/kubelet"
PVC_FINALIZER = "kubernetes.io/pvc-protection"
_MUTATIONS = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
APPLY_PATCH = "application/apply-patch+yaml"


def _content_type(request: kmock.Request) -> str:
    for k, v in request.headers.items():
        if k.lower() == "content-type":
            return v.split(";")[0].strip()
    return ""


def apply_merge(live: Any, config: Any, previous: Any, others: list[Any]) -> Any:
    """`live` with `config` applied: maps merge, anything else is replaced; keys of `previous`
    (this manager's last configuration) absent from `config` are removed unless one of `others`
    (the other managers' configurations) still sets them."""
    if not isinstance(config, dict) or not isinstance(live, dict):
        return copy.deepcopy(config)
    out = copy.deepcopy(live)
    prev = previous if isinstance(previous, dict) else {}
    for k in prev:
        if k not in config and k in out and not any(isinstance(o, dict) and k in o for o in others):
            del out[k]
    for k, v in config.items():
        sub_others = [o.get(k) for o in others if isinstance(o, dict)]
        out[k] = (
            apply_merge(out.get(k), v, prev.get(k), sub_others) if isinstance(v, dict) else copy.deepcopy(v)
        )
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_diff(old: Any, new: Any) -> Any:
    """A merge patch that turns `old` into `new` exactly (removed keys become None)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out: dict[str, Any] = {}
    for k, v in new.items():
        if k not in old:
            out[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_diff(old[k], v)
            if sub:
                out[k] = sub
        elif old[k] != v:
            out[k] = v
    for k in old:
        if k not in new:
            out[k] = None
    return out


def selector_matches(selector: str | None, labels: dict[str, str] | None) -> bool:
    """Equality-based label selectors: a=b, a==b, a!=b, a, !a (comma = and)."""
    if not selector:
        return True
    labels = labels or {}
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    crds: dict[Any, dict[str, Any]] = attrs.field(factory=dict)
    # server-side apply: (resource, namespace, name) -> {field manager: its last configuration}
    applied: dict[tuple[Any, Any, Any], dict[str, Any]] = attrs.field(factory=dict)
    _rv: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _mutex: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()

    def install_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for v in spec["versions"]:
            res = kmock.resource(spec["group"], v["name"], spec["names"]["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced",
                shortnames=set(spec["names"].get("shortNames", [])),
                verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
                subresources=set((v.get("subresources") or {}).keys()),
            )
            self.crds[res] = crd

    # -- helpers for tests and controllers ----------------------------------------------------
    def get_object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list_objects(
        self, resource: str, namespace: str | None = None, selector: str | None = None, *, copy_: bool = True
    ) -> list[dict]:
        """Objects as stored; with copy_=False the caller promises not to modify them."""
        res = kmock.resource(resource)
        out = []
        for (r, ns, _), obj in list(self.objects.items()):
            if r == res and not obj.deleted and (namespace is None or ns == namespace):
                raw = obj.raw
                if selector_matches(selector, raw.get("metadata", {}).get("labels")):
                    out.append(copy.deepcopy(raw) if copy_ else raw)
        return out

    def all_objects(self, *, skip: tuple[str, ...] = ("events",)) -> list[tuple[Any, dict[str, Any]]]:
        """Every live object (not copied: read-only)."""
        return [
            (r, o.raw)
            for (r, _, _), o in list(self.objects.items())
            if not o.deleted and r.plural not in skip
        ]

    # -- admission -----------------------------------------------------------------------------
    def _forget(self, request: kmock.Request) -> None:
        for i in range(len(self._requests) - 1, -1, -1):
            if self._requests[i] is request:
                del self._requests[i]
                return

    async def _handle(self, request: kmock.Request) -> Any:
        # KMock keeps every request for assertions and matches each new one against views over
        # all of them: O(requests) per request. Tests here assert on objects, not requests, so a
        # request is forgotten once served (watch streams stay listed while they stream).
        try:
            return await self._handle_admitted(request)
        finally:
            self._forget(request)

    async def _handle_admitted(self, request: kmock.Request) -> Any:
        if request.resource is None or request.action not in _MUTATIONS:
            return await super()._handle(request)
        async with self._mutex:
            try:
                admitted = self._admit(request)
            except kmock.KubernetesError as e:
                return await self._render_error(e)
            if admitted is not request:
                # KMock's views are lists of the requests it has seen: swap in the admitted one.
                self._forget(request)
                self._requests.append(admitted)
                try:
                    return await super()._handle(admitted)
                finally:
                    self._forget(admitted)
            return await super()._handle(admitted)

    def _invalid(self, message: str) -> kmock.KubernetesError:
        return kmock.KubernetesError(status=422, reason="Invalid", message=message)

    def _admit(self, request: kmock.Request) -> kmock.Request:
        res = request.resource
        if request.action == kmock.action.UPDATE and _content_type(request) == APPLY_PATCH:
            request = self._server_side_apply(request)
        if request.action == kmock.action.CREATE:
            obj = copy.deepcopy(request.data or {})
            meta = obj.setdefault("metadata", {})
            if request.namespace:
                meta["namespace"] = request.namespace
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(
                    random.choices(string.ascii_lowercase + string.digits, k=5)
                )
            if not meta.get("name"):
                raise self._invalid("metadata.name: Required value")
            crd = self.crds.get(res)
            if crd is not None:
                obj, errors = default_and_validate(crd, obj)
                if errors:
                    raise self._invalid(
                        f"{obj.get('kind')} {meta.get('name')!r} is invalid: " + "; ".join(errors)
                    )
                meta = obj["metadata"]
            key = (res, meta.get("namespace") or request.namespace, meta.get("name"))
            self.applied[key] = {
                m: c for m, c in self.applied.get(key, {}).items() if m == request.params.get("_applied_by")
            }
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = str(next(self._rv))
            meta["generation"] = 1
            meta["creationTimestamp"] = now_iso()
            meta.pop("deletionTimestamp", None)
            if res.plural == "persistentvolumeclaims":
                meta["finalizers"] = sorted(set(meta.get("finalizers") or []) | {PVC_FINALIZER})
                obj.setdefault("status", {"phase": "Bound"})
            if res.plural == "pods":
                meta["finalizers"] = sorted(set(meta.get("finalizers") or []) | {POD_FINALIZER})
                obj.setdefault("status", {"phase": "Pending"})
            return attrs.evolve(request, data=obj)

        if request.action == kmock.action.UPDATE:
            key = (res, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return request  # KMock answers 404
            old = copy.deepcopy(self.objects[key].raw)
            patch = request.data
            try:
                if isinstance(patch, list):
                    patched = jsonpatch.apply_patch(old, patch, in_place=False)
                else:
                    patched = kdicts.merge_patch_dict(copy.deepcopy(old), patch or {})
            except (
                jsonpatch.JsonPatchConflict,
                jsonpatch.JsonPatchTestFailed,
                jsonpatch.JsonPointerException,
            ) as e:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=f"the patch does not apply: {e}"
                )
            patched = copy.deepcopy(dict(patched))
            info = self.resources.get(res)
            has_status = info is not None and "status" in info.subresources
            sub = request.subresource
            new = copy.deepcopy(old)
            if sub == "status":
                if "status" in patched:
                    new["status"] = patched["status"]
                else:
                    new.pop("status", None)
            elif sub == "scale":
                new.setdefault("spec", {})["replicas"] = (patched.get("spec") or {}).get("replicas")
            else:
                new = patched
                if has_status:
                    if "status" in old:
                        new["status"] = old["status"]
                    else:
                        new.pop("status", None)
                meta_old, meta_new = old.get("metadata", {}), new.setdefault("metadata", {})
                for field in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                    if field in meta_old:
                        meta_new[field] = meta_old[field]
                if meta_old.get("deletionTimestamp"):
                    meta_new["deletionTimestamp"] = meta_old["deletionTimestamp"]
            crd = self.crds.get(res)
            if crd is not None and sub != "status":
                validated, errors = default_and_validate(crd, new)
                if errors:
                    raise self._invalid(
                        f"{new.get('kind')} {request.name!r} is invalid: " + "; ".join(errors)
                    )
                new = validated
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = int(old.get("metadata", {}).get("generation") or 1) + 1
            new["metadata"]["resourceVersion"] = str(next(self._rv))
            return attrs.evolve(request, data=merge_diff(old, new))

        # DELETE: KMock marks objects with finalizers (deletionTimestamp) and removes the others.
        return request

    def _server_side_apply(self, request: kmock.Request) -> kmock.Request:
        """An apply request becomes the create or merge patch it amounts to (see the module doc)."""
        manager = request.params.get("fieldManager")
        if not manager:
            raise self._invalid("PATCH with application/apply-patch+yaml requires fieldManager")
        config = copy.deepcopy(request.data or {})
        for field in ("apiVersion", "kind"):
            if not config.get(field):
                raise self._invalid(f"{field} must be set in an apply configuration")
        key = (request.resource, request.namespace, request.name)
        live = self.objects[key] if key in self.objects else None  # noqa: SIM401  (no .get)
        if live is None or live.deleted:
            if request.resource.plural == "statefulsets" and not (config.get("spec") or {}).get("template"):
                raise self._invalid("StatefulSet.apps is invalid: spec.template: Required value")
            self.applied[key] = {manager: config}
            config.setdefault("metadata", {})["name"] = request.name
            return attrs.evolve(
                request,
                action=kmock.action.CREATE,
                data=config,
                params={**request.params, "_applied_by": manager},
            )
        managers = self.applied.setdefault(key, {})
        old = copy.deepcopy(live.raw)
        others = [c for m, c in managers.items() if m != manager]
        new = apply_merge(old, config, managers.get(manager), others)
        managers[manager] = config
        return attrs.evolve(
            request, data=merge_diff(old, new), headers={"Content-Type": "application/merge-patch+json"}
        )

    async def _serve_version(self, request: kmock.Request) -> Any:
        # KMock 0.8 names the core group version "/v1"; clients (client-go, helm) need "v1".
        result = await super()._serve_version(request)
        if isinstance(result, dict) and result.get("groupVersion") == "/v1":
            result["groupVersion"] = "v1"
        return result

    # -- reads with label selectors -----------------------------------------------------------
    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        result["items"] = [
            i for i in result["items"] if selector_matches(selector, i.get("metadata", {}).get("labels"))
        ]
        result["metadata"]["resourceVersion"] = str(next(self._rv))
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        selector = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                obj = event.get("object") or {}
                if not selector_matches(selector, obj.get("metadata", {}).get("labels")):
                    continue
            yield event
