"""One client connection of the gRPC server: HTTP/2 framing, flow control, streams.

Why not grpcio's server: measured on this project's machine, grpc.aio spends ~400 µs of CPU
per unary call (its completion queue hops between a poller thread and the event loop several
times per call); a protocol on the event loop itself parses a whole read's frames in one pass
and answers every call that finished in the same loop turn with one write.

Flow control (RFC 9113 section 5.2):
* receiving: we grant large windows and give credit back as messages are consumed — at once
  for a unary request (its size is capped by the message limit), as the handler reads them for a
  streaming one, so a client cannot make us buffer more than the windows;
* sending: DATA never exceeds the client's connection and stream windows; what does not fit
  waits on the stream, and a streaming handler's writes wait while too much is pending.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from hpack import Decoder
from hpack.exceptions import HPACKError

from etcdstore.api.h2 import frames as f

if TYPE_CHECKING:
    from etcdstore.api.h2.calls import Call, Router

log = logging.getLogger(__name__)

STREAM_WINDOW = 4 << 20  # what we grant each stream (and advertise as SETTINGS_INITIAL_WINDOW_SIZE)
CONN_WINDOW = 16 << 20  # what we grant the connection
_HIGH_WATER = 1 << 20  # a streaming writer waits while this much of its stream is unsent
_LOW_WATER = 256 << 10
MAX_HEADER_LIST = 64 << 10  # a call's metadata above this is refused (RESOURCE_EXHAUSTED), like grpcio's
_RESOURCE_EXHAUSTED = 8


class ConnectionError_(Exception):  # noqa: N801 - not the builtin ConnectionError
    """A connection error (RFC 9113 5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, debug: str = "") -> None:
        super().__init__(debug)
        self.code = code
        self.debug = debug


class Stream:
    """The server's side of one HTTP/2 stream (one gRPC call)."""

    __slots__ = ("id", "conn", "call", "send_window", "pending", "pending_bytes", "trailer",
                 "headers_sent", "remote_closed", "closed", "unacked", "writable", "recv_window")

    def __init__(self, conn: H2Connection, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.conn = conn
        self.call: Call | None = None
        self.send_window = send_window
        self.pending: collections.deque[bytes | memoryview] = collections.deque()
        self.pending_bytes = 0
        self.trailer: bytes | None = None  # our closing header block, once the data before it is out
        self.headers_sent = False
        self.remote_closed = False  # the client sent END_STREAM
        self.closed = False  # we finished the call or it was reset
        self.unacked = 0  # consumed bytes not yet credited with WINDOW_UPDATE
        self.recv_window = STREAM_WINDOW  # what the client may still send on this stream
        self.writable: asyncio.Future[None] | None = None

    # -- sending (called by the call) -------------------------------------------------------------

    def respond(self, message: bytes, trailer: bytes) -> None:
        """A whole unary answer: response headers, the message, the trailers."""
        conn = self.conn
        if self.closed:
            return
        n = len(message)
        if not self.pending and n <= self.send_window and n <= conn.send_window and n <= conn.peer_max_frame:
            self.send_window -= n
            conn.send_window -= n
            out = conn.out
            sid = self.id
            if not self.headers_sent:
                out.append(conn.response_headers_frame(sid))
            out.append(f.frame(f.DATA, 0, sid, message))
            out.append(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, trailer))
            self.headers_sent = True
            self._closed_locally()
            conn.schedule_flush()
            return
        self.send(message)
        self.finish(trailer)

    def send(self, message: bytes) -> None:
        """Queue one length-prefixed message; it goes out as the windows allow."""
        if self.closed:
            return
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.out.append(self.conn.response_headers_frame(self.id))
        self.pending.append(message)
        self.pending_bytes += len(message)
        self.drain()

    def finish(self, trailer: bytes) -> None:
        """End the call with this trailer block (after whatever data is still queued)."""
        if self.closed or self.trailer is not None:
            return
        if not self.headers_sent and not self.pending:
            # Trailers-only response: the status travels in the one header block.
            self.headers_sent = True
            self.conn.out.append(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id,
                                         f.RESPONSE_HEADERS + trailer))
            self._closed_locally()
            self.conn.schedule_flush()
            return
        self.trailer = trailer
        self.drain()

    def drain(self) -> None:
        """Send queued data the windows allow; the trailers once nothing is queued."""
        conn = self.conn
        out = conn.out
        pending = self.pending
        sid = self.id
        while pending:
            avail = min(self.send_window, conn.send_window, conn.peer_max_frame)
            if avail <= 0:
                conn.blocked[sid] = self
                break
            chunk = pending[0]
            n = len(chunk)
            if n > avail:
                view = memoryview(chunk)
                pending[0] = view[avail:]
                chunk = view[:avail]
                n = avail
            else:
                pending.popleft()
            self.send_window -= n
            conn.send_window -= n
            self.pending_bytes -= n
            out.append(f.frame(f.DATA, 0, sid, chunk))
        if not pending and self.trailer is not None:
            out.append(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, self.trailer))
            self.trailer = None
            self._closed_locally()
        waiter = self.writable
        if waiter is not None and (self.pending_bytes < _LOW_WATER or self.closed) and not conn.paused:
            self.writable = None
            if not waiter.done():
                waiter.set_result(None)
        conn.schedule_flush()

    def write_blocked(self) -> bool:
        """Too much of this stream is unsent, or the socket's buffer is full."""
        return self.pending_bytes >= _HIGH_WATER or self.conn.paused

    async def wait_writable(self) -> None:
        """Wait while `write_blocked` (or until the stream is gone)."""
        while not self.closed and self.write_blocked():
            if self.writable is None:
                self.writable = asyncio.get_running_loop().create_future()
            await self.writable

    def _closed_locally(self) -> None:
        self.closed = True
        conn = self.conn
        conn.streams.pop(self.id, None)
        conn.blocked.pop(self.id, None)
        if not self.remote_closed:
            # The call is over; tell the client to stop sending on it (RFC 9113 8.1).
            conn.out.append(f.rst_stream(self.id, f.NO_ERROR))

    def reset(self) -> None:
        """The stream is gone (RST_STREAM either way, or the connection closed)."""
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0
        waiter = self.writable
        if waiter is not None:
            self.writable = None
            if not waiter.done():
                waiter.set_result(None)


