"""Helpers shared by the proxy's services: forwarding one call, method handlers for the h2 router."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from etcdstore.errors import EtcdError
from etcdstore.proxy.upstream import Upstream, client_token


async def forward(
    up: Upstream, path: str, request: bytes, context: Any, *, idempotent: bool = False
) -> bytes:
    """Send one unary call upstream on behalf of the client; the cluster's error becomes the
    client's (same code and message)."""
    try:
        return await up.unary(
            path,
            request,
            token=client_token(context),
            timeout=context.time_remaining(),
            idempotent=idempotent,
        )
    except grpc.aio.AioRpcError as e:
        await context.abort(e.code(), e.details() or "")
        raise  # unreachable: abort raises


async def fail(context: Any, err: EtcdError) -> None:
    await context.abort(err.code, err.message)


def unary_handler(fn: Callable[..., Any], req_cls: Any = None, resp_cls: Any = None) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=req_cls.FromString if req_cls else None,
        response_serializer=resp_cls.SerializeToString if resp_cls else None,
    )


def stream_handler(fn: Callable[..., Any], req_cls: Any, resp_cls: Any) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(
        fn, request_deserializer=req_cls.FromString, response_serializer=resp_cls.SerializeToString
    )


def passthrough_handlers(
    up: Upstream,
    service: Any,
    *,
    idempotent: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
) -> dict[str, grpc.RpcMethodHandler]:
    """Bytes-in, bytes-out handlers for every method of a service descriptor: sent to the
    current endpoint with the client's token (etcd's proxy: client.ActiveConnection())."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for m in service.methods:
        if m.name in skip:
            continue
        path = f"/{service.full_name}/{m.name}"
        if not m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(_unary(up, path, m.name in idempotent))
        elif not m.client_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(_server_stream(up, path))
    return handlers


def _unary(up: Upstream, path: str, idempotent: bool) -> Callable[..., Any]:
    async def call(request: bytes, context: Any) -> bytes:
        return await forward(up, path, request, context, idempotent=idempotent)

    return call


def _server_stream(up: Upstream, path: str) -> Callable[..., Any]:
    async def call(request: bytes, context: Any) -> Any:
        upcall, _ = up.open_stream(path, token=client_token(context), request=request)
        try:
            async for msg in upcall:
                yield msg
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")
        finally:
            upcall.cancel()

    return call
