"""The in-process gRPC server (etcdstore.api.h2) on its own: a test router, real clients.

The first half calls a small servicer through grpcio's own client (grpc.aio), as etcd clients
do; the second half speaks HTTP/2 by hand over a plain socket (frames from `api.h2.frames`,
request header blocks from `hpack`) to pin down the protocol behaviour no well-behaved client
shows: bad prefaces, oversized frames, tiny flow-control windows, resets, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from etcdstore.api.h2 import H2Connection, Router
from etcdstore.api.h2 import frames as f
from etcdstore.api.h2.connection import STREAM_WINDOW
from etcdstore.proto.etcdserverpb import rpc_pb2
from hpack import Decoder, Encoder
from testlib import eventually_async

pytestmark = pytest.mark.timeout(30)

SERVICE = "test.Echo"
MAX_MESSAGE = 4 << 20
CALL_TIMEOUT = 10.0  # every grpc call has a deadline, so that nothing can hang
MiB = 1 << 20


def _message(i: int, size: int) -> bytes:
    """Message number `i` of a stream: its index, then a byte pattern that depends on it."""
    return struct.pack(">I", i) + bytes([i % 251]) * (size - 4)


# -- the servicer and the server --------------------------------------------------------------------


class Servicer:
    """Handlers for every call shape, plus what the tests observe of them."""

    def __init__(self) -> None:
        self.started = asyncio.Event()  # a long-running handler began
        self.cancelled = asyncio.Event()  # ... and saw CancelledError
        self.finally_ran = asyncio.Event()  # ... and left (its `finally` ran)
        self.gate = asyncio.Event()  # Gate waits for it
        self.produced = 0  # bytes Stream has handed to the server so far
        self.metadata: tuple[tuple[str, Any], ...] | None = None
        self.peer: str | None = None
        self.auth: Any = None
        self.time_remaining: float | None = None

    async def unary(self, request: bytes, context: Any) -> bytes:
        return request

    async def put(self, request: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:
        return rpc_pb2.PutResponse(
            header=rpc_pb2.ResponseHeader(revision=len(request.value)),
            prev_kv={"key": request.key, "value": request.value[::-1]},
        )

    async def abort(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.decode())
        return b"not reached"

    async def set_code(self, request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such thing: " + request.decode())
        return b""

    async def raise_(self, request: bytes, context: Any) -> bytes:
        raise ValueError("boom " + request.decode())

    async def sleep(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.finally_ran.set()
        return b"woke up"

    async def gated(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        await self.gate.wait()
        return request

    async def meta(self, request: bytes, context: Any) -> bytes:
        self.metadata = context.invocation_metadata()
        self.peer = context.peer()
        self.auth = context.auth_context()
        self.time_remaining = context.time_remaining()
        return b"seen"

    async def length(self, request: bytes, context: Any) -> bytes:
        return b"%d %s" % (len(request), hashlib.sha256(request).hexdigest().encode())

    async def sized(self, request: bytes, context: Any) -> bytes:
        return b"r" * int(request)

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        count, size = map(int, request.split())
        for i in range(count):
            msg = _message(i, size)
            self.produced += len(msg)
            yield msg

    async def stream_abort(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield _message(i, 100)
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "three is enough")

    async def endless(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.started.set()
        i = 0
        try:
            while True:
                yield struct.pack(">I", i)
                i += 1
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.finally_ran.set()

    async def hold(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        """A client-streaming handler that reads nothing until the gate opens."""
        self.started.set()
        await self.gate.wait()
        return b"held"

    async def bidi(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for m in requests:
            yield m[::-1]

    async def collect(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        count = total = 0
        digest = hashlib.sha256()
        async for m in requests:
            count += 1
            total += len(m)
            digest.update(m)
        return f"{count} {total} {digest.hexdigest()}".encode()


def make_router(s: Servicer, max_message: int = MAX_MESSAGE) -> Router:
    router = Router(max_message)
    uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    router.add(
        SERVICE,
        {
            "Unary": uu(s.unary),
            "Put": uu(
                s.put,
                request_deserializer=rpc_pb2.PutRequest.FromString,
                response_serializer=rpc_pb2.PutResponse.SerializeToString,
            ),
            "Abort": uu(s.abort),
            "SetCode": uu(s.set_code),
            "Raise": uu(s.raise_),
            "Sleep": uu(s.sleep),
            "Gate": uu(s.gated),
            "Meta": uu(s.meta),
            "Sized": uu(s.sized),
            "Len": uu(s.length),
            "Stream": us(s.stream),
            "StreamAbort": us(s.stream_abort),
            "Endless": us(s.endless),
            "Bidi": grpc.stream_stream_rpc_method_handler(s.bidi),
            "Collect": grpc.stream_unary_rpc_method_handler(s.collect),
            "Hold": grpc.stream_unary_rpc_method_handler(s.hold),
        },
    )
    return router


class CountingH2(H2Connection):
    """The real protocol, counting the bytes it receives."""

    received = 0

    def data_received(self, data: bytes) -> None:
        CountingH2.received += len(data)
        super().data_received(data)


@dataclass
class Served:
    servicer: Servicer
    server: asyncio.Server
    port: int
    conns: set[H2Connection]
    loop_errors: list[dict[str, Any]]

    def path(self, method: str) -> str:
        return f"/{SERVICE}/{method}"


async def _serve(
    servicer: Servicer, max_message: int = MAX_MESSAGE, protocol: type[H2Connection] = H2Connection
) -> Served:
    loop = asyncio.get_running_loop()
    router = make_router(servicer, max_message)
    conns: set[H2Connection] = set()

    def factory() -> H2Connection:
        conn = protocol(router, on_close=conns.discard)
        conns.add(conn)
        return conn

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return Served(servicer, server, port, conns, [])


async def _close(srv: Served) -> None:
    srv.server.close()
    for conn in list(srv.conns):
        conn.close_with(f.NO_ERROR)
    await asyncio.wait_for(srv.server.wait_closed(), 5)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    loop = asyncio.get_running_loop()
    srv = await _serve(Servicer())
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: srv.loop_errors.append(context))
    try:
        yield srv
    finally:
        loop.set_exception_handler(previous)
        await _close(srv)


def channel(srv: Served, **kwargs: Any) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", **kwargs)


async def _status_of(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await awaitable
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


# -- through grpcio's client ------------------------------------------------------------------------


async def test_unary_echo_small_and_large_messages_cross_the_flow_control_windows(served: Served) -> None:
    async with channel(served) as ch:
        echo = ch.unary_unary(served.path("Unary"))
        assert await echo(b"", timeout=CALL_TIMEOUT) == b""
        assert await echo(b"hello", timeout=CALL_TIMEOUT) == b"hello"
        # 3 MiB: far past the client's 64 KiB initial windows on the way back; seven of them
        # (21 MiB) are more than the server's 16 MiB connection window on the way in, so the
        # server must give the connection window back as it consumes requests.
        rng = random.Random(7)
        for i in range(7):
            big = rng.randbytes(3 * MiB - i)
            assert await echo(big, timeout=CALL_TIMEOUT) == big
        # And a few in parallel on the same connection.
        bigs = [rng.randbytes(3 * MiB + i) for i in range(4)]
        assert await asyncio.gather(*(echo(b, timeout=CALL_TIMEOUT) for b in bigs)) == bigs


async def test_a_large_request_is_reassembled_in_linear_time() -> None:
    """The server's own limit is 64 MiB (member.py: max(64 MiB, 2 x --max-request-bytes)); a
    request near it must not cost quadratic time (bytes + bytes per 16 KiB DATA frame) on the
    event loop every member's raft, leases and other clients share. Linear: ~0.3 s for 32 MiB;
    quadratic: 32 MiB x 2048 frames / 2 = 34 GB copied, many seconds."""
    srv = await _serve(Servicer(), max_message=64 * MiB)
    try:
        async with channel(srv) as ch:
            length = ch.unary_unary(srv.path("Len"))
            assert (
                await length(b"warm up", timeout=CALL_TIMEOUT)
                == b"7 " + hashlib.sha256(b"warm up").hexdigest().encode()
            )
            big = random.Random(3).randbytes(32 * MiB)
            t0 = time.monotonic()
            code, details = await _status_of(length(big, timeout=4))
            elapsed = time.monotonic() - t0
            assert code == grpc.StatusCode.OK, f"32 MiB request: {code} {details} after {elapsed:.1f} s"
            assert elapsed < 4
            assert await length(big[:MiB], timeout=CALL_TIMEOUT) == b"%d %s" % (
                MiB,
                hashlib.sha256(big[:MiB]).hexdigest().encode(),
            )
    finally:
        await _close(srv)


async def test_protobuf_serializers_are_used(served: Served) -> None:
    async with channel(served) as ch:
        put = ch.unary_unary(
            served.path("Put"),
            request_serializer=rpc_pb2.PutRequest.SerializeToString,
            response_deserializer=rpc_pb2.PutResponse.FromString,
        )
        resp = await put(rpc_pb2.PutRequest(key=b"k", value=b"abc"), timeout=CALL_TIMEOUT)
        assert resp.header.revision == 3
        assert (resp.prev_kv.key, resp.prev_kv.value) == (b"k", b"cba")


async def test_many_concurrent_unary_calls_on_one_channel(served: Served) -> None:
    async with channel(served) as ch:
        echo = ch.unary_unary(served.path("Unary"))
        requests = [b"call %d " % i + bytes([i % 256]) * (i * 37 % 5000) for i in range(500)]
        responses = await asyncio.gather(*(echo(r, timeout=CALL_TIMEOUT) for r in requests))
        assert responses == requests
        assert len(served.conns) == 1  # all of them multiplexed on one connection


async def test_server_streaming_many_small_messages_in_order(served: Served) -> None:
    async with channel(served) as ch:
        call = ch.unary_stream(served.path("Stream"))(b"5000 16", timeout=CALL_TIMEOUT)
        got = [m async for m in call]
        assert got == [_message(i, 16) for i in range(5000)]
        assert await call.code() == grpc.StatusCode.OK


async def test_server_streaming_20_mib_to_a_slow_consumer_applies_backpressure(served: Served) -> None:
    size, count = 64 << 10, 320  # 20 MiB in all
    total = size * count
    # grpc-core's BDP probing would grow the client's windows to many MiB (it then buffers the
    # whole 20 MiB itself); without it the client keeps its 64 KiB windows, and what the handler
    # may produce ahead of the consumer is bounded by those and the server's 1 MiB high-water mark.
    async with channel(served, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        call = ch.unary_stream(served.path("Stream"))(b"%d %d" % (count, size), timeout=20)
        first = await call.read()
        assert first == _message(0, size)
        # The consumer stalls: the handler must be held back instead of pushing all 20 MiB.
        await asyncio.sleep(0.5)
        produced_while_stalled = served.servicer.produced
        assert MiB <= produced_while_stalled < 3 * MiB, (
            f"{produced_while_stalled} of {total} bytes produced while the client read nothing"
        )
        await asyncio.sleep(0.3)
        assert served.servicer.produced == produced_while_stalled  # really blocked, not just slow
        received = 1
        while (msg := await call.read()) is not grpc.aio.EOF:
            assert msg == _message(received, size), f"message {received} is wrong or out of order"
            received += 1
            if received % 40 == 0:
                await asyncio.sleep(0.05)  # a slow consumer all along
        assert received == count
        assert served.servicer.produced == total
        assert await call.code() == grpc.StatusCode.OK


async def test_server_streaming_abort_after_messages(served: Served) -> None:
    async with channel(served) as ch:
        call = ch.unary_stream(served.path("StreamAbort"))(b"", timeout=CALL_TIMEOUT)
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for m in call:
                got.append(m)
        assert got == [_message(i, 100) for i in range(3)]
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert err.value.details() == "three is enough"


async def test_bidi_streaming_echo(served: Served) -> None:
    async with channel(served) as ch:
        bidi = ch.stream_stream(served.path("Bidi"))
        # Lock step: each answer before the next request.
        call = bidi(timeout=CALL_TIMEOUT)
        for i in range(100):
            msg = _message(i, 10 + i * 50)
            await call.write(msg)
            assert await call.read() == msg[::-1]
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

        # Full duplex: 200 x 32 KiB (6.25 MiB, more than a stream window) while reading concurrently.
        call = bidi(timeout=CALL_TIMEOUT)
        sent = [_message(i, 32 << 10) for i in range(200)]

        async def write_all() -> None:
            for m in sent:
                await call.write(m)
            await call.done_writing()

        writer = asyncio.ensure_future(write_all())
        got = [m async for m in call]
        await writer
        assert got == [m[::-1] for m in sent]
        assert await call.code() == grpc.StatusCode.OK


async def test_client_streaming_beyond_the_stream_window(served: Served) -> None:
    sent = [_message(i, 64 << 10) for i in range(100)]  # 6.25 MiB > the 4 MiB stream window
    assert sum(map(len, sent)) > STREAM_WINDOW

    async def requests() -> AsyncIterator[bytes]:
        for m in sent:
            yield m

    async with channel(served) as ch:
        collect = ch.stream_unary(served.path("Collect"))
        resp = await collect(requests(), timeout=CALL_TIMEOUT)
        digest = hashlib.sha256(b"".join(sent)).hexdigest()
        assert resp == f"100 {sum(map(len, sent))} {digest}".encode()


async def test_client_streaming_with_no_messages(served: Served) -> None:
    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator

    async with channel(served) as ch:
        resp = await ch.stream_unary(served.path("Collect"))(nothing(), timeout=5)
        assert resp == f"0 0 {hashlib.sha256().hexdigest()}".encode()
        call = ch.stream_stream(served.path("Bidi"))(timeout=5)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_abort_code_and_non_ascii_details_arrive_intact(served: Served) -> None:
    details = "naïve 100% sûr ✓ — 日本語 %41 %%"
    async with channel(served) as ch:
        code, got = await _status_of(
            ch.unary_unary(served.path("Abort"))(details.encode(), timeout=CALL_TIMEOUT)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert got == details
        code, got = await _status_of(
            ch.unary_unary(served.path("SetCode"))("ключ 50%".encode(), timeout=CALL_TIMEOUT)
        )
        assert (code, got) == (grpc.StatusCode.NOT_FOUND, "no such thing: ключ 50%")


async def test_unexpected_exception_gives_unknown_and_the_server_keeps_serving(served: Served) -> None:
    async with channel(served) as ch:
        code, details = await _status_of(ch.unary_unary(served.path("Raise"))(b"xyz", timeout=CALL_TIMEOUT))
        assert code == grpc.StatusCode.UNKNOWN
        assert "boom xyz" in details
        assert (
            await ch.unary_unary(served.path("Unary"))(b"still here", timeout=CALL_TIMEOUT) == b"still here"
        )
    async with channel(served) as ch:  # and on a new connection
        assert await ch.unary_unary(served.path("Unary"))(b"again", timeout=CALL_TIMEOUT) == b"again"


async def test_unknown_method_and_unknown_service_are_unimplemented(served: Served) -> None:
    async with channel(served) as ch:
        code, details = await _status_of(ch.unary_unary(f"/{SERVICE}/Nope")(b"x", timeout=CALL_TIMEOUT))
        assert (code, details) == (
            grpc.StatusCode.UNIMPLEMENTED,
            f"unknown method Nope for service {SERVICE}",
        )
        code, details = await _status_of(ch.unary_unary("/other.Svc/Foo")(b"x", timeout=CALL_TIMEOUT))
        assert (code, details) == (grpc.StatusCode.UNIMPLEMENTED, "unknown service other.Svc")
        call = ch.stream_stream("/other.Svc/Chat")(timeout=CALL_TIMEOUT)
        code, details = await _status_of(call.read())
        assert (code, details) == (grpc.StatusCode.UNIMPLEMENTED, "unknown service other.Svc")
        assert await ch.unary_unary(served.path("Unary"))(b"ok", timeout=CALL_TIMEOUT) == b"ok"


async def test_message_over_the_routers_limit_is_resource_exhausted() -> None:
    srv = await _serve(Servicer(), max_message=64 << 10)
    try:
        async with channel(srv) as ch:
            echo = ch.unary_unary(srv.path("Unary"))
            assert await echo(b"a" * (64 << 10), timeout=CALL_TIMEOUT) == b"a" * (64 << 10)  # at the limit
            code, details = await _status_of(echo(b"a" * ((64 << 10) + 1), timeout=CALL_TIMEOUT))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"larger than max ({(64 << 10) + 1} vs. {64 << 10})" in details
            code, _ = await _status_of(echo(b"a" * (3 * MiB), timeout=CALL_TIMEOUT))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

            async def requests() -> AsyncIterator[bytes]:
                yield b"small"
                yield b"b" * (100 << 10)

            code, details = await _status_of(
                ch.stream_unary(srv.path("Collect"))(requests(), timeout=CALL_TIMEOUT)
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in details
            assert await echo(b"fine", timeout=CALL_TIMEOUT) == b"fine"  # the connection survives
    finally:
        await _close(srv)


async def test_client_deadline_cancels_the_handler(served: Served) -> None:
    s = served.servicer
    async with channel(served) as ch:
        t0 = time.monotonic()
        code, _ = await _status_of(ch.unary_unary(served.path("Sleep"))(b"", timeout=0.2))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 5
        await asyncio.wait_for(s.finally_ran.wait(), 5)
        assert s.cancelled.is_set()
        assert await ch.unary_unary(served.path("Unary"))(b"ok", timeout=CALL_TIMEOUT) == b"ok"


async def test_client_cancellation_of_a_stream_cancels_the_handler(served: Served) -> None:
    s = served.servicer
    async with channel(served) as ch:
        call = ch.unary_stream(served.path("Endless"))(b"", timeout=CALL_TIMEOUT)
        for i in range(5):
            assert await call.read() == struct.pack(">I", i)
        assert not s.finally_ran.is_set()
        call.cancel()
        await asyncio.wait_for(s.finally_ran.wait(), 5)
        assert s.cancelled.is_set()
        assert await call.code() == grpc.StatusCode.CANCELLED
        assert await ch.unary_unary(served.path("Unary"))(b"ok", timeout=CALL_TIMEOUT) == b"ok"


async def test_closing_the_channel_cancels_the_handler(served: Served) -> None:
    s = served.servicer
    ch = channel(served)
    call = ch.unary_unary(served.path("Sleep"))(b"", timeout=CALL_TIMEOUT)
    waiting = asyncio.ensure_future(_status_of(call))
    await asyncio.wait_for(s.started.wait(), 5)
    await ch.close()
    await asyncio.wait_for(s.finally_ran.wait(), 5)
    assert s.cancelled.is_set()
    # grpc.aio ends a call its channel closed under it with CancelledError (or CANCELLED).
    with contextlib.suppress(asyncio.CancelledError):
        assert (await waiting)[0] == grpc.StatusCode.CANCELLED


async def test_metadata_and_peer_reach_the_context(served: Served) -> None:
    s = served.servicer
    blob = bytes(range(256))
    async with channel(served) as ch:
        md = (
            ("x-trace", "abc-123"),
            ("x-blob-bin", blob),
            ("x-short-bin", b"\x00"),
            ("x-multi", "one"),
            ("x-multi", "two"),
            ("x-big", "b" * 20000),
        )  # needs CONTINUATION frames
        assert await ch.unary_unary(served.path("Meta"))(b"", metadata=md, timeout=CALL_TIMEOUT) == b"seen"
        # grpc-core rounds the grpc-timeout it sends up to a few significant digits (10 s can go as 10100m).
        assert s.time_remaining is not None and CALL_TIMEOUT - 5 < s.time_remaining <= CALL_TIMEOUT * 1.02
        assert await ch.unary_unary(served.path("Meta"))(b"", metadata=md) == b"seen"
        assert s.time_remaining is None  # no deadline
    got = s.metadata
    assert got is not None
    assert ("x-trace", "abc-123") in got
    assert ("x-blob-bin", blob) in got
    assert ("x-short-bin", b"\x00") in got
    assert ("x-big", "b" * 20000) in got
    assert [v for k, v in got if k == "x-multi"] == ["one", "two"]
    keys = {k for k, _ in got}
    assert not any(k.startswith(":") for k in keys)
    assert not keys & {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"}
    m = re.fullmatch(r"ipv4:127\.0\.0\.1:(\d+)", s.peer or "")
    assert m, s.peer
    assert 0 < int(m.group(1)) < 65536 and int(m.group(1)) != served.port
    assert s.auth == {}  # plaintext: no certificate, no identity


async def test_oversized_metadata_fails_only_its_own_call(served: Served) -> None:
    s = served.servicer
    async with channel(served) as ch:
        in_flight = asyncio.ensure_future(
            _status_of(ch.unary_unary(served.path("Gate"))(b"g", timeout=CALL_TIMEOUT))
        )
        await asyncio.wait_for(s.started.wait(), 5)
        code, _ = await _status_of(
            ch.unary_unary(served.path("Meta"))(
                b"", metadata=(("x-huge", "v" * 100_000),), timeout=CALL_TIMEOUT
            )
        )
        assert code != grpc.StatusCode.OK
        s.gate.set()
        # grpcio's server answers RESOURCE_EXHAUSTED to the one call; the others go on.
        assert await in_flight == (grpc.StatusCode.OK, "")
        assert await ch.unary_unary(served.path("Unary"))(b"ok", timeout=CALL_TIMEOUT) == b"ok"


async def test_gzip_compressed_requests_are_decoded() -> None:
    CountingH2.received = 0
    srv = await _serve(Servicer(), protocol=CountingH2)
    try:
        async with channel(srv, compression=grpc.Compression.Gzip) as ch:
            payload = b"compress me " * (MiB // 12) + b"tail"
            assert await ch.unary_unary(srv.path("Unary"))(payload, timeout=CALL_TIMEOUT) == payload

            async def requests() -> AsyncIterator[bytes]:
                for i in range(5):
                    yield bytes([65 + i]) * (200 << 10)

            resp = await ch.stream_unary(srv.path("Collect"))(requests(), timeout=CALL_TIMEOUT)
            expected = b"".join(bytes([65 + i]) * (200 << 10) for i in range(5))
            assert resp == f"5 {len(expected)} {hashlib.sha256(expected).hexdigest()}".encode()
        # The requests really travelled compressed (~2 MiB of payload in far fewer bytes).
        assert CountingH2.received < 256 << 10, CountingH2.received
    finally:
        await _close(srv)


# -- raw HTTP/2 ---------------------------------------------------------------------------------------


@dataclass
class Frame:
    type: int
    flags: int
    sid: int
    payload: bytes


@dataclass
class Response:
    headers: list[tuple[str, str]]
    data: bytes
    trailers: dict[str, str]
    reset: int | None = None  # the RST_STREAM code, if the server reset the stream

    def messages(self) -> list[bytes]:
        out, buf = [], self.data
        while buf:
            flag, n = struct.unpack_from(">BI", buf)
            assert flag == 0
            out.append(buf[5 : 5 + n])
            buf = buf[5 + n :]
        return out


class RawH2:
    """A hand-driven HTTP/2 client connection; a reader task queues the frames that arrive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls, port: int, *, preface: bytes | None = f.PREFACE, settings: dict[int, int] | None = None
    ) -> RawH2:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        raw = cls(reader, writer)
        if preface is not None:
            raw.send(preface + f.settings_frame(settings or {}))
        return raw

    async def _read(self) -> None:
        try:
            while True:
                hi, lo, ftype, flags, sid = f.HEAD.unpack(await self.reader.readexactly(9))
                n = (hi << 8) | lo
                payload = await self.reader.readexactly(n) if n else b""
                self.frames.put_nowait(Frame(ftype, flags, sid & 0x7FFFFFFF, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.frames.put_nowait(None)  # EOF

    def send(self, *data: bytes) -> None:
        self.writer.write(b"".join(data))

    async def next(self, timeout: float = 5.0) -> Frame | None:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def until(self, pred: Callable[[Frame], bool], timeout: float = 5.0) -> tuple[Frame, list[Frame]]:
        """Frames up to the first one matching `pred` (which is returned too); fails at EOF."""
        seen: list[Frame] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            fr = await self.next(max(0.01, deadline - asyncio.get_running_loop().time()))
            assert fr is not None, f"connection closed; frames seen: {seen}"
            seen.append(fr)
            if pred(fr):
                return fr, seen

    async def to_eof(self, timeout: float = 5.0) -> list[Frame]:
        """Every frame up to the end of the connection (which must come within `timeout`)."""
        seen: list[Frame] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while (fr := await self.next(max(0.01, deadline - asyncio.get_running_loop().time()))) is not None:
            seen.append(fr)
        return seen

    async def quiet(self, seconds: float) -> list[Frame]:
        """The frames that arrive within `seconds` (the connection must stay open)."""
        seen: list[Frame] = []
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                fr = await self.next(left)
            except TimeoutError:
                break
            assert fr is not None, "connection closed"
            seen.append(fr)
        return seen

    def header_block(self, path: str, extra: Iterable[tuple[str, str | bytes]] = ()) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra,
            ]
        )

    def request(
        self,
        sid: int,
        path: str,
        *messages: bytes,
        end: bool = True,
        extra: Iterable[tuple[str, str | bytes]] = (),
    ) -> None:
        """HEADERS, then `messages` as DATA frames of at most 16 KiB, END_STREAM on the last if `end`."""
        out = [
            f.frame(
                f.HEADERS,
                f.END_HEADERS | (f.END_STREAM if end and not messages else 0),
                sid,
                self.header_block(path, extra),
            )
        ]
        body = b"".join(f.grpc_message(m) for m in messages)
        for i in range(0, len(body), f.DEFAULT_MAX_FRAME):
            last = i + f.DEFAULT_MAX_FRAME >= len(body)
            out.append(
                f.frame(f.DATA, f.END_STREAM if end and last else 0, sid, body[i : i + f.DEFAULT_MAX_FRAME])
            )
        self.send(*out)

    async def response(
        self,
        sid: int,
        timeout: float = 5.0,
        credit: bool = True,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        """Stream `sid`'s response up to its trailers or RST_STREAM (giving the windows back if `credit`).

        `headers`: the response headers, if they were already read off the queue."""
        headers = list(headers or [])
        data = b""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            fr = await self.next(max(0.01, deadline - asyncio.get_running_loop().time()))
            assert fr is not None, f"connection closed before stream {sid} ended"
            if fr.sid != sid:
                continue
            if fr.type == f.RST_STREAM:
                return Response(headers, data, {}, int.from_bytes(fr.payload, "big"))
            if fr.type == f.DATA:
                data += fr.payload
                if credit and fr.payload:
                    self.send(f.window_update(0, len(fr.payload)), f.window_update(sid, len(fr.payload)))
            elif fr.type == f.HEADERS:
                assert fr.flags & f.END_HEADERS
                block = self.decoder.decode(fr.payload)
                if fr.flags & f.END_STREAM:
                    if not headers:  # trailers-only
                        headers, block = block[:2], block[2:]
                    return Response(headers, data, dict(block))
                headers = block

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


@pytest.fixture
async def raw_conns() -> AsyncIterator[list[RawH2]]:
    conns: list[RawH2] = []
    yield conns
    for c in conns:
        await c.close()


async def _raw(srv: Served, conns: list[RawH2], **kwargs: Any) -> RawH2:
    raw = await RawH2.connect(srv.port, **kwargs)
    conns.append(raw)
    return raw


def _goaway(frames: list[Frame]) -> tuple[int, int]:
    """(last stream id, error code) of the one GOAWAY among `frames`."""
    goaways = [fr for fr in frames if fr.type == f.GOAWAY]
    assert len(goaways) == 1, frames
    last, code = struct.unpack_from(">II", goaways[0].payload)
    return last, code


async def test_raw_server_preface_and_a_simple_call(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    first = await raw.next()
    assert first is not None and first.type == f.SETTINGS and not first.flags & f.ACK
    settings = dict(f.parse_settings(first.payload))
    assert settings[f.S_INITIAL_WINDOW_SIZE] == STREAM_WINDOW
    assert settings.get(f.S_ENABLE_PUSH, 0) == 0
    assert f.S_MAX_CONCURRENT_STREAMS not in settings or settings[f.S_MAX_CONCURRENT_STREAMS] >= 100
    conn_update = await raw.next()  # the connection window: 16 MiB in all
    assert conn_update is not None and conn_update.type == f.WINDOW_UPDATE and conn_update.sid == 0
    assert int.from_bytes(conn_update.payload, "big") + f.DEFAULT_WINDOW == 16 << 20
    raw.request(1, served.path("Unary"), b"hi there")
    resp = await raw.response(1)
    assert resp.headers == [(":status", "200"), ("content-type", "application/grpc")]
    assert resp.messages() == [b"hi there"]
    assert resp.trailers == {"grpc-status": "0"}


async def test_raw_bad_preface_gets_goaway_protocol_error(served: Served, raw_conns: list[RawH2]) -> None:
    for preface in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    ):
        raw = await _raw(served, raw_conns, preface=preface)
        frames = await raw.to_eof()
        assert _goaway(frames) == (0, f.PROTOCOL_ERROR), preface


async def test_raw_settings_are_acknowledged(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)  # the preface carries an empty SETTINGS
    await raw.until(lambda fr: fr.type == f.SETTINGS and fr.flags & f.ACK == f.ACK and fr.payload == b"")
    raw.send(f.settings_frame({f.S_MAX_FRAME_SIZE: 32768, f.S_HEADER_TABLE_SIZE: 0, f.S_ENABLE_PUSH: 0}))
    ack, _ = await raw.until(lambda fr: fr.type == f.SETTINGS)
    assert ack.flags == f.ACK and ack.payload == b"" and ack.sid == 0
    raw.send(f.frame(f.SETTINGS, f.ACK, 0))  # an ACK of the server's settings gets no answer
    assert [fr for fr in await raw.quiet(0.2) if fr.type == f.SETTINGS] == []


async def test_raw_ping_is_echoed(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    for payload in (b"\x00" * 8, b"12345678", bytes(range(248, 256))):
        raw.send(f.frame(f.PING, 0, 0, payload))
        ack, _ = await raw.until(lambda fr: fr.type == f.PING)
        assert (ack.flags, ack.sid, ack.payload) == (f.ACK, 0, payload)
    raw.send(f.frame(f.PING, f.ACK, 0, b"ignored!"))  # a PING ACK is not answered
    assert [fr for fr in await raw.quiet(0.2) if fr.type == f.PING] == []
    raw.send(f.frame(f.PING, 0, 0, b"short"))
    assert _goaway(await raw.to_eof())[1] == f.FRAME_SIZE_ERROR


async def test_raw_oversized_frame_gets_goaway_frame_size_error(
    served: Served, raw_conns: list[RawH2]
) -> None:
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Unary"), b"before")
    assert (await raw.response(1)).messages() == [b"before"]
    n = f.DEFAULT_MAX_FRAME + 1
    raw.send(f.HEAD.pack(n >> 8, n & 0xFF, f.DATA, 0, 3) + b"x" * 100)
    assert _goaway(await raw.to_eof()) == (1, f.FRAME_SIZE_ERROR)


async def test_raw_small_initial_window_limits_data_until_window_update(
    served: Served, raw_conns: list[RawH2]
) -> None:
    raw = await _raw(served, raw_conns, settings={f.S_INITIAL_WINDOW_SIZE: 100})
    raw.request(1, served.path("Sized"), b"1000")  # a 1005-byte gRPC message comes back
    expected = f.grpc_message(b"r" * 1000)

    frames = await raw.quiet(0.4)
    mine = [fr for fr in frames if fr.sid == 1]
    assert [fr.type for fr in mine] == [f.HEADERS, f.DATA], mine
    assert mine[1].payload == expected[:100]

    raw.send(f.window_update(1, 400))
    frames = [fr for fr in await raw.quiet(0.3) if fr.sid == 1]
    assert [(fr.type, fr.payload) for fr in frames] == [(f.DATA, expected[100:500])]

    raw.send(f.window_update(1, 10_000))
    rest, _ = await raw.until(lambda fr: fr.sid == 1 and fr.type == f.DATA)
    assert rest.payload == expected[500:]
    trailers, _ = await raw.until(lambda fr: fr.sid == 1)
    assert trailers.type == f.HEADERS and trailers.flags & f.END_STREAM
    assert dict(raw.decoder.decode(trailers.payload)) == {"grpc-status": "0"}


async def test_raw_settings_change_applies_to_open_streams(served: Served, raw_conns: list[RawH2]) -> None:
    # A window of 0 holds all DATA back; raising SETTINGS_INITIAL_WINDOW_SIZE releases it.
    raw = await _raw(served, raw_conns, settings={f.S_INITIAL_WINDOW_SIZE: 0})
    raw.request(1, served.path("Sized"), b"50000")
    held = [fr for fr in await raw.quiet(0.3) if fr.sid == 1]
    assert [fr.type for fr in held] == [f.HEADERS]
    raw.send(f.settings_frame({f.S_INITIAL_WINDOW_SIZE: 1 << 20}))
    resp = await raw.response(1, headers=raw.decoder.decode(held[0].payload))
    assert resp.headers == [(":status", "200"), ("content-type", "application/grpc")]
    assert resp.messages() == [b"r" * 50000]
    assert resp.trailers == {"grpc-status": "0"}


async def test_raw_window_update_overflow(served: Served, raw_conns: list[RawH2]) -> None:
    s = served.servicer
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Sleep"), b"")
    await asyncio.wait_for(s.started.wait(), 5)
    raw.send(f.window_update(1, f.MAX_WINDOW - f.DEFAULT_WINDOW))  # exactly the maximum: fine
    assert [fr for fr in await raw.quiet(0.2) if fr.sid == 1] == []
    raw.send(f.window_update(1, 1))  # one more: a stream error
    rst, _ = await raw.until(lambda fr: fr.sid == 1)
    assert (rst.type, rst.payload) == (f.RST_STREAM, struct.pack(">I", f.FLOW_CONTROL_ERROR))
    await asyncio.wait_for(s.finally_ran.wait(), 5)
    assert s.cancelled.is_set()
    raw.send(f.window_update(0, f.MAX_WINDOW - f.DEFAULT_WINDOW))  # the connection window: fine too
    raw.send(f.frame(f.PING, 0, 0, b"stillok!"))
    await raw.until(lambda fr: fr.type == f.PING and fr.payload == b"stillok!")
    raw.send(f.window_update(0, 1))  # a connection error
    assert _goaway(await raw.to_eof()) == (1, f.FLOW_CONTROL_ERROR)


async def test_raw_client_ignoring_the_stream_window_is_stopped(
    served: Served, raw_conns: list[RawH2]
) -> None:
    """The server grants each stream 4 MiB; a client that sends more without waiting for a
    WINDOW_UPDATE breaks the protocol and must not make the server buffer it (a stream or
    connection error FLOW_CONTROL_ERROR, RFC 9113 6.9)."""
    s = served.servicer
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Hold"), end=False)
    await asyncio.wait_for(s.started.wait(), 5)
    chunk = f.grpc_message(b"x" * (f.DEFAULT_MAX_FRAME - 5))  # one full DATA frame each
    frames = (STREAM_WINDOW + 2 * MiB) // len(chunk)
    raw.send(f.frame(f.DATA, 0, 1, chunk) * frames)
    raw.send(f.frame(f.PING, 0, 0, b"overrun!"))
    seen: list[Frame] = []
    while (fr := await raw.next()) is not None:
        seen.append(fr)
        if fr.type == f.PING and fr.payload == b"overrun!":
            break
    stopped = [
        fr
        for fr in seen
        if (fr.type, fr.sid) in ((f.RST_STREAM, 1), (f.GOAWAY, 0))
        and struct.unpack_from(">I", fr.payload, 4 if fr.type == f.GOAWAY else 0)[0] == f.FLOW_CONTROL_ERROR
    ]
    assert stopped, (
        f"{frames * len(chunk)} bytes on a stream granted {STREAM_WINDOW} were taken in: "
        f"{[(fr.type, fr.sid, fr.payload[:8]) for fr in seen]}"
    )


async def test_raw_rst_stream_cancels_the_handler(served: Served, raw_conns: list[RawH2]) -> None:
    s = served.servicer
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Sleep"), b"")
    await asyncio.wait_for(s.started.wait(), 5)
    raw.send(f.rst_stream(1, f.CANCEL))
    await asyncio.wait_for(s.finally_ran.wait(), 5)
    assert s.cancelled.is_set()
    assert [fr for fr in await raw.quiet(0.2) if fr.sid == 1] == []  # nothing more on the reset stream
    raw.request(3, served.path("Unary"), b"next")  # the connection goes on
    assert (await raw.response(3)).messages() == [b"next"]


async def test_raw_dropped_connection_cancels_its_handlers(served: Served, raw_conns: list[RawH2]) -> None:
    s = served.servicer
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Sleep"), b"")
    raw.request(3, served.path("Endless"), b"")
    await asyncio.wait_for(s.started.wait(), 5)
    await raw.until(lambda fr: fr.sid == 3 and fr.type == f.DATA)
    assert len(served.conns) == 1
    (conn,) = served.conns
    assert sorted(conn.streams) == [1, 3]
    await raw.close()
    await eventually_async(lambda: not served.conns, 5, interval=0.01, message="on_close ran")
    assert conn.streams == {}
    await asyncio.wait_for(s.finally_ran.wait(), 5)
    assert s.cancelled.is_set()

    def handler_tasks() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks() if "Call._run" in repr(t.get_coro())]

    await eventually_async(lambda: handler_tasks() == [], 5, message="both handlers' tasks gone")


async def test_raw_server_side_deadline(served: Served, raw_conns: list[RawH2]) -> None:
    s = served.servicer
    raw = await _raw(served, raw_conns)
    t0 = time.monotonic()
    raw.request(1, served.path("Sleep"), b"", extra=[("grpc-timeout", "150m")])
    resp = await raw.response(1)
    assert resp.trailers == {
        "grpc-status": str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]),
        "grpc-message": "Deadline Exceeded",
    }
    assert 0.1 < time.monotonic() - t0 < 3
    assert s.cancelled.is_set() and s.finally_ran.is_set()
    # The deadline also holds while the request message has not (fully) arrived.
    raw.send(
        f.frame(
            f.HEADERS, f.END_HEADERS, 3, raw.header_block(served.path("Unary"), [("grpc-timeout", "100000u")])
        ),
        f.frame(f.DATA, 0, 3, f.grpc_message(b"incomplete")[:8]),
    )
    resp = await raw.response(3)
    assert resp.trailers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])


