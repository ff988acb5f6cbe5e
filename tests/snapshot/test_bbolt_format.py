"""The bbolt writer and reader (etcdstore/snapshot/bbolt.py), judged by real etcd 3.4 tools.

`etcdctl snapshot status` opens a file with Go's bbolt, runs Tx.Check (every page reachable once
or free) and hashes every bucket name, key and value: it agreeing with our reader's numbers on
files our writer made proves the layout (inline buckets, overflow pages, several branch levels).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import pytest
from etcdstore.snapshot import bbolt, etcdformat
from testlib import ETCDCTL_BIN, etcdctl, have_etcd

needs_etcdctl = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def _write(path: Path, buckets: dict[bytes, list[tuple[bytes, bytes]]], trailer: bool = True) -> int:
    with open(path, "w+b") as f:
        w = bbolt.Writer(f)
        for name in sorted(buckets):
            assert w.add_bucket(name, buckets[name]) == len(buckets[name])
        size = w.finish()
    if trailer:
        data = path.read_bytes()
        path.write_bytes(data + hashlib.sha256(data).digest())
    return size


def _etcdctl_status(path: Path) -> dict:
    return json.loads(etcdctl([], "snapshot", "status", str(path), "-w", "json").stdout)


def _revkey(main: int, sub: int = 0) -> bytes:
    return struct.pack(">QcQ", main, b"_", sub)


def _random_buckets(seed: int) -> dict[bytes, list[tuple[bytes, bytes]]]:
    rnd = random.Random(seed)
    many = {}
    for _ in range(20_000):  # small values: three levels of pages (branches of branches)
        k = rnd.randbytes(rnd.randint(1, 40))
        many[k] = rnd.randbytes(rnd.randint(0, 30))
    big = {f"big{i}".encode(): rnd.randbytes(rnd.choice([5000, 70_000, 1_500_000])) for i in range(6)}
    big[b"big-small"] = b"x"  # a small value between overflow pages
    return {
        b"key": [
            (_revkey(r, s), rnd.randbytes(rnd.randint(10, 200))) for r in range(2, 600) for s in range(2)
        ],
        b"many": sorted(many.items()),
        b"overflow": sorted(big.items()),
        b"empty": [],
        b"tiny": [(b"a", b"1"), (b"b", b"")],  # inline in the root bucket's leaf
        b"edge": [(bytes([i]) * 200, bytes(600)) for i in range(1, 3)],  # 1632 bytes: just not inline
    }


def test_reader_reads_what_writer_wrote(tmp_path: Path) -> None:
    buckets = _random_buckets(1)
    path = tmp_path / "db"
    size = _write(path, buckets, trailer=False)
    assert path.stat().st_size == size and size % bbolt.PAGE_SIZE == 0
    with bbolt.Reader(path) as r:
        assert r.check() == []
        assert r.size == size
        assert sorted(r.buckets()) == sorted(buckets)
        for name, items in buckets.items():
            assert list(r.items(name)) == items, name
        assert list(r.items(b"missing")) == []


@needs_etcdctl
def test_etcdctl_status_agrees_on_files_we_write(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    _write(path, _random_buckets(2))
    theirs = _etcdctl_status(path)
    ours = etcdformat.status(path)
    assert ours == theirs
    assert theirs["totalKey"] == sum(len(v) for v in _random_buckets(2).values())
    assert theirs["revision"] == 599


@needs_etcdctl
def test_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    _write(path, {})
    assert (
        _etcdctl_status(path)
        == etcdformat.status(path)
        == {"hash": 0, "revision": 0, "totalKey": 0, "totalSize": 4 * bbolt.PAGE_SIZE}
    )


def test_writer_refuses_out_of_order_input(tmp_path: Path) -> None:
    with open(tmp_path / "db", "w+b") as f:
        w = bbolt.Writer(f)
        with pytest.raises(ValueError):
            w.add_bucket(b"b", [(b"2", b""), (b"1", b"")])
        w.add_bucket(b"c", [])
        with pytest.raises(ValueError):
            w.add_bucket(b"a", [])
        with pytest.raises(ValueError):
            w.add_bucket(b"d", [(b"", b"x")])


def test_damage_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _write(path, _random_buckets(3), trailer=False)
    data = bytearray(path.read_bytes())

    # A corrupted meta page falls back to the other one (bbolt keeps two for this).
    first = bytearray(data)
    first[20] ^= 0xFF
    (tmp_path / "meta0").write_bytes(first)
    with bbolt.Reader(tmp_path / "meta0") as r:
        assert r.meta.txid == 1 and r.check() == []
    both = bytearray(first)
    both[bbolt.PAGE_SIZE + 20] ^= 0xFF
    (tmp_path / "meta01").write_bytes(both)
    with pytest.raises(bbolt.BoltError):
        bbolt.Reader(tmp_path / "meta01")
    (tmp_path / "short").write_bytes(data[: len(data) // 2])
    with pytest.raises(bbolt.BoltError, match="truncated"):
        bbolt.Reader(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"not a database" * 1000)
    with pytest.raises(bbolt.BoltError, match="invalid database"):
        bbolt.Reader(tmp_path / "junk")
    # A page whose header names another page (a misplaced write) fails the check.
    torn = bytearray(data)
    torn[5 * bbolt.PAGE_SIZE] ^= 0x01
    (tmp_path / "torn").write_bytes(torn)
    with bbolt.Reader(tmp_path / "torn") as r:
        assert r.check()


@needs_etcdctl
def test_etcd_snapshot_checksum(tmp_path: Path) -> None:
    """The sha256 trailer: etcd's tools and ours refuse the same damaged files."""
    path = tmp_path / "snap.db"
    _write(path, {b"key": [(_revkey(2), b"v")]})
    etcdformat.verify_checksum(path)
    bad = tmp_path / "bad.db"
    data = bytearray(path.read_bytes())
    data[3 * bbolt.PAGE_SIZE + 100] ^= 1  # inside a free part of a page: bbolt itself cannot tell
    bad.write_bytes(data)
    with pytest.raises(etcdformat.EtcdSnapshotError, match="expected sha256"):
        etcdformat.verify_checksum(bad)
    bare = tmp_path / "bare.db"
    bare.write_bytes(path.read_bytes()[:-32])
    with pytest.raises(
        etcdformat.EtcdSnapshotError, match="snapshot missing hash but --skip-hash-check=false"
    ):
        etcdformat.verify_checksum(bare)
    assert etcdformat.verify_checksum(bare, skip_hash_check=True) is False
    # etcdctl says the same for both files.
    for f, msg in ((bad, "expected sha256"), (bare, "snapshot missing hash but --skip-hash-check=false")):
        out = etcdctl(
            [], "snapshot", "restore", str(f), "--data-dir", str(tmp_path / f"r-{f.stem}"), check=False
        )
        assert out.returncode != 0 and msg in out.stderr
    assert shutil.which(ETCDCTL_BIN)


