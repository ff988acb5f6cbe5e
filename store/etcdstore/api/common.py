"""Shared plumbing of the gRPC services: error mapping and per-request gates."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from etcdstore import errors, metrics
from etcdstore.logs import get_logger

if TYPE_CHECKING:
    from etcdstore.server.server import EtcdServer

log = get_logger("etcdstore.api")


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return None


def gate(server: EtcdServer, context: grpc.aio.ServicerContext, *, learner_ok: bool = False) -> None:
    """Checks etcd makes before serving any request.

    - `hasleader: true` metadata asks to fail fast while there is no leader;
    - a learner serves only serializable reads and Status;
    - a removed member stops serving.
    """
    if server.removed:
        raise errors.STOPPED
    if server.leader_id == 0 and metadata_value(context, "hasleader") == "true":
        raise errors.NO_LEADER
    if not learner_ok and server.is_learner:
        raise errors.NOT_SUPPORTED_FOR_LEARNER


# gRPC service name of each servicer class (for the grpc_server_* metrics' labels).
_SERVICES = {"KVService": "etcdserverpb.KV", "WatchService": "etcdserverpb.Watch",
             "LeaseService": "etcdserverpb.Lease", "ClusterService": "etcdserverpb.Cluster",
             "MaintenanceService": "etcdserverpb.Maintenance", "AuthService": "etcdserverpb.Auth",
             "LockService": "v3lockpb.Lock", "ElectionService": "v3electionpb.Election"}


def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EtcdError into the gRPC status etcd sends, count the call in grpc_server_* metrics,
    and log (and hide) anything unexpected."""
    bound: list[Any] = []
    perf = time.perf_counter

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not bound:
            bound.extend(metrics.rpc_metrics(_SERVICES.get(type(self).__name__, type(self).__name__), fn.__name__))
        started, handling, handled = bound
        started.inc()
        t = perf()
        code = "OK"
        try:
            return await fn(self, request, context)
        except errors.EtcdError as e:
            code = e.code.name
            await context.abort(e.code, e.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            code = "Unknown"
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as e:  # a bug must not take the member down or leak internals
            code = "INTERNAL"
            log.error("unexpected error serving request", method=fn.__name__, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"etcdserver: internal error ({type(e).__name__})")
        finally:
            handling.observe(perf() - t)
            handled(_CODE_NAMES.get(code, code)).inc()

    return wrapper


# gRPC's Go names for status codes, as grpc-prometheus labels them.
_CODE_NAMES = {c.name: "".join(w.capitalize() for w in c.name.split("_")) for c in grpc.StatusCode}
_CODE_NAMES.update({"OK": "OK", "CANCELLED": "Canceled", "INTERNAL": "Internal", "UNKNOWN": "Unknown"})


async def abort_with(context: grpc.aio.ServicerContext, e: errors.EtcdError) -> None:
    await context.abort(e.code, e.message)