async def test_raw_garbage_hpack_gets_goaway_compression_error(
    served: Served, raw_conns: list[RawH2]
) -> None:
    for block in (
        b"\xff\xff\xff\xff\xff\xff\xff",
        b"\x80",
        b"\x7f\xff\xff\xff\xff\x7f",
        b"\x00\x85\xff\xff\xff\xff\xff",
    ):
        raw = await _raw(served, raw_conns)
        raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
        assert _goaway(await raw.to_eof())[1] == f.COMPRESSION_ERROR, block


async def test_raw_oversized_header_list_fails_only_its_stream(
    served: Served, raw_conns: list[RawH2]
) -> None:
    raw = await _raw(served, raw_conns)
    block = raw.header_block(served.path("Meta"), [("x-huge", "v" * 100_000)])
    parts = [block[i : i + f.DEFAULT_MAX_FRAME] for i in range(0, len(block), f.DEFAULT_MAX_FRAME)]
    raw.send(
        f.frame(f.HEADERS, 0, 1, parts[0]),
        *(
            f.frame(f.CONTINUATION, f.END_HEADERS if i == len(parts) - 1 else 0, 1, p)
            for i, p in enumerate(parts)
            if i
        ),
        f.frame(f.DATA, f.END_STREAM, 1, f.grpc_message(b"")),
    )
    resp = await raw.response(1)
    assert resp.reset is not None or resp.trailers.get("grpc-status", "0") != "0", resp
    assert served.servicer.metadata is None  # the handler never ran
    raw.request(3, served.path("Unary"), b"next")  # the connection (and its HPACK state) is fine
    assert (await raw.response(3)).messages() == [b"next"]


