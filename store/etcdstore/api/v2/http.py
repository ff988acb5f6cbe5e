"""The v2 HTTP API on the client port (etcd 3.4 with --enable-v2): /v2/keys, /v2/members,
/v2/machines, /v2/stats/{self,leader,store}. Without --enable-v2 every /v2 path is Go's 404.

Requests are parsed as etcd's v2http does (form values from the body, then the query string;
Go's strconv rules for numbers and booleans; its checks in its order) and answered with its
bodies, statuses and headers (X-Etcd-Cluster-Id, X-Etcd-Index, X-Raft-Index, X-Raft-Term).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from etcdstore import errors
from etcdstore.api.v2 import errors as v2e
from etcdstore.api.v2.errors import V2Error
from etcdstore.api.v2.gohttp import client_gone, unclean_path_redirect
from etcdstore.api.v2.gojson import GoJSONError, decode_whole, dumps, kind_of
from etcdstore.api.v2.nodes import format_time
from etcdstore.api.v2.store import Result, V2Store
from etcdstore.api.v2.watch import Watcher
from etcdstore.config import parse_url
from etcdstore.membership import Member, member_id
from etcdstore.raft.records import ConfChangeType, Role

KEYS_PREFIX = "/v2/keys"
_MAX_FORM = 10 << 20  # Go's limit on a url-encoded body


# -- Go's request parsing ----------------------------------------------------------------------------


class FormError(ValueError):
    pass


def _unescape(s: str) -> str:
    """url.QueryUnescape: '+' is a space, %XX must be two hex digits."""
    if "%" in s:
        i = s.find("%")
        while i != -1:
            part = s[i : i + 3]
            if len(part) < 3 or not all(c in "0123456789abcdefABCDEF" for c in part[1:]):
                raise FormError(f'invalid URL escape "{part}"')
            i = s.find("%", i + 3)
    return unquote(s.replace("+", " "), errors="surrogateescape")


def parse_query(query: str, into: dict[str, list[str]]) -> str | None:
    """url.ParseQuery (Go 1.17+): values appended to `into`; returns the first error text."""
    first = None
    for part in query.split("&"):
        if not part:
            continue
        if ";" in part:
            first = first or "invalid semicolon separator in query"
            continue
        key, _, value = part.partition("=")
        try:
            k = _unescape(key)
            v = _unescape(value)
        except FormError as e:
            first = first or str(e)
            continue
        into.setdefault(k, []).append(v)
    return first


async def read_form(request: web.Request) -> dict[str, list[str]]:
    """r.ParseForm: a url-encoded body (POST/PUT/PATCH) first, then the query string."""
    form: dict[str, list[str]] = {}
    err = None
    if request.method in ("POST", "PUT", "PATCH"):
        ctype = (
            request.headers.get("Content-Type", "application/octet-stream").split(";", 1)[0].strip().lower()
        )
        if ctype == "application/x-www-form-urlencoded":
            body = await request.content.read(_MAX_FORM + 1)
            if len(body) > _MAX_FORM:
                err = "http: POST too large"
            else:
                err = parse_query(body.decode("latin-1"), form)
    raw_query = request.raw_path.partition("?")[2]
    qerr = parse_query(raw_query, form)
    err = err or qerr
    if err:
        raise V2Error(v2e.INVALID_FORM, err)
    return form


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _bool(form: dict[str, list[str]], key: str, cause: str | None = None) -> bool:
    vals = form.get(key)
    if not vals:
        return False
    v = vals[0]
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise V2Error(v2e.INVALID_FIELD, cause or f'invalid value for "{key}"')


def _uint(form: dict[str, list[str]], key: str, code: int, cause: str | None = None) -> int:
    vals = form.get(key)
    if not vals:
        return 0
    v = vals[0]
    if not v.isascii() or not v.isdigit() or int(v) >= 1 << 64:
        raise V2Error(code, cause or f'invalid value for "{key}"')
    return int(v)


def _first(form: dict[str, list[str]], key: str) -> str:
    vals = form.get(key)
    return vals[0] if vals else ""


def go_clean(p: str) -> str:
    """Go's path.Clean."""
    if not p:
        return "."
    rooted = p.startswith("/")
    out: list[str] = []
    for part in p.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    s = "/".join(out)
    if rooted:
        return "/" + s
    return s or "."


