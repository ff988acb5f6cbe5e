"""The client port's front door: one listener for gRPC and HTTP/1, with optional TLS.

etcd serves gRPC and HTTP/1 (health, metrics, the JSON gateway, the v2 API) on the same
client port. Each accepted connection is classified by its first bytes:

* the HTTP/2 connection preface ("PRI * HTTP/2.0...") -> handed, in-process, to the
  gRPC server of `api.h2`;
* a first line that is an HTTP/1 request line (method, target, HTTP/major.minor) -> handed,
  in-process, to the aiohttp application;
* anything else (no such line within 4096 bytes) -> closed without a byte written, as etcd's
  cmux does when no matcher matches (its HTTP1 matcher parses the request line and the HTTP
  version; an invalid HTTP/2 preface must see the connection closed, RFC 9113 3.4).

TLS is terminated here. A TLS listener's context switches each handshake to the freshest
context (see security.tls), so rotated certificate files take effect without a restart. Both
kinds of connection read their verified client certificate's CN from the TLS transport itself.
There is no other listener: the JSON gateway calls the services in-process too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable

from etcdstore.api.h2 import Connections, Router
from etcdstore.api.h2.limits import DEFAULT as H2_DEFAULT_LIMITS
from etcdstore.api.h2.limits import Limits

log = logging.getLogger(__name__)

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# An HTTP/1 request line as cmux's HTTP1 matcher accepts it: "METHOD TARGET HTTP/1.y" (the first two
# split at single spaces, the version as Go's http.ParseHTTPVersion reads it). cmux would also pass on
# another major version, which Go's HTTP/1 server then refuses; here such a line is not HTTP/1 at all
# (e.g. the start of an HTTP/2 preface whose tail is wrong), so it is closed too.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/1\.\d{1,3}\r?\n")
_MAX_FIRST_LINE = 4096  # cmux's maxHTTPRead


class _Sniffer(asyncio.Protocol):
    """Reads the first bytes of a connection, then hands it to gRPC or HTTP/1."""

    def __init__(self, mux: ClientPortMux) -> None:
        self.mux = mux
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        # A client that sends nothing is dropped like one that never finishes the HTTP/2 preface.
        timeout = self.mux.connections.limits.preface_timeout
        if timeout:
            self.timer = asyncio.get_running_loop().call_later(timeout, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        n = min(len(buf), len(_H2_PREFACE))
        if buf[:n] == _H2_PREFACE[:n]:
            if n < 3:
                return  # could still be either
            self._decided()
            self._to_h2()  # the HTTP/2 server checks the rest of the preface
            return
        end = buf.find(b"\n", 0, _MAX_FIRST_LINE)
        if end < 0:
            if len(buf) >= _MAX_FIRST_LINE:
                self._refuse()
            return  # the first line is not complete yet (the preface timer still runs)
        self._decided()
        if _REQUEST_LINE.match(buf, 0, end + 1):
            self._to_http()
        else:
            self._refuse()

    def _decided(self) -> None:
        if self.timer is not None:  # the protocol's own timeouts take over
            self.timer.cancel()
            self.timer = None

    def _refuse(self) -> None:
        """Neither HTTP/2 nor HTTP/1: closed, nothing written (cmux: no matcher matched)."""
        self._decided()
        self.buf = b""
        if self.transport is not None:
            self.transport.close()

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
        conn = mux.connections.open(mux.router)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(self.buf)
        self.buf = b""


class ClientPortMux:
    """Serves gRPC and HTTP/1 on one address.

    router: the method table of the in-process gRPC server (`api.h2`).
    http_protocol_factory: makes an asyncio Protocol for one HTTP/1 connection (aiohttp's
    `web.Server` instance is such a factory).
    Each listener may have TLS (an SSLContext; `ReloadingServerTLS.listener_context()` gives
    one that follows certificate rotation).
    """

    def __init__(
        self,
        http_protocol_factory: Callable[[], asyncio.Protocol],
        router: Router,
        limits: Limits = H2_DEFAULT_LIMITS,
    ) -> None:
        self.router = router
        self.connections = Connections(limits)
        self.http_protocol_factory = http_protocol_factory
        self._servers: list[asyncio.base_events.Server] = []

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Start accepting on host:port (TLS if `tls` is given); returns the bound port."""
        loop = asyncio.get_running_loop()
        # TLS is done by the listener itself: uvloop's start_tls on an accepted socket loses
        # about half the handshakes (measured), the listener's own TLS none.
        server = await loop.create_server(
            lambda: _Sniffer(self),
            host,
            port,
            reuse_address=True,
            backlog=4096,
            ssl=tls,
            ssl_handshake_timeout=10 if tls else None,
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        await self.connections.shutdown()  # graceful: GOAWAY, calls in flight finish, then close
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