async def test_raw_continuation_and_padding_are_understood(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    block = raw.header_block(served.path("Unary"), [("x-filler", "f" * 300)])
    body = f.grpc_message(b"padded echo")
    padded = bytes([7]) + body[:3] + b"\x00" * 7  # the message prefix split across frames
    raw.send(
        # HEADERS with PADDED and PRIORITY, then two CONTINUATIONs.
        f.frame(
            f.HEADERS,
            f.PADDED | f.PRIORITY_FLAG,
            1,
            bytes([3]) + b"\x00\x00\x00\x00\x10" + block[:100] + b"\0" * 3,
        ),
        f.frame(f.CONTINUATION, 0, 1, block[100:200]),
        f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[200:]),
        f.frame(f.DATA, f.PADDED, 1, padded),
        f.frame(f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        f.frame(f.DATA, 0, 1, body[3:8]),
        f.frame(f.DATA, f.END_STREAM, 1, body[8:]),
    )
    resp = await raw.response(1)
    assert resp.messages() == [b"padded echo"] and resp.trailers == {"grpc-status": "0"}
    # A frame other than CONTINUATION in the middle of a header block is a connection error.
    raw.send(
        f.frame(f.HEADERS, 0, 3, raw.header_block(served.path("Unary"))), f.frame(f.PING, 0, 0, b"p" * 8)
    )
    assert _goaway(await raw.to_eof())[1] == f.PROTOCOL_ERROR


async def test_raw_compressed_messages(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    text = b"squeeze " * 5000
    for sid, name, packed in ((1, "gzip", gzip.compress(text)), (3, "deflate", zlib.compress(text))):
        raw.send(
            f.frame(
                f.HEADERS,
                f.END_HEADERS,
                sid,
                raw.header_block(served.path("Unary"), [("grpc-encoding", name)]),
            ),
            f.frame(f.DATA, f.END_STREAM, sid, struct.pack(">BI", 1, len(packed)) + packed),
        )
        resp = await raw.response(sid)
        assert resp.trailers == {"grpc-status": "0"}, name
        assert resp.messages() == [text], name
    # An encoding the server does not have; a corrupt body; a compressed flag without an encoding.
    raw.request(5, served.path("Unary"), b"x", extra=[("grpc-encoding", "br")])
    resp = await raw.response(5)
    assert resp.trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert resp.trailers["grpc-message"] == 'grpc: Decompressor is not installed for grpc-encoding "br"'
    raw.send(
        f.frame(
            f.HEADERS, f.END_HEADERS, 7, raw.header_block(served.path("Unary"), [("grpc-encoding", "gzip")])
        ),
        f.frame(f.DATA, f.END_STREAM, 7, struct.pack(">BI", 1, 4) + b"junk"),
    )
    assert (await raw.response(7)).trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 9, raw.header_block(served.path("Unary"))),
        f.frame(f.DATA, f.END_STREAM, 9, struct.pack(">BI", 1, 4) + b"junk"),
    )
    assert (await raw.response(9)).trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])


