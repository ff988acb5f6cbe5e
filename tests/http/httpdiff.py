"""Differential HTTP testing: the same requests to our server and to a real etcd 3.4, the
answers compared after normalising what legitimately differs.

What differs between two independent servers: IDs (cluster, member, lease, auth tokens),
timestamps, sizes, hashes, and the absolute values of indexes/revisions. Indexes are not
erased but *labelled* by order of first appearance (per server), so "this response's
modifiedIndex is the index the previous write returned" is still compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from testlib import Cluster


def start(tmp: Path, binary: str, *extra: str, size: int = 1) -> Cluster:
    """A cluster of `binary` ("etcdstore" or "etcd") with extra flags, on free ports under tmp."""
    return Cluster.start(tmp, size, binary=binary, extra_args=list(extra))


def url(c: Cluster, i: int = 0) -> str:
    return "http://" + c.members[i].endpoint


# v2: integer fields that are store indexes.
V2_INDEX_FIELDS = {"modifiedIndex", "createdIndex", "index"}
# v3 (JSON gateway): revision-valued fields (int64 as strings).
V3_REVISION_FIELDS = {
    "revision",
    "create_revision",
    "mod_revision",
    "compact_revision",
    "createRevision",
    "modRevision",
    "raftIndex",
    "raftAppliedIndex",
    "start_revision",
}
V3_OPAQUE_FIELDS = {
    "cluster_id",
    "member_id",
    "raft_term",
    "dbSize",
    "dbSizeInUse",
    "hash",
    "raftTerm",
    "token",
    "leader",
    "memberID",
    "grantedTTL",
    "blob",
}
_IN_ORDER_KEY = re.compile(r"/(\d{20})$")
_CAUSE_INDEX = re.compile(r"!= (\d+)\]")
_CLEARED = re.compile(r"\[(\d+)/(\d+)\]")


class Labels:
    """Gives each distinct value of a kind a stable name, in order of first appearance."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, Any], str] = {}

    def __call__(self, kind: str, value: Any) -> str:
        key = (kind, str(value))
        name = self.names.get(key)
        if name is None:
            name = self.names[key] = f"<{kind}{sum(1 for k in self.names if k[0] == kind)}>"
        return name


