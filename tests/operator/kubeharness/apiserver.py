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
                kind=spec["names"]["kind"], singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced", shortnames=set(spec["names"].get("shortNames", [])),
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

    def list_objects(self, resource: str, namespace: str | None = None, selector: str | None = None,
                     *, copy_: bool = True) -> list[dict]:
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
        return [(r, o.raw) for (r, _, _), o in list(self.objects.items()) if not o.deleted and r.plural not in skip]

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
        if request.action == kmock.action.CREATE:
            obj = copy.deepcopy(request.data or {})
            meta = obj.setdefault("metadata", {})
            if request.namespace:
                meta["namespace"] = request.namespace
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            if not meta.get("name"):
                raise self._invalid("metadata.name: Required value")
            crd = self.crds.get(res)
            if crd is not None:
                obj, errors = default_and_validate(crd, obj)
                if errors:
                    raise self._invalid(f"{obj.get('kind')} {meta.get('name')!r} is invalid: " + "; ".join(errors))
                meta = obj["metadata"]
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
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPointerException) as e:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"the patch does not apply: {e}")
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
                    raise self._invalid(f"{new.get('kind')} {request.name!r} is invalid: " + "; ".join(errors))
                new = validated
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = int(old.get("metadata", {}).get("generation") or 1) + 1
            new["metadata"]["resourceVersion"] = str(next(self._rv))
            return attrs.evolve(request, data=merge_diff(old, new))

        # DELETE: KMock marks objects with finalizers (deletionTimestamp) and removes the others.
        return request

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
        result["items"] = [i for i in result["items"]
                           if selector_matches(selector, i.get("metadata", {}).get("labels"))]
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