class KeyRequest:
    __slots__ = (
        "dir",
        "expire",
        "method",
        "no_value_on_success",
        "path",
        "prev_exist",
        "prev_index",
        "prev_value",
        "quorum",
        "recursive",
        "refresh",
        "since",
        "sorted",
        "stream",
        "value",
        "wait",
    )


def parse_key_request(method: str, url_path: str, form: dict[str, list[str]]) -> KeyRequest:
    """etcd's parseKeyRequest, check for check."""
    r = KeyRequest()
    r.method = method
    r.path = go_clean("/" + url_path[len(KEYS_PREFIX) :])
    r.prev_index = _uint(form, "prevIndex", v2e.INDEX_NAN)
    r.since = _uint(form, "waitIndex", v2e.INDEX_NAN)
    r.recursive = _bool(form, "recursive")
    r.sorted = _bool(form, "sorted")
    r.wait = _bool(form, "wait")
    r.dir = _bool(form, "dir")
    r.quorum = _bool(form, "quorum")
    r.stream = _bool(form, "stream")
    if r.wait and method != "GET":
        raise V2Error(v2e.INVALID_FIELD, '"wait" can only be used with GET requests')
    r.prev_value = _first(form, "prevValue")
    if "prevValue" in form and r.prev_value == "":
        raise V2Error(v2e.PREV_VALUE_REQUIRED, '"prevValue" cannot be empty')
    r.no_value_on_success = _bool(form, "noValueOnSuccess")
    ttl = None
    if _first(form, "ttl"):
        ttl = _uint(form, "ttl", v2e.TTL_NAN)
    r.prev_exist = None
    if "prevExist" in form:
        r.prev_exist = _bool(form, "prevExist", "invalid value for prevExist")
    r.refresh = False
    if "refresh" in form:
        r.refresh = _bool(form, "refresh", "invalid value for refresh")
        if r.refresh:
            if "value" in form and _first(form, "value") != "":
                raise V2Error(v2e.REFRESH_VALUE, "A value was provided on a refresh")
            if ttl is None:
                raise V2Error(v2e.REFRESH_TTL_REQUIRED, "No TTL value set")
    r.value = _first(form, "value")
    r.expire = None if ttl is None else time.time_ns() + ttl * 1_000_000_000
    return r


# -- responses -----------------------------------------------------------------------------------------


def go_not_found() -> web.Response:
    return _go_text(404, "404 page not found")


def _go_text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    h = {"X-Content-Type-Options": "nosniff"}
    if headers:
        h.update(headers)
    return web.Response(
        status=status, text=text + "\n", content_type="text/plain", charset="utf-8", headers=h
    )


def _not_allowed(methods: str) -> web.Response:
    return _go_text(405, "Method Not Allowed", {"Allow": methods})


def json_response(
    doc: Any, status: int = 200, headers: dict[str, str] | None = None, newline: bool = False
) -> web.Response:
    """application/json exactly (no charset parameter, as etcd sends it)."""
    h = {"Content-Type": "application/json"}
    if headers:
        h.update(headers)
    body = dumps(doc) + ("\n" if newline else "")
    return web.Response(status=status, body=body.encode(), headers=h)


def _json(status: int, doc: Any, headers: dict[str, str]) -> web.Response:
    # Go's json.Encoder ends each document with a newline.
    return json_response(doc, status, headers, newline=True)


def _http_error(status: int, message: str, headers: dict[str, str]) -> web.Response:
    # etcd's httptypes.HTTPError: {"message": ...} without a trailing newline.
    return json_response({"message": message}, status, headers)


def _v2_error(e: V2Error, headers: dict[str, str]) -> web.Response:
    h = dict(headers)
    h["X-Etcd-Index"] = str(e.index)
    return _json(e.status, e.to_dict(), h)


_TRIMMED_ACTIONS = ("set", "compareAndSwap", "create", "update")


