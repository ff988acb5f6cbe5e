"""etcd's JSON gateway (grpc-gateway v1.9 as etcd 3.4 serves it) on the client port.

Every `POST /v3/...` route of etcd's rpc.proto, v3lock.proto and v3election.proto is served
by calling the member's gRPC method handlers in-process, with the servicer context the client
gRPC server gives them (`api.h2.CallContext`), so authentication, errors and semantics are the
gRPC ones. (etcd's gateway dials its own gRPC port; ours opens no socket: a private listener would
be one no flag declares and no TLS rule guards.) `/v3beta/...` is an alias of `/v3/...`.

JSON mapping (Go's jsonpb with OrigName): proto field names, int64/uint64 as strings, bytes
as standard base64, enums by name, default values omitted. Request bodies are read with Go's
rules: the first JSON value only, unknown fields ignored, field names or their camelCase
forms, numbers or strings for integers; bad input is answered with Go's error text.

Responses: unary -> the message (200) or `{"error","message","code"}` with the HTTP status
grpc-gateway maps the gRPC code to; streams (watch, lease keepalive, snapshot, observe) ->
newline-delimited `{"result": ...}` objects, a failure as `{"error": {grpc_code, http_code,
message, http_status}}`. The `Authorization` header carries the auth token; headers named
`Grpc-Metadata-*` become gRPC metadata; `Grpc-Timeout` sets the call deadline.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
from aiohttp import web
from google.protobuf import descriptor as _d
from google.protobuf.message import Message

from etcdstore.api.h2 import CallContext, Router, certificate_cn
from etcdstore.api.h2.calls import end_status, error_status, handler_function, unknown_method_message
from etcdstore.api.v2.gohttp import client_gone, unclean_path_redirect
from etcdstore.api.v2.gojson import GoJSONError, b64decode, decode_one, decode_whole, dumps, kind_of
from etcdstore.logs import get_logger
from etcdstore.proto.etcdserverpb import rpc_pb2 as pb
from etcdstore.proto.v3electionpb import v3election_pb2 as epb
from etcdstore.proto.v3lockpb import v3lock_pb2 as lpb

log = get_logger("etcdstore.gateway")

UNARY, SERVER_STREAM, BIDI = 0, 1, 2


class Route(NamedTuple):
    method: str  # the gRPC method path
    request: type[Message]
    response: type[Message]
    kind: int


def _routes() -> dict[str, Route]:
    kv, lease, cluster, maint, auth = (
        "etcdserverpb." + s for s in ("KV", "Lease", "Cluster", "Maintenance", "Auth")
    )
    table: list[tuple[str, str, str, type, type, int]] = [
        ("/v3/kv/range", kv, "Range", pb.RangeRequest, pb.RangeResponse, UNARY),
        ("/v3/kv/put", kv, "Put", pb.PutRequest, pb.PutResponse, UNARY),
        ("/v3/kv/deleterange", kv, "DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse, UNARY),
        ("/v3/kv/txn", kv, "Txn", pb.TxnRequest, pb.TxnResponse, UNARY),
        ("/v3/kv/compaction", kv, "Compact", pb.CompactionRequest, pb.CompactionResponse, UNARY),
        ("/v3/watch", "etcdserverpb.Watch", "Watch", pb.WatchRequest, pb.WatchResponse, BIDI),
        ("/v3/lease/grant", lease, "LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse, UNARY),
        ("/v3/lease/revoke", lease, "LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse, UNARY),
        ("/v3/kv/lease/revoke", lease, "LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse, UNARY),
        (
            "/v3/lease/keepalive",
            lease,
            "LeaseKeepAlive",
            pb.LeaseKeepAliveRequest,
            pb.LeaseKeepAliveResponse,
            BIDI,
        ),
        (
            "/v3/lease/timetolive",
            lease,
            "LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest,
            pb.LeaseTimeToLiveResponse,
            UNARY,
        ),
        (
            "/v3/kv/lease/timetolive",
            lease,
            "LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest,
            pb.LeaseTimeToLiveResponse,
            UNARY,
        ),
        ("/v3/lease/leases", lease, "LeaseLeases", pb.LeaseLeasesRequest, pb.LeaseLeasesResponse, UNARY),
        ("/v3/kv/lease/leases", lease, "LeaseLeases", pb.LeaseLeasesRequest, pb.LeaseLeasesResponse, UNARY),
        ("/v3/cluster/member/add", cluster, "MemberAdd", pb.MemberAddRequest, pb.MemberAddResponse, UNARY),
        (
            "/v3/cluster/member/remove",
            cluster,
            "MemberRemove",
            pb.MemberRemoveRequest,
            pb.MemberRemoveResponse,
            UNARY,
        ),
        (
            "/v3/cluster/member/update",
            cluster,
            "MemberUpdate",
            pb.MemberUpdateRequest,
            pb.MemberUpdateResponse,
            UNARY,
        ),
        (
            "/v3/cluster/member/list",
            cluster,
            "MemberList",
            pb.MemberListRequest,
            pb.MemberListResponse,
            UNARY,
        ),
        (
            "/v3/cluster/member/promote",
            cluster,
            "MemberPromote",
            pb.MemberPromoteRequest,
            pb.MemberPromoteResponse,
            UNARY,
        ),
        ("/v3/maintenance/alarm", maint, "Alarm", pb.AlarmRequest, pb.AlarmResponse, UNARY),
        ("/v3/maintenance/status", maint, "Status", pb.StatusRequest, pb.StatusResponse, UNARY),
        (
            "/v3/maintenance/defragment",
            maint,
            "Defragment",
            pb.DefragmentRequest,
            pb.DefragmentResponse,
            UNARY,
        ),
        # Hash and HashKV share this path in rpc.proto; grpc-gateway matches the first, Hash.
        ("/v3/maintenance/hash", maint, "Hash", pb.HashRequest, pb.HashResponse, UNARY),
        (
            "/v3/maintenance/snapshot",
            maint,
            "Snapshot",
            pb.SnapshotRequest,
            pb.SnapshotResponse,
            SERVER_STREAM,
        ),
        (
            "/v3/maintenance/transfer-leadership",
            maint,
            "MoveLeader",
            pb.MoveLeaderRequest,
            pb.MoveLeaderResponse,
            UNARY,
        ),
        ("/v3/auth/enable", auth, "AuthEnable", pb.AuthEnableRequest, pb.AuthEnableResponse, UNARY),
        ("/v3/auth/disable", auth, "AuthDisable", pb.AuthDisableRequest, pb.AuthDisableResponse, UNARY),
        (
            "/v3/auth/authenticate",
            auth,
            "Authenticate",
            pb.AuthenticateRequest,
            pb.AuthenticateResponse,
            UNARY,
        ),
        ("/v3/auth/user/add", auth, "UserAdd", pb.AuthUserAddRequest, pb.AuthUserAddResponse, UNARY),
        ("/v3/auth/user/get", auth, "UserGet", pb.AuthUserGetRequest, pb.AuthUserGetResponse, UNARY),
        ("/v3/auth/user/list", auth, "UserList", pb.AuthUserListRequest, pb.AuthUserListResponse, UNARY),
        (
            "/v3/auth/user/delete",
            auth,
            "UserDelete",
            pb.AuthUserDeleteRequest,
            pb.AuthUserDeleteResponse,
            UNARY,
        ),
        (
            "/v3/auth/user/changepw",
            auth,
            "UserChangePassword",
            pb.AuthUserChangePasswordRequest,
            pb.AuthUserChangePasswordResponse,
            UNARY,
        ),
        (
            "/v3/auth/user/grant",
            auth,
            "UserGrantRole",
            pb.AuthUserGrantRoleRequest,
            pb.AuthUserGrantRoleResponse,
            UNARY,
        ),
        (
            "/v3/auth/user/revoke",
            auth,
            "UserRevokeRole",
            pb.AuthUserRevokeRoleRequest,
            pb.AuthUserRevokeRoleResponse,
            UNARY,
        ),
        ("/v3/auth/role/add", auth, "RoleAdd", pb.AuthRoleAddRequest, pb.AuthRoleAddResponse, UNARY),
        ("/v3/auth/role/get", auth, "RoleGet", pb.AuthRoleGetRequest, pb.AuthRoleGetResponse, UNARY),
        ("/v3/auth/role/list", auth, "RoleList", pb.AuthRoleListRequest, pb.AuthRoleListResponse, UNARY),
        (
            "/v3/auth/role/delete",
            auth,
            "RoleDelete",
            pb.AuthRoleDeleteRequest,
            pb.AuthRoleDeleteResponse,
            UNARY,
        ),
        (
            "/v3/auth/role/grant",
            auth,
            "RoleGrantPermission",
            pb.AuthRoleGrantPermissionRequest,
            pb.AuthRoleGrantPermissionResponse,
            UNARY,
        ),
        (
            "/v3/auth/role/revoke",
            auth,
            "RoleRevokePermission",
            pb.AuthRoleRevokePermissionRequest,
            pb.AuthRoleRevokePermissionResponse,
            UNARY,
        ),
        ("/v3/lock/lock", "v3lockpb.Lock", "Lock", lpb.LockRequest, lpb.LockResponse, UNARY),
        ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock", lpb.UnlockRequest, lpb.UnlockResponse, UNARY),
        (
            "/v3/election/campaign",
            "v3electionpb.Election",
            "Campaign",
            epb.CampaignRequest,
            epb.CampaignResponse,
            UNARY,
        ),
        (
            "/v3/election/proclaim",
            "v3electionpb.Election",
            "Proclaim",
            epb.ProclaimRequest,
            epb.ProclaimResponse,
            UNARY,
        ),
        (
            "/v3/election/leader",
            "v3electionpb.Election",
            "Leader",
            epb.LeaderRequest,
            epb.LeaderResponse,
            UNARY,
        ),
        (
            "/v3/election/observe",
            "v3electionpb.Election",
            "Observe",
            epb.LeaderRequest,
            epb.LeaderResponse,
            SERVER_STREAM,
        ),
        (
            "/v3/election/resign",
            "v3electionpb.Election",
            "Resign",
            epb.ResignRequest,
            epb.ResignResponse,
            UNARY,
        ),
    ]
    return {path: Route(f"/{svc}/{m}", req, resp, kind) for path, svc, m, req, resp, kind in table}


ROUTES = _routes()

# grpc-gateway's HTTPStatusFromCode (v1.9).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# grpc-core words a too-large message differently from grpc-go; clients see grpc-go's text.
_TOO_LARGE = re.compile(r"[Rr]eceived message larger than max \((\d+) vs\. (\d+)\)")
# Bodies beyond this are refused before decoding (etcd's own gRPC limit refuses them anyway).
_MAX_BODY = 256 * 1024 * 1024


# -- JSON <-> protobuf (Go's jsonpb, OrigName, EmitDefaults off) ----------------------------------------

_INT64 = {_d.FieldDescriptor.TYPE_INT64, _d.FieldDescriptor.TYPE_SINT64, _d.FieldDescriptor.TYPE_SFIXED64}
_UINT64 = {_d.FieldDescriptor.TYPE_UINT64, _d.FieldDescriptor.TYPE_FIXED64}
_INT32 = {_d.FieldDescriptor.TYPE_INT32, _d.FieldDescriptor.TYPE_SINT32, _d.FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {_d.FieldDescriptor.TYPE_UINT32, _d.FieldDescriptor.TYPE_FIXED32}
_INT_RANGE = {
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
}


def _int_kind(fd: _d.FieldDescriptor) -> str | None:
    t = fd.type
    if t in _INT64:
        return "int64"
    if t in _UINT64:
        return "uint64"
    if t in _INT32:
        return "int32"
    if t in _UINT32:
        return "uint32"
    return None


def _go_enum_name(enum: _d.EnumDescriptor) -> str:
    """The Go type name of a proto enum: package.Outer_Inner (what jsonpb's errors name)."""
    pkg = enum.file.package
    return pkg + "." + enum.full_name[len(pkg) + 1 :].replace(".", "_")


def _type_error(value: Any, go_type: str) -> GoJSONError:
    return GoJSONError(f"json: cannot unmarshal {kind_of(value)} into Go value of type {go_type}")


def _to_int(value: Any, kind: str) -> int:
    """A JSON number, or a string holding one, as jsonpb reads integer fields."""
    if isinstance(value, str):
        # jsonpb strips the quotes and decodes what is inside as JSON.
        inner = decode_whole(value)
        if isinstance(inner, str):
            raise _type_error(inner, kind)
        value = inner
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, kind)
    lo, hi = _INT_RANGE[kind]
    if isinstance(value, float) or not lo <= value <= hi:
        literal = getattr(value, "literal", None) or str(value)
        raise GoJSONError(f"json: cannot unmarshal number {literal} into Go value of type {kind}")
    return value


