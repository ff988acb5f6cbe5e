"""kill -9 during a write load loses no acknowledged write, and revisions never go back."""

from __future__ import annotations

import asyncio
import time

from etcdstore import errors
from etcdstore.client import Client, Compare, Op
from testlib import Cluster


async def _load(
    endpoint: str, acked: dict[bytes, tuple[bytes, int]], stop: asyncio.Event, writer: str
) -> None:
    seq = 0
    async with Client([endpoint], timeout=2.0) as c:
        while not stop.is_set():
            seq += 1
            key = f"w{writer}/{seq:06d}".encode()
            value = f"value-{writer}-{seq}".encode()
            try:
                if seq % 3 == 0:
                    # A txn write: one revision, both keys.
                    r = await c.txn(
                        [Compare.version(key) == 0], [Op.put(key, value), Op.put(key + b"/t", value)], []
                    )
                    assert r.succeeded, f"create-only txn on fresh key {key!r} did not succeed"
                    acked[key] = (value, r.header.revision)
                    acked[key + b"/t"] = (value, r.header.revision)
                else:
                    r = await c.put(key, value)
                    acked[key] = (value, r.header.revision)
            except errors.EtcdError:
                await asyncio.sleep(0.02)  # outcome unknown (the server died mid-request): not acked


async def _round(member, acked: dict, seconds: float, round_no: int) -> int:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_load(member.endpoint, acked, stop, f"{round_no}-{w}")) for w in range(8)]
    await asyncio.sleep(seconds)
    member.kill()  # SIGKILL in the middle of the load
    stop.set()
    await asyncio.gather(*tasks)
    return max((rev for _, rev in acked.values()), default=0)


async def _verify(member, acked: dict, min_revision: int) -> int:
    async with Client([member.endpoint], timeout=10.0) as c:
        r = await c.get(b"w", prefix=True)
        got = {kv.key: (kv.value, kv.mod_revision) for kv in r.kvs}
        lost = {k: v for k, v in acked.items() if got.get(k) != v}
        assert not lost, f"{len(lost)} acknowledged writes lost or changed, e.g. {list(lost.items())[:3]}"
        assert r.header.revision >= min_revision, "revision went back after restart"
        return r.header.revision


def test_kill9_during_writes_loses_nothing(tmp_path):
    acked: dict[bytes, tuple[bytes, int]] = {}
    with Cluster.start(tmp_path, 1, binary="etcdstore") as cluster:
        member = cluster.members[0]
        revision = 0
        for round_no in range(3):
            max_acked = asyncio.run(_round(member, acked, 1.5, round_no))
            t0 = time.monotonic()
            member.restart()
            revision = asyncio.run(_verify(member, acked, max(max_acked, revision)))
            assert time.monotonic() - t0 < 30
        assert len(acked) > 100, "the load generated too few acknowledged writes to mean anything"
