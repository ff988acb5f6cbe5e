"""Shared plumbing of the gRPC services: error mapping and per-request gates."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from etcdstore import errors
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


def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EtcdError into the gRPC status etcd sends; log (and hide) anything unexpected."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except errors.EtcdError as e:
            await context.abort(e.code, e.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as e:  # a bug must not take the member down or leak internals
            log.error("unexpected error serving request", method=fn.__name__, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"etcdserver: internal error ({type(e).__name__})")

    return wrapper


async def abort_with(context: grpc.aio.ServicerContext, e: errors.EtcdError) -> None:
    await context.abort(e.code, e.message)
