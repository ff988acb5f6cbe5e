"""`etcdoperator backup` and the restore Job's steps (`restore-member fetch|finish` around etcdctl) as the Jobs run them,
against a real etcd 3.4, a directory and an S3-compatible server (moto)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from etcdoperator.backup_runner import apply_retention, backup_dir
from etcdoperator.objectstore import DirectoryStore
from etcdoperator.restore_runner import restore_args, restore_tool
from etcdstore.client import Client
from kubeharness.s3 import ACCESS_KEY, SECRET_KEY, MotoS3
from testlib import Member, free_port, wait_serving

pytestmark = pytest.mark.etcd


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "etcdoperator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def etcd(tmp_path):
    with Member.single(tmp_path, binary="etcd") as m:
        yield m


async def fill(endpoint: str, n: int = 20) -> None:
    async with Client([endpoint], timeout=5) as c:
        for i in range(n):
            await c.put(f"key/{i:02d}", f"value-{i}")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def restore_steps(volume, source: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The restore Job's three steps, in order, as its containers run them (build/restorejob.py):
    fetch (operator image), the engine's own tool (etcd 3.4's etcdctl), finish. Stops at the first failure."""
    data, scratch = volume / "data", volume / ".restore"
    p = run_cli(
        "restore-member",
        "fetch",
        f"--data-dir={data}",
        f"--scratch={scratch}",
        f"--source={source}",
        *extra,
        env=env,
    )
    if p.returncode != 0:
        return p
    tool = restore_tool("etcd", "3.4.23")
    assert tool == ["etcdctl", "snapshot", "restore"]
    p = subprocess.run(
        tool
        + restore_args(
            snapshot=str(scratch / "snapshot.db"),
            name="r-0",
            peer_url="http://127.0.0.1:2380",
            token="tok",
            data_dir=str(data),
        ),
        capture_output=True,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
        timeout=60,
        check=False,
    )
    if p.returncode != 0:
        return p
    return run_cli("restore-member", "finish", f"--data-dir={data}", f"--scratch={scratch}")


async def test_backup_to_directory_with_retention_and_restore(etcd, tmp_path):
    await fill(etcd.client_url)
    dest = tmp_path / "backups"
    results = []
    for i in range(3):
        result_file = tmp_path / f"result-{i}"
        p = run_cli(
            "backup",
            f"--endpoints={etcd.client_url}",
            "--cluster=ns/c1",
            f"--destination=file://{dest}",
            "--kind=scheduled",
            f"--name=c1-2026010{i}",
            "--keep=2",
            f"--result-file={result_file}",
        )
        assert p.returncode == 0, p.stderr
        results.append(json.loads(result_file.read_text()))
    directory = dest / "ns" / "c1" / "scheduled"
    assert sorted(f.name for f in directory.iterdir()) == [
        "c1-20260101.db",
        "c1-20260101.json",
        "c1-20260102.db",
        "c1-20260102.json",
    ]
    last = results[-1]
    snap = directory / "c1-20260102.db"
    assert last["sha256"] == sha256(snap) and last["size"] == snap.stat().st_size
    assert last["revision"] >= 21 and last["location"] == str(snap)
    meta = json.loads((directory / "c1-20260102.json").read_text())
    assert meta["sha256"] == last["sha256"] and meta["revision"] == last["revision"]
    assert results[-1]["pruned"] == 1

    # restore: the Job's steps into the seed's (empty) volume; the snapshot copy is removed after
    volume = tmp_path / "restored"
    data = volume / "data"
    p = restore_steps(volume, f"file://{snap}", "--sha256=" + "0" * 64)
    assert p.returncode == 1 and "conflicting checksums" in p.stderr and not data.exists()
    # an attempt that died after the tool wrote part of the data dir: the retry starts over
    (data / "member").mkdir(parents=True)
    (data / "member" / "partial").write_text("x")
    p = restore_steps(volume, f"file://{snap}")
    assert p.returncode == 0, p.stderr
    assert (data / "member" / "snap" / "db").exists() and not (data / "member" / "partial").exists()
    assert sorted(x.name for x in volume.iterdir()) == ["data"]  # nothing left behind
    # a volume with data (not this restore's unfinished attempt) is never restored over
    p = restore_steps(volume, f"file://{snap}")
    assert p.returncode == 1 and "already holds data" in p.stderr
    assert (data / "member" / "snap" / "db").exists()

    with Member("r-0", data, free_port(), free_port(), binary="etcd") as restored:
        restored.spawn()
        wait_serving([restored])
        async with Client([restored.client_url], timeout=5) as c:
            r = await c.get("key/", prefix=True)
            assert len(r.kvs) == 20 and r.kvs[-1].value == b"value-19"


