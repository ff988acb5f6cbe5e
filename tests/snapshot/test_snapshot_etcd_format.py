"""Snapshots are etcd snapshots: files move between real etcd 3.4 and etcdstore both ways.

    etcd -> etcdstore:   a snapshot REAL etcd saved restores with `etcdstore snapshot restore`
                         and the new member serves the same keys, revisions, leases and auth data
    etcdstore -> etcd:   `etcdctl snapshot save` from etcdstore gives a file that `etcdctl snapshot
                         status` reads and `etcdctl snapshot restore` turns into a real etcd member
                         serving the same data
    round trip:          etcd -> etcdstore -> etcd
Compared with `dump` (every key at every revision since the compaction, leases, users, roles,
permissions at work) and with what etcdctl prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from etcdstore.snapshot import etcdformat
from etcdstore.snapshot import format as snapfmt
from etcdstore.storage import backend as bk
from snapshot_data import ROOT, dump, etcdctl_view, etcdstore, populate, restore_and_start, without_lease_ids
from testlib import Cluster, etcdctl, have_etcd

pytestmark = [pytest.mark.skipif(not have_etcd(), reason="needs etcd/etcdctl 3.4"), pytest.mark.etcd]

USER = ["--user", ":".join(ROOT)]


def _status(path: Path) -> tuple[dict, dict]:
    theirs = json.loads(etcdctl([], "snapshot", "status", str(path), "-w", "json").stdout)
    ours = json.loads(etcdstore("snapshot", "status", str(path), "-w", "json").stdout)
    return theirs, ours


@pytest.fixture(scope="module")
def etcd_source(tmp_path_factory: pytest.TempPathFactory):
    """A real etcd 3.4 member filled by `populate`, its dump, and a snapshot it saved."""
    base = tmp_path_factory.mktemp("etcd-source")
    with Cluster.start(base, 1, binary="etcd") as c:
        ep = c.endpoints[0]
        info = populate(ep)
        snap = base / "etcd.db"
        etcdctl(ep, *USER, "snapshot", "save", str(snap))
        yield {
            "snapshot": snap,
            "dump": dump(ep, info["compacted"]),
            "view": etcdctl_view(ep),
            **info,
            "data_dir": c.members[0].data_dir,
        }


@pytest.fixture(scope="module")
def etcdstore_source(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("etcdstore-source")
    with Cluster.start(base, 1, binary="etcdstore") as c:
        ep = c.endpoints[0]
        info = populate(ep)
        snap = base / "etcdstore.db"
        out = etcdctl(ep, *USER, "snapshot", "save", str(snap)).stdout
        assert "Snapshot saved" in out
        yield {"snapshot": snap, "dump": dump(ep, info["compacted"]), "view": etcdctl_view(ep), **info}


def test_same_data_on_both_sources(etcd_source, etcdstore_source) -> None:
    """The baseline the other tests rely on: the same commands gave both servers the same state."""
    for part in ("dump", "view"):
        assert without_lease_ids(etcdstore_source[part], etcdstore_source["leases"]) == without_lease_ids(
            etcd_source[part], etcd_source["leases"]
        )


def test_etcd_snapshot_status(etcd_source) -> None:
    theirs, ours = _status(etcd_source["snapshot"])
    assert ours == theirs
    assert theirs["revision"] == etcd_source["revision"]
    for fmt in ("table", "simple"):
        ours_out = etcdstore("snapshot", "status", str(etcd_source["snapshot"]), "-w", fmt).stdout
        assert ours_out == etcdctl([], "snapshot", "status", str(etcd_source["snapshot"]), "-w", fmt).stdout


def test_etcd_snapshot_restores_into_etcdstore(etcd_source, tmp_path: Path) -> None:
    m = restore_and_start("etcdstore", etcd_source["snapshot"], tmp_path, "etcdstore")
    try:
        assert dump(m.endpoint, etcd_source["compacted"]) == etcd_source["dump"]
        assert etcdctl_view(m.endpoint) == etcd_source["view"]
        # Writes go on from the restored revision.
        put = json.loads(etcdctl(m.endpoint, *USER, "put", "new", "1", "-w", "json").stdout)
        assert put["header"]["revision"] == etcd_source["revision"] + 1
    finally:
        m.kill()


def test_etcdstore_snapshot_is_an_etcd_snapshot(etcdstore_source, tmp_path: Path) -> None:
    snap = etcdstore_source["snapshot"]
    theirs, ours = _status(snap)
    print("etcdctl snapshot status of an etcdstore snapshot:", theirs)
    assert ours == theirs
    assert theirs["revision"] == etcdstore_source["revision"]
    assert theirs["totalSize"] == snap.stat().st_size - 32
    m = restore_and_start("etcdctl", snap, tmp_path, "etcd")
    try:
        assert dump(m.endpoint, etcdstore_source["compacted"]) == etcdstore_source["dump"]
        assert etcdctl_view(m.endpoint) == etcdstore_source["view"]
        put = json.loads(etcdctl(m.endpoint, *USER, "put", "new", "1", "-w", "json").stdout)
        assert put["header"]["revision"] == etcdstore_source["revision"] + 1
    finally:
        m.kill()


def test_round_trip_etcd_etcdstore_etcd(etcd_source, tmp_path: Path) -> None:
    middle = restore_and_start("etcdstore", etcd_source["snapshot"], tmp_path / "middle", "etcdstore")
    try:
        again = tmp_path / "again.db"
        etcdctl(middle.endpoint, *USER, "snapshot", "save", str(again))
    finally:
        middle.kill()
    theirs, ours = _status(again)
    assert ours == theirs and theirs["revision"] == etcd_source["revision"]
    end = restore_and_start("etcdctl", again, tmp_path / "end", "etcd")
    try:
        assert dump(end.endpoint, etcd_source["compacted"]) == etcd_source["dump"]
        assert etcdctl_view(end.endpoint) == etcd_source["view"]
    finally:
        end.kill()


def test_etcd_data_dir_db_needs_skip_hash_check(etcd_source, tmp_path: Path) -> None:
    """A db file copied out of a data dir has no sha256: refused unless --skip-hash-check, as etcd."""
    db = tmp_path / "db"
    db.write_bytes((etcd_source["data_dir"] / "member" / "snap" / "db").read_bytes())
    args = ["snapshot", "restore", str(db), "--data-dir"]
    theirs = etcdctl([], *args, str(tmp_path / "etcdctl.etcd"), check=False)
    ours = etcdstore(*args, str(tmp_path / "x.etcd"), check=False)
    assert theirs.returncode != 0 and ours.returncode != 0
    assert "snapshot missing hash but --skip-hash-check=false" in theirs.stderr
    assert "snapshot missing hash but --skip-hash-check=false" in ours.stderr
    assert not (tmp_path / "x.etcd").exists()
    # With the flag it restores (the file has free pages and no freelist: a live bbolt file).
    m = restore_and_start("etcdstore", db, tmp_path / "skip", "etcdstore", extra=("--skip-hash-check",))
    try:
        assert dump(m.endpoint, etcd_source["compacted"]) == etcd_source["dump"]
    finally:
        m.kill()


def test_damaged_etcd_snapshot_is_refused(etcd_source, tmp_path: Path) -> None:
    data = etcd_source["snapshot"].read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    cases = {"flipped": bytes(flipped), "truncated": data[: len(data) - 4096]}
    for name, content in cases.items():
        path = tmp_path / f"{name}.db"
        path.write_bytes(content)
        out = etcdstore(
            "snapshot", "restore", str(path), "--data-dir", str(tmp_path / f"{name}.etcd"), check=False
        )
        assert out.returncode == 1 and out.stderr.startswith("Error: "), (name, out.stderr)
        assert not (tmp_path / f"{name}.etcd").exists()


def test_old_etcdstore_format_still_restores(etcd_source, tmp_path: Path) -> None:
    """Snapshots saved before this change (our own format) still restore and report status."""
    be = bk.Backend(tmp_path / "scratch")
    try:
        etcdformat.load_into(etcd_source["snapshot"], be)
        old = tmp_path / "old.db"
        snapfmt.create_file(be, str(old))
    finally:
        be.close()
    assert old.read_bytes().startswith(snapfmt.MAGIC)
    status = json.loads(etcdstore("snapshot", "status", str(old), "-w", "json").stdout)
    assert status["revision"] == etcd_source["revision"]
    m = restore_and_start("etcdstore", old, tmp_path, "etcdstore")
    try:
        assert dump(m.endpoint, etcd_source["compacted"]) == etcd_source["dump"]
    finally:
        m.kill()


def test_snapshot_stream_is_consistent_and_clean(tmp_path: Path) -> None:
    with Cluster.start(tmp_path, 1, binary="etcdstore") as c:
        ep = c.endpoints[0]
        for i in range(50):
            etcdctl(ep, "put", f"a{i}", str(i))
        snap = tmp_path / "s.db"
        etcdctl(ep, "snapshot", "save", str(snap))
        theirs, ours = _status(snap)
        assert ours == theirs and theirs["totalKey"] >= 50
        member_dir = c.members[0].data_dir / "member"
        leftovers = [p for p in os.listdir(member_dir) if p.startswith("snapshot-")]
        assert leftovers == []


def test_operator_restore_member_with_etcd_snapshot(etcd_source, tmp_path: Path) -> None:
    """The operator's restore Job seeds an etcdstore cluster in three steps (restore_runner.py):
    `restore-member fetch`, the engine's own tool (`etcdstore snapshot restore`), `restore-member
    finish`. A backup taken from real etcd works there too."""
    import hashlib
    import subprocess
    import sys

    from etcdoperator.restore_runner import SNAPSHOT, restore_args, restore_tool
    from testlib import Member, free_port, wait_serving

    m = Member(
        name="seed", data_dir=tmp_path / "seed" / "data", client_port=free_port(), peer_port=free_port()
    )
    m.initial_cluster = f"seed={m.peer_url}"
    scratch = tmp_path / "seed" / ".restore"
    sha = hashlib.sha256(etcd_source["snapshot"].read_bytes()).hexdigest()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    op = [sys.executable, "-m", "etcdoperator", "restore-member"]
    steps = [
        op
        + [
            "fetch",
            f"--data-dir={m.data_dir}",
            f"--scratch={scratch}",
            f"--source=file://{etcd_source['snapshot']}",
            f"--sha256={sha}",
        ],
        restore_tool("etcdstore", "")
        + restore_args(
            snapshot=str(scratch / SNAPSHOT),
            name="seed",
            peer_url=m.peer_url,
            token=m.cluster_token,
            data_dir=str(m.data_dir),
        ),
        op + ["finish", f"--data-dir={m.data_dir}", f"--scratch={scratch}"],
    ]
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
        assert out.returncode == 0, (cmd, out.stdout, out.stderr)
    assert out.stdout.startswith("restored into ") and not scratch.exists()
    m.spawn()
    try:
        wait_serving([m])
        assert dump(m.endpoint, etcd_source["compacted"]) == etcd_source["dump"]
    finally:
        m.kill()


def test_snapshot_is_one_point_in_time_under_writes(tmp_path: Path) -> None:
    """Writes keep landing while the snapshot is taken: the file holds exactly the state at one
    revision (every key as the source served it at that revision, nothing later)."""
    import threading

    import grpc
    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    with Cluster.start(tmp_path / "src", 1, binary="etcdstore") as c:
        ep = c.endpoints[0]
        stop = threading.Event()
        written = []

        def writer(n: int) -> None:
            with grpc.insecure_channel(ep) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                i = 0
                while not stop.is_set():
                    r = kv.Put(rpc_pb2.PutRequest(key=b"w%d/%d" % (n, i % 50), value=b"%d" % i), timeout=10)
                    written.append(r.header.revision)
                    i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            while len(written) < 200:
                stop.wait(0.01)
            snap = tmp_path / "s.db"
            etcdctl(ep, "snapshot", "save", str(snap))
            after = len(written) + 100
            while len(written) < after:  # writes go on past the snapshot
                stop.wait(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join()
        theirs, ours = _status(snap)
        assert ours == theirs
        rev = theirs["revision"]
        assert rev < max(written)
        with grpc.insecure_channel(ep) as ch:
            at = rpc_pb2_grpc.KVStub(ch).Range(
                rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev), timeout=10
            )
        expected = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in at.kvs]
    m = restore_and_start("etcdctl", snap, tmp_path / "etcd", "etcd")
    try:
        with grpc.insecure_channel(m.endpoint) as ch:
            now = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"), timeout=10)
        assert now.header.revision == rev
        assert [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in now.kvs
        ] == expected
    finally:
        m.kill()
