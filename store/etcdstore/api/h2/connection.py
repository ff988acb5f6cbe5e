"""One client connection of the gRPC server: HTTP/2 framing, stream states, flow control, limits.

Why not grpcio's server: measured on this project's machine, grpc.aio spends ~400 µs of CPU
per unary call (its completion queue hops between a poller thread and the event loop several
times per call); a protocol on the event loop itself parses a read's frames in one pass and
answers every call that finished in the same loop turn with one write.

Because it shares the loop with Raft and every other client, a connection must never make the
loop work for it without bound (docs/h2.md has the design and every limit):

* streams follow RFC 9113's state machine (`transition`), and every frame is checked against
  its stream's state, its length and its stream id, answering with the RFC's stream or
  connection error;
* a connection handles at most `Limits.frames_per_turn` frames / `bytes_per_turn` bytes per
  loop turn, then stops reading until the next turn (header blocks, decoded in pure Python, have
  their own budget, `header_bytes_per_turn`, whose overspending is paid by sitting out turns);
  it also stops reading while its transport's
  output is backed up (the client does not read), so answers to a client's control frames can
  not pile up;
* resources a client can make us hold are bounded: streams (SETTINGS_MAX_CONCURRENT_STREAMS),
  resets (rapid reset), header blocks (size, CONTINUATION frames, HPACK output), request bytes
  (windows, the gRPC length prefix, a per-connection cap), queued control answers, pings
  (grpc-go's keepalive enforcement) and time (preface, SETTINGS ACK, idle and keepalive timers).

Flow control (RFC 9113 section 5.2):
* receiving: the connection window is given back as DATA arrives (as grpc-go does: holding it
  until the application reads would deadlock clients that interleave large requests on many
  streams); a stream's window is given back as its call consumes: as a unary request message is
  reassembled (its size capped by the length prefix check), as a streaming handler reads;
* sending: DATA never exceeds the client's connection and stream windows, nor is handed to a
  transport that asked us to pause; what does not fit waits on its stream. A stream's window is
  kept as an offset from the client's SETTINGS_INITIAL_WINDOW_SIZE, so a change of that setting
  costs O(1), not a walk of every stream.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from etcdstore.api.h2 import frames as f
from etcdstore.api.h2.limits import DEFAULT, UNLIMITED_STREAMS, Limits

if TYPE_CHECKING:
    from etcdstore.api.h2.calls import Call, Router

log = logging.getLogger(__name__)

STREAM_WINDOW = DEFAULT.stream_window  # what we grant each stream (SETTINGS_INITIAL_WINDOW_SIZE)
CONN_WINDOW = DEFAULT.conn_window  # what we grant the connection
_HIGH_WATER = 1 << 20  # a streaming writer waits while this much of its stream is unsent
_LOW_WATER = 256 << 10
_RESOURCE_EXHAUSTED = 8

# -- stream states (RFC 9113 5.1; "reserved" states need server push, which we never use) -----------
IDLE, OPEN, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, CLOSED = range(5)
STATE_NAMES = ("idle", "open", "half-closed (local)", "half-closed (remote)", "closed")
# Events.
RECV_HEADERS, RECV_END_STREAM, SEND_END_STREAM, RECV_RST, SEND_RST = range(5)
_ANY_CLOSE = CLOSED
# _NEXT[state][event]: the new state, or -code for a stream error of that code (and None where
# the event cannot happen on our side: a server never sends on an idle stream).
_E = -f.STREAM_CLOSED
_P = -f.PROTOCOL_ERROR
_NEXT: tuple[tuple[int, ...], ...] = (
    # RECV_HEADERS        RECV_END_STREAM     SEND_END_STREAM     RECV_RST  SEND_RST
    (OPEN, _P, _P, _P, CLOSED),  # idle
    (_P, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL, CLOSED, CLOSED),  # open (HEADERS: trailers, see _on_headers)
    (_P, CLOSED, _P, CLOSED, CLOSED),  # half-closed (local)
    (_E, _E, CLOSED, CLOSED, CLOSED),  # half-closed (remote)
    (_E, _E, _P, CLOSED, CLOSED),  # closed
)


class StreamError(Exception):
    """A stream error (RFC 9113 5.4.2): RST_STREAM with `code`; the connection goes on."""

    def __init__(self, code: int, debug: str = "") -> None:
        super().__init__(debug)
        self.code = code


def transition(state: int, event: int) -> int:
    """The one transition function of the stream state machine; raises StreamError."""
    new = _NEXT[state][event]
    if new < 0:
        raise StreamError(
            -new,
            f"{('HEADERS', 'END_STREAM', 'END_STREAM sent', 'RST_STREAM', 'RST_STREAM sent')[event]}"
            f" on a {STATE_NAMES[state]} stream",
        )
    return new


class ConnectionError_(Exception):
    """A connection error (RFC 9113 5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, debug: str = "") -> None:
        super().__init__(debug)
        self.code = code
        self.debug = debug


# How a recently closed stream ended, for frames that arrive after it (see H2Connection._closed_kind).
_ENDED = 0  # both sides ended it (or the client reset it): more frames are the client's error
_WE_RESET = 1  # we reset it while the client could still send: late frames are ignored
_RECENT = 256  # closed streams remembered, per generation (two generations)


