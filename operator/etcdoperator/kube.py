"""A thin asyncio Kubernetes REST client over aiohttp, with kopf's credentials.

kopf logs in (through the `kubernetes` package's config loaders: service account in a pod,
kubeconfig elsewhere, exec plugins included) and hands us the same `kopf.ConnectionInfo`; we only
need get/list/watch/create/patch/delete on a handful of resources, plus server-side apply.

Why not the `kubernetes` package's own client for the calls: it is synchronous (urllib3) and
would block the operator's event loop (kopf, the etcd clients and the watches share it); its
asyncio sibling is another dependency. It is used where it serves: loading the credentials.

Server-side apply (`apply`): every object the operator owns is written as one apply
configuration by one field manager, `etcd-operator`, with `force=true` - every field in that
configuration is the operator's (the template, ports, selectors...). Fields it leaves out stay
with whoever set them: a user's annotations, `kubectl rollout restart`'s template annotation,
the API server's defaults. A field the operator writes on its own schedule has its own manager
(`SIDE_FIELDS`): a StatefulSet's `spec.replicas` is applied by `etcd-operator-replicas` as the
planner scales, and never by the main configuration (which would otherwise fight it, or drop
it and let the API server default it to 1).

Objects written by an operator before server-side apply (created and merge-patched with no
field manager: kube-apiserver named it after aiohttp's User-Agent, `Python`, and the old
three-way merge kept its last state in the `etcdstore.io/last-applied` annotation) are migrated
the way `kubectl` migrates from client-side apply: the old manager's fields are moved into the
new managers' sets (`legacy_upgrade_patch`, one JSON patch guarded by resourceVersion), then the
configuration is applied again - so fields the new operator no longer sets, the annotation among
them, are removed instead of being kept forever by a manager nobody speaks for.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from etcdoperator import __version__

Body = dict[str, Any]
ANNOTATION_LAST_APPLIED = "etcdstore.io/last-applied"  # the pre-server-side-apply operator's record
FIELD_MANAGER = "etcd-operator"
REPLICAS_MANAGER = "etcd-operator-replicas"
# The pre-server-side-apply operator sent no fieldManager: kube-apiserver names such a writer after
# the first word of its User-Agent, aiohttp's "Python/3.x aiohttp/3.x".
LEGACY_MANAGERS = frozenset({"Python"})
APPLY_PATCH = "application/apply-patch+yaml"
# Fields of an applied kind that the main configuration leaves out: each has its own manager.
SIDE_FIELDS: dict[tuple[str, str], dict[tuple[str, ...], str]] = {
    ("apps/v1", "StatefulSet"): {("spec", "replicas"): REPLICAS_MANAGER},
}


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if sub:
                base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
CONFIGMAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
PVCS = Resource("", "v1", "persistentvolumeclaims")
EVENTS = Resource("", "v1", "events")
STATEFULSETS = Resource("apps", "v1", "statefulsets")
JOBS = Resource("batch", "v1", "jobs")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")
ETCDCLUSTERS = Resource("etcdstore.io", "v1alpha1", "etcdclusters")
ETCDBACKUPS = Resource("etcdstore.io", "v1alpha1", "etcdbackups")

_BY_KIND = {
    ("v1", "Pod"): PODS,
    ("v1", "Service"): SERVICES,
    ("v1", "ConfigMap"): CONFIGMAPS,
    ("v1", "Secret"): SECRETS,
    ("v1", "PersistentVolumeClaim"): PVCS,
    ("apps/v1", "StatefulSet"): STATEFULSETS,
    ("batch/v1", "Job"): JOBS,
    ("policy/v1", "PodDisruptionBudget"): PDBS,
}


def resource_of(body: Mapping[str, Any]) -> Resource:
    return _BY_KIND[(body["apiVersion"], body["kind"])]


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Kube:
    """One aiohttp session to the API server; safe to share between tasks."""

    def __init__(
        self,
        server: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._server = server.rstrip("/")
        self._headers = {"User-Agent": f"etcd-operator/{__version__}", **dict(headers or {})}
        # aiohttp's `ssl`: a context, or True for its default verification (what None meant, deprecated).
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection_info(cls, info: Any) -> Kube:
        """From a kopf.ConnectionInfo."""
        ctx = info.as_ssl_context() if info.server.startswith("https") else None
        return cls(info.server, headers=info.as_http_headers(), ssl_context=ctx)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, *, context: str | None = None) -> Kube:
        """From a kubeconfig, read by the `kubernetes` package (as the operator's login does):
        client certificates, tokens, exec/auth-provider plugins. For tools and tests."""
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        ctx = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.verify_ssl
            else ssl._create_unverified_context()
        )
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        headers = {}
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        return cls(cfg.host, headers=headers, ssl_context=ctx if cfg.host.startswith("https") else None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        for attempt in range(3):
            try:
                async with self._sess().request(
                    method, self._server + path, data=data, params=params, headers=headers, ssl=self._ssl
                ) as resp:
                    text = await resp.text()
                    if resp.status >= 400:
                        try:
                            err = json.loads(text)
                        except json.JSONDecodeError:
                            err = {}
                        raise ApiError(
                            resp.status, str(err.get("reason", resp.reason)), str(err.get("message", text))
                        )
                    return json.loads(text) if text else None
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- verbs -------------------------------------------------------------------------------
    async def get(
        self, res: Resource, namespace: str | None, name: str, sub: str | None = None
    ) -> Body | None:
        try:
            return await self._request("GET", res.path(namespace, name, sub))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self, res: Resource, namespace: str | None, *, labels: Mapping[str, str] | None = None
    ) -> list[Body]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        data = await self._request("GET", res.path(namespace), params=params)
        items = (data or {}).get("items") or []
        if labels:  # be strict even if a server ignored the selector
            items = [
                i
                for i in items
                if all((i.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
            ]
        return items

    async def watch(
        self, res: Resource, namespace: str | None, *, labels: Mapping[str, str], timeout: int = 300
    ) -> AsyncIterator[Body]:
        """Events (ADDED/MODIFIED/DELETED, and SYNC for what exists at each (re)list) of the objects
        matching `labels`, filtered by the API server (labelSelector): objects of no interest
        never reach the operator. Resumes from the last resourceVersion; relists after 410 Gone."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        rv: str | None = None
        while True:
            if rv is None:
                listing = await self._request("GET", res.path(namespace), params={"labelSelector": selector})
                rv = str(((listing or {}).get("metadata") or {}).get("resourceVersion") or "")
                for item in (listing or {}).get("items") or []:
                    yield {"type": "SYNC", "object": item}
            params = {
                "watch": "true",
                "labelSelector": selector,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(timeout),
            }
            if rv:
                params["resourceVersion"] = rv
            stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout + 30)
            async with self._sess().get(
                self._server + res.path(namespace), params=params, ssl=self._ssl, timeout=stream_timeout
            ) as resp:
                if resp.status == 410:
                    rv = None
                    continue
                if resp.status >= 400:
                    raise ApiError(resp.status, resp.reason or "", (await resp.text())[:500])
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                        break
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv or "")
                    if event.get("type") != "BOOKMARK":
                        yield event

    async def create(self, res: Resource, namespace: str | None, body: Body) -> Body:
        return await self._request(
            "POST", res.path(namespace), body=body, params={"fieldManager": FIELD_MANAGER}
        )

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        sub: str | None = None,
        json_patch: bool = False,
    ) -> Body | None:
        ctype = "application/json-patch+json" if json_patch else "application/merge-patch+json"
        try:
            return await self._request(
                "PATCH",
                res.path(namespace, name, sub),
                body=patch,
                content_type=ctype,
                params={"fieldManager": FIELD_MANAGER},
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        body: Body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", res.path(namespace, name), body=body)
            return True
        except ApiError as e:
            if e.status in (404, 409):
                return False
            raise

    # -- server-side apply -------------------------------------------------------------------
    async def apply(self, desired: Body, *, manager: str = FIELD_MANAGER, force: bool = True) -> Body:
        """Server-side apply `desired` as `manager` (creates it if missing); returns the object.

        An object last written by the pre-server-side-apply operator is migrated first (see the
        module docstring), then applied again so that what it no longer sets is removed."""
        res = resource_of(desired)
        meta = desired["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        out = await self._apply(res, ns, name, desired, manager, force)
        if manager != FIELD_MANAGER:
            return out
        upgrade = legacy_upgrade_patch(out or {}, manager=manager, now=_now())
        if upgrade:
            try:
                await self._request(
                    "PATCH", res.path(ns, name), body=upgrade, content_type="application/json-patch+json"
                )
            except ApiError as e:
                if e.status not in (404, 409, 422):  # changed meanwhile: the next apply migrates
                    raise
                return out
            out = await self._apply(res, ns, name, desired, manager, force)
        return out

    async def _apply(
        self, res: Resource, ns: str | None, name: str, body: Body, manager: str, force: bool
    ) -> Body:
        params = {"fieldManager": manager, "force": "true" if force else "false"}
        return await self._request(
            "PATCH", res.path(ns, name), body=body, params=params, content_type=APPLY_PATCH
        )

    async def apply_replicas(
        self, res: Resource, namespace: str, name: str, replicas: int, *, api_version: str, kind: str
    ) -> Body | None:
        """spec.replicas alone, as its own manager (REPLICAS_MANAGER). None if the object is gone."""
        body = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        try:
            return await self._apply(res, namespace, name, body, REPLICAS_MANAGER, True)
        except ApiError as e:
            if e.status == 404:
                return None
            raise


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _field_path(path: tuple[str, ...]) -> list[str]:
    return [f"f:{p}" for p in path]


def fields_owned(
    obj: Mapping[str, Any], manager: str, path: tuple[str, ...], *, operation: str = "Apply"
) -> bool:
    """Whether `manager` (by `operation`) owns the field at `path` (e.g. ("spec", "replicas")).
    True for an object without managedFields (an API server that does not track them)."""
    entries = (obj.get("metadata") or {}).get("managedFields")
    if not entries:
        return True
    for e in entries:
        if e.get("manager") != manager or e.get("operation") != operation or e.get("subresource"):
            continue
        node: Any = e.get("fieldsV1") or {}
        for step in _field_path(path):
            node = node.get(step) if isinstance(node, dict) else None
        if node is not None:
            return True
    return False


def merge_fieldsets(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any]:
    """The union of two managedFields `fieldsV1` sets (trees of f:/k:/v:/i: keys)."""
    out: dict[str, Any] = {k: v for k, v in (a or {}).items()}
    for k, v in (b or {}).items():
        out[k] = merge_fieldsets(out.get(k), v) if k in out else v
    return out


def _take(tree: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    """Remove the subtree at `path` from `tree` (in place) and return it."""
    node = tree
    for step in path[:-1]:
        nxt = node.get(step)
        if not isinstance(nxt, dict):
            return None
        node = nxt
    return node.pop(path[-1], None)


def _put(tree: dict[str, Any], path: list[str], sub: dict[str, Any]) -> None:
    node = tree
    for step in path[:-1]:
        node = node.setdefault(step, {})
    node[path[-1]] = merge_fieldsets(node.get(path[-1]), sub)


def legacy_upgrade_patch(
    live: Mapping[str, Any],
    *,
    manager: str = FIELD_MANAGER,
    now: str = "",
    legacy: frozenset[str] = LEGACY_MANAGERS,
) -> list[dict[str, Any]] | None:
    """A JSON patch moving the fields owned by the pre-server-side-apply operator (Update entries
    of a LEGACY_MANAGERS manager, not of a subresource) into `manager`'s Apply entry - and the
    SIDE_FIELDS of the kind into their own managers' entries - guarded by resourceVersion.
    None when there is nothing to migrate. (As `kubectl` upgrades client-side-applied objects.)"""
    meta = live.get("metadata") or {}
    entries = copy.deepcopy(list(meta.get("managedFields") or []))
    old = [
        e
        for e in entries
        if e.get("manager") in legacy and e.get("operation") == "Update" and not e.get("subresource")
    ]
    if not old:
        return None
    api_version = str(live.get("apiVersion") or "")
    owned: dict[str, Any] = {}
    for e in old:
        owned = merge_fieldsets(owned, e.get("fieldsV1"))
    moved: dict[str, dict[str, Any]] = {manager: owned}
    for path, side in SIDE_FIELDS.get((api_version, str(live.get("kind") or "")), {}).items():
        sub = _take(owned, _field_path(path))
        if sub is not None:
            tree = moved.setdefault(side, {})
            _put(tree, _field_path(path), sub)
    kept = [e for e in entries if not any(e is o for o in old)]
    for name, tree in moved.items():
        mine = next(
            (
                e
                for e in kept
                if e.get("manager") == name and e.get("operation") == "Apply" and not e.get("subresource")
            ),
            None,
        )
        if mine is None:
            kept.append(
                {
                    "manager": name,
                    "operation": "Apply",
                    "apiVersion": api_version,
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": tree,
                }
            )
        else:
            mine["fieldsV1"] = merge_fieldsets(mine.get("fieldsV1"), tree)
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
        {"op": "replace", "path": "/metadata/managedFields", "value": kept},
    ]
