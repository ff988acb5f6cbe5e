"""A thin asyncio Kubernetes REST client over aiohttp, with kopf's credentials.

kopf logs in (service account in a pod, kubeconfig elsewhere) and hands us the same
`kopf.ConnectionInfo`; we only need get/list/create/patch/delete on a handful of resources,
plus "apply" (create, or a three-way merge patch against the last applied state, as kubectl).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

Body = dict[str, Any]
ANNOTATION_LAST_APPLIED = "etcdstore.io/last-applied"


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

    def __init__(self, server: str, *, headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0) -> None:
        self._server = server.rstrip("/")
        self._headers = dict(headers or {})
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection_info(cls, info: Any) -> Kube:
        """From a kopf.ConnectionInfo."""
        ctx = info.as_ssl_context() if info.server.startswith("https") else None
        return cls(info.server, headers=info.as_http_headers(), ssl_context=ctx)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _request(self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None,
                       content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        for attempt in range(3):
            try:
                async with self._sess().request(method, self._server + path, data=data, params=params,
                                                headers=headers, ssl=self._ssl) as resp:
                    text = await resp.text()
                    if resp.status >= 400:
                        try:
                            err = json.loads(text)
                        except json.JSONDecodeError:
                            err = {}
                        raise ApiError(resp.status, str(err.get("reason", resp.reason)), str(err.get("message", text)))
                    return json.loads(text) if text else None
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- verbs -------------------------------------------------------------------------------
    async def get(self, res: Resource, namespace: str | None, name: str, sub: str | None = None) -> Body | None:
        try:
            return await self._request("GET", res.path(namespace, name, sub))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, res: Resource, namespace: str | None, *, labels: Mapping[str, str] | None = None) -> list[Body]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        data = await self._request("GET", res.path(namespace), params=params)
        items = (data or {}).get("items") or []
        if labels:  # be strict even if a server ignored the selector
            items = [i for i in items if all((i.get("metadata", {}).get("labels") or {}).get(k) == v
                                             for k, v in labels.items())]
        return items

    async def watch(self, res: Resource, namespace: str | None, *, labels: Mapping[str, str],
                    timeout: int = 300) -> AsyncIterator[Body]:
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
            params = {"watch": "true", "labelSelector": selector, "allowWatchBookmarks": "true",
                      "timeoutSeconds": str(timeout)}
            if rv:
                params["resourceVersion"] = rv
            stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout + 30)
            async with self._sess().get(self._server + res.path(namespace), params=params, ssl=self._ssl,
                                        timeout=stream_timeout) as resp:
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
        return await self._request("POST", res.path(namespace), body=body)

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: Any, *, sub: str | None = None,
                    json_patch: bool = False) -> Body | None:
        ctype = "application/json-patch+json" if json_patch else "application/merge-patch+json"
        try:
            return await self._request("PATCH", res.path(namespace, name, sub), body=patch, content_type=ctype)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete(self, res: Resource, namespace: str | None, name: str, *, propagation: str = "Background",
                     uid: str | None = None) -> bool:
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

    # -- apply -------------------------------------------------------------------------------
    async def apply(self, desired: Body, *, last_applied: bool = True) -> tuple[Body, bool]:
        """Create `desired`, or patch the live object towards it. Returns (object, changed).

        With `last_applied`, the desired state is recorded in an annotation and the patch is
        three-way (keys dropped from the desired state are removed), as `kubectl apply` does.
        Without it (Secrets: no key material in annotations) it is a plain merge patch.
        """
        res = resource_of(desired)
        meta = desired["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        body = json.loads(json.dumps(desired))
        record = json.dumps(desired, sort_keys=True, separators=(",", ":"))
        if last_applied:
            body["metadata"].setdefault("annotations", {})[ANNOTATION_LAST_APPLIED] = record
        live = await self.get(res, ns, name)
        if live is None:
            try:
                return await self.create(res, ns, body), True
            except ApiError as e:
                if e.status != 409:
                    raise
                live = await self.get(res, ns, name)
                if live is None:
                    raise
        if last_applied:
            prev_text = (live.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_LAST_APPLIED)
            if prev_text == record:
                return live, False
            prev = json.loads(prev_text) if prev_text else {}
            patch = three_way_patch(live, prev, body)
        else:
            patch = three_way_patch(live, {}, body)
        if not patch:
            return live, False
        out = await self.patch(res, ns, name, patch)
        return (out if out is not None else live), True


def three_way_patch(live: Any, last: Any, desired: Any) -> Any:
    """A JSON merge patch (RFC 7386) taking `live` to `desired`, deleting keys that `last` had
    but `desired` dropped. Lists are replaced whole (merge-patch semantics)."""
    patch: dict[str, Any] = {}
    live = live if isinstance(live, dict) else {}
    last = last if isinstance(last, dict) else {}
    for key, want in desired.items():
        have = live.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = three_way_patch(have, last.get(key), want)
            if sub:
                patch[key] = sub
        elif have != want:
            patch[key] = want
    for key in last:
        if key not in desired and key in live:
            patch[key] = None
    return patch
