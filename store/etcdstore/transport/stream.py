"""The Raft message stream: `raft.codec` messages over a plain TCP (or TLS) connection on the
peer port, and the peer port's front that tells it apart from gRPC.

Why not a gRPC stream: a frame sent over grpc.aio cost 260-300 µs of CPU across both ends
(measured; its poller threads, completion queue and GIL hand-offs), a plain asyncio write
~45 µs; with one client on three members each put crosses the transport four times
(docs/performance.md, "Where a single-client put spends its time"). etcd's own peer transport is
plain HTTP streams, not gRPC, for the same kind of reason.

The peer port serves both. After TLS, when the port has it, the first bytes of a connection
decide: a Raft stream starts with MAGIC; anything else (HTTP/2's preface) is gRPC and is relayed
to the member's gRPC server (Snapshot, Cluster, Forward, Ping, and the Raft stream of members
that predate this one), which listens on a Unix socket in a private directory.

The protocol, dialer to listener only (the listener answers the hello and then only reads):

  dialer   -> MAGIC, u32 length, JSON hello {"cluster-id": hex, "from": hex, "to": hex}
  listener -> REPLY_OK, or REPLY_ERR + reason + CRLF and closes ("cluster ID mismatch",
              "member removed": the same refusals as the gRPC calls)
  dialer   -> u32 length + encoded message, repeated for as long as the connection lives

A dialer that reads anything else (an older member's gRPC server answering with HTTP/2 bytes or
closing the connection) concludes that the peer does not speak the stream and uses the gRPC
Raft stream (rolling upgrades); it tries the stream again whenever that gRPC stream ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from etcdstore.logs import get_logger
from etcdstore.raft import codec
from etcdstore.raft.records import Message
from etcdstore.security.tls import ReloadingServerTLS, TLSFiles

if TYPE_CHECKING:
    from etcdstore.transport.peer import PeerTransport

log = get_logger("etcdstore.transport")

MAGIC = b"ETCDSTORE-RAFT/1\r\n"
REPLY_OK = b"ETCDSTORE-RAFT/1 OK\r\n"
REPLY_ERR = b"ETCDSTORE-RAFT/1 ERR "
_LEN = struct.Struct(">I")
MAX_HELLO = 4096
MAX_MESSAGE = 64 << 20  # as the gRPC transport's max message size
FIRST_BYTES_TIMEOUT = 10.0  # seconds a connection to the peer port may stay silent
CONNECT_TIMEOUT = 3.0
HANDSHAKE_TIMEOUT = 5.0
WRITE_HIGH_WATER = 8 << 20  # bytes buffered for a peer before its messages queue (and drop)
# Keepalive as the gRPC channels had it (10 s idle, 5 s to answer): a peer whose host vanished
# without closing the connection is noticed and redialled (and its name resolved again).
_KEEPALIVE = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 0), 10),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 0), 5),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 0), 2),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 0), 15_000),
)


class NotSupported(Exception):
    """The peer answered the hello with something else: an older member (gRPC only)."""


class Refused(Exception):
    """The peer refused the stream; the reason is one of peer.py's refusal strings."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def tune_socket(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, opt, value in _KEEPALIVE:
        if opt or level == socket.SOL_SOCKET:
            try:
                sock.setsockopt(level, opt, value)
            except OSError:
                pass
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


# -- TLS -----------------------------------------------------------------------------------------


