"""api.h2 keeps the decoded headers of repeated all-indexed HPACK blocks (connection._ALL_INDEXED)
and the checked form of repeated header lists (calls._head): what a repeated block means must
follow the HPACK dynamic table, and a cached block must cost the same header budget and get the
same checks as a decoded one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from etcdstore.api.h2 import H2Connection, calls, connection
from etcdstore.api.h2 import frames as f
from etcdstore.api.h2.limits import DEFAULT
from test_h2_server import Servicer, make_router

pytestmark = pytest.mark.timeout(30)

PATH = b"/test.Echo/Meta"


class _Transport:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int = 0, low: int = 0) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        out, buf = [], bytes(self.data)
        while buf:
            hi, lo, ftype, flags, sid = f.HEAD.unpack_from(buf)
            n = (hi << 8) | lo
            out.append((ftype, flags, sid & 0x7FFFFFFF, buf[9 : 9 + n]))
            buf = buf[9 + n :]
        return out


def _lit(name: bytes, value: bytes) -> bytes:
    """Literal header field with incremental indexing, new name, no Huffman (RFC 7541 6.2.1)."""
    assert len(name) < 63 and len(value) < 127
    return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value


P = b"\x83\x86"  # :method POST, :scheme http (static table)


def _full(x_k: bytes) -> bytes:
    """A block that adds :path, :authority, content-type and x-k to the table (x-k ends at 62)."""
    return (
        P
        + _lit(b":path", PATH)
        + _lit(b":authority", b"t")
        + _lit(b"content-type", b"application/grpc")
        + _lit(b"x-k", x_k)
    )


INDEXED = P + b"\xc1\xc0\xbf\xbe"  # entries 65, 64, 63, 62: :path, :authority, content-type, x-k


async def _connection(servicer: Servicer) -> tuple[H2Connection, _Transport]:
    conn = H2Connection(make_router(servicer))
    t = _Transport()
    conn.connection_made(t)  # type: ignore[arg-type]  # a fake transport
    conn.data_received(f.PREFACE + f.settings_frame({}))
    return conn, t


async def _call(conn: H2Connection, sid: int, block: bytes) -> None:
    conn.data_received(
        f.frame(f.HEADERS, f.END_HEADERS, sid, block)
        + f.frame(f.DATA, f.END_STREAM, sid, f.grpc_message(b"x"))
    )
    for _ in range(5):
        await asyncio.sleep(0)


def _x_k(servicer: Servicer) -> list[str]:
    return [v for k, v in servicer.metadata if k == "x-k"]


async def test_a_repeated_block_follows_the_dynamic_table() -> None:
    s = Servicer()
    conn, t = await _connection(s)
    decodes = 0
    decode = conn._decoder.decode

    def counting(block: bytes, raw: bool = False) -> Any:
        nonlocal decodes
        decodes += 1
        return decode(block, raw=raw)

    conn._decoder.decode = counting  # type: ignore[method-assign,assignment]  # a counting wrapper
    await _call(conn, 1, _full(b"one"))
    assert _x_k(s) == ["one"]
    for sid in (3, 5, 7):
        s.metadata = ()
        await _call(conn, sid, INDEXED)
        assert _x_k(s) == ["one"]
    assert decodes == 2  # the full block, and the indexed one once
    # Four new entries push the old ones down: the same indexed bytes now mean x-k: two.
    await _call(conn, 9, _full(b"two"))
    assert _x_k(s) == ["two"]
    s.metadata = ()
    await _call(conn, 11, INDEXED)
    assert _x_k(s) == ["two"]
    assert decodes == 4
    ends = [
        (ftype, sid) for ftype, flags, sid, _ in t.frames() if ftype == f.HEADERS and flags & f.END_STREAM
    ]
    assert [sid for _, sid in ends] == [1, 3, 5, 7, 9, 11]
    assert not any(ftype in (f.RST_STREAM, f.GOAWAY) for ftype, *_ in t.frames())


async def test_a_table_size_update_or_literal_clears_the_kept_blocks() -> None:
    s = Servicer()
    conn, _ = await _connection(s)
    await _call(conn, 1, _full(b"one"))
    await _call(conn, 3, INDEXED)
    assert INDEXED in conn._decoded
    await _call(conn, 5, b"\x20" + INDEXED)  # a dynamic table size update to 0 empties the table
    assert not conn._decoded
    assert conn._closed  # entry 65 no longer exists: COMPRESSION_ERROR, as without the cache


async def test_kept_blocks_cost_the_header_budget_as_decoded_ones() -> None:
    s = Servicer()
    conn, _ = await _connection(s)
    await _call(conn, 1, _full(b"one"))
    await _call(conn, 3, INDEXED)
    conn._refill_header_credit()
    before = conn._hdr_credit
    assert before == DEFAULT.header_bytes_per_turn
    conn.data_received(b"".join(f.frame(f.HEADERS, f.END_HEADERS, 5 + 2 * i, INDEXED) for i in range(10)))
    assert conn._hdr_credit == before - 10 * len(INDEXED)


async def test_a_malformed_repeated_header_list_is_refused_every_time() -> None:
    s = Servicer()
    conn, t = await _connection(s)
    bad = _full(b"one") + _lit(b"te", b"gzip")  # te other than trailers: malformed (RFC 9113 8.2.2)
    await _call(conn, 1, bad)
    again = P + b"\xc2\xc1\xc0\xbf\xbe"  # the same five fields, indexed (te: gzip is entry 62)
    await _call(conn, 3, again)
    await _call(conn, 5, again)
    resets = [(sid, int.from_bytes(p, "big")) for ftype, _, sid, p in t.frames() if ftype == f.RST_STREAM]
    assert resets == [(1, f.PROTOCOL_ERROR), (3, f.PROTOCOL_ERROR), (5, f.PROTOCOL_ERROR)]
    assert not conn._closed


async def test_the_kept_blocks_and_header_lists_are_bounded() -> None:
    s = Servicer()
    conn, _ = await _connection(s)
    await _call(conn, 1, _full(b"one"))
    sid = 3
    for index in range(16, 62):  # distinct all-indexed blocks: one more static field each
        await _call(conn, sid, INDEXED + bytes([0x80 | index]))
        sid += 2
        assert len(conn._decoded) <= connection._DECODED_MAX
        assert len(conn.router._heads) <= calls._HEADS_MAX
    assert not conn._closed


async def test_large_header_lists_are_not_kept() -> None:
    s = Servicer()
    conn, t = await _connection(s)
    big = b"a" * 3900  # one entry of 3,937 bytes: the table (4,096) still holds the other three
    full = (
        P
        + _lit(b":path", PATH)
        + _lit(b":authority", b"t")
        + _lit(b"content-type", b"application/grpc")
        + b"\x40\x05x-big"
        + f._int(len(big), 7)
        + big
    )
    await _call(conn, 1, full)
    await _call(conn, 3, INDEXED)
    await _call(conn, 5, INDEXED)
    assert [v for k, v in s.metadata if k == "x-big"] == [big.decode()]
    assert not conn._decoded and not conn.router._heads
    ends = [sid for ftype, flags, sid, _ in t.frames() if ftype == f.HEADERS and flags & f.END_STREAM]
    assert ends == [1, 3, 5]