def _fill(msg: Message, obj: Any) -> None:
    if not isinstance(obj, dict):
        raise _type_error(obj, "map[string]json.RawMessage")
    # jsonpb walks the message's fields in order (so the first bad field decides the error).
    for fd in msg.DESCRIPTOR.fields:
        if fd.name in obj:
            raw = obj[fd.name]
        elif fd.json_name in obj:
            raw = obj[fd.json_name]
        else:
            continue
        if raw is None:
            continue
        if fd.is_repeated:
            if not isinstance(raw, list):
                raise _type_error(raw, "[]json.RawMessage")
            target = getattr(msg, fd.name)
            for item in raw:
                if fd.type == _d.FieldDescriptor.TYPE_MESSAGE:
                    _fill(target.add(), {} if item is None else item)
                elif item is not None:
                    target.append(_scalar(fd, item))
        elif fd.type == _d.FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            sub.SetInParent()
            _fill(sub, raw)
        else:
            setattr(msg, fd.name, _scalar(fd, raw))


def _scalar(fd: _d.FieldDescriptor, raw: Any) -> Any:
    t = fd.type
    if t == _d.FieldDescriptor.TYPE_BYTES:
        if not isinstance(raw, str):
            raise _type_error(raw, "[]uint8")
        return b64decode(raw)
    if t == _d.FieldDescriptor.TYPE_STRING:
        if not isinstance(raw, str):
            raise _type_error(raw, "string")
        return raw
    if t == _d.FieldDescriptor.TYPE_BOOL:
        if not isinstance(raw, bool):
            raise _type_error(raw, "bool")
        return raw
    if t == _d.FieldDescriptor.TYPE_ENUM:
        go_name = _go_enum_name(fd.enum_type)
        if isinstance(raw, str):
            v = fd.enum_type.values_by_name.get(raw)
            if v is None:
                raise GoJSONError(f'unknown value "{raw}" for enum {go_name}')
            return v.number
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise _type_error(raw, go_name)
        if isinstance(raw, float) or not -(1 << 31) <= raw < (1 << 31):
            raise GoJSONError(
                f"json: cannot unmarshal number {getattr(raw, 'literal', raw)} into Go value of type "
                f"{go_name}"
            )
        return raw
    kind = _int_kind(fd)
    if kind is not None:
        return _to_int(raw, kind)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise _type_error(raw, "float64")
    return float(raw)


