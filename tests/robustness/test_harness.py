"""The cluster harness and the peer-link proxy, against a real 3-member etcd 3.4 cluster."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from .cluster import Cluster, Target

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd 3.4 is not installed"),
]


async def _put_latency(cluster: Cluster, n: int = 5) -> float:
    c = cluster.client().with_options(timeout=10.0)
    t0 = time.monotonic()
    for i in range(n):
        await c.put(b"/lat", b"%d" % i)
    return (time.monotonic() - t0) / n


async def test_partition_delay_kill_pause_and_replace(tmp_path):
    async with Cluster(Target.get("etcd"), size=3, base=tmp_path, seed=5) as c:
        leader = await c.leader()
        others = [n for n in c.members if n != leader]

        # isolating the leader's peer links makes the other two elect a new one
        await c.network(blackhole=c.links([leader], others))
        deadline = time.monotonic() + 15
        new = None
        while time.monotonic() < deadline:
            views = []
            for n in others:
                try:
                    views.append((await c.status(n)).leader)
                except Exception:  # noqa: BLE001 - a member may be busy electing
                    views.append(0)
            ids = {c.members[n].member_id for n in others}
            if len(set(views)) == 1 and views[0] in ids:
                new = views[0]
                break
            await asyncio.sleep(0.2)
        assert new is not None, "no new leader among the majority while the old one was cut off"
        await c.heal()
        await c.wait_healthy()

        # a fixed 100 ms on every peer link: a write needs at least one round trip between members
        base = await _put_latency(c)
        await c.network(delay=[(a, b, 100.0, 0.0) for a in c.members for b in c.members if a != b])
        slow = await _put_latency(c)
        await c.heal()
        assert slow > 0.18 > base, (base, slow)

        # kill -9 a follower and restart it on its data; pause the leader
        leader = await c.leader()
        follower = next(n for n in c.members if n != leader)
        c.kill(follower)
        # Through the leader: a put is not retried once sent (as clientv3), and the shared client may
        # still pick the dead member's endpoint first.
        await c.client().at(c.members[leader].endpoint).put(b"/while-down", b"1")
        await c.restart(follower)
        await c.wait_healthy()
        leader = await c.leader()
        c.pause(leader)
        await asyncio.sleep(2.5)
        c.resume(leader)
        await c.wait_healthy()

        # replace a member: new member ID, same peer URL, empty data, catches up
        victim = others[0]
        old_id = c.members[victim].member_id
        await c.replace(victim)
        await c.wait_healthy()
        members = (await c.client().member_list()).members
        assert len(members) == 3 and old_id not in {m.ID for m in members}
        got = await c.client().at(c.members[victim].endpoint).get(b"/while-down", serializable=True)
        assert got.kvs and got.kvs[0].value == b"1"

        rev = await c.settle()
        hashes = await c.hash_kv(rev)
        assert len({h["hash"] for h in hashes.values()}) == 1
        stats = await c.proxy.call(cmd="stats")
        assert stats["connections"] > 0 and stats["unidentified"] == 0, stats