class PeerServerTLS(ReloadingServerTLS):
    """The peer port's TLS, following rotation: as the gRPC peer server had it, a client
    certificate is asked for (and must verify against the trusted CA) only with
    --peer-client-cert-auth and a CA; otherwise none is requested, as in etcd."""

    def __init__(self, files: TLSFiles) -> None:
        super().__init__(files, alpn=("h2",))

    def _build(self) -> ssl.SSLContext:
        ctx = super()._build()
        if not (self.files.client_cert_auth and self.files.trusted_ca_file):
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def client_context(files: TLSFiles, verify: bool) -> ssl.SSLContext:
    """A context for dialling a peer, read from the current files (so every dial sees a
    rotation). With a trusted CA the peer's certificate and name are verified against it; without
    one etcd skips verification (the gRPC path pinned whatever the peer presented on each dial,
    which verifies nothing either)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert_file, files.key_file)
    if verify:
        ctx.load_verify_locations(files.trusted_ca_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # what the port offers; older members' gRPC servers insist on it
    return ctx


# -- the listening side -----------------------------------------------------------------------------


class PortProtocol(asyncio.Protocol):
    """A new connection to the peer port: waits for its first bytes, then becomes a Raft
    stream (`Inbound`) or a relay to the gRPC server (`Relay`)."""

    def __init__(self, pt: PeerTransport, grpc_side: str | Callable[[], asyncio.Protocol]) -> None:
        self.pt = pt
        self.grpc_side = grpc_side  # a protocol factory for gRPC connections, or the Unix socket to relay to
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        self.pt.accepted(transport)
        self.timer = asyncio.get_running_loop().call_later(FIRST_BYTES_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        n = min(len(buf), len(MAGIC))
        if buf[:n] == MAGIC[:n] and len(buf) < len(MAGIC):
            return  # not decided yet
        if self.timer is not None:
            self.timer.cancel()
        t = self.transport
        assert t is not None
        if buf[:n] == MAGIC[:n]:
            tune_socket(t)
            inbound = Inbound(self.pt, t)
            t.set_protocol(inbound)
            if len(buf) > len(MAGIC):
                inbound.data_received(buf[len(MAGIC) :])
        elif isinstance(self.grpc_side, str):
            relay = Relay(t, self.grpc_side)
            t.set_protocol(relay)
            relay.start(buf)
        else:
            proto = self.grpc_side()
            t.set_protocol(proto)
            proto.connection_made(t)
            proto.data_received(buf)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class Inbound(asyncio.Protocol):
    """One peer's Raft stream: the hello, then messages stepped as they arrive."""

    def __init__(self, pt: PeerTransport, transport: asyncio.Transport) -> None:
        self.pt = pt
        self.transport = transport
        self.buf = bytearray()
        self.frm = -1  # -1: hello not read yet
        self.step: Callable[[Message], None] = pt.server.step

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
            buf: bytes | bytearray = self.buf
        else:
            buf = data
        n = len(buf)
        pos = 0
        if self.frm < 0:
            if n < 4:
                self._keep(buf, 0)
                return
            (size,) = _LEN.unpack_from(buf, 0)
            if size > MAX_HELLO:
                self.transport.close()
                return
            if n < 4 + size:
                self._keep(buf, 0)
                return
            try:
                hello = json.loads(bytes(buf[4 : 4 + size]))
            except ValueError:
                self.transport.close()
                return
            pos = 4 + size
            refusal, frm = self.pt.check_identity(hello if isinstance(hello, dict) else {})
            if refusal:
                self.pt.log_refusal(refusal, hello)
                self.transport.write(REPLY_ERR + refusal.encode() + b"\r\n")
                self.transport.close()
                return
            self.frm = frm
            self.transport.write(REPLY_OK)
        stats = self.pt.stats
        stats.frames_received += 1
        stats.bytes_received += n - pos
        step = self.step
        trace = self.pt.trace_elections
        decode = codec.decode_message
        while n - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_MESSAGE:
                log.warning(
                    "peer sent an oversized message; closing its stream", peer=f"{self.frm:x}", size=size
                )
                self.transport.close()
                return
            end = pos + 4 + size
            if end > n:
                break
            try:
                m = decode(bytes(buf[pos + 4 : end]))
            except Exception as e:  # noqa: BLE001  # a peer's bytes: whatever fails to decode is dropped
                log.warning("dropping undecodable peer message", peer=f"{self.frm:x}", error=str(e))
            else:
                if trace:
                    self.pt.trace("raft recv", m)
                stats.messages_received += 1
                step(m)
            pos = end
        self._keep(buf, pos)

    def _keep(self, buf: bytes | bytearray, pos: int) -> None:
        if buf is self.buf:
            del self.buf[:pos]
        elif pos < len(buf):
            self.buf = bytearray(buf[pos:])

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.buf = bytearray()