def decode_message(cls: type[Message], value: Any) -> Message:
    """A request message from a decoded JSON value (jsonpb's Unmarshal); GoJSONError if refused."""
    msg = cls()
    if value is not None:
        _fill(msg, value)
    return msg


_Conv = Callable[[Any], Any]
_CONVERTERS: dict[_d.FieldDescriptor, tuple[str, _Conv, bool]] = {}


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


def _converter(fd: _d.FieldDescriptor) -> tuple[str, _Conv, bool]:
    conv = _CONVERTERS.get(fd)
    if conv is not None:
        return conv
    t = fd.type
    fn: _Conv
    if t == _d.FieldDescriptor.TYPE_MESSAGE:
        fn = message_to_dict
    elif t == _d.FieldDescriptor.TYPE_BYTES:
        fn = _b64
    elif t == _d.FieldDescriptor.TYPE_ENUM:
        values = fd.enum_type.values_by_number

        def fn(v: int, values: Any = values) -> Any:
            ev = values.get(v)
            return ev.name if ev is not None else v
    elif t in _INT64 or t in _UINT64:
        fn = str
    else:
        fn = _identity
    conv = (fd.name, fn, fd.is_repeated)
    _CONVERTERS[fd] = conv
    return conv


def _identity(v: Any) -> Any:
    return v