def normalize_v2(doc: Any, labels: Labels) -> Any:
    if isinstance(doc, list):
        if all(isinstance(x, dict) and "key" in x for x in doc):
            doc = sorted(doc, key=lambda x: x["key"])  # etcd lists directories in map order
        return [normalize_v2(x, labels) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for k in sorted(doc):
        v = doc[k]
        if k in V2_INDEX_FIELDS and isinstance(v, int):
            out[k] = labels("I", v) if v else 0
        elif k == "expiration":
            out[k] = "<time>"
        elif k == "ttl":
            out[k] = "<ttl>"
        elif k == "key" and isinstance(v, str):
            m = _IN_ORDER_KEY.search(v)
            out[k] = v[: m.start(1)] + labels("I", int(m.group(1))) if m else v
        elif k == "cause" and isinstance(v, str):
            v = _CAUSE_INDEX.sub(lambda m: "!= " + labels("I", int(m.group(1))) + "]", v)
            out[k] = _CLEARED.sub("[<cleared>]", v)
        else:
            out[k] = normalize_v2(v, labels)
    return out


def normalize_v3(doc: Any, labels: Labels) -> Any:
    if isinstance(doc, list):
        return [normalize_v3(x, labels) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for k in sorted(doc):
        v = doc[k]
        if k in V3_REVISION_FIELDS and isinstance(v, str):
            out[k] = labels("R", v)
        elif k in V3_OPAQUE_FIELDS:
            out[k] = "<" + k + ">"
        elif k == "ID" and isinstance(v, str):
            out[k] = labels("ID", v)
        elif k == "TTL" and isinstance(v, str):
            out[k] = "<ttl>" if v not in ("-1", "0") else v
        elif k in ("peerURLs", "clientURLs") and isinstance(v, list):
            out[k] = [labels("URL", u) for u in v]
        elif k in ("leases", "members") and isinstance(v, list):
            # leases: etcd's map order; members: ID order, and IDs are random per server
            out[k] = sorted((normalize_v3(x, labels) for x in v), key=repr)
        else:
            out[k] = normalize_v3(v, labels)
    return out


@dataclass
class Reply:
    status: int
    content_type: str
    headers: dict[str, str]
    text: str
    body: Any = None  # parsed JSON (or a list of them for streams), else None
    lines: list[Any] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return self.body


def _parse(text: str) -> tuple[Any, list[Any]]:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                lines.append(json.loads(line))
            except ValueError:
                return None, []
    try:
        return json.loads(text), lines
    except ValueError:
        return None, lines


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Reply:
    async with session.request(method, yarl.URL(url, encoded=True), allow_redirects=False, **kw) as r:
        text = (await r.read()).decode("utf-8", "replace")
        body, lines = _parse(text)
        return Reply(r.status, r.content_type, dict(r.headers), text, body, lines)


HEADERS_COMPARED = (
    "Content-Type",
    "X-Etcd-Index",
    "X-Raft-Index",
    "X-Raft-Term",
    "X-Etcd-Cluster-Id",
    "Allow",
    "Access-Control-Allow-Origin",
    "Grpc-Metadata-Content-Type",
    "Location",
)


class Differ:
    """Sends each request to both servers and compares the normalised replies.

    `kw` values may be callables taking the per-server state dict (e.g. to use an index
    that server returned earlier); `state["last"]` is that server's previous reply.
    """

    def __init__(self, ours: str, etcd: str, session: aiohttp.ClientSession, api: str) -> None:
        self.urls = {"ours": ours, "etcd": etcd}
        self.session = session
        self.normalize = normalize_v2 if api == "v2" else normalize_v3
        self.labels = {"ours": Labels(), "etcd": Labels()}
        self.state: dict[str, dict[str, Any]] = {"ours": {}, "etcd": {}}

    def _norm(self, who: str, r: Reply) -> dict[str, Any]:
        lab = self.labels[who]
        hdrs = {}
        for h in HEADERS_COMPARED:
            if h in r.headers:
                v = r.headers[h]
                if h in ("X-Etcd-Index",):
                    v = lab("I", int(v)) if v != "0" else "0"
                elif h in ("X-Raft-Index", "X-Raft-Term", "X-Etcd-Cluster-Id"):
                    v = "<present>"
                hdrs[h] = v
        if r.lines and len(r.lines) > 1:
            body: Any = [self.normalize(x, lab) for x in r.lines]
        elif r.body is not None:
            body = self.normalize(r.body, lab)
        else:
            body = r.text
        return {"status": r.status, "type": r.content_type, "headers": hdrs, "body": body}

    async def one(self, who: str, method: str, path: str, **kw: Any) -> Reply:
        st = self.state[who]
        args = {k: (v(st) if callable(v) else v) for k, v in kw.items()}
        if callable(path):
            path = path(st)
        r = await fetch(self.session, method, self.urls[who] + path, **args)
        st["last"] = r
        return r

    async def both(self, method: str, path: str | Callable[[dict], str], **kw: Any) -> tuple[Reply, Reply]:
        ours = await self.one("ours", method, path, **kw)
        etcd = await self.one("etcd", method, path, **kw)
        return ours, etcd

    async def same(self, method: str, path: str | Callable[[dict], str], **kw: Any) -> Reply:
        """Both replies, normalised, must be equal; returns ours."""
        ours, etcd = await self.both(method, path, **kw)
        a, b = self._norm("ours", ours), self._norm("etcd", etcd)
        assert a == b, f"{method} {path if isinstance(path, str) else '<fn>'} {kw}\nours: {a}\netcd: {b}"
        return ours

    def compare(self, ours: Reply, etcd: Reply, what: str = "") -> None:
        a, b = self._norm("ours", ours), self._norm("etcd", etcd)
        assert a == b, f"{what}\nours: {a}\netcd: {b}"


async def open_stream(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> aiohttp.ClientResponse:
    """Start a long request (a watch); returns once the response headers are in."""
    return await session.request(method, yarl.URL(url, encoded=True), allow_redirects=False, **kw)


async def read_lines(resp: aiohttp.ClientResponse, n: int, timeout: float = 10.0) -> list[Any]:
    """The next n JSON lines of a streaming response."""
    import asyncio

    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            line = await resp.content.readline()
            if not line:
                break
            if line.strip():
                out.append(json.loads(line))
    return out


async def finish(resp: aiohttp.ClientResponse, timeout: float = 10.0) -> Reply:
    """Read a long request to its end."""
    import asyncio

    async with asyncio.timeout(timeout):
        text = (await resp.read()).decode("utf-8", "replace")
    resp.release()
    body, lines = _parse(text)
    return Reply(resp.status, resp.content_type, dict(resp.headers), text, body, lines)
