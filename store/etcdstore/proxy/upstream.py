"""The proxy's side towards the cluster: one gRPC channel per endpoint, raw calls, failover.

Requests and answers cross the proxy as bytes wherever the proxy has nothing to change, so a
pass-through call costs one parse of nothing. Failover follows the project client's rule
(etcdstore.client.transport): a unary call moves to the next endpoint on UNAVAILABLE only when it
cannot be applied twice (idempotent, or it never reached a server); streams are opened on the
current endpoint and the owner reopens them elsewhere when they break.

The client's auth token (`token` metadata) is forwarded with each call, as etcd's proxy does
(grpcproxy's Auth*ClientInterceptor); nothing else of the client's metadata is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from etcdstore.client.channels import ChannelPool, Endpoint, TLSConfig, parse_endpoints
from etcdstore.client.rpc_errors import never_sent

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_MAX_ROUNDS = 10


def client_token(context: Any) -> str | None:
    """The `token` metadata a client sent with its call."""
    for k, v in context.invocation_metadata() or ():
        if k == "token":
            return v
    return None


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("token", token),) if token else None


class Upstream:
    """Channels to the cluster's endpoints and calls with failover."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        tls: TLSConfig | None = None,
        *,
        max_send: int = -1,
        max_recv: int = -1,
    ) -> None:
        self.endpoints: list[Endpoint] = parse_endpoints(endpoints, tls=tls)
        self.pool = ChannelPool(
            tls, (("grpc.max_send_message_length", max_send), ("grpc.max_receive_message_length", max_recv))
        )
        self.current = 0
        self._calls: dict[tuple[str, str, str], Any] = {}
        self.calls_sent = 0  # unary calls sent upstream (tests read it: a cache hit sends none)

    @property
    def targets(self) -> list[str]:
        return [e.target for e in self.endpoints]

    def _multicallable(self, ep: Endpoint, kind: str, path: str) -> Any:
        key = (ep.target, kind, path)
        mc = self._calls.get(key)
        if mc is None:
            mc = getattr(self.pool.get(ep).channel, kind)(path)  # no serializers: bytes in, bytes out
            self._calls[key] = mc
        return mc

    def moved_off(self, ep: Endpoint) -> None:
        if self.endpoints[self.current] is ep:
            self.current = (self.current + 1) % len(self.endpoints)

    async def unary(
        self,
        path: str,
        request: bytes,
        *,
        token: str | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> bytes:
        """One unary call; raises grpc.aio.AioRpcError with the cluster's status."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        md = token_metadata(token)
        n = len(self.endpoints)
        attempt = 0
        while True:
            ep = self.endpoints[self.current]
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            self.calls_sent += 1
            try:
                return await self._multicallable(ep, "unary_unary", path)(
                    request, timeout=remaining, metadata=md
                )
            except grpc.aio.AioRpcError as e:
                if e.code() != _UNAVAILABLE or not (idempotent or never_sent(e)):
                    raise
                self.moved_off(ep)
                attempt += 1
                if attempt % n == 0:
                    pause = min(0.05 * attempt // n, 0.5)
                    if attempt // n >= _MAX_ROUNDS or (
                        deadline is not None and deadline - loop.time() <= pause
                    ):
                        raise
                    await asyncio.sleep(pause)

    def open_stream(
        self,
        path: str,
        *,
        token: str | None = None,
        request: bytes | None = None,
        require_leader: bool = False,
    ) -> tuple[Any, Endpoint]:
        """A streaming call on the current endpoint: bidi (request None) or server-streaming."""
        ep = self.endpoints[self.current]
        md = token_metadata(token)
        if require_leader:
            md = (md or ()) + (("hasleader", "true"),)
        if request is None:
            return self._multicallable(ep, "stream_stream", path)(metadata=md), ep
        return self._multicallable(ep, "unary_stream", path)(request, metadata=md), ep

    async def close(self) -> None:
        self._calls.clear()
        await self.pool.close()
