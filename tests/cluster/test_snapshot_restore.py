"""`etcdstore snapshot restore|status`: a new cluster starts from a backup taken with etcdctl."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from etcdstore.membership import member_id
from testlib import Cluster, Member, etcdctl, free_port, have_etcd, wait_serving

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def etcdstore(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "etcdstore", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"etcdstore {' '.join(args)}: {out.stderr}")
    return out


def test_restore_a_backup_into_a_new_three_member_cluster(tmp_path):
    with Cluster.start(tmp_path / "old", 1, binary="etcdstore") as old:
        ep = old.endpoints
        for i in range(200):
            etcdctl(ep, "put", f"k{i:03d}", f"v{i}")
        lease = etcdctl(ep, "lease", "grant", "600").stdout.split()[1]
        etcdctl(ep, "put", "leased", "x", "--lease", lease)
        etcdctl(ep, "del", "k000")
        source = json.loads(etcdctl(ep, "get", "", "--prefix", "-w", "json").stdout)
        backup = tmp_path / "backup.db"
        out = etcdctl(ep, "snapshot", "save", str(backup)).stdout
        assert "Snapshot saved" in out

    status = json.loads(etcdstore("snapshot", "status", str(backup), "-w", "json").stdout)
    # etcd's snapshot status: totalSize is the bbolt database's, without the 32-byte sha256 trailer.
    assert (
        status["revision"] == source["header"]["revision"]
        and status["totalSize"] == backup.stat().st_size - 32
    )
    table = etcdstore("snapshot", "status", str(backup), "-w", "table").stdout
    assert "REVISION" in table and str(status["revision"]) in table

    # Restore into three fresh data dirs, one per member of the new cluster. The token is picked so
    # that one member ID starts with byte 0xff: such a member once vanished from the member list
    # when its data dir was reopened, and its restarted member never heard a leader.
    members = [
        Member(
            name=f"r{i}",
            data_dir=tmp_path / "new" / f"r{i}.etcd",
            client_port=free_port(),
            peer_port=free_port(),
        )
        for i in range(3)
    ]
    token = next(
        t
        for t in (f"restored-{n}" for n in range(100_000))
        if any(member_id([m.peer_url], t) >> 56 == 0xFF for m in members)
    )
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = initial
        m.cluster_token = token
        etcdstore(
            "snapshot",
            "restore",
            str(backup),
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            m.peer_url,
        )
    # Restoring over an existing data dir is refused.
    again = etcdstore(
        "snapshot",
        "restore",
        str(backup),
        "--name",
        "r0",
        "--data-dir",
        str(members[0].data_dir),
        "--initial-cluster",
        initial,
        "--initial-advertise-peer-urls",
        members[0].peer_url,
        check=False,
    )
    assert again.returncode == 1 and "exists" in again.stderr
    # A corrupted backup is refused before anything is written.
    bad = tmp_path / "bad.db"
    bad.write_bytes(backup.read_bytes()[:-100] + b"\x00" * 100)
    broken = etcdstore("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "never"), check=False)
    assert broken.returncode == 1 and not (tmp_path / "never").exists()

    new = Cluster(tmp_path / "new", members, "etcdstore")
    try:
        for m in members:
            m.spawn()
        wait_serving(members)
        eps = new.endpoints
        restored = json.loads(etcdctl(eps, "get", "", "--prefix", "-w", "json").stdout)
        assert [kv["key"] for kv in restored["kvs"]] == [kv["key"] for kv in source["kvs"]]
        assert [(kv["mod_revision"], kv["value"]) for kv in restored["kvs"]] == [
            (kv["mod_revision"], kv["value"]) for kv in source["kvs"]
        ]
        assert restored["header"]["revision"] == source["header"]["revision"]
        members_now = json.loads(etcdctl(eps, "member", "list", "-w", "json").stdout)["members"]
        assert sorted(m["name"] for m in members_now) == ["r0", "r1", "r2"]
        assert sorted(m["ID"] for m in members_now) == sorted(member_id([m.peer_url], token) for m in members)
        # New writes continue from the restored revision; every member agrees.
        etcdctl(eps, "put", "after", "restore")
        after = json.loads(etcdctl(eps, "get", "after", "-w", "json").stdout)
        assert after["kvs"][0]["mod_revision"] == source["header"]["revision"] + 1
        hashes = {
            json.loads(etcdctl([m.endpoint], "endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]["hash"]
            for m in members
        }
        assert len(hashes) == 1
        # The lease came along with its key.
        assert "leased" in etcdctl(eps, "lease", "timetolive", lease, "--keys").stdout
    finally:
        new.close()
