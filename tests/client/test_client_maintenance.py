"""Maintenance calls against a real etcd 3.4 member: status, hashes, alarms, defrag, snapshots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from etcdstore import errors
from etcdstore.client import AlarmType, Client, DowngradeAction
from etcdstore.errors import EtcdError
from testlib import Cluster, Member, etcdctl, free_port, wait_serving

pytestmark = pytest.mark.etcd


async def test_status_hash_and_hash_kv(client: Client) -> None:
    st = await client.status()
    assert st.version == "3.4.23" and st.leader == st.header.member_id and st.dbSize > 0
    assert st.raftAppliedIndex >= 1 and not st.isLearner
    r1 = (await client.put("a", "1")).header.revision
    h1 = await client.hash_kv()
    # etcd 3.4 reports compact_revision -1 before any compaction and has no hash_revision (3.5+).
    assert h1.header.revision == r1 and h1.compact_revision == -1
    assert (await client.hash_kv(r1)).hash == h1.hash
    await client.put("a", "2")
    assert (await client.hash_kv()).hash != h1.hash
    assert (await client.hash_kv(r1)).hash == h1.hash  # history up to r1 is unchanged
    assert (await client.hash()).hash != 0


async def test_alarms(client: Client) -> None:
    assert list((await client.alarm_list()).alarms) == []
    me = (await client.status()).header.member_id
    act = await client.alarm_activate(me, AlarmType.NOSPACE)
    assert [(a.memberID, a.alarm) for a in act.alarms] == [(me, AlarmType.NOSPACE)]
    assert [(a.memberID, a.alarm) for a in (await client.alarm_list()).alarms] == [(me, AlarmType.NOSPACE)]
    with pytest.raises(EtcdError) as e:
        await client.put("k", "v")
    assert e.value == errors.NO_SPACE
    assert (await client.status()).errors  # "memberID:... alarm:NOSPACE"
    await client.alarm_disarm(me, AlarmType.NOSPACE)
    assert list((await client.alarm_list()).alarms) == []
    await client.put("k", "v")


async def test_defragment_shrinks_db(client: Client) -> None:
    for i in range(200):
        await client.put(f"big{i}", b"x" * 4096)
    await client.delete("big", prefix=True)
    rev = (await client.put("z", "1")).header.revision
    await client.compact(rev, physical=True)
    before = await client.status()
    await client.defragment()
    after = await client.status()
    assert after.dbSize < before.dbSize
    assert (await client.get("z")).kvs[0].value == b"1"


async def test_snapshot_save_matches_and_restores(client: Client, etcd: Cluster, tmp_path: Path) -> None:
    for i in range(100):
        await client.put(f"s/{i}", str(i))
    path = tmp_path / "backup" / "snap.db"
    path.parent.mkdir()
    size, sha = await client.snapshot_save(path)
    data = path.read_bytes()
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["snap.db"]  # no temp file left
    # etcd appends the sha256 of the database to the stream: the file is self-checking.
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    st = json.loads(etcdctl([], "snapshot", "status", str(path), "-w", "json").stdout)
    assert st["totalKey"] >= 100
    # A member restored from it serves the data (etcdctl checks the hash while restoring).
    r0 = Member("r0", tmp_path / "restored" / "r0.etcd", free_port(), free_port(), binary="etcd")
    etcdctl(
        [],
        "snapshot",
        "restore",
        str(path),
        "--data-dir",
        str(r0.data_dir),
        "--name",
        "r0",
        "--initial-cluster",
        f"r0={r0.peer_url}",
        "--initial-advertise-peer-urls",
        r0.peer_url,
    )
    r0.spawn()
    try:
        wait_serving([r0])
        async with Client(r0.endpoint, timeout=5) as restored:
            assert (await restored.get("s/", prefix=True, count_only=True)).count == 100
    finally:
        r0.kill()
    chunks = [c async for c in client.snapshot()]
    assert sum(map(len, chunks)) > 0 and len(chunks) >= 1


async def test_downgrade_is_unimplemented_in_34(client: Client) -> None:
    with pytest.raises(EtcdError) as e:
        await client.downgrade(DowngradeAction.VALIDATE, "3.3.0")
    assert e.value.code.name == "UNIMPLEMENTED"