class Relay(asyncio.Protocol):
    """A gRPC connection on the peer port, piped to the member's gRPC server on its Unix socket."""

    def __init__(self, outer: asyncio.Transport, path: str) -> None:
        self.outer = outer
        self.path = path
        self.inner: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def start(self, first: bytes) -> None:
        self.pending.append(first)
        self.outer.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            inner, _ = await asyncio.get_running_loop().create_unix_connection(lambda: _Back(self), self.path)
        except OSError as e:
            log.debug("peer gRPC relay: cannot reach the gRPC server", error=str(e))
            self.outer.close()
            return
        if self.closed:
            inner.close()
            return
        self.inner = inner
        inner.write(b"".join(self.pending))
        self.pending = []
        self.outer.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            self.pending.append(data)
        else:
            self.inner.write(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.inner is not None:
            self.inner.close()

    def pause_writing(self) -> None:  # the outside is slow: stop reading the gRPC server
        if self.inner is not None:
            self.inner.pause_reading()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_reading()


class _Back(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        if not self.relay.outer.is_closing():
            self.relay.outer.write(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.outer.close()

    def pause_writing(self) -> None:  # the gRPC server is slow: stop reading the outside
        self.relay.outer.pause_reading()

    def resume_writing(self) -> None:
        self.relay.outer.resume_reading()


# -- the dialling side -----------------------------------------------------------------------------


class Outbound(asyncio.Protocol):
    """The dialler's end of one Raft stream: reads the hello's answer, then only writes."""

    def __init__(self, on_resume: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.paused = False
        self.on_resume = on_resume
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return  # the listener sends nothing after its answer
        self._buf += data
        buf = self._buf
        n = min(len(buf), len(REPLY_OK))
        if buf[:n] != REPLY_OK[:n] and buf[: min(n, len(REPLY_ERR))] != REPLY_ERR[: min(n, len(REPLY_ERR))]:
            self.reply.set_result(buf)  # not ours: an older member's gRPC server
        elif b"\n" in buf:
            self.reply.set_result(buf[: buf.index(b"\n") + 1])
        elif len(buf) > 512:
            self.reply.set_result(buf)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_result(self._buf)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.on_resume()


def hello(cluster_id: int, frm: int, to: int) -> bytes:
    body = json.dumps({"cluster-id": f"{cluster_id:x}", "from": f"{frm:x}", "to": f"{to:x}"}).encode()
    return MAGIC + _LEN.pack(len(body)) + body


def check_reply(reply: bytes) -> None:
    """Raise unless the listener accepted the stream."""
    if reply.startswith(REPLY_OK):
        return
    if reply.startswith(REPLY_ERR) and reply.endswith(b"\n"):
        raise Refused(reply[len(REPLY_ERR) :].strip().decode("utf-8", "replace"))
    raise NotSupported(repr(reply[:32]))


async def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """The peer's addresses, looked up on every dial: a member recreated under the same name
    with a new address is found again at the next redial (tests/store/test_peer_stream.py)."""
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def dial(
    host: str, port: int, ssl_ctx: ssl.SSLContext | None, on_resume: Callable[[], None]
) -> tuple[asyncio.Transport, Outbound]:
    """Connect to the first address of the peer's name that answers."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(resolve(host, port), CONNECT_TIMEOUT)
    last: BaseException = OSError(f"{host}: no address")
    for family, _type, _proto, _name, addr in infos:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            except BaseException:
                sock.close()
                raise
            t, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Outbound(on_resume),
                    sock=sock,
                    ssl=ssl_ctx,
                    server_hostname=host if ssl_ctx is not None else None,
                ),
                HANDSHAKE_TIMEOUT,
            )
            tune_socket(t)
            return t, proto
        except (OSError, TimeoutError, ssl.SSLError) as e:
            last = e
    raise last