def test_lease_encoding() -> None:
    for lid, ttl, rem in ((1, 5, 0), (0x694D9E3B1C0A1A04, 600, 590), (-5, 9_000_000_000, 1), (7, 0, 0)):
        assert etcdformat.decode_lease(etcdformat.encode_lease(lid, ttl, rem)) == (lid, ttl, rem)
    # Bytes etcd 3.4 wrote for lease 390da23d73a47133 with TTL 600.
    assert etcdformat.decode_lease(bytes.fromhex("08b3e2919dd7c7e8863910d804")) == (
        0x390DA23D73A47133,
        600,
        0,
    )
    assert etcdformat.encode_lease(0x390DA23D73A47133, 600, 0) == bytes.fromhex("08b3e2919dd7c7e8863910d804")


def test_load_refuses_a_key_bucket_that_is_not_revisions(tmp_path: Path) -> None:
    from etcdstore.storage import backend as bk

    path = tmp_path / "snap.db"
    _write(path, {b"key": [(b"not-a-revision", b"x")]})
    be = bk.Backend(tmp_path / "be")
    try:
        with pytest.raises(etcdformat.EtcdSnapshotError, match="bad revision key"):
            etcdformat.load_into(path, be)
        _write(path, {b"key": [(_revkey(2), b"\n\x01a"), (_revkey(3) + b"t", b"\n\x01a")]})
        assert etcdformat.load_into(path, be) == {bk.KEY: 2}
        assert [k for k, _ in be.items(bk.KEY)] == [_revkey(2), _revkey(3) + b"t"]
    finally:
        be.close()