def message_to_dict(msg: Message) -> dict[str, Any]:
    """jsonpb's marshalling: set (non-default) fields in field-number order."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        name, fn, repeated = _converter(fd)
        out[name] = [fn(v) for v in value] if repeated else fn(value)
    return out


# -- HTTP side ------------------------------------------------------------------------------------------

_JSON = "application/json"
_UNARY_HEADERS = {"Content-Type": _JSON, "Grpc-Metadata-Content-Type": "application/grpc"}


def _grpc_error_body(code: grpc.StatusCode, message: str) -> tuple[int, str]:
    message = _go_message(code, message)
    body = dumps({"error": message, "message": message, "code": code.value[0]})
    return _HTTP_STATUS.get(code, 500), body


def _go_message(code: grpc.StatusCode, message: str) -> str:
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        m = _TOO_LARGE.search(message)
        if m:
            return f"grpc: received message larger than max ({m.group(1)} vs. {m.group(2)})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and message == "Deadline Exceeded":
        return "context deadline exceeded"
    return message


def error_response(code: grpc.StatusCode, message: str) -> web.Response:
    status, body = _grpc_error_body(code, message)
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": _JSON})


def _stream_error_chunk(code: grpc.StatusCode, message: str) -> tuple[int, bytes]:
    message = _go_message(code, message)
    status = _HTTP_STATUS.get(code, 500)
    chunk = {
        "error": {
            "grpc_code": code.value[0],
            "http_code": status,
            "message": message,
            "http_status": _REASONS.get(status, ""),
        }
    }
    return status, dumps(chunk).encode()


def _plain(status: int, text: str) -> web.Response:
    # Go's http.Error: text/plain, nosniff, the text plus a newline.
    return web.Response(
        status=status,
        text=text + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


_MD_KEY = re.compile(r"[0-9a-z_.-]+")
_MD_VALUE = re.compile(r"[\x20-\x7e]*")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _call_options(request: web.Request) -> tuple[list[tuple[str, str]], float | None]:
    """gRPC metadata and deadline (monotonic clock) from the HTTP headers, as grpc-gateway's
    AnnotateContext (standard headers as "grpcgateway-<name>": with "grpcgateway-accept" present
    etcd ignores the connection's certificate CN, see auth.hooks)."""
    md: list[tuple[str, str]] = []
    token = None
    has_token_md = False
    timeout = None
    for key, value in request.headers.items():
        lk = key.lower()
        if not _MD_VALUE.fullmatch(value):
            continue  # not representable as gRPC metadata
        if lk in _PERMANENT_HEADERS:
            md.append(("grpcgateway-" + lk, value))
        if lk == "authorization":
            token = value
            md.append(("authorization", value))
        elif lk.startswith("grpc-metadata-"):
            name = lk[len("grpc-metadata-") :]
            if _MD_KEY.fullmatch(name) and not name.endswith("-bin"):
                md.append((name, value))
                has_token_md = has_token_md or name == "token"
        elif lk == "grpc-timeout" and value[-1:] in _TIMEOUT_UNITS and value[:-1].isdigit():
            timeout = time.monotonic() + int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    if token is not None and not has_token_md:
        # etcd reads the "token" key first and falls back to "authorization"; an auth layer
        # that only knows "token" gets the same answer this way.
        md.append(("token", token))
    return md, timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: web.Request) -> str:
    chunks = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > _MAX_BODY:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _decode_first(route: Route, text: str) -> Message:
    """grpc-gateway's unary decode: the first JSON value of the body; an empty body is an empty request."""
    try:
        value, _ = decode_one(text)
    except EOFError:
        return route.request()
    return decode_message(route.request, value)


