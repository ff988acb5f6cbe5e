"""Linearizable reads: one read_index round in flight at a time, later reads join the next.

Each round costs a heartbeat to every follower and their answers (gRPC frames at ~0.3 ms of
CPU each), so under load reads must share rounds rather than start one per drive-loop turn.
The policy (server/policies.py ReadRounds) is tested on its own, then inside the driver.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from etcdstore.raft.records import Role
from etcdstore.server.policies import GroupCommit, ReadRounds
from etcdstore.server.raftnode import RaftNode


def _never_done(w: object) -> bool:
    return False


def test_one_round_at_a_time_and_the_rest_join_the_next() -> None:
    rr = ReadRounds()
    assert not rr.due()
    rr.add("a")
    assert rr.due()
    first = rr.start(now=10.0)
    assert not rr.due() and rr.waiting == []
    rr.add("b")
    rr.add("c")
    assert not rr.due()  # a round is out: b and c wait for the next
    assert rr.answered(first) == ["a"]
    assert rr.due()
    second = rr.start(now=11.0)
    assert second != first and rr.answered(second) == ["b", "c"]
    assert rr.answered(second) == []  # an answer for a round already served (or unknown)


def test_a_round_without_answer_is_asked_again_with_its_live_reads() -> None:
    rr = ReadRounds()
    for w in ("live", "gone"):
        rr.add(w)
    rr.start(now=0.0)
    assert rr.expire(now=0.4, retry_after=0.5, done=_never_done) is False  # not yet
    assert rr.expire(now=0.6, retry_after=0.5, done=lambda w: w == "gone") is True
    assert rr.waiting == ["live"] and not rr.inflight
    rr.start(now=1.0)
    assert rr.expire(now=2.0, retry_after=0.5, done=lambda w: True) is False  # nobody left to ask for
    assert not rr.inflight and not rr.waiting


def test_a_leader_change_requeues_every_round() -> None:
    rr = ReadRounds()
    rr.add(1)
    rr.start(now=0.0)
    rr.add(2)
    rr.requeue_all(done=_never_done)
    assert sorted(rr.waiting) == [1, 2] and not rr.inflight
    assert sorted(rr.everyone()) == [1, 2]


class _Node:
    commit_index = 0
    term = 1

    def __init__(self) -> None:
        self.rounds: list[bytes] = []

    def begin_batch(self) -> None:
        pass

    def end_batch(self) -> None:
        pass

    def read_index(self, ctx: bytes) -> None:
        self.rounds.append(ctx)


def _driver(node: _Node) -> RaftNode:
    host = SimpleNamespace(applied_index=0, transport=None, in_flight=lambda: 0)
    r = RaftNode(
        node,
        None,
        None,
        host,
        tick_seconds=0.1,
        heartbeat_seconds=0.1,
        group_commit=GroupCommit(),
    )
    r.leader_id = 1
    r.role = Role.FOLLOWER
    return r


async def test_reads_that_arrive_during_a_round_share_the_next_one() -> None:
    loop = asyncio.get_running_loop()
    node = _Node()
    r = _driver(node)
    first = loop.create_future()
    r.read(first)
    r._feed(node)  # type: ignore[arg-type]  # a fake RawNode
    assert len(node.rounds) == 1 and not r.reads.waiting

    later = [loop.create_future() for _ in range(3)]
    for f in later:  # each arrives in a turn of its own while the first round is out
        r.read(f)
        r._feed(node)  # type: ignore[arg-type]  # a fake RawNode
    assert len(node.rounds) == 1 and r.reads.waiting == later

    r.reads.answered(node.rounds[0])  # the first round's answer came
    r._feed(node)  # type: ignore[arg-type]  # a fake RawNode
    assert len(node.rounds) == 2
    assert r.reads.inflight[node.rounds[1]][1] == later


async def test_no_round_without_a_leader() -> None:
    node = _Node()
    r = _driver(node)
    r.leader_id = 0
    r.read(asyncio.get_running_loop().create_future())
    r._feed(node)  # type: ignore[arg-type]  # a fake RawNode
    assert node.rounds == [] and len(r.reads.waiting) == 1
