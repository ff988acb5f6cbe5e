"""The client HTTP/2 server's protocol rules and limits (docs/h2.md), one test per rule or limit.

Each test speaks raw HTTP/2 (the RawH2 client of test_h2_server.py) to a server built with the
`Limits` under test, or feeds an `H2Connection` a fake transport where the rule is about what
the server does within one loop turn (fairness, paused transports, queued answers).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from etcdstore.api.h2 import H2Connection
from etcdstore.api.h2 import frames as f
from etcdstore.api.h2.calls import Call
from etcdstore.api.h2.connection import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    HALF_CLOSED_REMOTE,
    IDLE,
    OPEN,
    RECV_END_STREAM,
    RECV_HEADERS,
    RECV_RST,
    SEND_END_STREAM,
    SEND_RST,
    Connections,
    StreamError,
    transition,
)
from etcdstore.api.h2.limits import DEFAULT, Limits
from etcdstore.config import parse_args
from hpack import Encoder
from test_h2_server import RawH2, Servicer, _goaway, make_router

pytestmark = pytest.mark.timeout(30)

SERVICE = "test.Echo"


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


class Server:
    def __init__(self, limits: Limits) -> None:
        self.servicer = Servicer()
        self.router = make_router(self.servicer)
        self.conns = Connections(limits)
        self.raws: list[RawH2] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: self.conns.open(self.router), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def raw(self, **kwargs: Any) -> RawH2:
        raw = await RawH2.connect(self.port, **kwargs)
        self.raws.append(raw)
        return raw

    async def close(self) -> None:
        for raw in self.raws:
            await raw.close()
        assert self.server is not None
        self.server.close()
        self.conns.close_all()
        await asyncio.wait_for(self.server.wait_closed(), 5)


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def start(**changes: Any) -> Server:
        srv = Server(DEFAULT.replace(**changes))
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.close()


async def settings_of(raw: RawH2) -> dict[int, int]:
    first = await raw.next()
    assert first is not None and first.type == f.SETTINGS and not first.flags & f.ACK
    return dict(f.parse_settings(first.payload))


async def goaway_of(raw: RawH2, timeout: float = 5.0) -> tuple[int, int, bytes]:
    """(last stream id, code, debug data) of the GOAWAY that ends the connection."""
    frames = await raw.to_eof(timeout)
    last, code = _goaway(frames)
    debug = next(fr.payload[8:] for fr in frames if fr.type == f.GOAWAY)
    return last, code, debug


async def rst_of(raw: RawH2, sid: int) -> int:
    fr, _ = await raw.until(lambda fr: fr.type == f.RST_STREAM and fr.sid == sid)
    return int.from_bytes(fr.payload, "big")


async def still_serves(raw: RawH2, sid: int) -> None:
    raw.request(sid, path("Unary"), b"still here")
    assert (await raw.response(sid)).messages() == [b"still here"]


# -- the stream state machine ---------------------------------------------------------------------


def test_transition_function_follows_rfc_9113_figure_2() -> None:
    assert transition(IDLE, RECV_HEADERS) == OPEN
    assert transition(OPEN, RECV_END_STREAM) == HALF_CLOSED_REMOTE
    assert transition(OPEN, SEND_END_STREAM) == HALF_CLOSED_LOCAL
    assert transition(HALF_CLOSED_REMOTE, SEND_END_STREAM) == CLOSED
    assert transition(HALF_CLOSED_LOCAL, RECV_END_STREAM) == CLOSED
    for state in (OPEN, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, CLOSED):
        assert transition(state, RECV_RST) == CLOSED
        assert transition(state, SEND_RST) == CLOSED
    for state, event, code in (
        (HALF_CLOSED_REMOTE, RECV_END_STREAM, f.STREAM_CLOSED),
        (HALF_CLOSED_REMOTE, RECV_HEADERS, f.STREAM_CLOSED),
        (CLOSED, RECV_END_STREAM, f.STREAM_CLOSED),
        (IDLE, RECV_END_STREAM, f.PROTOCOL_ERROR),
    ):
        with pytest.raises(StreamError) as e:
            transition(state, event)
        assert e.value.code == code


async def test_data_on_a_half_closed_remote_stream_is_stream_closed(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Gate"), b"g")  # END_STREAM: half-closed (remote) while the handler waits
    await asyncio.wait_for(srv.servicer.started.wait(), 5)
    raw.send(f.frame(f.DATA, 0, 1, f.grpc_message(b"more")))
    assert await rst_of(raw, 1) == f.STREAM_CLOSED
    await still_serves(raw, 3)


async def test_data_on_a_closed_stream_is_stream_closed(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Unary"), b"done")
    await raw.response(1)
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, f.grpc_message(b"late")))
    assert await rst_of(raw, 1) == f.STREAM_CLOSED
    await still_serves(raw, 3)


async def test_headers_on_a_closed_stream_is_a_connection_error(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Unary"), b"done")
    await raw.response(1)
    raw.request(1, path("Unary"), b"again")
    assert (await goaway_of(raw))[1] == f.STREAM_CLOSED


async def test_decreasing_stream_id_is_a_protocol_error(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(5, path("Unary"), b"five")
    await raw.response(5)
    raw.request(3, path("Unary"), b"three")
    assert (await goaway_of(raw))[1] == f.PROTOCOL_ERROR


async def test_even_stream_id_from_a_client_is_a_protocol_error(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(2, path("Unary"), b"even")
    assert (await goaway_of(raw))[1] == f.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "name,frame",
    [
        ("RST_STREAM on an idle stream", f.rst_stream(9, f.CANCEL)),
        ("WINDOW_UPDATE on an idle stream", f.window_update(9, 100)),
        ("DATA on an idle stream", f.frame(f.DATA, 0, 9, b"x")),
        ("CONTINUATION without HEADERS", f.frame(f.CONTINUATION, f.END_HEADERS, 1, b"")),
        ("PING on a stream", f.frame(f.PING, 0, 1, b"12345678")),
        ("SETTINGS on a stream", f.frame(f.SETTINGS, 0, 1, b"")),
        ("GOAWAY on a stream", f.frame(f.GOAWAY, 0, 1, struct.pack(">II", 0, 0))),
        ("PRIORITY on stream 0", f.frame(f.PRIORITY, 0, 0, b"\0\0\0\1\x10")),
        ("PUSH_PROMISE from a client", f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\2")),
    ],
)
async def test_frames_on_idle_streams_or_stream_zero_are_protocol_errors(
    serve: Any, name: str, frame: bytes
) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.send(frame)
    assert (await goaway_of(raw))[1] == f.PROTOCOL_ERROR, name


@pytest.mark.parametrize(
    "name,frame",
    [
        ("RST_STREAM of 3 bytes", f.frame(f.RST_STREAM, 0, 1, b"\0\0\0")),
        ("RST_STREAM of 5 bytes", f.frame(f.RST_STREAM, 0, 1, b"\0\0\0\0\0")),
        ("WINDOW_UPDATE of 3 bytes", f.frame(f.WINDOW_UPDATE, 0, 0, b"\0\0\1")),
        ("PING of 7 bytes", f.frame(f.PING, 0, 0, b"1234567")),
        ("SETTINGS of 5 bytes", f.frame(f.SETTINGS, 0, 0, b"\0\1\0\0\0")),
        ("SETTINGS ACK with a payload", f.frame(f.SETTINGS, f.ACK, 0, b"\0\1\0\0\0\0")),
        ("GOAWAY of 7 bytes", f.frame(f.GOAWAY, 0, 0, b"\0" * 7)),
    ],
)
async def test_wrong_length_control_frames_are_frame_size_errors(serve: Any, name: str, frame: bytes) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Unary"), b"open a stream first")
    await raw.response(1)
    raw.send(frame)
    assert (await goaway_of(raw))[1] == f.FRAME_SIZE_ERROR, name


async def test_wrong_length_priority_is_a_stream_error(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.send(f.frame(f.PRIORITY, 0, 1, b"\0\0\0\0"))
    assert await rst_of(raw, 1) == f.FRAME_SIZE_ERROR
    await still_serves(raw, 3)


async def test_self_dependent_priority_is_a_stream_error(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.send(f.frame(f.PRIORITY, 0, 1, struct.pack(">IB", 1, 16)))
    assert await rst_of(raw, 1) == f.PROTOCOL_ERROR
    await still_serves(raw, 3)


async def test_zero_window_update_on_a_stream_is_a_stream_error(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Gate"), b"g")
    await asyncio.wait_for(srv.servicer.started.wait(), 5)
    raw.send(f.window_update(1, 0))
    assert await rst_of(raw, 1) == f.PROTOCOL_ERROR
    await still_serves(raw, 3)


async def test_the_client_preface_must_end_with_settings(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw(preface=None)
    raw.send(f.PREFACE + f.frame(f.PING, 0, 0, b"12345678"))
    assert (await goaway_of(raw))[1] == f.PROTOCOL_ERROR


# -- request headers (RFC 9113 8.2-8.3) ------------------------------------------------------------


def _block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return Encoder().encode(fields)


_GOOD = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", path("Unary").encode()),
    (b":authority", b"x"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


@pytest.mark.parametrize(
    "name,fields",
    [
        ("uppercase name", _GOOD + [(b"X-Upper", b"v")]),
        ("connection-specific field", _GOOD + [(b"connection", b"keep-alive")]),
        ("transfer-encoding", _GOOD + [(b"transfer-encoding", b"chunked")]),
        ("te other than trailers", [*_GOOD[:5], (b"te", b"gzip")]),
        ("missing :path", [fv for fv in _GOOD if fv[0] != b":path"]),
        ("empty :path", [(b":path", b"") if k == b":path" else (k, v) for k, v in _GOOD]),
        ("missing :method", _GOOD[1:]),
        ("unknown pseudo-header", [(b":protocol", b"x"), *_GOOD]),
        ("response pseudo-header", [(b":status", b"200"), *_GOOD]),
        ("pseudo-header after a regular field", [*_GOOD, (b":authority", b"y")]),
        ("repeated pseudo-header", [_GOOD[0], *_GOOD]),
        ("value with a leading space", _GOOD + [(b"x-a", b" v")]),
        ("value with a trailing tab", _GOOD + [(b"x-a", b"v\t")]),
        ("value with CR", _GOOD + [(b"x-a", b"a\rb")]),
        ("value with NUL", _GOOD + [(b"x-a", b"a\0b")]),
        ("name with a space", _GOOD + [(b"x a", b"v")]),
    ],
)
async def test_malformed_requests_are_refused_with_protocol_error(
    serve: Any, name: str, fields: list[tuple[bytes, bytes]]
) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, _block(fields)),
        f.frame(f.DATA, f.END_STREAM, 1, f.grpc_message(b"x")),
    )
    resp = await raw.response(1)
    assert resp.reset == f.PROTOCOL_ERROR, (name, resp)
    raw2 = await srv.raw()  # a fresh HPACK context for the check that the server still serves
    await still_serves(raw2, 1)


async def test_pseudo_headers_in_client_trailers_are_malformed(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Collect"), b"a", end=False)
    raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, raw.encoder.encode([(":path", "/x")])))
    assert await rst_of(raw, 1) == f.PROTOCOL_ERROR


async def test_second_headers_without_end_stream_is_malformed(serve: Any) -> None:
    # RFC 9113 8.1 (h2spec http2/8.1/1 cannot see it: its `GET /` is answered first).
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Collect"), b"a", end=False)
    raw.send(f.frame(f.HEADERS, f.END_HEADERS, 1, raw.encoder.encode([("x-trailer", "v")])))
    assert await rst_of(raw, 1) == f.PROTOCOL_ERROR
    await still_serves(raw, 3)


# -- fairness ----------------------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Records what the server writes; `backlog` is what the kernel has not taken (never drained
    unless the test says so)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.backlog = 0

    def write(self, data: bytes) -> None:  # type: ignore[override]  # a fake transport
        self.written += data
        self.backlog += len(data)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        out, data, pos = [], bytes(self.written), 0
        while len(data) - pos >= 9:
            hi, lo, ftype, flags, sid = f.HEAD.unpack_from(data, pos)
            n = (hi << 8) | lo
            out.append((ftype, flags, sid, data[pos + 9 : pos + 9 + n]))
            pos += 9 + n
        return out

    def count(self, ftype: int, flags: int | None = None) -> int:
        return sum(1 for t, fl, _, _ in self.frames() if t == ftype and (flags is None or fl == flags))


def fake_connection(**changes: Any) -> tuple[H2Connection, FakeTransport]:
    conn = H2Connection(make_router(Servicer()), limits=DEFAULT.replace(**changes))
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def until(pred: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0)


async def test_a_connection_handles_a_bounded_number_of_frames_per_loop_turn() -> None:
    conn, transport = fake_connection(frames_per_turn=16)
    conn.data_received(f.PREFACE + f.settings_frame({}) + f.frame(f.SETTINGS, 0, 0) * 200)
    # One turn: at most 16 frames, then reading pauses until the next turn.
    assert transport.count(f.SETTINGS, f.ACK) <= 16
    assert not transport.reading
    await until(lambda: transport.count(f.SETTINGS, f.ACK) == 201)
    await until(lambda: transport.reading)
    conn.connection_lost(None)


async def test_reading_pauses_while_the_transport_is_backed_up() -> None:
    conn, transport = fake_connection()
    conn.data_received(f.PREFACE + f.settings_frame({}))
    acks = transport.count(f.SETTINGS, f.ACK)
    conn.pause_writing()
    assert not transport.reading
    conn.data_received(f.frame(f.SETTINGS, 0, 0) * 10)
    assert transport.count(f.SETTINGS, f.ACK) == acks  # nothing handled while the client does not read
    transport.backlog = 0
    conn.resume_writing()
    await until(lambda: transport.count(f.SETTINGS, f.ACK) == acks + 10)
    await until(lambda: transport.reading)
    conn.connection_lost(None)


async def test_stream_data_waits_while_the_transport_is_paused() -> None:
    conn, transport = fake_connection()
    block = Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path("Sized")),
            ("content-type", "application/grpc"),
        ]
    )
    conn.data_received(
        f.PREFACE
        + f.settings_frame({})
        + f.frame(f.SETTINGS, f.ACK, 0)
        + f.frame(f.HEADERS, f.END_HEADERS, 1, block)
        + f.frame(f.DATA, f.END_STREAM, 1, f.grpc_message(b"30000"))
    )
    conn.pause_writing()  # before the handler answers
    await until(lambda: 1 in conn.blocked)  # the answer is ready, and waits
    assert not any(t == f.DATA and sid == 1 for t, _, sid, _ in transport.frames())
    conn.resume_writing()
    await until(lambda: transport.count(f.HEADERS, f.END_HEADERS | f.END_STREAM) == 1)
    assert sum(len(p) for t, _, sid, p in transport.frames() if t == f.DATA and sid == 1) == 30005
    conn.connection_lost(None)


# -- limits ----------------------------------------------------------------------------------------


async def test_max_concurrent_streams_is_advertised_and_enforced(serve: Any) -> None:
    srv = await serve(max_concurrent_streams=2)
    raw = await srv.raw()
    assert (await settings_of(raw))[f.S_MAX_CONCURRENT_STREAMS] == 2
    raw.request(1, path("Gate"), b"a")
    raw.request(3, path("Gate"), b"b")
    raw.request(5, path("Gate"), b"c")
    assert await rst_of(raw, 5) == f.REFUSED_STREAM
    srv.servicer.gate.set()
    assert (await raw.response(1)).messages() == [b"a"]
    assert (await raw.response(3)).messages() == [b"b"]
    await still_serves(raw, 7)


async def test_unlimited_streams_are_not_advertised_as_etcd_and_grpc_go_do(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    settings = await settings_of(raw)
    assert f.S_MAX_CONCURRENT_STREAMS not in settings
    assert settings[f.S_MAX_HEADER_LIST_SIZE] == DEFAULT.max_header_list_size


async def test_rapid_reset_gets_goaway_enhance_your_calm(serve: Any) -> None:
    srv = await serve(reset_burst=20, reset_rate=0.01)
    raw = await srv.raw()
    block = raw.header_block(path("Unary"))
    raw.send(
        *(
            f.frame(f.HEADERS, f.END_HEADERS, sid, block) + f.rst_stream(sid, f.CANCEL)
            for sid in range(1, 2 * 40, 2)
        )
    )
    assert (await goaway_of(raw))[1] == f.ENHANCE_YOUR_CALM


async def test_reset_streams_are_freed_without_the_garbage_collector(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    block = raw.header_block(path("Gate"))
    gc.collect()
    gc.disable()
    try:
        raw.send(
            *(
                f.frame(f.HEADERS, f.END_HEADERS, sid, block) + f.rst_stream(sid, f.CANCEL)
                for sid in range(1, 2 * 300, 2)
            )
        )
        raw.send(f.frame(f.PING, 0, 0, b"after..."))
        await raw.until(lambda fr: fr.type == f.PING and fr.payload == b"after...")
        for _ in range(3):
            await asyncio.sleep(0)
        calls = sum(1 for o in gc.get_objects() if type(o) is Call)
    finally:
        gc.enable()
    assert calls == 0
    await still_serves(raw, 601)


async def test_continuation_flood_gets_enhance_your_calm(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.send(
        f.frame(f.HEADERS, 0, 1, raw.header_block(path("Unary"))),
        *(f.frame(f.CONTINUATION, 0, 1, b"") for _ in range(DEFAULT.max_continuation_frames + 1)),
    )
    assert (await goaway_of(raw))[1] == f.ENHANCE_YOUR_CALM


async def test_header_block_above_max_header_list_size_gets_enhance_your_calm(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    block = raw.header_block(path("Meta"), [("x-big", "v" * (DEFAULT.max_header_list_size + 1000))])
    parts = [block[i : i + f.DEFAULT_MAX_FRAME] for i in range(0, len(block), f.DEFAULT_MAX_FRAME)]
    raw.send(
        f.frame(f.HEADERS, 0, 1, parts[0]),
        *(
            f.frame(f.CONTINUATION, f.END_HEADERS if i == len(parts) - 1 else 0, 1, p)
            for i, p in enumerate(parts)
            if i
        ),
    )
    assert (await goaway_of(raw))[1] == f.ENHANCE_YOUR_CALM


async def test_hpack_bomb_is_bounded_by_max_header_list_size(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    # One 4000-byte entry in the dynamic table, then referenced 100 times (1 byte each): 400 KB out.
    big = b"\x40" + f._int(5, 7) + b"x-big" + f._int(3990, 7) + b"b" * 3990
    block = raw.header_block(path("Unary")) + big + b"\xbe" * 100  # 0xbe: indexed field 62
    raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
    assert (await goaway_of(raw))[1] == f.ENHANCE_YOUR_CALM


async def test_huffman_output_is_bounded_by_max_header_list_size(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    n = DEFAULT.max_header_list_size + 1000  # Huffman 'a' is 5 bits: 5/8 of this on the wire
    block = raw.encoder.encode(
        [(":method", "POST"), (":path", path("Unary")), ("x-h", "a" * n)], huffman=True
    )
    assert len(block) < DEFAULT.max_header_list_size
    parts = [block[i : i + f.DEFAULT_MAX_FRAME] for i in range(0, len(block), f.DEFAULT_MAX_FRAME)]
    raw.send(
        f.frame(f.HEADERS, 0, 1, parts[0]),
        *(
            f.frame(f.CONTINUATION, f.END_HEADERS if i == len(parts) - 1 else 0, 1, p)
            for i, p in enumerate(parts)
            if i
        ),
    )
    assert (await goaway_of(raw))[1] == f.ENHANCE_YOUR_CALM


async def test_header_decoding_is_bounded_per_loop_turn() -> None:
    # A header block costs its compressed size against the turn's header budget (HPACK decoding is
    # pure Python); a block over what is left is decoded, and its excess is a debt paid in turns.
    conn, transport = fake_connection(header_bytes_per_turn=1000)
    enc = Encoder()

    def block(i: int, size: int) -> bytes:
        return enc.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path("Nope")),
                ("content-type", "application/grpc"),
                ("x-pad", chr(97 + i) * size),
            ],
            huffman=False,
        )

    answered = lambda: transport.count(f.HEADERS, f.END_HEADERS | f.END_STREAM)
    conn.data_received(
        f.PREFACE
        + f.settings_frame({})
        + f.frame(f.SETTINGS, f.ACK, 0)
        + b"".join(
            f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1 + 2 * i, block(i, 600)) for i in range(5)
        )
    )
    assert answered() == 2  # 2 x ~650 bytes: the second one overspends the 1000, the turn ends
    assert not transport.reading
    await until(lambda: answered() == 5)
    await until(lambda: transport.reading)
    # One block of 3 turns' worth: decoded, then the connection sits out turns without reading.
    conn.data_received(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 11, block(5, 3000)))
    assert answered() == 6
    assert not transport.reading
    turns = 0
    while not transport.reading:
        await asyncio.sleep(0)
        turns += 1
        assert turns < 100
    assert turns >= 2
    conn.connection_lost(None)


async def test_repeated_oversized_header_lists_get_enhance_your_calm(serve: Any) -> None:
    # Each call refused for its metadata size spends 1 + size/1 KiB reset tokens: once, the call
    # alone fails (RESOURCE_EXHAUSTED); a client that keeps doing it gets GOAWAY like a rapid resetter.
    srv = await serve(max_call_metadata=1000, reset_burst=20, reset_rate=0.01)
    raw = await srv.raw()
    raw.request(1, path("Unary"), b"x", extra=[("x-big", "a" * 5000)])
    resp = await raw.response(1)
    assert resp.trailers.get("grpc-status") == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), resp
    await still_serves(raw, 3)
    for i in range(5):
        raw.request(5 + 2 * i, path("Unary"), b"x", extra=[("x-big", chr(98 + i) * 5000)])
    assert (await goaway_of(raw))[1] == f.ENHANCE_YOUR_CALM


async def test_unread_control_answers_are_bounded() -> None:
    conn, transport = fake_connection(max_queued_control_frames=50, frames_per_turn=1000)
    conn.data_received(f.PREFACE + f.settings_frame({}) + f.frame(f.SETTINGS, 0, 0) * 100)
    # The kernel took none of the 100 ACKs: past 50 queued, GOAWAY ENHANCE_YOUR_CALM and close.
    assert transport.closed
    goaways = [p for t, _, _, p in transport.frames() if t == f.GOAWAY]
    assert goaways and struct.unpack_from(">II", goaways[-1])[1] == f.ENHANCE_YOUR_CALM
    conn.connection_lost(None)


async def test_a_client_that_never_reads_is_not_answered_without_bound(serve: Any) -> None:
    srv = await serve()
    _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f.PREFACE + f.settings_frame({}))
    conn = next(iter(srv.conns))
    chunk = f.frame(f.SETTINGS, 0, 0) * 4096
    try:
        # SETTINGS frames whose ACKs are never read: the server stops reading (or closes with
        # ENHANCE_YOUR_CALM); either way what it holds stays bounded.
        for _ in range(2000):  # 70 MiB: more than every buffer on the way can hold
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 0.5)
    except (TimeoutError, ConnectionError):
        pass  # we can no longer write: the server stopped reading (or closed)
    assert conn._closed or conn._read_paused
    held = (
        len(conn._buf)
        + sum(map(len, conn.out))
        + (conn.transport.get_write_buffer_size() if conn.transport else 0)
    )
    assert held < 2 << 20
    writer.close()


async def test_request_bytes_held_per_connection_are_capped(serve: Any) -> None:
    srv = await serve(max_buffered_request_bytes=256 << 10)
    raw = await srv.raw()
    part = struct.pack(">BI", 0, 1 << 20) + b"p" * (100 << 10)  # a 1 MiB message, 100 KiB of it sent
    for sid in (1, 3, 5):
        raw.send(
            f.frame(f.HEADERS, f.END_HEADERS, sid, raw.header_block(path("Len"))),
            *(f.frame(f.DATA, 0, sid, part[i : i + 16384]) for i in range(0, len(part), 16384)),
        )
    resp = await raw.response(5)
    assert resp.trailers.get("grpc-status") == "8", resp  # RESOURCE_EXHAUSTED
    raw.send(f.rst_stream(1, f.CANCEL), f.rst_stream(3, f.CANCEL))
    await still_serves(raw, 7)


async def test_length_prefix_above_the_limit_is_refused_at_once(serve: Any) -> None:
    srv = await serve()
    srv.router.max_message = 2 << 20
    raw = await srv.raw()
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, raw.header_block(path("Len"))),
        f.frame(f.DATA, 0, 1, struct.pack(">BI", 0, (2 << 20) + 1)),
    )  # only the prefix
    resp = await raw.response(1)
    assert resp.trailers.get("grpc-status") == "8" and "larger than max" in resp.trailers.get(
        "grpc-message", ""
    )


def test_etcd_flags_set_the_limits() -> None:
    cfg = parse_args(
        [
            "--max-concurrent-streams",
            "10",
            "--grpc-keepalive-min-time",
            "1s",
            "--grpc-keepalive-interval",
            "30s",
            "--grpc-keepalive-timeout",
            "3s",
            "--max-request-bytes",
            "1000",
        ]
    )
    limits = Limits.from_config(cfg)
    assert (
        limits.max_concurrent_streams,
        limits.keepalive_min_time,
        limits.keepalive_interval,
        limits.keepalive_timeout,
    ) == (10, 1.0, 30.0, 3.0)
    assert limits.max_recv_message == 1000 + 512 * 1024  # grpc-go's MaxRecvMsgSize in etcd
    assert cfg.ignored == {}
    default = Limits.from_config(parse_args([]))
    assert default.max_concurrent_streams == 2**32 - 1 and default.keepalive_min_time == 5.0
    assert (
        Limits.from_config(parse_args(["--max-concurrent-streams", "0"])).max_concurrent_streams == 2**32 - 1
    )


async def test_initial_window_changes_do_not_walk_the_streams(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    for sid in range(1, 101, 2):
        raw.request(sid, path("Gate"), b"g")
    await raw.until(lambda fr: False, timeout=0.01) if False else None
    raw.send(f.frame(f.PING, 0, 0, b"ready..."))
    await raw.until(lambda fr: fr.type == f.PING and fr.payload == b"ready...")
    conn = next(iter(srv.conns))
    assert len(conn.streams) == 50

    class Watched(dict):
        walks = 0

        def values(self) -> Any:
            Watched.walks += 1
            return super().values()

        def items(self) -> Any:
            Watched.walks += 1
            return super().items()

        def __iter__(self) -> Any:
            Watched.walks += 1
            return super().__iter__()

    conn.streams = Watched(conn.streams)
    raw.send(*(f.settings_frame({f.S_INITIAL_WINDOW_SIZE: 1000 + i}) for i in range(200)))
    raw.send(f.frame(f.PING, 0, 0, b"done...."))
    await raw.until(lambda fr: fr.type == f.PING and fr.payload == b"done....")
    assert Watched.walks == 0
    assert conn.peer_initial_window == 1199
    srv.servicer.gate.set()
    assert (await raw.response(1)).messages() == [b"g"]


async def test_pings_more_often_than_allowed_get_too_many_pings(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    for i in range(4):  # no stream open: grpc-go allows no ping within 2 h; the third strike is out
        raw.send(f.frame(f.PING, 0, 0, b"ping%04d" % i))
    _, code, debug = await goaway_of(raw)
    assert code == f.ENHANCE_YOUR_CALM and debug == b"too_many_pings"


async def test_pings_between_calls_are_allowed(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    for i in range(10):  # data goes out between pings (grpc-go resets the strikes then)
        sid = 2 * i + 1
        raw.request(sid, path("Unary"), b"x")
        await raw.response(sid)
        raw.send(f.frame(f.PING, 0, 0, b"ping%04d" % i))
        await raw.until(lambda fr, i=i: fr.type == f.PING and fr.payload == b"ping%04d" % i)
    await still_serves(raw, 101)


async def test_server_pings_an_idle_client_and_closes_without_an_ack(serve: Any) -> None:
    srv = await serve(keepalive_interval=0.2, keepalive_timeout=0.3)
    raw = await srv.raw()
    raw.send(f.frame(f.SETTINGS, f.ACK, 0))
    ping, _ = await raw.until(lambda fr: fr.type == f.PING and not fr.flags & f.ACK)
    assert len(ping.payload) == 8
    await raw.to_eof()  # never acknowledged: closed


async def test_server_keepalive_is_satisfied_by_an_ack(serve: Any) -> None:
    srv = await serve(keepalive_interval=0.2, keepalive_timeout=0.3)
    raw = await srv.raw()
    raw.send(f.frame(f.SETTINGS, f.ACK, 0))
    for _ in range(3):
        ping, _ = await raw.until(lambda fr: fr.type == f.PING and not fr.flags & f.ACK)
        raw.send(f.frame(f.PING, f.ACK, 0, ping.payload))
    await still_serves(raw, 1)


async def test_preface_timeout(serve: Any) -> None:
    srv = await serve(preface_timeout=0.2)
    raw = await srv.raw(preface=None)
    raw.send(f.PREFACE[:10])  # a slowloris: part of the preface, then nothing
    await raw.to_eof()


async def test_settings_ack_timeout(serve: Any) -> None:
    srv = await serve(settings_ack_timeout=0.2)
    raw = await srv.raw()  # sends its preface, never acknowledges ours
    assert (await goaway_of(raw))[1] == f.SETTINGS_TIMEOUT


async def test_idle_timeout(serve: Any) -> None:
    srv = await serve(idle_timeout=0.2)
    raw = await srv.raw()
    raw.send(f.frame(f.SETTINGS, f.ACK, 0))
    await still_serves(raw, 1)
    last, code, _ = await goaway_of(raw)
    assert (last, code) == (1, f.NO_ERROR)


async def test_graceful_shutdown_finishes_calls_in_flight(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Gate"), b"in flight")
    await asyncio.wait_for(srv.servicer.started.wait(), 5)
    stopping = asyncio.ensure_future(srv.conns.shutdown(grace=10))
    goaway, _ = await raw.until(lambda fr: fr.type == f.GOAWAY)
    assert struct.unpack_from(">II", goaway.payload) == (1, f.NO_ERROR)
    raw.request(3, path("Unary"), b"too late")
    assert await rst_of(raw, 3) == f.REFUSED_STREAM
    assert not stopping.done()
    srv.servicer.gate.set()
    assert (await raw.response(1)).messages() == [b"in flight"]
    await asyncio.wait_for(stopping, 5)
    await raw.to_eof()


async def test_graceful_shutdown_gives_up_at_its_deadline(serve: Any) -> None:
    srv = await serve()
    raw = await srv.raw()
    raw.request(1, path("Sleep"), b"")
    await asyncio.wait_for(srv.servicer.started.wait(), 5)
    await asyncio.wait_for(srv.conns.shutdown(grace=0.2), 5)
    await asyncio.wait_for(srv.servicer.cancelled.wait(), 5)
    await raw.to_eof()


async def test_the_client_port_drops_a_connection_that_sends_nothing() -> None:
    from etcdstore.api.mux import ClientPortMux

    mux = ClientPortMux(
        lambda: asyncio.Protocol(), make_router(Servicer()), DEFAULT.replace(preface_timeout=0.2)
    )
    port = await mux.listen("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"P")  # not enough to tell HTTP/2 from HTTP/1, and then nothing
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    finally:
        await mux.close()