class H2Connection(asyncio.Protocol):
    """An HTTP/2 server connection whose streams are gRPC calls routed by `router`."""

    def __init__(self, router: Router, *, identity: str | None = None,
                 on_close: collections.abc.Callable[[H2Connection], None] | None = None) -> None:
        self.router = router
        self.identity = identity  # the verified client certificate's CN, if any
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}  # streams with data waiting for window
        self.out: list[bytes] = []
        self.paused = False
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.max_frame_in = f.DEFAULT_MAX_FRAME
        self.last_stream_id = 0
        self.going_away = False
        self._flush_scheduled = False
        self._buf = b""
        self._preface = False
        self._decoder = Decoder()
        # Decode big header lists whole (stopping midway would break the shared HPACK table for every
        # stream) and refuse only the call that sent one (see _headers_complete).
        self._decoder.max_header_list_size = 1 << 20
        self._cont: tuple[int, int, list[bytes]] | None = None  # headers awaiting CONTINUATION
        self._conn_unacked = 0
        self._recv_window = CONN_WINDOW  # what the client may still send on the connection
        self._closed = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.identity is None:
            self.identity = certificate_cn(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        self.out.append(f.settings_frame({f.S_INITIAL_WINDOW_SIZE: STREAM_WINDOW, f.S_ENABLE_PUSH: 0}))
        self.out.append(f.window_update(0, CONN_WINDOW - f.DEFAULT_WINDOW))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for st in streams:
            st.reset()
            if st.call is not None:
                st.call.cancel()
        self.out.clear()
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for st in list(self.streams.values()):
            if st.writable is not None:
                st.drain()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        if not self._preface:
            if len(buf) < len(f.PREFACE):
                if not f.PREFACE.startswith(buf):
                    self.close_with(f.PROTOCOL_ERROR, "bad connection preface")
                    return
                self._buf = buf
                return
            if not buf.startswith(f.PREFACE):
                self.close_with(f.PROTOCOL_ERROR, "bad connection preface")
                return
            pos = len(f.PREFACE)
            self._preface = True
        n = len(buf)
        unpack = f.HEAD.unpack_from
        try:
            while n - pos >= 9 and not self._closed:
                hi, lo, ftype, flags, sid = unpack(buf, pos)
                length = (hi << 8) | lo
                if length > self.max_frame_in:
                    raise ConnectionError_(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = pos + 9 + length
                if end > n:
                    break
                payload = buf[pos + 9:end]
                pos = end
                sid &= 0x7FFFFFFF
                if self._cont is not None and ftype != f.CONTINUATION:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "expected CONTINUATION")
                if ftype == f.DATA:
                    self._on_data(sid, flags, payload, length)
                elif ftype == f.HEADERS:
                    self._on_headers(sid, flags, payload)
                else:
                    self._on_control(ftype, flags, sid, payload)
        except ConnectionError_ as e:
            self.close_with(e.code, e.debug)
            return
        except Exception:  # a bug of ours must end this connection cleanly, not the member
            log.exception("client connection %s: unexpected error", self.peer)
            self.close_with(f.INTERNAL_ERROR, "internal error")
            return
        self._buf = buf[pos:] if pos < n else b""
        self.flush()

    # -- frames -----------------------------------------------------------------------------------

    def _on_data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        if sid == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on stream 0")
        if flags & f.PADDED:
            payload = _unpad(payload)
        self._recv_window -= length
        if self._recv_window < 0:
            raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window exceeded")
        st = self.streams.get(sid)
        if st is None or st.remote_closed:
            if sid > self.last_stream_id:
                raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on an idle stream")
            self.credit(None, length)  # a finished or reset stream: the bytes still count
            return
        st.recv_window -= length
        if st.recv_window < 0:
            self.credit(None, length)
            self.reset_stream(st, f.FLOW_CONTROL_ERROR)
            return
        if length != len(payload):
            self.credit(st, length - len(payload))
        if flags & f.END_STREAM:
            st.remote_closed = True
        call = st.call
        if call is not None:
            call.on_data(payload, bool(flags & f.END_STREAM))

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & f.PADDED:
            payload = _unpad(payload)
        if flags & f.PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & f.END_HEADERS:
            self._cont = (sid, flags, [payload])
            return
        self._headers_complete(sid, flags, payload)

    def _headers_complete(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block, raw=True)
        except HPACKError as e:
            raise ConnectionError_(f.COMPRESSION_ERROR, str(e)) from None
        end_stream = bool(flags & f.END_STREAM)
        st = self.streams.get(sid)
        if st is not None:  # trailers from the client: only END_STREAM matters
            if not end_stream:
                raise ConnectionError_(f.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            st.remote_closed = True
            if st.call is not None:
                st.call.on_data(b"", True)
            return
        if sid <= self.last_stream_id or not sid & 1:
            if sid & 1 and sid <= self.last_stream_id:
                # Trailers on a stream we already finished; nothing to do.
                return
            raise ConnectionError_(f.PROTOCOL_ERROR, f"bad stream id {sid}")
        self.last_stream_id = sid
        if self.going_away:
            self.out.append(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        st = Stream(self, sid, self.peer_initial_window)
        st.remote_closed = end_stream
        self.streams[sid] = st
        if sum(len(k) + len(v) + 32 for k, v in headers) > MAX_HEADER_LIST:
            st.finish(f.trailers(_RESOURCE_EXHAUSTED, "grpc: received header list larger than max"))
            return
        self.router.open(self, st, headers)

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == f.CONTINUATION:
            if self._cont is None or self._cont[0] != sid:
                raise ConnectionError_(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
            csid, cflags, parts = self._cont
            parts.append(payload)
            if sum(len(p) for p in parts) > 1 << 20:
                raise ConnectionError_(f.PROTOCOL_ERROR, "header block too large")
            if flags & f.END_HEADERS:
                self._cont = None
                self._headers_complete(csid, cflags, b"".join(parts))
        elif ftype == f.SETTINGS:
            if sid != 0:
                raise ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & f.ACK:
                return
            if len(payload) % 6:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS length")
            for key, value in f.parse_settings(payload):
                self._apply_setting(key, value)
            self.out.append(f.frame(f.SETTINGS, f.ACK, 0))
        elif ftype == f.WINDOW_UPDATE:
            if len(payload) != 4:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if sid == 0:
                if inc == 0:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
                self.send_window += inc
                if self.send_window > f.MAX_WINDOW:
                    raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window overflow")
                for st in list(self.blocked.values()):
                    self.blocked.pop(st.id, None)
                    st.drain()
            else:
                st = self.streams.get(sid)
                if st is None or inc == 0:
                    return
                st.send_window += inc
                if st.send_window > f.MAX_WINDOW:
                    self.reset_stream(st, f.FLOW_CONTROL_ERROR)
                    return
                self.blocked.pop(sid, None)
                st.drain()
        elif ftype == f.PING:
            if len(payload) != 8:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "PING length")
            if not flags & f.ACK:
                self.out.append(f.frame(f.PING, f.ACK, 0, payload))
        elif ftype == f.RST_STREAM:
            if sid == 0:
                raise ConnectionError_(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
            st = self.streams.pop(sid, None)
            if st is not None:
                self.blocked.pop(sid, None)
                st.reset()
                if st.call is not None:
                    st.call.cancel()
        elif ftype == f.GOAWAY:
            self.going_away = True
        elif ftype == f.PUSH_PROMISE:
            raise ConnectionError_(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored (RFC 9113 5.5).

    def _apply_setting(self, key: int, value: int) -> None:
        if key == f.S_INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "initial window too large")
            delta = value - self.peer_initial_window
            self.peer_initial_window = value
            for st in list(self.streams.values()):
                st.send_window += delta
                if delta > 0:
                    st.drain()
        elif key == f.S_MAX_FRAME_SIZE:
            if not f.DEFAULT_MAX_FRAME <= value <= (1 << 24) - 1:
                raise ConnectionError_(f.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
            self.peer_max_frame = value
        elif key == f.S_ENABLE_PUSH and value > 1:
            raise ConnectionError_(f.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        # Header table size: our responses never index, so the client's decoder table size is moot.

    # -- helpers for streams and calls ------------------------------------------------------------

    def response_headers_frame(self, sid: int) -> bytes:
        return f.frame(f.HEADERS, f.END_HEADERS, sid, f.RESPONSE_HEADERS)

    def credit(self, st: Stream | None, n: int) -> None:
        """`n` received bytes were consumed: give the windows back in large steps."""
        if n <= 0 or self._closed:
            return
        self._conn_unacked += n
        if self._conn_unacked >= CONN_WINDOW // 2:
            self.out.append(f.window_update(0, self._conn_unacked))
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0
            self.schedule_flush()
        if st is not None and not st.remote_closed and not st.closed:
            st.unacked += n
            if st.unacked >= STREAM_WINDOW // 2:
                self.out.append(f.window_update(st.id, st.unacked))
                st.recv_window += st.unacked
                st.unacked = 0
                self.schedule_flush()

    def reset_stream(self, st: Stream, code: int) -> None:
        if st.closed:
            return
        self.streams.pop(st.id, None)
        self.blocked.pop(st.id, None)
        st.reset()
        self.out.append(f.rst_stream(st.id, code))
        if st.call is not None:
            st.call.cancel()
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """One write for everything queued this loop turn."""
        self._flush_scheduled = False
        out = self.out
        if out and not self._closed:
            data = b"".join(out)
            out.clear()
            self.transport.write(data)  # type: ignore[union-attr]

    def close_with(self, code: int, debug: str = "") -> None:
        """GOAWAY and close (a connection error, or the server shutting down)."""
        if self._closed:
            return
        if code != f.NO_ERROR:
            log.info("closing client connection %s: HTTP/2 error %d (%s)", self.peer, code, debug)
        self.out.append(f.goaway(self.last_stream_id, code, debug.encode()[:256]))
        self.flush()
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Stop taking new calls (GOAWAY NO_ERROR); calls in flight go on until closed."""
        if self._closed or self.going_away:
            return
        self.going_away = True
        self.out.append(f.goaway(self.last_stream_id, f.NO_ERROR))
        self.flush()


class Connections(set):
    """The open connections of a listener, so that stopping the server can close them."""

    def open(self, router: Router) -> H2Connection:
        conn = H2Connection(router, on_close=self.discard)
        self.add(conn)
        return conn

    def close_all(self) -> None:
        for conn in list(self):
            conn.close_with(f.NO_ERROR)
        self.clear()


def certificate_cn(transport: asyncio.BaseTransport) -> str | None:
    """The CN of the client's verified TLS certificate (none on plaintext or without a certificate)."""
    cert = transport.get_extra_info("peercert")
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(f.PROTOCOL_ERROR, "padded frame without pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(f.PROTOCOL_ERROR, "padding exceeds the frame")
    return payload[1:len(payload) - pad]
