"""The peer transport on its own: two transports on loopback, real gRPC, a minimal host around each.

The senders must deliver whatever happens to them: a sender task that ends, or one that hangs
(seen once with --peer-auto-tls after a restart), is started over, so a member never goes mute
towards a peer it can reach.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from etcdstore.raft.records import Message, MessageType
from etcdstore.transport import peer as peer_mod
from etcdstore.transport.peer import PeerTransport
from testlib import eventually_async, free_port


@dataclass
class _Member:
    id: int
    peer_urls: list[str]


@dataclass
class _Membership:
    members: dict[int, _Member]
    removed: set[int] = field(default_factory=set)


class _Host:
    """What the transport needs of a server: identity, membership, and somewhere to step messages."""

    def __init__(self, member_id: int, membership: _Membership) -> None:
        self.member_id = member_id
        self.cluster_id = 0xC1
        self.membership = membership
        self.request_timeout = 5.0
        self.received: asyncio.Queue[Message] = asyncio.Queue()
        self.unreachable: list[int] = []

    def step(self, m: Message) -> None:
        self.received.put_nowait(m)

    def report_unreachable(self, mid: int) -> None:
        self.unreachable.append(mid)

    def report_snapshot(self, mid: int, ok: bool) -> None:  # pragma: no cover - no snapshots here
        pass


async def _pair() -> tuple[PeerTransport, PeerTransport, _Host, _Host]:
    ports = free_port(), free_port()
    ms = _Membership(
        {1: _Member(1, [f"http://127.0.0.1:{ports[0]}"]), 2: _Member(2, [f"http://127.0.0.1:{ports[1]}"])}
    )
    hosts = _Host(1, ms), _Host(2, ms)
    transports = [PeerTransport(h, [("127.0.0.1", p)]) for h, p in zip(hosts, ports, strict=True)]
    for t in transports:
        await t.start()
    return transports[0], transports[1], hosts[0], hosts[1]


def _heartbeat(term: int) -> Message:
    return Message(MessageType.HEARTBEAT, to=2, frm=1, term=term)


async def _delivered(host: _Host, term: int, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            m = await asyncio.wait_for(host.received.get(), left)
        except TimeoutError:
            return False
        if m.term == term:
            return True
    return False


async def test_messages_cross_in_order() -> None:
    a, b, _, hb = await _pair()
    try:
        a.send([_heartbeat(t) for t in range(1, 51)])
        got = [(await asyncio.wait_for(hb.received.get(), 10)).term for _ in range(50)]
        assert got == list(range(1, 51))
    finally:
        await a.stop()
        await b.stop()


def _first_sender_fails(monkeypatch: pytest.MonkeyPatch, how: str, probe_interval: float) -> list[int]:
    """Make the first sender task of the process end at once ("ends") or hang before any stream
    ("hangs"); later ones run normally. Returns a one-item list counting sender starts."""
    original = peer_mod._Peer._run_forever
    calls = [0]

    async def failing_once(self: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            if how == "ends":
                return  # as if the task had died without a word
            await asyncio.Event().wait()  # never set: stuck before any stream starts
        await original(self)

    monkeypatch.setattr(peer_mod, "PROBE_INTERVAL", probe_interval)
    monkeypatch.setattr(peer_mod._Peer, "_run_forever", failing_once)
    return calls


async def test_a_sender_that_ended_is_restarted_by_the_next_send(monkeypatch: pytest.MonkeyPatch) -> None:
    _first_sender_fails(monkeypatch, "ends", probe_interval=60.0)  # only the send path may notice
    a, b, _, hb = await _pair()
    try:
        await eventually_async(lambda: a.peers[2].task.done(), message="the first sender ended")
        a.send([_heartbeat(7)])
        assert await _delivered(hb, 7, 10)
    finally:
        await a.stop()
        await b.stop()


async def test_a_stuck_sender_is_restarted_while_the_peer_answers_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _first_sender_fails(monkeypatch, "hangs", probe_interval=0.2)
    a, b, _, hb = await _pair()
    try:
        a.send([_heartbeat(9)])
        assert not await _delivered(hb, 9, 0.1)  # the stuck sender holds it
        assert await _delivered(hb, 9, 10)  # two good probes later the sender starts over
        assert calls[0] >= 2
    finally:
        await a.stop()
        await b.stop()