class Stream:
    """The server's side of one HTTP/2 stream (one gRPC call)."""

    __slots__ = (
        "__weakref__",
        "call",
        "conn",
        "headers_sent",
        "id",
        "pending",
        "pending_bytes",
        "recv_window",
        "state",
        "trailer",
        "unacked",
        "win",
        "writable",
    )

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.id = stream_id
        self.conn = conn
        self.call: Call | None = None
        self.win = 0  # send window = conn.peer_initial_window + win (WINDOW_UPDATEs minus bytes sent)
        self.pending: collections.deque[bytes | memoryview] = collections.deque()
        self.pending_bytes = 0
        self.trailer: bytes | None = None  # our closing header block, once the data before it is out
        self.headers_sent = False
        self.state = OPEN  # transition(IDLE, RECV_HEADERS), the one way a stream of ours begins
        self.unacked = 0  # consumed bytes not yet credited with WINDOW_UPDATE
        self.recv_window = conn.limits.stream_window  # what the client may still send on this stream
        self.writable: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def remote_closed(self) -> bool:
        """The client sent END_STREAM (or the stream is gone)."""
        return self.state >= HALF_CLOSED_REMOTE

    @property
    def send_window(self) -> int:
        return self.conn.peer_initial_window + self.win

    # -- sending (called by the call) -------------------------------------------------------------

    def respond(self, data: bytes, trailer: bytes) -> None:
        """A whole unary answer: response headers, the message `data` (framed here), the trailers."""
        conn = self.conn
        if self.state == CLOSED:
            return
        n = len(data) + 5  # the DATA frame's payload: gRPC prefix and message
        if (
            not self.pending
            and n <= conn.peer_initial_window + self.win
            and n <= conn.send_window
            and n <= conn.peer_max_frame
            and not conn.paused
        ):
            self.win -= n
            conn.send_window -= n
            sid = self.id
            conn.out += (f.unary_start(sid, n - 5, not self.headers_sent), data, f.end_frame(sid, trailer))
            self.headers_sent = True
            conn.sent_data = True
            conn.end_stream(self)
            conn.schedule_flush()
            return
        self.send(f.grpc_message(data))
        self.finish(trailer)

    def send(self, message: bytes) -> None:
        """Queue one length-prefixed message; it goes out as the windows allow."""
        if self.state == CLOSED:
            return
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.out.append(self.conn.response_headers_frame(self.id))
        self.pending.append(message)
        self.pending_bytes += len(message)
        self.drain()

    def finish(self, trailer: bytes) -> None:
        """End the call with this trailer block (after whatever data is still queued)."""
        if self.state == CLOSED or self.trailer is not None:
            return
        conn = self.conn
        if not self.headers_sent and not self.pending:
            # Trailers-only response: the status travels in the one header block.
            self.headers_sent = True
            conn.out.append(
                f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, f.RESPONSE_HEADERS + trailer)
            )
            conn.sent_data = True
            conn.end_stream(self)
            conn.schedule_flush()
            return
        self.trailer = trailer
        self.drain()

    def drain(self) -> None:
        """Send queued data the windows (and the transport) allow; the trailers once nothing is queued."""
        conn = self.conn
        out = conn.out
        pending = self.pending
        sid = self.id
        while pending:
            avail = min(conn.peer_initial_window + self.win, conn.send_window, conn.peer_max_frame)
            if avail <= 0 or conn.paused:
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
            self.win -= n
            conn.send_window -= n
            self.pending_bytes -= n
            out.append(f.frame(f.DATA, 0, sid, chunk))
            conn.sent_data = True
            if conn.out_bytes_over():  # hand what we have to the transport before queueing more
                conn.flush()
        if not pending and self.trailer is not None:
            out.append(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, self.trailer))
            self.trailer = None
            conn.end_stream(self)
        waiter = self.writable
        if (
            waiter is not None
            and (self.pending_bytes < _LOW_WATER or self.state == CLOSED)
            and not conn.paused
        ):
            self.writable = None
            conn.writers.pop(sid, None)
            if not waiter.done():
                waiter.set_result(None)
        conn.schedule_flush()

    def write_blocked(self) -> bool:
        """Too much of this stream is unsent, or the socket's buffer is full."""
        return self.pending_bytes >= _HIGH_WATER or self.conn.paused

    async def wait_writable(self) -> None:
        """Wait while `write_blocked` (or until the stream is gone)."""
        while self.state != CLOSED and self.write_blocked():
            if self.writable is None:
                self.writable = asyncio.get_running_loop().create_future()
                self.conn.writers[self.id] = self
            await self.writable

    def _wake(self) -> None:
        waiter = self.writable
        if waiter is not None:
            self.writable = None
            if not waiter.done():
                waiter.set_result(None)

    def reset(self) -> None:
        """The stream is gone (RST_STREAM either way, or the connection closed)."""
        self.state = CLOSED
        self.pending.clear()
        self.pending_bytes = 0
        self._wake()