class _Status(Exception):
    """A call ended with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


# grpc-gateway v1.9's isPermanentHTTPHeader: these request headers reach the service as
# "grpcgateway-<name>" metadata (etcd's auth reads grpcgateway-accept, see auth.hooks).
_PERMANENT_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-language",
        "accept-ranges",
        "authorization",
        "cache-control",
        "content-type",
        "cookie",
        "date",
        "expect",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-schedule-tag-match",
        "if-unmodified-since",
        "max-forwards",
        "origin",
        "pragma",
        "referer",
        "user-agent",
        "via",
        "warning",
    }
)


class Gateway:
    """The /v3 routes. Each request calls this member's gRPC method handlers in-process, the way
    the client gRPC server (`api.h2`) does: the same `grpc.RpcMethodHandler`s (`Router.methods`)
    and the same servicer context (`api.h2.CallContext`), carrying the caller's metadata (auth
    token) and its verified TLS client-certificate CN. No socket lies between the gateway and the
    services, so nothing but the client port's own listener (and its TLS rules) reaches them."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def _context(
        self, request: web.Request, md: list[tuple[str, str]], deadline: float | None
    ) -> CallContext:
        transport = request.transport
        peer = ""
        identity = None
        if transport is not None:
            identity = certificate_cn(transport)
            addr = transport.get_extra_info("peername")
            if isinstance(addr, tuple) and addr:
                host = addr[0]
                peer = f"ipv6:[{host}]:{addr[1]}" if ":" in host else f"ipv4:{host}:{addr[1]}"
        ctx = CallContext(tuple(md), peer, identity)
        if deadline is not None:
            # CallContext keeps its deadline on the event loop's clock.
            ctx._deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
        return ctx

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as e:  # a bug must not look like a gRPC answer, nor take the port down
            log.error("gateway request failed", path=request.path, exc_info=e)
            return error_response(grpc.StatusCode.UNKNOWN, f"gateway: internal error ({type(e).__name__})")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        redirect = unclean_path_redirect(request)
        if redirect is not None:
            return redirect
        path = request.path
        if path.startswith("/v3beta/"):
            path = "/v3/" + path[len("/v3beta/") :]
        route = ROUTES.get(path)
        if route is None:
            return _plain(404, "Not Found")
        if request.method != "POST":
            return _plain(405, "Method Not Allowed")
        md, deadline = _call_options(request)
        handler = self.router.methods.get(route.method.encode())
        if handler is None:  # every route's service is registered; kept for a member without one
            return error_response(
                grpc.StatusCode.UNIMPLEMENTED, unknown_method_message(self.router.services, route.method)
            )
        if route.kind == BIDI:
            return await self._bidi(request, route, handler, md, deadline)
        try:
            text = await _read_body(request)
        except _BodyTooLarge:
            return error_response(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max"
            )
        try:
            msg = _decode_first(route, text)
        except GoJSONError as e:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        timeout = _remaining(deadline)
        if timeout is not None and timeout <= 0:
            return error_response(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
        ctx = self._context(request, md, deadline)
        if route.kind == SERVER_STREAM:
            return await _forward_stream(request, _invoke_stream(handler, msg, ctx), timeout)
        try:
            resp = await _invoke_unary(handler, msg, ctx, timeout)
        except _Status as e:
            return error_response(e.code, e.details)
        return web.Response(body=dumps(message_to_dict(resp)).encode(), headers=_UNARY_HEADERS)

    async def _bidi(
        self,
        request: web.Request,
        route: Route,
        handler: grpc.RpcMethodHandler,
        md: list,
        deadline: float | None,
    ) -> web.StreamResponse:
        """Watch and LeaseKeepAlive: the body is a stream of JSON requests, handed to the service
        as they arrive."""
        reader = _JSONStreamReader(request)
        try:
            first = await reader.next(route.request)
        except GoJSONError as e:
            # grpc-gateway passes the raw decode error on: gRPC code Unknown.
            return error_response(grpc.StatusCode.UNKNOWN, str(e))
        timeout = _remaining(deadline)
        if timeout is not None and timeout <= 0:
            return error_response(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
        # etcd keeps a watch stream serving after the request body ends; a keepalive stream
        # ends once its requests are answered (grpc-gateway half-closes, the server returns).
        half_close = route.request is not pb.WatchRequest
        requests = _BodyRequests(reader, route.request, first, half_close)
        ctx = self._context(request, md, deadline)
        # With an empty body grpc-gateway never waits for the response headers, so none of the
        # server's metadata is forwarded.
        return await _forward_stream(
            request, _invoke_stream(handler, requests, ctx), timeout, with_md=first is not None
        )


async def _invoke_unary(
    h: grpc.RpcMethodHandler, req: Message, ctx: CallContext, timeout: float | None
) -> Message:
    """Run a unary handler under the client gRPC server's call rules (api.h2.calls: handler_function,
    error_status, end_status): an abort, a status set on the context or an unexpected exception
    becomes a `_Status`."""
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            resp = await handler_function(h)(req, ctx)
    except TimeoutError as e:
        if not limit.expired():
            raise _Status(*error_status(h, e, ctx)) from None
        ctx._cancelled = True
        raise _Status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
    except Exception as e:  # noqa: BLE001 - an abort, or a handler bug (UNKNOWN), as on the gRPC path
        raise _Status(*error_status(h, e, ctx)) from None
    failed = end_status(ctx)
    if failed is not None:
        raise _Status(*failed)
    return resp


async def _invoke_stream(h: grpc.RpcMethodHandler, req: Any, ctx: CallContext) -> AsyncIterator[Message]:
    """A response-streaming handler's messages; its end status, if not OK, raises `_Status`."""
    responses = handler_function(h)(req, ctx)
    try:
        try:
            async for resp in responses:
                yield resp
        except Exception as e:  # noqa: BLE001 - an abort, or a handler bug (UNKNOWN), as on the gRPC path
            raise _Status(*error_status(h, e, ctx)) from None
        failed = end_status(ctx)
        if failed is not None:
            raise _Status(*failed)
    finally:
        ctx._cancelled = True  # the call is over (grpcio reports a finished call's context so too)
        await responses.aclose()


class _BodyRequests:
    """The request stream a bidi handler reads: JSON values of the request body, decoded as they
    arrive. grpc-gateway stops forwarding at the body's end or its first bad value; it then
    half-closes a keepalive stream, while a watch stream's requests stay open until the call ends."""

    __slots__ = ("cls", "first", "half_close", "reader")

    def __init__(
        self, reader: _JSONStreamReader, cls: type[Message], first: Message | None, half_close: bool
    ) -> None:
        self.reader = reader
        self.cls = cls
        self.first = first
        self.half_close = half_close

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        msg = self.first
        if msg is not None:
            self.first = None
            return msg
        if self.reader is not None:
            try:
                msg = await self.reader.next(self.cls)
            except (GoJSONError, ConnectionError):
                msg = None
            if msg is not None:
                return msg
            self.reader = None  # type: ignore[assignment]  # None once the stream ends
        if self.half_close:
            raise StopAsyncIteration
        await asyncio.get_running_loop().create_future()  # until the call ends (cancelled then)
        raise StopAsyncIteration


class _JSONStreamReader:
    """Consecutive JSON values from a request body that may still be arriving."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.buf = ""
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.eof = False
        self.size = 0

    async def next(self, cls: type[Message]) -> Message | None:
        while True:
            try:
                value, end = decode_one(self.buf)
            except EOFError:
                self.buf = ""
                if self.eof:
                    return None
            except GoJSONError as e:
                if self.eof or str(e) != "unexpected EOF":
                    raise
            else:
                # A bare number that ends the buffer may continue in the next chunk.
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if self.eof or end < len(self.buf) or not number:
                    self.buf = self.buf[end:]
                    return decode_message(cls, value)
            chunk = await self.request.content.readany()
            if not chunk:
                self.eof = True
                self.buf += self.utf8.decode(b"", final=True)
                continue
            self.size += len(chunk)
            if self.size > _MAX_BODY:
                raise GoJSONError("http: request body too large")
            self.buf += self.utf8.decode(chunk)


async def _forward_stream(
    request: web.Request, responses: AsyncIterator[Message], timeout: float | None, with_md: bool = True
) -> web.StreamResponse:
    """grpc-gateway's ForwardResponseStream: headers go out with the first message; each message
    is `{"result": ...}` plus a newline; an error (or the deadline) ends the stream with an error
    chunk; the call ends when the HTTP client goes away."""
    resp: web.StreamResponse | None = None
    closed = client_gone(request)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    read: asyncio.Future[Message] | None = None
    try:
        while True:
            read = asyncio.ensure_future(anext(responses))
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait({read, closed}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            error: _Status | None = None
            if read not in done:
                if closed in done:
                    break
                error = _Status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            else:
                r, read = read, None
                try:
                    msg = r.result()
                except StopAsyncIteration:
                    break
                except _Status as e:
                    error = e
            if error is not None:
                status, chunk = _stream_error_chunk(error.code, error.details)
                if resp is None:
                    resp = _stream_response(status, with_md=False)
                    await resp.prepare(request)
                with contextlib.suppress(ConnectionError):
                    await resp.write(chunk)
                break
            if resp is None:
                resp = _stream_response(200, with_md=with_md)
                await resp.prepare(request)
            try:
                await resp.write(dumps({"result": message_to_dict(msg)}).encode() + b"\n")
            except ConnectionError:
                break
    finally:
        closed.cancel()
        if read is not None:  # stop the handler where it waits, then close it
            read.cancel()
            await asyncio.wait({read})
            if not read.cancelled():
                read.exception()  # retrieved: a late error of an abandoned call is not news
        with contextlib.suppress(Exception):
            await responses.aclose()  # type: ignore[attr-defined]  # grpc's stream is an async generator
    if resp is None:
        resp = _stream_response(200, with_md=with_md)
        await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


def _stream_response(status: int, with_md: bool) -> web.StreamResponse:
    resp = web.StreamResponse(status=status)
    resp.content_type = _JSON
    if with_md:
        resp.headers["Grpc-Metadata-Content-Type"] = "application/grpc"
    resp.enable_chunked_encoding()
    return resp


# client_gone and unclean_path_redirect moved to api/v2/gohttp.py (the v2 API uses them too).


# -- CORS (etcd's default --cors '*') -----------------------------------------------------------------

_CORS = {
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
}


@web.middleware
async def cors_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """etcd's accessController: CORS headers on every client-port response; OPTIONS answers 200."""
    if request.method == "OPTIONS":
        return web.Response(status=200, headers=_CORS)
    return await handler(request)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in _CORS.items():
        response.headers.setdefault(k, v)


def add_gateway_routes(app: web.Application, router: Router) -> Gateway:
    """Mount the gateway (and etcd's CORS behaviour) on the client port's aiohttp app; `router`
    is the client gRPC server's method table, whose handlers the gateway calls in-process."""
    gw = Gateway(router)
    app.router.add_route("*", "/v3/{tail:.*}", gw.handle)
    app.router.add_route("*", "/v3beta/{tail:.*}", gw.handle)
    app.middlewares.append(cors_middleware)
    app.on_response_prepare.append(_cors_headers)
    return gw
