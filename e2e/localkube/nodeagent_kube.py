"""A small asyncio client of the Kubernetes API for the node agent: a kubeconfig (client certificate or
token), JSON requests, and informers (list, then watch from the list's resourceVersion, re-list on 410
Gone or any broken stream), as client-go's reflector does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger("localkube.nodeagent")

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status, self.body = status, body
        msg = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{what}: {status} {msg}")


def _material(entry: dict[str, Any], key: str, tmp: Path) -> str | None:
    """Path of a kubeconfig file entry (`key` or `key-data`), writing inline data to `tmp`."""
    if entry.get(key):
        return str(entry[key])
    data = entry.get(f"{key}-data")
    if not data:
        return None
    path = tmp / key
    path.write_bytes(base64.b64decode(data))
    path.chmod(0o600)
    return str(path)


class Kube:
    """One identity on one API server (from a kubeconfig's current context)."""

    def __init__(self, kubeconfig: Path | str, *, user_agent: str = "localkube-nodeagent") -> None:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {})
        self.server = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="nodeagent-kube-")
        tmp = Path(self._tmp.name)
        self.ca_file = _material(cluster, "certificate-authority", tmp)
        self.ssl = (
            ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        )
        if cluster.get("insecure-skip-tls-verify"):
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
        cert = _material(user, "client-certificate", tmp)
        key = _material(user, "client-key", tmp)
        if cert and key:
            self.ssl.load_cert_chain(cert, key)
        self.headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self.headers, connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tmp.cleanup()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            try:
                out = json.loads(text) if text else None
            except ValueError:
                out = text
            if resp.status >= 400:
                raise ApiError(resp.status, out, f"{method} {path}")
            return out

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, obj: Obj) -> Any:
        return await self.request("POST", path, body=obj)

    async def merge_patch(self, path: str, patch: Obj) -> Any:
        return await self.request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def strategic_patch(self, path: str, patch: Obj) -> Any:
        return await self.request(
            "PATCH", path, body=patch, content_type="application/strategic-merge-patch+json"
        )

    async def delete(self, path: str, body: Obj | None = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def watch(self, path: str, params: dict[str, Any]) -> Any:
        """Yield watch events (dicts with type/object) until the server ends the stream."""
        q = {
            **params,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(random.randint(240, 360)),
        }
        async with self.session.get(
            self.server + path, params=q, timeout=aiohttp.ClientTimeout(total=None, sock_read=420)
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text(), f"WATCH {path}")
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Informer:
    """A cache of the objects at `path` (optionally field/label-selected), kept current by list+watch.

    `on_change(event_type, obj)` runs for every change (ADDED/MODIFIED/DELETED; a re-list reports what
    changed in between). `synced` is set after the first list."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        *,
        params: dict[str, str] | None = None,
        on_change: Callable[[str, Obj], Awaitable[None] | None] | None = None,
        name: str = "",
    ) -> None:
        self.kube, self.path, self.params = kube, path, dict(params or {})
        self.on_change = on_change
        self.name = name or path
        self.items: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()  # set on every change; waiters clear it
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.items.get(f"{namespace}/{name}")

    def list(self, namespace: str | None = None) -> list[Obj]:
        if namespace is None:
            return list(self.items.values())
        return [o for o in self.items.values() if o["metadata"].get("namespace") == namespace]

    async def _emit(self, kind: str, obj: Obj) -> None:
        self.changed.set()
        if self.on_change is not None:
            try:
                r = self.on_change(kind, obj)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("%s: handler failed", self.name)

    async def _relist(self) -> str:
        out = await self.kube.get(self.path, **self.params)
        fresh = {key_of(o): o for o in out.get("items", [])}
        for k in list(self.items):
            if k not in fresh:
                await self._emit("DELETED", self.items.pop(k))
        for k, o in fresh.items():
            old = self.items.get(k)
            self.items[k] = o
            if old is None:
                await self._emit("ADDED", o)
            elif old["metadata"].get("resourceVersion") != o["metadata"].get("resourceVersion"):
                await self._emit("MODIFIED", o)
        self.synced.set()
        return out["metadata"]["resourceVersion"]

    async def _run(self) -> None:
        rv: str | None = None
        delay = 0.2
        while True:
            try:
                if rv is None:
                    rv = await self._relist()
                async for ev in self.kube.watch(self.path, {**self.params, "resourceVersion": rv}):
                    delay = 0.2
                    typ, obj = ev.get("type"), ev.get("object") or {}
                    if typ == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # too old: re-list
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if typ == "BOOKMARK":
                        continue
                    k = key_of(obj)
                    if typ == "DELETED":
                        self.items.pop(k, None)
                    else:
                        self.items[k] = obj
                    await self._emit(typ, obj)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 410:
                    rv = None
                else:
                    log.warning("%s: %s", self.name, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
                log.info("%s: watch broke (%s); resuming", self.name, type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def parse_quantity(q: str | float) -> Decimal:
    """A Kubernetes resource quantity ("100m", "1Gi", "2", "1e3") as a Decimal."""
    s = str(q).strip()
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if suffix and s.endswith(suffix):
            return Decimal(s[: -len(suffix)]) * _SUFFIX[suffix]
    return Decimal(s)