async def test_raw_undecodable_grpc_encoding_is_a_call_error_not_a_broken_connection(
    served: Served, raw_conns: list[RawH2]
) -> None:
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Unary"), b"x", extra=[("grpc-encoding", b"\xff\xfe")])
    resp = await raw.response(1)
    assert resp.trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    raw.request(3, served.path("Unary"), b"still open")
    assert (await raw.response(3)).messages() == [b"still open"]
    assert served.loop_errors == []


async def test_raw_streaming_request_with_end_stream_on_headers(
    served: Served, raw_conns: list[RawH2]
) -> None:
    # A client-streaming call with no request message at all: HEADERS carries END_STREAM.
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Collect"))
    resp = await raw.response(1, timeout=3)
    assert resp.trailers == {"grpc-status": "0"}
    assert resp.messages() == [f"0 0 {hashlib.sha256().hexdigest()}".encode()]
    raw.request(3, served.path("Bidi"))
    resp = await raw.response(3, timeout=3)
    assert (resp.trailers, resp.data) == ({"grpc-status": "0"}, b"")


async def test_raw_end_stream_in_client_trailers(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Collect"), b"one", b"two", end=False)
    raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, raw.encoder.encode([("x-trailer", "t")])))
    resp = await raw.response(1)
    assert resp.messages() == [f"2 6 {hashlib.sha256(b'onetwo').hexdigest()}".encode()]


