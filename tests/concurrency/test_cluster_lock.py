"""Lock and Election across a 3-member cluster (ours and real etcd 3.4): holders, waiters and
observers on different members, and a waiter that outlives the Raft leader it started under."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from concurrency_support import kept_alive, stubs
from etcdstore.proto.v3electionpb import v3election_pb2 as epb
from etcdstore.proto.v3lockpb import v3lock_pb2
from testlib import Cluster


@pytest.fixture(params=["etcdstore", "etcd"])
def cluster3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster.start(tmp_path, 3, binary=request.param) as c:
        yield c


async def test_waiters_on_other_members_survive_a_leader_crash(cluster3: Cluster) -> None:
    leader = cluster3.leader_index()
    others = [i for i in range(3) if i != leader]
    eps = [m.endpoint for m in cluster3.members]
    a, b = eps[others[0]], eps[others[1]]
    async with (
        stubs(eps[leader]) as on_leader,
        stubs(a) as on_a,
        stubs(b) as on_b,
        kept_alive(on_a, 30) as la,
        kept_alive(on_b, 30) as lb,
    ):
        held = await on_leader.lock.Lock(v3lock_pb2.LockRequest(name=b"c-lock", lease=la))
        waiter = asyncio.ensure_future(on_b.lock.Lock(v3lock_pb2.LockRequest(name=b"c-lock", lease=lb)))
        won = await on_a.election.Campaign(epb.CampaignRequest(name=b"c-el", lease=la, value=b"first"))
        candidate = asyncio.ensure_future(
            on_b.election.Campaign(epb.CampaignRequest(name=b"c-el", lease=lb, value=b"second"))
        )
        observer = on_b.election.Observe(epb.LeaderRequest(name=b"c-el"))
        assert (await asyncio.wait_for(observer.read(), 10)).kv.value == b"first"
        await on_b.until_keys(b"c-lock/", 2)  # the waiter and the candidate are queued
        await on_b.until_keys(b"c-el/", 2)
        assert not waiter.done() and not candidate.done()

        cluster3.members[leader].kill()  # the Raft leader crashes; a and b elect a new one
        # (a write sent before that would be lost with the old leader, on etcd as well)
        await asyncio.to_thread(cluster3.leader_index)
        await on_a.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=20)
        got = await asyncio.wait_for(waiter, 20)
        assert got.key == b"c-lock/%x" % lb
        await on_a.election.Resign(epb.ResignRequest(leader=won.leader), timeout=20)
        second = await asyncio.wait_for(candidate, 20)
        assert second.leader.key == b"c-el/%x" % lb
        # The observer on b saw the change of leader, in order.
        values = []
        while b"second" not in values:
            values.append((await asyncio.wait_for(observer.read(), 20)).kv.value)
        assert values == [b"second"]
        observer.cancel()