class V2API:
    def __init__(self, server: Any) -> None:
        self.s = server
        self.store = V2Store(server)
        self.watcher = Watcher(server, self.store.stats)
        self.started = time.time_ns()
        self._leader_seen: tuple[int, int] = (0, 0)  # (leader ID, when this member first saw it)

    def _note_leader(self) -> None:
        leader = self.s.leader_id
        if self._leader_seen[0] != leader:
            self._leader_seen = (leader, time.time_ns())

    async def track_leader(self) -> None:
        """Notes when this member first saw each leader (/v2/stats/self reports its uptime)."""
        while True:
            self._note_leader()
            await asyncio.sleep(0.1)

    def _cluster_header(self) -> dict[str, str]:
        return {"X-Etcd-Cluster-Id": f"{self.s.cluster_id:x}"}

    def _raft_headers(self, index: int) -> dict[str, str]:
        h = self._cluster_header()
        h["X-Etcd-Index"] = str(index)
        h["X-Raft-Index"] = str(self.s.applied_index)
        h["X-Raft-Term"] = str(self.s.term)
        return h

    # -- /v2/keys ---------------------------------------------------------------------------------

    async def keys(self, request: web.Request) -> web.StreamResponse:
        redirect = unclean_path_redirect(request)
        if redirect is not None:
            return redirect
        method = request.method
        if method not in ("HEAD", "GET", "PUT", "POST", "DELETE"):
            return _not_allowed("HEAD,GET,PUT,POST,DELETE")
        hdr = self._cluster_header()
        try:
            form = await read_form(request)
            r = parse_key_request(method, request.path, form)
            if method == "GET" and r.wait and not r.quorum:
                return await self._watch(request, r)
            result = await self._do(r)
        except V2Error as e:
            return _v2_error(e, hdr)
        ev = result.event
        if r.no_value_on_success and ev.get("action") in _TRIMMED_ACTIONS:
            ev = {"action": ev["action"]}
        status = 201 if result.created else 200
        resp = _json(status, ev, self._raft_headers(result.index))
        return resp

    async def _do(self, r: KeyRequest) -> Result:
        st = self.store
        m = r.method
        if m in ("GET", "HEAD"):
            return await st.get(r.path, r.recursive, r.sorted, r.quorum and m == "GET")
        if m == "POST":
            return await st.create(r.path, r.dir, r.value, True, r.expire)
        if m == "DELETE":
            if r.prev_index > 0 or r.prev_value:
                return await st.compare_and_delete(r.path, r.prev_value, r.prev_index)
            return await st.delete(r.path, r.dir, r.recursive)
        # PUT, as etcd's applierV2store.Put
        if r.prev_exist is not None:
            if r.prev_exist:
                if r.prev_index == 0 and r.prev_value == "":
                    return await st.update(r.path, r.value, r.expire, r.refresh)
                return await st.compare_and_swap(
                    r.path, r.prev_value, r.prev_index, r.value, r.expire, r.refresh
                )
            return await st.create(r.path, r.dir, r.value, False, r.expire)
        if r.prev_index > 0 or r.prev_value:
            return await st.compare_and_swap(r.path, r.prev_value, r.prev_index, r.value, r.expire, r.refresh)
        return await st.set(r.path, r.dir, r.value, r.expire, r.refresh)

    async def _watch(self, request: web.Request, r: KeyRequest) -> web.StreamResponse:
        index, since = self.watcher.start(r.since)
        resp = web.StreamResponse(status=200, headers=self._raft_headers(index))
        resp.content_type = "application/json"
        await resp.prepare(request)  # headers go out at once (long polling clients wait on them)
        events = self.watcher.events(r.path, r.recursive, since)
        gone = client_gone(request)
        try:
            while True:
                nxt = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break
                try:
                    doc = nxt.result()
                except StopAsyncIteration:
                    break
                try:
                    await resp.write(dumps(doc).encode() + b"\n")
                except ConnectionError:
                    break
                if not r.stream:
                    break
        finally:
            gone.cancel()
            await events.aclose()
        try:
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    # -- /v2/members ------------------------------------------------------------------------------

    def _member_doc(self, m: Member) -> dict[str, Any]:
        return {
            "id": f"{m.id:x}",
            "name": m.name,
            "peerURLs": list(m.peer_urls),
            "clientURLs": list(m.client_urls),
        }

    async def members(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method not in ("GET", "POST", "DELETE", "PUT"):
            return _not_allowed("GET,POST,DELETE,PUT")
        s = self.s
        hdr = self._cluster_header()
        sub = request.path[len("/v2/members") :].lstrip("/")
        if method == "GET":
            if sub == "":
                docs = [self._member_doc(m) for m in s.membership.sorted_members()]
                return _json(200, {"members": docs}, hdr)
            if sub == "leader":
                m = s.membership.get(s.leader_id) if s.leader_id else None
                if m is None:
                    return _http_error(503, "During election", hdr)
                return _json(200, self._member_doc(m), hdr)
            return _http_error(404, "Not found", hdr)
        if method == "POST":
            urls = await self._peer_urls(request, hdr)
            if isinstance(urls, web.Response):
                return urls
            return await self._add_member(urls, hdr)
        if sub == "":
            return _go_text(405, "Method Not Allowed", hdr)
        try:
            mid = int(sub, 16)
            if not 0 <= mid < 1 << 64:
                raise ValueError
        except ValueError:
            return _http_error(404, f"No such member: {sub}", hdr)
        if method == "DELETE":
            return await self._remove_member(mid, hdr)
        urls = await self._peer_urls(request, hdr)
        if isinstance(urls, web.Response):
            return urls
        return await self._update_member(mid, urls, hdr)

    async def _peer_urls(self, request: web.Request, hdr: dict[str, str]) -> list[str] | web.Response:
        ctype = request.headers.get("Content-Type", "")
        if ";" in ctype:
            ctype = ctype[: ctype.index(";")].lower().strip()
        if ctype != "application/json":
            return _http_error(415, f"Bad Content-Type {ctype}, accept application/json", hdr)
        body = (await request.read()).decode("utf-8", "replace")
        try:
            doc = decode_whole(body)
            raw = _case_insensitive(doc, "peerURLs") if isinstance(doc, dict) else None
            if doc is not None and not isinstance(doc, dict):
                raise GoJSONError(
                    f"json: cannot unmarshal {kind_of(doc)} into Go value of type "
                    'struct { PeerURLs []string "json:\\"peerURLs\\"" }'
                )
            urls = [] if raw is None else raw
            if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                raise GoJSONError("json: cannot unmarshal into Go struct field .peerURLs of type []string")
            return sorted(str(parse_url(u)) for u in urls)
        except (GoJSONError, ValueError) as e:
            return _http_error(400, str(e), hdr)

    async def _add_member(self, urls: list[str], hdr: dict[str, str]) -> web.Response:
        s = self.s
        mid = member_id(urls, "", int(time.time()))
        member = Member(id=mid, peer_urls=urls)
        try:
            s.membership.check_add(member)
            s.check_can_add_voter()
            await s.propose_conf_change(ConfChangeType.ADD_NODE, member)
        except errors.EtcdError as e:
            if e in (errors.MEMBER_EXIST, errors.PEER_URL_EXIST):
                return _http_error(409, _MEMBERSHIP_TEXT.get(e, e.message), hdr)
            return _http_error(500, "Internal Server Error", hdr)
        return _json(201, self._member_doc(member), hdr)

    async def _remove_member(self, mid: int, hdr: dict[str, str]) -> web.Response:
        s = self.s
        try:
            s.check_can_remove(mid)
            s.membership.check_remove(mid)
            await s.propose_conf_change(ConfChangeType.REMOVE_NODE, Member(id=mid))
        except errors.EtcdError as e:
            if e == errors.MEMBER_NOT_FOUND:
                if mid in s.membership.removed:
                    return _http_error(410, f"Member permanently removed: {mid:x}", hdr)
                return _http_error(404, f"No such member: {mid:x}", hdr)
            return _http_error(500, "Internal Server Error", hdr)
        return web.Response(status=204, headers=hdr)

    async def _update_member(self, mid: int, urls: list[str], hdr: dict[str, str]) -> web.Response:
        s = self.s
        current = s.membership.get(mid)
        try:
            s.membership.check_update(mid, urls)
            member = Member(
                id=mid,
                name=current.name if current else "",
                peer_urls=urls,
                client_urls=current.client_urls if current else [],
                is_learner=current.is_learner if current else False,
            )
            await s.propose_conf_change(ConfChangeType.UPDATE_NODE, member)
        except errors.EtcdError as e:
            if e == errors.PEER_URL_EXIST:
                return _http_error(409, _MEMBERSHIP_TEXT[e], hdr)
            if e == errors.MEMBER_NOT_FOUND:
                return _http_error(404, f"No such member: {mid:x}", hdr)
            return _http_error(500, "Internal Server Error", hdr)
        return web.Response(status=204, headers=hdr)

    # -- /v2/machines, /v2/stats ----------------------------------------------------------------------

    async def machines(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET,HEAD")
        urls = sorted(u for m in self.s.membership.sorted_members() for u in m.client_urls)
        return web.Response(text=", ".join(urls), content_type="text/plain", charset="utf-8")

    async def stats_store(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _not_allowed("GET")
        return json_response(self.store.stats.to_dict())

    async def stats_self(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _not_allowed("GET")
        s = self.s
        self._note_leader()
        leader, since = self._leader_seen
        doc = {
            "name": s.cfg.name,
            "id": f"{s.member_id:x}",
            "state": _STATES.get(s.role, "StateFollower"),
            "startTime": format_time(self.started),
            "leaderInfo": {
                "leader": f"{leader:x}" if leader else "",
                "uptime": go_duration(time.time_ns() - since),
                "startTime": format_time(since),
            },
            # Raft append counters are not tracked by this implementation.
            "recvAppendRequestCnt": 0,
            "sendAppendRequestCnt": 0,
        }
        return json_response(doc)

    async def stats_leader(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _not_allowed("GET")
        s = self.s
        if not s.is_leader:
            return _http_error(403, "not current leader", {})
        followers = {
            f"{mid:x}": {
                "latency": {
                    "current": 0,
                    "average": 0,
                    "standardDeviation": 0,
                    "minimum": 9223372036854776000,
                    "maximum": 0,
                },
                "counts": {"fail": 0, "success": 0},
            }
            for mid in sorted(s.membership.members)
            if mid != s.member_id
        }
        return json_response({"leader": f"{s.member_id:x}", "followers": followers})


_STATES = {
    Role.LEADER: "StateLeader",
    Role.FOLLOWER: "StateFollower",
    Role.CANDIDATE: "StateCandidate",
    Role.PRE_CANDIDATE: "StatePreCandidate",
}
_MEMBERSHIP_TEXT = {
    errors.MEMBER_EXIST: "membership: ID exists",
    errors.PEER_URL_EXIST: "membership: peerURL exists",
}


def _case_insensitive(doc: dict, name: str) -> Any:
    """Go's json matches struct fields case-insensitively (exact match preferred)."""
    if name in doc:
        return doc[name]
    low = name.lower()
    for k, v in doc.items():
        if k.lower() == low:
            return v
    return None


def go_duration(ns: int) -> str:
    """Go's time.Duration.String for a non-negative duration, e.g. "6m18.334215065s"."""
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _frac(ns, 1_000) + "µs"
    if ns < 1_000_000_000:
        return _frac(ns, 1_000_000) + "ms"
    h, rem = divmod(ns, 3600 * 1_000_000_000)
    m, rem = divmod(rem, 60 * 1_000_000_000)
    out = ""
    if h:
        out += f"{h}h"
    if h or m:
        out += f"{m}m"
    return out + _frac(rem, 1_000_000_000) + "s"


def _frac(v: int, unit: int) -> str:
    whole, frac = divmod(v, unit)
    digits = len(str(unit)) - 1
    f = f"{frac:0{digits}d}".rstrip("0")
    return f"{whole}.{f}" if f else str(whole)


def add_v2_routes(app: web.Application, server: Any, enabled: bool) -> V2API | None:
    """Mount the v2 API (or, without --enable-v2, Go's 404 for every /v2 path)."""
    if not enabled:

        async def not_found(request: web.Request) -> web.Response:
            return go_not_found()

        app.router.add_route("*", "/v2/{tail:.*}", not_found)
        return None
    api = V2API(server)
    app.router.add_route("*", KEYS_PREFIX, api.keys)
    app.router.add_route("*", KEYS_PREFIX + "/{tail:.*}", api.keys)
    app.router.add_route("*", "/v2/members", api.members)
    app.router.add_route("*", "/v2/members/{tail:.*}", api.members)
    app.router.add_route("*", "/v2/machines", api.machines)
    app.router.add_route("*", "/v2/stats/store", api.stats_store)
    app.router.add_route("*", "/v2/stats/self", api.stats_self)
    app.router.add_route("*", "/v2/stats/leader", api.stats_leader)
    tasks: list[asyncio.Task] = []

    async def start(_: web.Application) -> None:
        tasks.append(asyncio.get_running_loop().create_task(api.track_leader()))

    async def stop(_: web.Application) -> None:
        for t in tasks:
            t.cancel()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    async def not_found(request: web.Request) -> web.Response:
        return go_not_found()

    app.router.add_route("*", "/v2/{tail:.*}", not_found)
    return api