# A header block made only of one-byte indexed fields (RFC 7541 6.1: 0x80 | index, index 1-126)
# reads the decoder's dynamic table and changes nothing in it, so while no block of another kind
# comes (only those can change the table: literals with indexing, size updates) the same bytes
# decode to the same headers. A client's repeated calls send exactly such blocks (grpc-go: 8
# bytes per call once its fields are in the table), so each connection keeps their decoded
# headers and decodes such a block once instead of per call (hpack is pure Python: ~15% of a
# member's main thread at 100 clients doing puts, docs/performance.md). Everything else about the
# block is unchanged: its bytes are charged to the turn's header budget as before, and a block
# that fails to decode is never kept. Only small blocks of small header lists are kept (a few
# distinct ones per connection), so what a connection can make us hold stays small too.
_ALL_INDEXED = re.compile(rb"[\x81-\xfe]+").fullmatch
_DECODED_MAX = 16  # distinct such blocks kept per connection (cleared when full)
_DECODED_BLOCK_MAX = 128  # bytes of a kept block
_DECODED_LIST_MAX = 4096  # size of a kept header list, as HTTP/2 counts it (name + value + 32 each)

# -- request header names (RFC 9113 8.2): lowercase tokens, no connection-specific fields ---------------
_NAME_OK = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z").match
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Field values may hold neither NUL, CR nor LF, nor start or end with a space or tab (8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search
# Names and values seen valid (clients repeat theirs), so that most fields cost a set lookup.
_good_names: set[bytes] = set()
_good_values: set[bytes] = set()
_CACHE_MAX = 4096
_CACHE_VALUE_MAX = 128


def check_field_name(k: bytes) -> str | None:
    """Why a regular field name is malformed (or None: then it is remembered as valid)."""
    if not _NAME_OK(k):
        return f"invalid header field name {k[:64]!r}"
    if k in _CONNECTION_SPECIFIC:
        return f"connection-specific header field {k.decode()!r}"
    if len(_good_names) < _CACHE_MAX:
        _good_names.add(k)
    return None


def check_field_value(v: bytes) -> str | None:
    if _BAD_VALUE(v):
        return "invalid header field value"
    if len(v) <= _CACHE_VALUE_MAX and len(_good_values) < _CACHE_MAX:
        _good_values.add(v)
    return None


def check_field_names(names: list[bytes]) -> str | None:
    """Why one of these regular field names is malformed, or None."""
    for k in names:
        if k not in _good_names and (bad := check_field_name(k)):
            return bad
    return None


class H2Connection(asyncio.Protocol):
    """An HTTP/2 server connection whose streams are gRPC calls routed by `router`."""

    def __init__(
        self,
        router: Router,
        *,
        identity: str | None = None,
        on_close: Callable[[H2Connection], None] | None = None,
        limits: Limits = DEFAULT,
    ) -> None:
        self.router = router
        self.limits = limits
        self.identity = identity  # the verified client certificate's CN, if any
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}  # streams with data waiting for window or the transport
        self.writers: dict[int, Stream] = {}  # streams whose writer waits for `writable`
        self.out: list[bytes] = []
        self.paused = False  # the transport asked us to stop writing
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self._max_win = 0  # an upper bound of Stream.win over live streams (for the overflow check)
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.max_frame_in = f.DEFAULT_MAX_FRAME
        self.last_stream_id = 0
        self.going_away = False
        self.sent_data = False  # HEADERS or DATA went out since the client's last ping (grpc-go)
        self.held = 0  # bytes of unfinished request messages held by this connection's calls
        self._flush_scheduled = False
        self._drain_scheduled = False
        self._buf = b""
        self._preface = False
        self._got_settings = False
        self._settings_acked = False
        self._decoder = Decoder()
        self._decoder.max_header_list_size = limits.max_header_list_size
        self._decoded: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}  # see _ALL_INDEXED
        # headers awaiting CONTINUATION: stream id, flags, fragments, their size, CONTINUATION count
        self._cont: tuple[int, int, list[bytes]] | None = None
        self._cont_bytes = 0
        self._cont_frames = 0
        self._conn_unacked = 0
        self._recv_window = limits.conn_window  # what the client may still send on the connection
        self._closed = False
        self._closing = None  # the transport close timer after a GOAWAY
        self._read_paused = 0  # why reading is paused: _BUDGET | _BACKLOG
        self._hdr_credit = limits.header_bytes_per_turn  # header-block bytes this turn may still decode
        self._ctl_queued = 0  # control frames answered and not yet taken by the kernel
        self._recent: dict[int, int] = {}  # recently closed streams -> _ENDED / _WE_RESET
        self._recent_old: dict[int, int] = {}
        self._reset_tokens = float(limits.reset_burst)
        self._reset_at = 0.0
        self._last_ping_at = float("-inf")
        self._ping_strikes = 0
        self._activity = False  # a frame arrived since the keepalive timer last looked
        self._ping_out: bytes | None = None  # our keepalive ping awaiting its ACK
        self._idle_since = 0.0
        self._born = self._ping_at = 0.0  # when the connection began; when keepalive last looked
        self._goaway_sent = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline_kind = ""

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport
        limits = self.limits
        # a TCP transport
        transport.set_write_buffer_limits(high=limits.write_high_water)  # type: ignore[attr-defined]
        if self.identity is None:
            self.identity = certificate_cn(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        settings = {
            f.S_INITIAL_WINDOW_SIZE: limits.stream_window,
            f.S_ENABLE_PUSH: 0,
            f.S_MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
        }
        if limits.max_concurrent_streams < UNLIMITED_STREAMS:
            settings[f.S_MAX_CONCURRENT_STREAMS] = limits.max_concurrent_streams
        self.out.append(f.settings_frame(settings))
        if limits.conn_window > f.DEFAULT_WINDOW:
            self.out.append(f.window_update(0, limits.conn_window - f.DEFAULT_WINDOW))
        now = self.loop.time()
        self._born = self._ping_at = now
        self._idle_since = now
        self._arm_timer(now)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        self.writers.clear()
        for st in streams:
            st.reset()
            call = st.call
            st.call = None
            if call is not None:
                call.cancel()
        self.out.clear()
        self._buf = b""
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self.paused = True
        self._pause_reading(_BACKLOG)

    def resume_writing(self) -> None:
        self.paused = False
        self._drain_blocked()
        for st in list(self.writers.values()):
            if st.pending_bytes < _LOW_WATER:
                self.writers.pop(st.id, None)
                st._wake()
        if not self.paused:
            self._resume_reading(_BACKLOG)

    def data_received(self, data: bytes) -> None:
        self._activity = True
        self._buf = self._buf + data if self._buf else data
        self._process()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # -- reading, a bounded amount per loop turn --------------------------------------------------

    def _process(self) -> None:
        buf = self._buf
        pos = 0
        if not self._preface:
            if len(buf) < len(f.PREFACE):
                if not f.PREFACE.startswith(buf):
                    self.close_with(f.PROTOCOL_ERROR, "bad connection preface")
                return
            if not buf.startswith(f.PREFACE):
                self.close_with(f.PROTOCOL_ERROR, "bad connection preface")
                return
            pos = len(f.PREFACE)
            self._preface = True
        n = len(buf)
        unpack = f.HEAD.unpack_from
        handlers = _HANDLERS
        limits = self.limits
        frames_left = limits.frames_per_turn
        bytes_left = limits.bytes_per_turn
        if self._hdr_credit < limits.header_bytes_per_turn:  # a new turn (see _refill_header_credit)
            self._refill_header_credit()
        try:
            while n - pos >= 9:
                if self._closed:
                    return
                if frames_left <= 0 or bytes_left <= 0 or self.paused or self._hdr_credit <= 0:
                    # This connection has had its share of the turn (or its client does not read):
                    # the rest waits, and so does the socket.
                    if not self.paused:
                        self._pause_reading(_BUDGET)
                        self.loop.call_soon(self._next_turn)
                    break
                hi, lo, ftype, flags, sid = unpack(buf, pos)
                length = (hi << 8) | lo
                if length > self.max_frame_in:
                    raise ConnectionError_(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = pos + 9 + length
                if end > n:
                    break
                payload = buf[pos + 9 : end]
                pos = end
                frames_left -= 1
                bytes_left -= 9 + length
                sid &= 0x7FFFFFFF
                if not self._got_settings:
                    if ftype != f.SETTINGS or flags & f.ACK:
                        raise ConnectionError_(f.PROTOCOL_ERROR, "the client preface must end with SETTINGS")
                    self._got_settings = True
                if self._cont is not None and ftype != f.CONTINUATION:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "expected CONTINUATION")
                if ftype <= 9:
                    try:
                        handlers[ftype](self, flags, sid, payload, length)
                    except StreamError as e:
                        self._stream_error(sid, e.code)
                # Unknown frame types are ignored (RFC 9113 5.5).
        except ConnectionError_ as e:
            self.close_with(e.code, e.debug)
            return
        except Exception:  # a bug of ours must end this connection cleanly, not the member
            log.exception("client connection %s: unexpected error", self.peer)
            self.close_with(f.INTERNAL_ERROR, "internal error")
            return
        self._buf = buf[pos:] if pos < n else b""
        if self._hdr_credit <= 0 and not self._read_paused & _BUDGET and not self._closed:
            # Header decoding overspent this turn's budget: no reading until the debt is paid.
            self._pause_reading(_BUDGET)
            self.loop.call_soon(self._next_turn)
        self.flush()  # (clears _ctl_queued once the kernel has taken every answer)
        if self._ctl_queued > limits.max_queued_control_frames:
            self.close_with(f.ENHANCE_YOUR_CALM, "too many control frames queued")

    def _refill_header_credit(self) -> None:
        """A new turn: the header-decoding budget grows by one turn's worth (a debt shrinks by it)."""
        per_turn = self.limits.header_bytes_per_turn
        credit = self._hdr_credit + per_turn
        self._hdr_credit = min(credit, per_turn)

    def _next_turn(self) -> None:
        if self._closed:
            return
        self._read_paused &= ~_BUDGET
        if self._buf:
            self._process()
        elif self._hdr_credit <= 0:
            self._refill_header_credit()
            if self._hdr_credit <= 0:  # still in debt: sit out this turn too
                self._pause_reading(_BUDGET)
                self.loop.call_soon(self._next_turn)
                return
        if not self._closed and not self._read_paused:
            self._resume_reading(0)

    def _pause_reading(self, why: int) -> None:
        if not self._read_paused and self.transport is not None and not self._closed:
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass
        self._read_paused |= why

    def _resume_reading(self, why: int) -> None:
        self._read_paused &= ~why
        if self._read_paused or self._closed or self.transport is None:
            return
        if why == _BACKLOG and self._buf:
            self._pause_reading(_BUDGET)
            self.loop.call_soon(self._next_turn)
            return
        try:
            self.transport.resume_reading()
        except (RuntimeError, AttributeError):
            pass

    # -- frames (one handler per type; RFC 9113 section 6) ---------------------------------------

    def _on_data(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_window -= length
        if self._recv_window < 0:
            raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._credit_conn(length)  # the connection window comes back as bytes arrive (see above)
        if flags & f.PADDED:  # the frame's own format first, whatever its stream's state (RFC 9113 6.1)
            payload = _unpad(payload)
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_stream_id:
                raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on an idle stream")
            if self._closed_kind(sid) == _WE_RESET:
                return  # in flight when we reset it
            raise StreamError(f.STREAM_CLOSED, "DATA on a closed stream")
        st.recv_window -= length
        if st.recv_window < 0:
            raise StreamError(f.FLOW_CONTROL_ERROR, "stream window exceeded")
        end = flags & f.END_STREAM
        if end:
            st.state = transition(st.state, RECV_END_STREAM)
        elif st.state >= HALF_CLOSED_REMOTE:
            raise StreamError(f.STREAM_CLOSED, "DATA after END_STREAM")
        if length != len(payload):
            self.credit(st, length - len(payload))  # padding is consumed on arrival
        call = st.call
        if call is not None:
            call.on_data(payload, bool(end))
        if st.state == CLOSED:  # we had finished; the client has now too
            self._forget(st, _ENDED)

    def _on_headers(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & f.PADDED:
            payload = _unpad(payload)
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "HEADERS priority fields missing")
            if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                self._stream_error_after_block(sid, flags, payload[5:])
                return
            payload = payload[5:]
        if not flags & f.END_HEADERS:
            if len(payload) > self.limits.max_header_list_size:
                raise ConnectionError_(f.ENHANCE_YOUR_CALM, "header block too large")
            self._cont = (sid, flags, [payload])
            self._cont_bytes = len(payload)
            self._cont_frames = 0
            return
        self._headers_complete(sid, flags, payload)

    def _on_continuation(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        cont = self._cont
        if cont is None or cont[0] != sid:
            raise ConnectionError_(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._cont_frames += 1
        self._cont_bytes += len(payload)
        if self._cont_bytes > self.limits.max_header_list_size:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "header block too large")
        if self._cont_frames > self.limits.max_continuation_frames:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        cont[2].append(payload)
        if flags & f.END_HEADERS:
            self._cont = None
            csid, cflags, parts = cont
            if cflags & 0x100:  # a self-dependent HEADERS: decoded for HPACK's sake, then refused
                self._decode(b"".join(parts))
                raise StreamError(f.PROTOCOL_ERROR, "stream depends on itself")
            self._headers_complete(csid, cflags, b"".join(parts))

    def _stream_error_after_block(self, sid: int, flags: int, block: bytes) -> None:
        if flags & f.END_HEADERS:
            self._decode(block)
            self.last_stream_id = max(self.last_stream_id, sid)
            raise StreamError(f.PROTOCOL_ERROR, "stream depends on itself")
        self._cont = (sid, flags | 0x100, [block])
        self._cont_bytes = len(block)
        self._cont_frames = 0

    def _decode(self, block: bytes) -> Sequence[tuple[bytes, bytes]]:
        self._hdr_credit -= len(block)  # the turn's header budget (see Limits.header_bytes_per_turn)
        decoded = self._decoded
        headers = decoded.get(block)
        if headers is not None:
            return headers
        indexed = _ALL_INDEXED(block)
        if decoded and not indexed:
            decoded.clear()  # this block may change the dynamic table (even if it then fails to decode)
        try:
            headers = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise ConnectionError_(
                f.ENHANCE_YOUR_CALM, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE"
            ) from None
        except HPACKError as e:
            raise ConnectionError_(f.COMPRESSION_ERROR, str(e)) from None
        except (ValueError, IndexError, UnicodeError) as e:  # hpack's own checks are not exhaustive
            raise ConnectionError_(f.COMPRESSION_ERROR, str(e)) from None
        if (
            indexed
            and len(block) <= _DECODED_BLOCK_MAX
            and sum(len(k) + len(v) + 32 for k, v in headers) <= _DECODED_LIST_MAX
        ):
            # It read the dynamic table and changed nothing: the same bytes mean the same headers
            # until a block of another kind comes (see _ALL_INDEXED).
            if len(decoded) >= _DECODED_MAX:
                decoded.clear()
            headers = decoded[block] = tuple(headers)
        return headers

    def _headers_complete(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)  # always decoded: the HPACK table is the connection's
        end_stream = flags & f.END_STREAM
        st = self.streams.get(sid)
        if st is not None:  # trailers from the client
            if not end_stream:
                raise StreamError(f.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            st.state = transition(st.state, RECV_END_STREAM)
            if any(k[:1] == b":" for k, _ in headers) or check_field_names([k for k, _ in headers]):
                raise StreamError(f.PROTOCOL_ERROR, "malformed trailers")
            if st.call is not None:
                st.call.on_data(b"", True)
            if st.state == CLOSED:
                self._forget(st, _ENDED)
            return
        if not sid & 1:
            raise ConnectionError_(f.PROTOCOL_ERROR, f"stream id {sid} is even")
        if sid <= self.last_stream_id:
            kind = self._closed_kind(sid)
            if kind == _WE_RESET:
                return  # trailers on a stream we reset
            if kind == _ENDED:
                raise ConnectionError_(f.STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            raise ConnectionError_(f.PROTOCOL_ERROR, f"stream id {sid} is not above {self.last_stream_id}")
        self.last_stream_id = sid
        if self.going_away:
            self._refuse(sid, f.REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            # Over SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 5.1.2): refused, retryable by the client.
            self._refuse(sid, f.REFUSED_STREAM)
            self._spend_reset_token()
            return
        st = Stream(self, sid)  # idle -> open
        self._idle_since = 0.0
        if end_stream:
            st.state = transition(OPEN, RECV_END_STREAM)
        self.streams[sid] = st
        self.router.open(self, st, headers)

    def _on_priority(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if length != 5:
            raise StreamError(f.FRAME_SIZE_ERROR, "PRIORITY length")
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
            raise StreamError(f.PROTOCOL_ERROR, "stream depends on itself")
        # Otherwise ignored: responses are written in the order they are ready (RFC 9113 5.3.2).

    def _on_rst_stream(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if length != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "RST_STREAM length")
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_stream_id:
                raise ConnectionError_(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return  # already closed
        st.state = transition(st.state, RECV_RST)
        call = st.call
        if call is not None and not call.finished:
            self._spend_reset_token()  # a call cut short by its client (rapid reset is many of them)
        self._close_stream(st, _ENDED)

    def _on_settings(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid != 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if length:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._settings_acked = True
            return
        if length % 6:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS length")
        for key, value in f.parse_settings(payload):
            self._apply_setting(key, value)
        self._control(f.frame(f.SETTINGS, f.ACK, 0))

    def _on_push_promise(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        raise ConnectionError_(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid != 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "PING on a stream")
        if length != 8:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "PING length")
        if flags & f.ACK:
            if payload == self._ping_out:
                self._ping_out = None
            return
        self._check_ping_policy()
        self._control(f.ping(payload, ack=True))

    def _on_goaway(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if sid != 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        if length < 8:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "GOAWAY length")
        self.going_away = True  # the client opens no more streams; those open finish

    def _on_window_update(self, flags: int, sid: int, payload: bytes, length: int) -> None:
        if length != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise ConnectionError_(f.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += inc
            if self.send_window > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window overflow")
            if self.blocked:  # (grpc-go sends one after each call's answer: most find nothing blocked)
                self._drain_blocked()
            return
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_stream_id:
                raise ConnectionError_(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # a closed stream: allowed, ignored
        if inc == 0:
            raise StreamError(f.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
        st.win += inc
        if self.peer_initial_window + st.win > f.MAX_WINDOW:
            raise StreamError(f.FLOW_CONTROL_ERROR, "stream window overflow")
        self._max_win = max(self._max_win, st.win)
        if st.pending:
            self.blocked.pop(sid, None)
            st.drain()

    def _apply_setting(self, key: int, value: int) -> None:
        if key == f.S_INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "initial window too large")
            if value + self._max_win > f.MAX_WINDOW and any(  # rare: only then each stream is looked at
                value + st.win > f.MAX_WINDOW for st in self.streams.values()
            ):
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "initial window overflows a stream window")
            grew = value > self.peer_initial_window
            self.peer_initial_window = value  # O(1): every stream's window is relative to it
            if grew and self.blocked and not self._drain_scheduled:
                self._drain_scheduled = True
                self.loop.call_soon(self._drain_blocked)
        elif key == f.S_MAX_FRAME_SIZE:
            if not f.DEFAULT_MAX_FRAME <= value <= (1 << 24) - 1:
                raise ConnectionError_(f.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
            self.peer_max_frame = value
        elif key == f.S_ENABLE_PUSH and value > 1:
            raise ConnectionError_(f.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        # Header table size: our responses never index, so the client's decoder table size is moot.
        # Unknown settings are ignored (RFC 9113 6.5.2).

    # -- limits and policies -----------------------------------------------------------------------

    def _control(self, frame: bytes) -> None:
        """Queue an answer to a client's frame (bounded: see _process)."""
        self.out.append(frame)
        self._ctl_queued += 1

    def _spend_reset_token(self, cost: int = 1) -> None:
        """Rapid reset protection: a bucket of `reset_burst` tokens refilled at `reset_rate`/s."""
        now = self.loop.time()
        limits = self.limits
        tokens = (
            min(limits.reset_burst, self._reset_tokens + (now - self._reset_at) * limits.reset_rate) - cost
        )
        self._reset_at = now
        self._reset_tokens = tokens
        if tokens < 0:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too many streams reset or refused")

    def refuse_oversized_header_list(self, size: int) -> None:
        """A call was refused for its header list's size: paid for like resets (GOAWAY past the burst)."""
        self._spend_reset_token(1 + size // self.limits.oversized_header_cost_bytes)

    def _check_ping_policy(self) -> None:
        """grpc-go's keepalive enforcement, which etcd configures with --grpc-keepalive-min-time."""
        now = self.loop.time()
        last = self._last_ping_at
        self._last_ping_at = now
        if self.sent_data:  # we sent HEADERS or DATA since the last ping: the slate is clean
            self.sent_data = False
            self._ping_strikes = 0
            return
        if not self.streams:
            # No call, no reason to ping (etcd: PermitWithoutStream false): grpc-go's 2 h.
            if now - last < 2 * 3600.0:
                self._ping_strikes += 1
        elif now - last < self.limits.keepalive_min_time:
            self._ping_strikes += 1
        if self._ping_strikes > self.limits.max_ping_strikes:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too_many_pings")

    # -- timers: preface/SETTINGS ACK, idle, keepalive --------------------------------------------

    def _arm_timer(self, now: float) -> None:
        """One timer per connection, set for the earliest of its deadlines."""
        limits = self.limits
        when = []
        if not (self._preface and self._got_settings) and limits.preface_timeout:
            when.append((self._born + limits.preface_timeout, "preface"))
        if not self._settings_acked and limits.settings_ack_timeout:
            when.append((self._born + limits.settings_ack_timeout, "settings"))
        if self._ping_out is not None:
            when.append((self._ping_at + limits.keepalive_timeout, "ping"))
        elif limits.keepalive_interval:
            when.append((self._ping_at + limits.keepalive_interval, "keepalive"))
        if limits.idle_timeout:
            idle = self._idle_since
            when.append(((idle if idle else now) + limits.idle_timeout, "idle"))
        if not when:
            return
        at, kind = min(when)
        self._deadline_kind = kind
        self._timer = self.loop.call_at(max(at, now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self.loop.time()
        kind = self._deadline_kind
        limits = self.limits
        if kind == "preface":
            if not (self._preface and self._got_settings):
                self.close_with(f.PROTOCOL_ERROR, "no client preface in time")
                return
        elif kind == "settings":
            if not self._settings_acked:
                self.close_with(f.SETTINGS_TIMEOUT, "SETTINGS not acknowledged in time")
                return
        elif kind == "ping":
            if self._ping_out is not None:
                self.close_with(f.NO_ERROR, "keepalive ping not acknowledged")
                return
        elif kind == "idle":
            if self.streams:
                self._idle_since = 0.0
            elif not self._idle_since:
                self._idle_since = now
            elif now - self._idle_since >= limits.idle_timeout:
                self.shutdown()
                self._close_soon()
                return
        elif kind == "keepalive":
            self._ping_at = now
            if not self._activity:  # nothing heard for a whole interval: is the client there?
                self._ping_out = os.urandom(8)
                self.out.append(f.ping(self._ping_out))
                self.flush()
            self._activity = False
        self._arm_timer(now)

    # -- streams -----------------------------------------------------------------------------------

    def _closed_kind(self, sid: int) -> int | None:
        """How a stream that is not open ended: _ENDED, _WE_RESET, or None (forgotten or never opened)."""
        kind = self._recent.get(sid)
        if kind is None:
            kind = self._recent_old.get(sid)
        return kind

    def _forget(self, st: Stream, kind: int) -> None:
        """The stream is closed: drop it (and its call's back reference, so no cycle outlives it)."""
        sid = st.id
        self.streams.pop(sid, None)
        self.blocked.pop(sid, None)
        self.writers.pop(sid, None)
        st.call = None
        recent = self._recent
        recent[sid] = kind
        if len(recent) >= _RECENT:
            self._recent_old = recent
            self._recent = {}
        if not self.streams:
            self._idle_since = self.loop.time() if self.limits.idle_timeout else 0.0
            self._max_win = 0

    def end_stream(self, st: Stream) -> None:
        """We sent END_STREAM on `st`."""
        st.state = transition(st.state, SEND_END_STREAM)
        if st.state == CLOSED:
            self._forget(st, _ENDED)
            return
        # The call is over while the client may still send: tell it to stop (RFC 9113 8.1).
        st.state = transition(st.state, SEND_RST)
        self.out.append(f.rst_stream(st.id, f.NO_ERROR))
        self._close_stream(st, _WE_RESET, cancel=False)

    def _close_stream(self, st: Stream, kind: int, cancel: bool = True) -> None:
        call = st.call
        st.reset()
        self._forget(st, kind)
        if cancel and call is not None:
            call.cancel()

    def _stream_error(self, sid: int, code: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            self.reset_stream(st, code)
        else:
            self._refuse(sid, code)

    def _refuse(self, sid: int, code: int) -> None:
        self._control(f.rst_stream(sid, code))
        recent = self._recent
        recent[sid] = _WE_RESET
        if len(recent) >= _RECENT:
            self._recent_old = recent
            self._recent = {}

    def reset_stream(self, st: Stream, code: int) -> None:
        if st.state == CLOSED:
            return
        st.state = transition(st.state, SEND_RST)
        self._control(f.rst_stream(st.id, code))
        self._close_stream(st, _WE_RESET)
        self.schedule_flush()

    def _drain_blocked(self) -> None:
        self._drain_scheduled = False
        if self._closed:
            return
        for st in list(self.blocked.values()):
            if self.paused or self.send_window <= 0:
                break
            self.blocked.pop(st.id, None)
            st.drain()

    # -- helpers for streams and calls ------------------------------------------------------------

    def response_headers_frame(self, sid: int) -> bytes:
        return f.frame(f.HEADERS, f.END_HEADERS, sid, f.RESPONSE_HEADERS)

    def _credit_conn(self, n: int) -> None:
        self._conn_unacked += n
        if self._conn_unacked >= self.limits.conn_window // 2:
            self.out.append(f.window_update(0, self._conn_unacked))
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0
            self.schedule_flush()

    def credit(self, st: Stream | None, n: int) -> None:
        """`n` received bytes of `st` were consumed: give its window back in large steps."""
        if n <= 0 or self._closed or st is None:
            return
        if st.state < HALF_CLOSED_REMOTE:
            st.unacked += n
            if st.unacked >= self.limits.stream_window // 2:
                self.out.append(f.window_update(st.id, st.unacked))
                st.recv_window += st.unacked
                st.unacked = 0
                self.schedule_flush()

    def out_bytes_over(self) -> bool:
        """More than the transport's high-water mark is queued in `out` (hand it over first)."""
        return len(self.out) > 64 and sum(map(len, self.out)) > self.limits.write_high_water

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
            transport = self.transport
            transport.write(data)  # type: ignore[union-attr]  # set while connected
            # set while connected
            if self._ctl_queued and not transport.get_write_buffer_size():  # type: ignore[union-attr]
                self._ctl_queued = 0  # the kernel took every answer

    def close_with(self, code: int, debug: str = "") -> None:
        """GOAWAY and close (a connection error, or the server shutting down)."""
        if self._closed:
            return
        if code != f.NO_ERROR:
            log.info("closing client connection %s: HTTP/2 error %d (%s)", self.peer, code, debug)
        if code != f.NO_ERROR or not self._goaway_sent:
            self.out.append(f.goaway(self.last_stream_id, code, debug.encode()[:256]))
        self.flush()
        self._closed = True
        self._buf = b""
        if self.transport is not None:
            self.transport.close()  # what is buffered (the GOAWAY) is written first

    def _close_soon(self) -> None:
        """After a graceful GOAWAY: close once the client had a moment to see it."""
        if self._closing is None and not self._closed:
            self._closing = self.loop.call_later(1.0, lambda: self.close_with(f.NO_ERROR))

    def shutdown(self) -> None:
        """Stop taking new calls (GOAWAY NO_ERROR); calls in flight go on until closed."""
        if self._closed or self._goaway_sent:
            return
        self.going_away = True
        self._goaway_sent = True
        self.out.append(f.goaway(self.last_stream_id, f.NO_ERROR))
        self.flush()

    def busy(self) -> bool:
        """A unary or client-streaming call is in flight (a graceful stop waits for those)."""
        for st in self.streams.values():
            call = st.call
            if call is not None and not call.handler.response_streaming and not call.finished:
                return True
        return False


# Frame handlers by type (functions, not bound methods: no connection <-> handler cycle).
_HANDLERS = (
    H2Connection._on_data,
    H2Connection._on_headers,
    H2Connection._on_priority,
    H2Connection._on_rst_stream,
    H2Connection._on_settings,
    H2Connection._on_push_promise,
    H2Connection._on_ping,
    H2Connection._on_goaway,
    H2Connection._on_window_update,
    H2Connection._on_continuation,
)
_BUDGET = 1  # reading paused until the next loop turn (fairness)
_BACKLOG = 2  # reading paused until the transport takes more output


class Connections(set):
    """The open connections of a listener, so that stopping the server can close them."""

    def __init__(self, limits: Limits = DEFAULT) -> None:
        super().__init__()
        self.limits = limits

    def open(self, router: Router) -> H2Connection:
        conn = H2Connection(router, on_close=self.discard, limits=self.limits)
        self.add(conn)
        return conn

    def close_all(self) -> None:
        for conn in list(self):
            conn.close_with(f.NO_ERROR)
        self.clear()

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful stop: GOAWAY to every client, wait (up to `grace`) for the unary calls in flight,
        then close. Long-running streams (watches) end at the close; their clients reconnect."""
        grace = self.limits.shutdown_grace if grace is None else grace
        conns = list(self)
        for conn in conns:
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and any(c.busy() for c in conns if not c._closed):
            await asyncio.sleep(0.01)
        self.close_all()


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
    return payload[1 : len(payload) - pad]