async def test_raw_padded_stream_data_does_not_leak_the_stream_window(
    served: Served, raw_conns: list[RawH2]
) -> None:
    """Padding counts against flow control (RFC 9113 6.1) and must be given back like data.

    A client that respects the windows sends padded messages on one client-streaming call; it
    may only send while the server's window for the stream allows, so it gets past the initial
    4 MiB only if the server credits the stream for the padding too.
    """
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Collect"), end=False)
    message = f.grpc_message(b"m")  # 6 bytes
    frame_len = 256  # pad length byte + message + padding
    pad = frame_len - 1 - len(message)
    frame = f.frame(f.DATA, f.PADDED, 1, bytes([pad]) + message + b"\x00" * pad)
    stream_window, conn_window = STREAM_WINDOW, 16 << 20  # what the server grants
    total = (STREAM_WINDOW * 3 // 2) // frame_len  # 1.5 stream windows' worth of frames
    sent = 0
    while sent < total:
        n = min(stream_window, conn_window) // frame_len
        if n == 0:
            try:
                fr, _ = await raw.until(lambda fr: fr.type == f.WINDOW_UPDATE, timeout=3)
            except TimeoutError:
                pytest.fail(
                    f"stream window exhausted after {sent} frames ({sent * frame_len} bytes, "
                    f"{sent * len(message)} of them messages): no WINDOW_UPDATE came"
                )
            inc = int.from_bytes(fr.payload, "big")
            if fr.sid == 0:
                conn_window += inc
            elif fr.sid == 1:
                stream_window += inc
            continue
        n = min(n, total - sent, 2000)
        raw.send(frame * n)
        sent += n
        stream_window -= n * frame_len
        conn_window -= n * frame_len
        await raw.writer.drain()
    raw.send(f.frame(f.DATA, f.END_STREAM, 1))
    resp = await raw.response(1, timeout=10)
    count = total
    assert resp.messages() == [f"{count} {count} {hashlib.sha256(b'm' * count).hexdigest()}".encode()]


async def test_raw_client_goaway_refuses_new_streams(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Unary"), b"before")
    assert (await raw.response(1)).messages() == [b"before"]
    raw.send(f.goaway(0, f.NO_ERROR))
    raw.request(3, served.path("Unary"), b"after")
    resp = await raw.response(3)
    assert resp.reset == f.REFUSED_STREAM


async def test_raw_server_shutdown_lets_calls_in_flight_finish(
    served: Served, raw_conns: list[RawH2]
) -> None:
    s = served.servicer
    raw = await _raw(served, raw_conns)
    raw.request(1, served.path("Gate"), b"in flight")
    await asyncio.wait_for(s.started.wait(), 5)
    (conn,) = served.conns
    conn.shutdown()
    goaway, _ = await raw.until(lambda fr: fr.type == f.GOAWAY)
    assert struct.unpack(">II", goaway.payload) == (1, f.NO_ERROR)
    raw.request(3, served.path("Unary"), b"too late")
    assert (await raw.response(3)).reset == f.REFUSED_STREAM
    s.gate.set()
    resp = await raw.response(1)
    assert resp.messages() == [b"in flight"] and resp.trailers == {"grpc-status": "0"}


async def test_raw_requests_that_are_not_grpc(served: Served, raw_conns: list[RawH2]) -> None:
    raw = await _raw(served, raw_conns)
    block = raw.encoder.encode(
        [(":method", "GET"), (":scheme", "http"), (":path", served.path("Unary")), (":authority", "t")]
    )
    raw.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
    resp = await raw.response(1)
    assert resp.trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    # A unary call with two request messages.
    raw.request(3, served.path("Unary"), b"one", b"two")
    assert (await raw.response(3)).trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    # A unary call without a request message.
    raw.request(5, served.path("Unary"))
    resp = await raw.response(5)
    assert resp.trailers == {
        "grpc-status": str(grpc.StatusCode.INTERNAL.value[0]),
        "grpc-message": "grpc: no request message",
    }
    # A unary call that ends inside a message.
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 7, raw.header_block(served.path("Unary"))),
        f.frame(f.DATA, f.END_STREAM, 7, struct.pack(">BI", 0, 10) + b"abc"),
    )
    resp = await raw.response(7)
    assert resp.trailers == {
        "grpc-status": str(grpc.StatusCode.INTERNAL.value[0]),
        "grpc-message": "grpc: request ended inside a message",
    }
    # HEADERS on an even (server-initiated) stream is a connection error.
    raw.send(f.frame(f.HEADERS, f.END_HEADERS, 10, raw.header_block(served.path("Unary"))))
    assert _goaway(await raw.to_eof()) == (7, f.PROTOCOL_ERROR)


