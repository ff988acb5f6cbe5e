"""The client port's front door: one listener for gRPC and HTTP/1, with optional TLS.

etcd serves gRPC and HTTP/1 (health, metrics, the JSON gateway, the v2 API) on the same
client port. grpcio cannot share a port with an HTTP/1 server, so each accepted connection
is classified by its first bytes:

* the HTTP/2 connection preface ("PRI * HTTP/2.0...") -> handed, in-process, to the
  gRPC server of `api.h2` (or, with no router given, relayed to grpcio's private loopback
  listener: a thin byte pump);
* anything else -> handed, in-process, to the aiohttp application.

TLS is terminated here. A TLS listener's context switches each handshake to the freshest
context (see security.tls), so rotated certificate files take effect without a restart. An
in-process gRPC connection carries its verified client certificate's CN itself; a relayed one is
identified to the gRPC side by its local port (`identity_for_peer`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from etcdstore.api.h2 import Connections, Router, certificate_cn

log = logging.getLogger(__name__)

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HIGH_WATER = 4 * 1024 * 1024


class _Pump(asyncio.Protocol):
    """One direction-pair of the relay: bytes from `self` go to `peer` unchanged."""

    __slots__ = ("transport", "peer", "_on_close")

    def __init__(self, peer: asyncio.Transport | None = None, on_close: Callable[[], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self._on_close = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.is_closing():
            return  # the other side is gone; connection_lost closes this one too
        peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()
        if self._on_close is not None:
            self._on_close()

    # Backpressure: when our transport's buffer fills, stop reading from the peer.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class _Sniffer(asyncio.Protocol):
    """Reads the first bytes of a connection, then hands it to gRPC or HTTP/1."""

    def __init__(self, mux: ClientPortMux) -> None:
        self.mux = mux
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.decided = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.decided:  # bytes that arrive while the gRPC side is being dialled
            self.buf += data
            return
        self.buf += data
        n = min(len(self.buf), len(_H2_PREFACE))
        if self.buf[:n] == _H2_PREFACE[:n]:
            if n < 3:
                return  # could still be either
            self.decided = True
            if self.mux.router is not None:
                self._to_h2()
            else:
                asyncio.ensure_future(self._to_grpc())
        else:
            self.decided = True
            self._to_http()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # the client left while we were still deciding or dialling

    def _to_http(self) -> None:
        transport = self.transport
        assert transport is not None
        proto = self.mux.http_protocol_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(self.buf)

    def _to_h2(self) -> None:
        transport = self.transport
        assert transport is not None
        mux = self.mux
        assert mux.router is not None
        conn = mux.connections.open(mux.router)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(self.buf)
        self.buf = b""

    async def _to_grpc(self) -> None:
        front = self.transport
        assert front is not None
        loop = asyncio.get_running_loop()
        back_proto = _Pump(front)
        try:
            back, _ = await loop.create_connection(lambda: back_proto, *self.mux.grpc_address)
        except OSError as e:
            log.warning("client port: gRPC listener unreachable: %s", e)
            front.close()
            return
        if self.lost or front.is_closing():
            back.close()
            return
        identity = certificate_cn(front)
        local_port = back.get_extra_info("sockname")[1]
        if identity is not None:
            self.mux.identities[local_port] = identity

        def forget() -> None:
            self.mux.identities.pop(local_port, None)

        front_proto = _Pump(back, forget)  # type: ignore[arg-type]
        front_proto.transport = front
        front.set_write_buffer_limits(high=_HIGH_WATER)
        front.set_protocol(front_proto)
        if self.buf:
            back.write(self.buf)
            self.buf = b""


class ClientPortMux:
    """Serves gRPC and HTTP/1 on one address.

    grpc_address: where the grpcio server listens privately (host, port); used when no `router`.
    router: the method table of the in-process gRPC server (`api.h2`).
    http_protocol_factory: makes an asyncio Protocol for one HTTP/1 connection (aiohttp's
    `web.Server` instance is such a factory).
    Each listener may have TLS (an SSLContext; `ReloadingServerTLS.listener_context()` gives
    one that follows certificate rotation).
    """

    def __init__(
        self,
        grpc_address: tuple[str, int],
        http_protocol_factory: Callable[[], asyncio.Protocol],
        router: Router | None = None,
    ) -> None:
        self.grpc_address = grpc_address
        self.router = router
        self.connections = Connections()
        self.http_protocol_factory = http_protocol_factory
        # local port of a relayed gRPC connection -> the client identity (cert CN)
        self.identities: dict[int, str] = {}
        self._servers: list[asyncio.base_events.Server] = []

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Start accepting on host:port (TLS if `tls` is given); returns the bound port."""
        loop = asyncio.get_running_loop()
        # TLS is done by the listener itself: uvloop's start_tls on an accepted socket loses
        # about half the handshakes (measured), the listener's own TLS none.
        server = await loop.create_server(lambda: _Sniffer(self), host, port, reuse_address=True,
                                          backlog=4096, ssl=tls, ssl_handshake_timeout=10 if tls else None)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def identity_for_peer(self, peer: str) -> str | None:
        """The client-certificate CN of the connection gRPC reports as `peer` ("ipv4:127.0.0.1:PORT")."""
        try:
            port = int(peer.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None
        return self.identities.get(port)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self.connections.close_all()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
