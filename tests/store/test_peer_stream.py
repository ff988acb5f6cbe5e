"""The Raft stream on the peer port (transport/stream.py): two transports on loopback, a minimal
host around each (as in test_peer_transport.py), real sockets, real TLS.

- messages cross on the stream, not on gRPC, with and without TLS, and gRPC calls (Ping, Cluster)
  still work on the same port (served by api.h2 as in a member, or relayed to grpcio);
- the hello's refusals: another cluster, a removed member (which is told, and stops sending);
- a rolling upgrade: a new member talks to an old one (gRPC only) over the gRPC Raft stream and
  moves to the Raft stream once the old one is replaced by a new one; an old member's gRPC Raft
  stream is accepted by a new one;
- bounded memory: a peer that stops reading gets its messages queued up to the bound, the rest
  dropped and Raft told it is unreachable;
- a peer recreated with a new address under the same name is found again at the next redial.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from etcdstore.member import peer_grpc
from etcdstore.raft.records import Entry, Message, MessageType
from etcdstore.security.tls import PeerTLS, self_signed
from etcdstore.transport import peer as peer_mod
from etcdstore.transport import stream
from etcdstore.transport.peer import SERVICE, PeerTransport, decode_frame, encode_frame
from testlib import eventually_async, free_port

CLUSTER = 0xC1


@dataclass
class _Member:
    id: int
    peer_urls: list[str]


@dataclass
class _Membership:
    members: dict[int, _Member]
    removed: set[int] = field(default_factory=set)

    def sorted_members(self) -> list[Any]:
        return []


class _Host:
    def __init__(self, member_id: int, membership: _Membership, cluster_id: int = CLUSTER) -> None:
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.membership = membership
        self.request_timeout = 5.0
        self.received: asyncio.Queue[Message] = asyncio.Queue()
        self.unreachable: list[int] = []
        self.removed = asyncio.Event()

    def step(self, m: Message) -> None:
        self.received.put_nowait(m)

    def report_unreachable(self, mid: int) -> None:
        self.unreachable.append(mid)

    def report_snapshot(self, mid: int, ok: bool) -> None:  # pragma: no cover - no snapshots here
        pass

    def on_removed(self) -> None:
        self.removed.set()


def _hb(term: int, to: int = 2, frm: int = 1) -> Message:
    return Message(MessageType.HEARTBEAT, to=to, frm=frm, term=term)


async def _got(host: _Host, term: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            m = await asyncio.wait_for(host.received.get(), left)
        except TimeoutError:
            return False
        if m.term == term:
            return True
    return False


def _tls(tmp_path: Any, name: str) -> PeerTLS:
    return PeerTLS(self_signed(str(tmp_path / name), ["127.0.0.1"], name=name))


async def _pair(
    tmp_path: Any = None,
    *,
    tls: bool = False,
    h2: bool = True,
    cluster_b: int = CLUSTER,
    removed: set[int] | None = None,
) -> tuple[PeerTransport, PeerTransport, _Host, _Host]:
    ports = free_port(), free_port()
    scheme = "https" if tls else "http"
    members = {i + 1: _Member(i + 1, [f"{scheme}://127.0.0.1:{p}"]) for i, p in enumerate(ports)}
    ha = _Host(1, _Membership(members))
    hb = _Host(2, _Membership(members, removed=set(removed or ())), cluster_b)
    a = PeerTransport(
        ha,
        [("127.0.0.1", ports[0])],
        tls=_tls(tmp_path, "a") if tls else None,
        grpc_protocol=peer_grpc if h2 else None,
    )
    b = PeerTransport(
        hb,
        [("127.0.0.1", ports[1])],
        tls=_tls(tmp_path, "b") if tls else None,
        grpc_protocol=peer_grpc if h2 else None,
    )
    await a.start()
    await b.start()
    return a, b, ha, hb


@pytest.mark.parametrize(
    ("tls", "h2"),
    [(False, True), (True, True), (False, False), (True, False)],
    ids=["plain-h2", "tls-h2", "plain-relay", "tls-relay"],
)
async def test_messages_cross_on_the_raft_stream_and_grpc_shares_the_port(
    tmp_path: Any, tls: bool, h2: bool
) -> None:
    a, b, _, hb = await _pair(tmp_path, tls=tls, h2=h2)
    try:
        received = peer_mod.STATS.messages_received
        entries = [Entry(term=1, index=i, data=os.urandom(300)) for i in range(1, 4)]
        a.send(
            [_hb(t) for t in range(1, 51)] + [Message(MessageType.APP, to=2, frm=1, term=51, entries=entries)]
        )
        got = [await asyncio.wait_for(hb.received.get(), 10) for _ in range(51)]
        assert [m.term for m in got] == list(range(1, 52))
        assert [e.data for e in got[-1].entries] == [e.data for e in entries]
        assert a.peers[2].out is not None and not a.peers[2].legacy  # the stream, not gRPC
        assert peer_mod.STATS.messages_received - received >= 51  # all of them came over the stream
        # gRPC on the same port: the prober's Ping and a joining member's Cluster call
        ch = await a.peers[2].get_channel()
        ping = ch.unary_unary(
            f"/{SERVICE}/Ping", request_serializer=lambda x: x, response_deserializer=lambda x: x
        )
        assert await ping(b"hello", timeout=10) == b"hello"
        cluster = ch.unary_unary(
            f"/{SERVICE}/Cluster", request_serializer=lambda x: x, response_deserializer=lambda x: x
        )
        assert json.loads(await cluster(b"", timeout=10))["clusterID"] == CLUSTER
    finally:
        await a.stop()
        await b.stop()


async def _raw_hello(port: int, cluster: int, frm: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(stream.hello(cluster, frm, 2))
        return await asyncio.wait_for(r.read(200), 10)
    finally:
        w.close()


async def test_the_hello_is_checked_as_grpc_metadata_was() -> None:
    a, b, _, _ = await _pair(removed={7})
    try:
        port = b.bound_ports[0]
        assert await _raw_hello(port, CLUSTER, 1) == stream.REPLY_OK
        assert await _raw_hello(port, 0xBAD, 1) == stream.REPLY_ERR + b"cluster ID mismatch\r\n"
        assert await _raw_hello(port, CLUSTER, 7) == stream.REPLY_ERR + b"member removed\r\n"
        # garbage after the magic, an oversized hello: the connection is closed without an answer
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(stream.MAGIC + struct.pack(">I", 1 << 20))
        assert await asyncio.wait_for(r.read(100), 10) == b""
        w.close()
    finally:
        await a.stop()
        await b.stop()


async def test_another_cluster_gets_nothing_through() -> None:
    a, b, _, hb = await _pair(cluster_b=0xC2)
    try:
        a.send([_hb(3)])
        assert not await _got(hb, 3, 1.0)
        assert a.peers[2].out is None
    finally:
        await a.stop()
        await b.stop()


async def test_a_removed_member_is_told_and_stops_sending() -> None:
    a, b, ha, hb = await _pair(removed={1})
    try:
        a.send([_hb(4)])
        await asyncio.wait_for(ha.removed.wait(), 10)
        await eventually_async(lambda: a.peers[2].task.done(), interval=0.02, message="the sender stopped")
        assert a.peers[2].closed
        assert hb.received.empty()
    finally:
        await a.stop()
        await b.stop()


class _OldMember:
    """A member of the previous version as the others see it: the peer port is grpcio's, and Raft
    messages come and go only as gRPC `Raft` streams of frames (peer.encode_frame)."""

    def __init__(self, port: int, host: _Host) -> None:
        self.port = port
        self.host = host
        self.server: grpc.aio.Server | None = None
        self.streams = 0

    async def start(self) -> None:
        async def on_raft(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
            self.streams += 1
            async for frame in requests:
                for m in decode_frame(frame):
                    self.host.step(m)
            return b""

        async def on_ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        srv = grpc.aio.server()
        handlers = {
            "Raft": grpc.stream_unary_rpc_method_handler(on_raft, lambda x: x, lambda x: x),
            "Ping": grpc.unary_unary_rpc_method_handler(on_ping, lambda x: x, lambda x: x),
        }
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        assert srv.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        await srv.start()
        self.server = srv

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


@pytest.mark.parametrize("h2", [True, False], ids=["h2", "relay"])
async def test_rolling_upgrade_new_and_old_members_talk(h2: bool) -> None:
    ports = free_port(), free_port()
    members = {i + 1: _Member(i + 1, [f"http://127.0.0.1:{p}"]) for i, p in enumerate(ports)}
    ha, hb = _Host(1, _Membership(members)), _Host(2, _Membership(members))
    new = PeerTransport(ha, [("127.0.0.1", ports[0])], grpc_protocol=peer_grpc if h2 else None)
    old = _OldMember(ports[1], hb)
    await old.start()
    await new.start()
    upgraded: PeerTransport | None = None
    channel = None
    try:
        # new -> old: the old member does not take the stream; the gRPC Raft stream carries it
        new.send([_hb(t) for t in range(1, 11)])
        assert [(await asyncio.wait_for(hb.received.get(), 10)).term for _ in range(10)] == list(range(1, 11))
        assert old.streams >= 1
        assert new.peers[2].out is None
        # old -> new: an old member's gRPC Raft stream (frames, identity in metadata) is accepted
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}")
        call = channel.stream_unary(
            f"/{SERVICE}/Raft", request_serializer=lambda x: x, response_deserializer=lambda x: x
        )

        async def frames() -> Any:
            yield encode_frame([_hb(t, to=1, frm=2) for t in range(20, 25)])

        await asyncio.wait_for(call(frames(), metadata=(("cluster-id", f"{CLUSTER:x}"), ("from", "2"))), 10)
        assert [(await asyncio.wait_for(ha.received.get(), 10)).term for _ in range(5)] == list(range(20, 25))
        # ... and refused when it comes from another cluster, as before
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call(frames(), metadata=(("cluster-id", "bad"), ("from", "2"))), 10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "cluster ID mismatch"
        # the old member is replaced by a new one on the same port: the stream takes over
        await old.stop()
        upgraded = PeerTransport(hb, [("127.0.0.1", ports[1])], grpc_protocol=peer_grpc if h2 else None)
        await upgraded.start()

        def on_stream() -> bool:
            new.send([_hb(99)])
            return new.peers[2].out is not None

        await eventually_async(on_stream, 15, interval=0.02, message="the stream to the new member")
        assert await _got(hb, 99, 10)
    finally:
        if channel is not None:
            await channel.close()
        await new.stop()
        await old.stop()
        if upgraded is not None:
            await upgraded.stop()


async def test_a_peer_that_stops_reading_costs_a_bounded_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_mod, "MAX_QUEUE_MESSAGES", 20)
    monkeypatch.setattr(stream, "WRITE_HIGH_WATER", 64 << 10)
    accepted: list[asyncio.StreamWriter] = []

    async def stuck(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(len(stream.MAGIC) + 4)
        w.write(stream.REPLY_OK)  # then never reads again
        accepted.append(w)

    port = free_port()
    srv = await asyncio.start_server(stuck, "127.0.0.1", port)
    members = {2: _Member(2, [f"http://127.0.0.1:{port}"])}
    ha = _Host(1, _Membership(members))
    a = PeerTransport(ha, [("127.0.0.1", free_port())])
    await a.start()
    try:
        p = a.peers[2]
        await eventually_async(lambda: p.out is not None, interval=0.02, message="the stream to the peer")
        big = Message(
            MessageType.APP, to=2, frm=1, term=1, entries=[Entry(term=1, index=1, data=b"x" * (256 << 10))]
        )
        for _ in range(200):  # 50 MiB, far beyond the kernel's buffers and the high-water mark
            a.send([big])
            if p.out is not None and p.out.paused and len(p.queue) >= 20:
                break
            await asyncio.sleep(0)
        assert p.out is not None and p.out.paused
        before = len(ha.unreachable)
        a.send([big] * 30)
        assert len(p.queue) == 20  # the bound holds
        assert p.dropped >= 30 and len(ha.unreachable) > before  # dropped, and Raft told
    finally:
        await a.stop()
        for w in accepted:
            w.close()
        srv.close()


async def test_a_peer_back_under_the_same_name_at_a_new_address_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    where = {"ip": "127.0.0.2"}

    async def resolve(host: str, p: int) -> list[tuple[Any, ...]]:
        assert host == "peer.test"
        import socket

        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (where["ip"], p))]

    monkeypatch.setattr(stream, "resolve", resolve)
    members = {1: _Member(1, ["http://127.0.0.1:1"]), 2: _Member(2, [f"http://peer.test:{port}"])}
    ha, hb = _Host(1, _Membership(members)), _Host(2, _Membership(members))
    a = PeerTransport(ha, [("127.0.0.1", free_port())])
    b = PeerTransport(hb, [("127.0.0.2", port)])
    await b.start()
    await a.start()
    b2 = None
    try:
        a.send([_hb(1)])
        assert await _got(hb, 1, 10)
        await b.stop()  # the pod is gone...
        where["ip"] = "127.0.0.3"  # ...and back elsewhere under the same name
        hb2 = _Host(2, _Membership(members))
        b2 = PeerTransport(hb2, [("127.0.0.3", port)])
        await b2.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while hb2.received.empty():
            a.send([_hb(2)])
            await asyncio.sleep(0.05)
            assert loop.time() - t0 < 10, "the peer's new address was not dialled"
    finally:
        await a.stop()
        await b.stop()
        if b2 is not None:
            await b2.stop()


async def test_a_silent_connection_to_the_peer_port_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "FIRST_BYTES_TIMEOUT", 0.3)
    a, b, _, _ = await _pair()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", b.bound_ports[0])
        assert await asyncio.wait_for(r.read(100), 10) == b""
        w.close()
    finally:
        await a.stop()
        await b.stop()