class _Fuzzer:
    """Random frames for one connection: mostly plausible (stream frames on the streams opened
    so far, control frames on stream 0, sensible payloads) so that a connection lives through
    several of them, with a share of anything-goes frames."""

    TYPES = (
        [f.DATA] * 6
        + [f.HEADERS] * 4
        + [
            f.PRIORITY,
            f.RST_STREAM,
            f.SETTINGS,
            f.SETTINGS,
            f.PING,
            f.PING,
            f.WINDOW_UPDATE,
            f.WINDOW_UPDATE,
            f.GOAWAY,
            f.CONTINUATION,
            f.PUSH_PROMISE,
            10,
            0xFF,
        ]
    )

    def __init__(self, rng: random.Random, paths: list[str]) -> None:
        self.rng = rng
        self.paths = paths
        self.enc = Encoder()
        self.next_sid = 1

    def _sid(self, ftype: int) -> int:
        rng = self.rng
        if rng.random() < 0.05:  # anything
            return rng.choice([0, 2, rng.randrange(1 << 31), rng.randrange(1 << 32), self.next_sid + 2])
        if ftype in (f.SETTINGS, f.PING, f.GOAWAY) or (ftype == f.WINDOW_UPDATE and rng.random() < 0.5):
            return 0
        if ftype == f.HEADERS and rng.random() < 0.7:
            sid = self.next_sid
            self.next_sid += 2
            return sid
        return max(1, self.next_sid - 2 * rng.randrange(1, 3))

    def _headers(self) -> bytes:
        rng = self.rng
        headers: list[tuple[str, str]] = [
            (":method", rng.choice(["POST"] * 5 + ["GET"])),
            (":scheme", "http"),
            (":path", rng.choice(self.paths)),
            (":authority", "fuzz"),
            ("content-type", rng.choice(["application/grpc"] * 4 + ["application/grpc+proto", "text/plain"])),
        ]
        if rng.random() < 0.3:
            headers.append(
                ("grpc-timeout", rng.choice(["1m", "50m", "1S", "x", "99999999H", "-1S", "", "5"]))
            )
        if rng.random() < 0.3:
            headers.append(("grpc-encoding", rng.choice(["gzip", "deflate", "identity", "br", ""])))
        if rng.random() < 0.3:
            headers.append(("x-md-bin", rng.choice(["AAEC", "!!!", "A", ""])))
        return self.enc.encode(headers)

    def frame(self) -> bytes:
        rng = self.rng
        ftype = rng.choice(self.TYPES)
        if self.next_sid == 1 and rng.random() < 0.9:
            ftype = f.HEADERS  # mostly open a stream first
        sid = self._sid(ftype)
        kind = rng.random()
        if ftype == f.HEADERS and kind < 0.95:
            flags = rng.choice(
                [f.END_HEADERS] * 8
                + [f.END_HEADERS | f.END_STREAM] * 4
                + [0, rng.randrange(256) | f.END_HEADERS]
            )
            payload = self._headers()
        elif ftype == f.DATA and kind < 0.95:
            flags = rng.choice(
                [0, 0, 0, f.END_STREAM, f.END_STREAM, f.PADDED, rng.randrange(256) & ~f.PADDED]
            )
            body = rng.choice([b"10", b"3 100", b"1 1", rng.randbytes(rng.randrange(0, 40))])
            prefix = struct.pack(
                ">BI", rng.choice([0, 0, 0, 1]), rng.choice([len(body)] * 4 + [rng.randrange(1 << 32)])
            )
            payload = prefix + body
            if flags & f.PADDED:
                pad = rng.randrange(0, 20)
                payload = bytes([pad]) + payload + b"\0" * rng.choice([pad, pad, pad + 1])
            elif rng.random() < 0.2:
                payload = payload[: rng.randrange(len(payload) + 1)]  # a message split across frames
        elif ftype in (f.WINDOW_UPDATE, f.RST_STREAM) and kind < 0.95:
            flags = 0
            payload = struct.pack(
                ">I", rng.choice([1, 1000, 65535, (1 << 31) - 1, 0, rng.randrange(1 << 32)])
            )
        elif ftype == f.SETTINGS and kind < 0.95:
            flags = rng.choice([0, 0, 0, f.ACK])
            payload = b"".join(
                struct.pack(
                    ">HI",
                    rng.randrange(1, 8),
                    rng.choice(
                        [0, 1, 100, 16384, 65535, 1 << 20, 1 << 24, (1 << 31) - 1, rng.randrange(1 << 32)]
                    ),
                )
                for _ in range(rng.randrange(0, 4))
            )
        elif ftype == f.PING and kind < 0.95:
            flags = rng.choice([0, f.ACK])
            payload = rng.randbytes(8)
        elif ftype == f.CONTINUATION and kind < 0.5:
            flags = rng.choice([0, f.END_HEADERS])
            payload = self._headers()
        else:
            flags = rng.randrange(256)
            payload = rng.randbytes(rng.choice([0, 1, 4, 5, 8, rng.randrange(0, 300)]))
        return f.frame(ftype, flags, sid, payload)