async def test_corrupted_snapshot_is_refused(etcd, tmp_path):
    await fill(etcd.client_url, 3)
    dest = tmp_path / "b"
    p = run_cli(
        "backup",
        f"--endpoints={etcd.client_url}",
        "--cluster=ns/c",
        f"--destination=file://{dest}",
        "--name=one",
    )
    assert p.returncode == 0, p.stderr
    snap = dest / "ns" / "c" / "on-demand" / "one.db"
    blob = bytearray(snap.read_bytes())
    blob[100] ^= 0xFF
    snap.write_bytes(bytes(blob))
    p = restore_steps(tmp_path / "r", f"file://{snap}")
    assert p.returncode == 1 and "checksum mismatch" in p.stderr
    assert not (tmp_path / "r" / "data").exists()
    assert not (tmp_path / "r" / ".restore" / "snapshot.db").exists()


async def test_backup_to_s3_and_restore_from_s3(etcd, tmp_path):
    await fill(etcd.client_url, 10)
    s3 = MotoS3(tmp_path / "moto.log").start()
    try:
        s3.client().create_bucket(Bucket="backups")
        import os

        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        for name in ("a-1", "a-2", "a-3"):
            p = run_cli(
                "backup",
                f"--endpoints={etcd.client_url}",
                "--cluster=prod/a",
                "--destination=s3://backups/team",
                f"--s3-endpoint={s3.endpoint}",
                "--s3-path-style",
                "--kind=scheduled",
                f"--name={name}",
                "--keep=2",
                env=env,
            )
            assert p.returncode == 0, p.stderr
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="backups")["Contents"]]
        assert sorted(keys) == [
            "team/prod/a/scheduled/a-2.db",
            "team/prod/a/scheduled/a-2.json",
            "team/prod/a/scheduled/a-3.db",
            "team/prod/a/scheduled/a-3.json",
        ]
        head = s3.client().head_object(Bucket="backups", Key="team/prod/a/scheduled/a-3.db")
        meta = json.loads(
            s3.client().get_object(Bucket="backups", Key="team/prod/a/scheduled/a-3.json")["Body"].read()
        )
        assert head["Metadata"]["sha256"] == meta["sha256"]
        p = restore_steps(
            tmp_path / "r",
            "s3://backups/team/prod/a/scheduled/a-3.db",
            f"--s3-endpoint={s3.endpoint}",
            "--s3-path-style",
            env=env,
        )
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "r" / "data" / "member" / "snap" / "db").exists()
    finally:
        s3.stop()


def test_backup_failure_is_reported_as_the_result(tmp_path):
    result = tmp_path / "r"
    p = run_cli(
        "backup",
        "--endpoints=http://127.0.0.1:1",
        "--cluster=ns/c",
        f"--destination=file://{tmp_path}",
        "--name=x",
        f"--result-file={result}",
    )
    assert p.returncode == 1
    assert "error" in json.loads(result.read_text())


def test_retention_keeps_newest(tmp_path):
    store = DirectoryStore(tmp_path)
    d = backup_dir("", "ns/c", "scheduled")
    for name in ("c-20260101T000000Z", "c-20260102T000000Z", "c-20260103T000000Z", "c-20251231T000000Z"):
        store.put_bytes(f"{d}/{name}.json", b"{}")
        store.put_bytes(f"{d}/{name}.db", b"x")
    assert apply_retention(store, d, 2) == ["c-20251231T000000Z", "c-20260101T000000Z"]
    assert sorted(store.list(d)) == [
        f"{d}/c-20260102T000000Z.db",
        f"{d}/c-20260102T000000Z.json",
        f"{d}/c-20260103T000000Z.db",
        f"{d}/c-20260103T000000Z.json",
    ]
    assert apply_retention(store, d, 0) == []
