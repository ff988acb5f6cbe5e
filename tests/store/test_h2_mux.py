"""The client port's sniffer (api/mux.py): HTTP/2 preface -> gRPC, an HTTP/1 request line -> the
HTTP/1 application, anything else closed without a byte written (as etcd's cmux does; h2spec
http2/3.5/2 sends an invalid preface and expects the connection closed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from etcdstore.api.h2 import frames as f
from etcdstore.api.mux import ClientPortMux
from test_h2_server import Servicer, make_router

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"health": "true"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    # aiohttp's server is a protocol factory
    mux = ClientPortMux(runner.server, make_router(Servicer()))  # type: ignore[arg-type]
    bound = await mux.listen("127.0.0.1", 0)
    yield bound
    await mux.close()
    await runner.cleanup()


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `data`; what comes back until the server closes (True) or `timeout` passes (False)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    closed = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - loop.time()))
            if not chunk:
                closed = True
                break
            got += chunk
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    writer.close()
    return got, closed


async def test_http1_request_line_reaches_the_http_application(port: int) -> None:
    got, _ = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and b'"health": "true"' in got


async def test_http1_request_line_split_over_reads(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in (b"GE", b"T /hea", b"lth HTTP/1.1\r", b"\nHost: x\r\nConnection: close\r\n\r\n"):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate reads on the server (a test of splitting, not of time)
    got = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert got.startswith(b"HTTP/1.1 200")


async def test_http2_preface_reaches_the_grpc_server(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f.PREFACE + f.settings_frame({}))
    head = await asyncio.wait_for(reader.readexactly(9), 5)
    writer.close()
    assert head[3] == f.SETTINGS


@pytest.mark.parametrize(
    "data",
    [
        b"INVALID CONNECTION PREFACE\r\n\r\n",  # h2spec http2/3.5/2
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # the preface's start, then wrong: the HTTP/2 server's GOAWAY
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",  # a TLS ClientHello on a plaintext port
        b"GET /health\r\n\r\n",  # HTTP/0.9: no version
        b"GET /health HTTP/x.y\r\n\r\n",
        b"x" * 5000,  # no line end within 4096 bytes
    ],
    ids=["invalid-preface", "bad-preface-tail", "tls-hello", "http09", "bad-version", "no-line"],
)
async def test_neither_http2_nor_http1_is_closed_without_an_http1_answer(port: int, data: bytes) -> None:
    got, closed = await exchange(port, data)
    assert closed
    assert b"HTTP/1" not in got
    if not data.startswith(b"PRI"):
        assert got == b""  # cmux writes nothing either