async def test_raw_fuzz_never_crashes_the_server(served: Served, raw_conns: list[RawH2]) -> None:
    rng = random.Random(0x5EED)
    paths = [served.path(m) for m in ("Unary", "Collect", "Bidi", "Stream", "Sized", "Raise", "Nope")] + [
        "/x/y",
        "",
        "/",
    ]
    frames_sent = 0
    outcomes: dict[str, int] = {}
    for _ in range(100):
        raw = await _raw(served, raw_conns)
        fuzzer = _Fuzzer(rng, paths)
        if rng.random() < 0.1:
            raw.send(rng.randbytes(rng.randrange(1, 2000)))  # not even frames
            raw.writer.write_eof()
            await raw.to_eof(timeout=5)
            outcome = "garbage"
        else:
            for _ in range(rng.randrange(1, 12)):
                raw.send(fuzzer.frame())
                frames_sent += 1
            token = rng.randbytes(8)
            raw.send(f.frame(f.PING, 0, 0, token))
            outcome = "eof"
            while (fr := await raw.next(5)) is not None:
                if fr.type == f.PING and fr.flags & f.ACK and fr.payload == token:
                    outcome = "alive"
                    break
                if fr.type == f.GOAWAY:
                    outcome = f"goaway {struct.unpack_from('>I', fr.payload, 4)[0]}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        await raw.close()
    print(f"fuzz: {frames_sent} frames, outcomes {outcomes}")
    assert frames_sent >= 300
    assert served.loop_errors == [], served.loop_errors[:3]
    # The connections ended in GOAWAYs or lived on; none just died under the client.
    assert "eof" not in outcomes, outcomes
    assert outcomes.get("alive", 0) > 0 and sum(v for k, v in outcomes.items() if k.startswith("goaway")) > 0
    # And the server still serves.
    async with channel(served) as ch:
        assert (
            await ch.unary_unary(served.path("Unary"))(b"after fuzz", timeout=CALL_TIMEOUT) == b"after fuzz"
        )
