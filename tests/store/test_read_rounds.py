"""Linearizable reads: one read_index round in flight at a time, later reads join the next.

Each round costs a heartbeat to every follower and their answers (gRPC frames at ~0.3 ms of
CPU each), so under load reads must share rounds rather than start one per drive-loop turn.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from etcdstore.server.server import EtcdServer


class _Node:
    commit_index = 0

    def __init__(self) -> None:
        self.rounds: list[bytes] = []

    def begin_batch(self) -> None:
        pass

    def end_batch(self) -> None:
        pass

    def read_index(self, ctx: bytes) -> None:
        self.rounds.append(ctx)


def _member() -> SimpleNamespace:
    m = SimpleNamespace(
        _campaign_when_applied=False, applied_index=0, leader_id=1, _ticks=0, _reports=[], _forwarded=0,
        _inbound=[], _proposals=[], _last_batch=0, _conf_proposals=[], _read_waiters=[], _read_seq=0,
        _read_inflight={}, _transfer_to=0)
    m._read_round_due = lambda: EtcdServer._read_round_due(m)
    return m


async def test_reads_that_arrive_during_a_round_share_the_next_one() -> None:
    loop = asyncio.get_running_loop()
    m, node = _member(), _Node()
    first = loop.create_future()
    m._read_waiters.append(first)
    EtcdServer._feed(m, node)
    assert len(node.rounds) == 1 and not m._read_waiters

    later = [loop.create_future() for _ in range(3)]
    for f in later:  # each arrives in a turn of its own while the first round is out
        m._read_waiters.append(f)
        EtcdServer._feed(m, node)
    assert len(node.rounds) == 1 and m._read_waiters == later

    m._read_inflight.pop(node.rounds[0])  # the first round's answer came
    EtcdServer._feed(m, node)
    assert len(node.rounds) == 2
    assert m._read_inflight[node.rounds[1]][1] == later
