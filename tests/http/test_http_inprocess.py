"""In-process checks that need to look inside the member: long requests (gateway watch and
observe streams, v2 waits) release their server-side watchers when the client goes away, and
the server keeps serving after bad input."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from etcdstore.config import parse_args
from etcdstore.member import Member
from httpdiff import fetch, open_stream, read_lines
from testlib import eventually_async, lone_member_args

# One member for the module: a process can host one Member at a time (metrics registry).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def member(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Member, str]]:
    tmp_path = tmp_path_factory.mktemp("inproc")
    client, flags = lone_member_args(tmp_path / "n1")
    cfg = parse_args(
        [
            *flags,
            "--enable-v2",
        ],
        environ={},
    )
    m = Member(cfg)
    await m.start()
    try:
        assert m.server is not None
        await eventually_async(lambda: m.server.is_leader, interval=0.02, message="a leader")
        yield m, f"http://127.0.0.1:{client}"
    finally:
        await m.stop()


async def test_streams_end_when_the_client_disconnects(member: tuple[Member, str]) -> None:
    m, base = member
    ws = m.server.watchable  # type: ignore[union-attr]  # a started member has a server
    baseline = ws.stats()["streams"]
    async with aiohttp.ClientSession() as session:
        v3 = await open_stream(
            session,
            "POST",
            base + "/v3/watch",
            data=b'{"create_request":{"key":"%s"}}' % base64.b64encode(b"k"),
        )
        assert (await read_lines(v3, 1))[0]["result"]["created"] is True
        v2 = await open_stream(session, "GET", base + "/v2/keys/k?wait=true")
        await eventually_async(lambda: ws.stats()["streams"] == baseline + 2, 5, message="two streams")
        stats = await fetch(session, "GET", base + "/v2/stats/store")
        assert stats.json["watchers"] == 1
        v3.close()
        v2.close()
    await eventually_async(lambda: ws.stats()["streams"] == baseline, 5, message="the streams released")
    async with aiohttp.ClientSession() as session:
        assert (await fetch(session, "GET", base + "/v2/stats/store")).json["watchers"] == 0


async def test_keeps_serving_after_bad_input(member: tuple[Member, str]) -> None:
    _, base = member
    async with aiohttp.ClientSession() as session:
        bad = [
            b"{",
            b"\xff\xfe",
            b'{"key":"' + b"A" * 100_000 + b'!"}',
            b"[" * 10_000,
            b'{"key":' + b"9" * 5000 + b"}",
        ]
        for body in bad:
            r = await fetch(session, "POST", base + "/v3/kv/range", data=body)
            assert r.status in (400, 500) and "error" in r.json, (body[:20], r.text[:200])
        w = await open_stream(
            session, "POST", base + "/v3/watch", data=b'{"create_request":{"key":"YQ=="}}{junk'
        )
        assert w.status == 200 and (await read_lines(w, 1))[0]["result"]["created"] is True
        w.close()
        for q in ("%zz", "ttl=" + "9" * 100, "prevIndex=-1", "wait=true&waitIndex=999999999999999999999"):
            r = await fetch(session, "PUT", base + "/v2/keys/x?" + q, data={"value": "v"})
            assert r.status == 400 and "errorCode" in r.json
        r = await fetch(session, "POST", base + "/v3/kv/put", json={"key": "YQ==", "value": "Yg=="})
        assert r.status == 200
        r = await fetch(session, "PUT", base + "/v2/keys/x", data={"value": "fine"})
        assert r.status == 201
