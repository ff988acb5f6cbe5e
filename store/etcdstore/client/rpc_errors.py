"""gRPC failures -> `EtcdError`, and the one question failover needs answered: was it sent?"""

from __future__ import annotations

import re
from typing import Any

import grpc

from etcdstore import errors
from etcdstore.errors import EtcdError

# Client-side conditions with no server message of their own. The "etcdclient:" prefix keeps
# them apart from etcd's "etcdserver:" table; callers compare them like any EtcdError.
CLIENT_CLOSED = EtcdError(grpc.StatusCode.CANCELLED, "etcdclient: client is closed")
WATCH_STREAM_CLOSED = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdclient: watch stream closed by server")
KEEPALIVE_STREAM_CLOSED = EtcdError(
    grpc.StatusCode.UNAVAILABLE, "etcdclient: keepalive stream closed by server"
)
# RejectOldCluster: a member reported a version below 3.2 (clientv3's ErrOldCluster text).
OLD_CLUSTER = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdclient: old cluster version")

# gRPC core's pick-first policy fails an RPC with this text when no connection to the target
# exists (refused, unreachable, TLS handshake failed): the request never left this process.
_UNSENT_PREFIX = "failed to connect to all addresses"

# Token problems that a fresh Authenticate fixes (as clientv3 does): the request was rejected
# before it was applied, so resending it is safe even for writes.
REFRESH_TOKEN_ERRORS = frozenset({errors.INVALID_AUTH_TOKEN, errors.AUTH_OLD_REVISION, errors.USER_EMPTY})


def to_etcd_error(err: grpc.RpcError) -> EtcdError:
    """EtcdError(code, details): equal (==) to the matching constant in etcdstore.errors.

    Always a fresh instance: raising one shared exception object from many tasks would chain
    their tracebacks together."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (err.details() if callable(getattr(err, "details", None)) else None) or ""
    return EtcdError(code, details)


# Go's names of the gRPC codes, as they appear in a formatted status ("rpc error: code = ...").
_GO_CODES = {"".join(part.capitalize() for part in c.name.split("_")): c for c in grpc.StatusCode}
_GO_CODES["Canceled"] = grpc.StatusCode.CANCELLED
_GO_STATUS = re.compile(r"^rpc error: code = (\w+) desc = (.*)$", re.DOTALL)


def error_from_reason(reason: str, default: grpc.StatusCode) -> EtcdError:
    """An error for a text-only failure (a watch's cancel_reason). etcd 3.4 writes some as a
    formatted Go status ("rpc error: code = PermissionDenied desc = etcdserver: permission
    denied"): that gives code and message. Otherwise the known code for the message, else
    `default`."""
    m = _GO_STATUS.match(reason)
    if m and m.group(1) in _GO_CODES:
        return EtcdError(_GO_CODES[m.group(1)], m.group(2))
    known = errors.from_message(reason)
    return EtcdError(known.code if known else default, reason)


def fresh(err: EtcdError) -> EtcdError:
    """A new instance equal to `err` (constants are never raised themselves)."""
    return EtcdError(err.code, err.message)


async def finished_call_error(call: Any) -> EtcdError:
    """The status of a stream call that ended under us (a write raised InvalidStateError)."""
    try:
        code = await call.code()
        details = await call.details()
    except Exception:  # noqa: BLE001 - a call in a bad state: report it as gone
        return EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdclient: stream ended")
    if code == grpc.StatusCode.OK:
        return EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdclient: stream ended")
    return EtcdError(code, details or "")


def never_reached_server(err: EtcdError) -> bool:
    """True when a raised EtcdError means the request never left this client (so a write
    certainly was not applied); False means a write's outcome may be unknown."""
    return err.code == grpc.StatusCode.UNAVAILABLE and err.message.startswith(_UNSENT_PREFIX)


def never_sent(err: grpc.RpcError) -> bool:
    """True when the RPC failed before any byte reached a server (safe to send elsewhere)."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return (err.details() or "").startswith(_UNSENT_PREFIX)
