"""Large snapshots: etcdstore -> etcdctl snapshot save/status/restore -> real etcd -> back into etcdstore.

The default run moves a ~20 MB database; `-m slow` a ~1 GB one and also checks that the server's
memory does not grow with the database while it builds and streams the snapshot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Self

import grpc
import pytest
from etcdstore.client import Client
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from snapshot_data import etcdstore, restore_and_start
from testlib import Cluster, etcdctl, have_etcd

pytestmark = [pytest.mark.skipif(not have_etcd(), reason="needs etcd/etcdctl 3.4"), pytest.mark.etcd]

QUOTA = ["--quota-backend-bytes", str(8 * 1024**3)]


async def _fill(endpoint: str, big: int, big_size: int, small: int) -> None:
    """`big` keys with random `big_size`-byte values (overflow pages) and `small` short ones
    (many per page), written by 16 concurrent writers."""
    async with Client([endpoint], timeout=60) as c:
        queue = [(f"big/{i:06d}", None) for i in range(big)] + [
            (f"small/{i:07d}", f"v{i}") for i in range(small)
        ]

        async def writer(part: list) -> None:
            for key, value in part:
                await c.put(key, value if value is not None else os.urandom(big_size))

        await asyncio.gather(*(writer(queue[i::16]) for i in range(16)))
        await c.put("big/000000", b"overwritten")  # one key with history


def _digest(endpoint: str) -> tuple[int, int, str]:
    """(revision, keys, sha256 of every key, value, create/mod revision and version), paged."""
    h = hashlib.sha256()
    n = 0
    with grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 256 * 1024**2)]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        first = kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True), timeout=60)
        rev = first.header.revision
        key = b"\0"
        while True:
            resp = kv.Range(
                rpc_pb2.RangeRequest(key=key, range_end=b"\0", limit=500, revision=rev), timeout=120
            )
            for item in resp.kvs:
                h.update(
                    b"%d:%s%d:%s%d.%d.%d|"
                    % (
                        len(item.key),
                        item.key,
                        len(item.value),
                        item.value,
                        item.create_revision,
                        item.mod_revision,
                        item.version,
                    )
                )
                n += 1
            if not resp.more:
                break
            key = resp.kvs[-1].key + b"\0"
    assert n == first.count
    return rev, n, h.hexdigest()


class _RssSampler:
    """The peak resident set size of a process while it is sampled (every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _move_both_ways(tmp_path: Path, big: int, big_size: int, small: int) -> dict:
    with Cluster.start(tmp_path / "src", 1, binary="etcdstore", extra_args=QUOTA) as c:
        ep = c.endpoints[0]
        t0 = time.monotonic()
        asyncio.run(_fill(ep, big, big_size, small))
        fill_s = time.monotonic() - t0
        source = _digest(ep)
        snap = tmp_path / "etcdstore.db"
        pid = c.members[0].proc.pid
        with _RssSampler(pid) as rss:
            before = rss.rss()
            t0 = time.monotonic()
            etcdctl(ep, "--command-timeout", "1800s", "snapshot", "save", str(snap), timeout=1800)
            save_s = time.monotonic() - t0
        leftovers = [p for p in os.listdir(c.members[0].data_dir / "member") if p.startswith("snapshot-")]
        assert leftovers == []
    status = json.loads(etcdctl([], "snapshot", "status", str(snap), "-w", "json", timeout=1800).stdout)
    print(
        f"\netcdctl snapshot status: {status}; file {snap.stat().st_size} bytes; fill {fill_s:.1f}s, "
        f"save {save_s:.1f}s; server RSS {before / 2**20:.0f} MiB before, peak {rss.peak / 2**20:.0f} MiB"
    )
    assert status["revision"] == source[0] and status["totalSize"] == snap.stat().st_size - 32
    assert json.loads(etcdstore("snapshot", "status", str(snap), "-w", "json").stdout) == status

    etcd = restore_and_start("etcdctl", snap, tmp_path / "etcd", "etcd")
    try:
        assert _digest(etcd.endpoint) == source
        back = tmp_path / "etcd.db"
        etcdctl(etcd.endpoint, "--command-timeout", "1800s", "snapshot", "save", str(back), timeout=1800)
    finally:
        etcd.kill()
    again = restore_and_start("etcdstore", back, tmp_path / "again", "etcdstore")
    try:
        assert _digest(again.endpoint) == source
    finally:
        again.kill()
    print(
        f"etcdstore snapshot restore of etcd's {back.stat().st_size} bytes: peak RSS "
        f"{again.restore_peak_rss / 2**20:.0f} MiB"
    )
    return {
        "status": status,
        "rss_before": before,
        "rss_peak": rss.peak,
        "db_size": status["totalSize"],
        "restore_rss": again.restore_peak_rss,
    }


def test_20mb_database_moves_both_ways(tmp_path: Path) -> None:
    out = _move_both_ways(tmp_path, big=2_600, big_size=8_000, small=4_000)
    assert out["db_size"] > 20_000_000


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_1gb_database_moves_both_ways_in_bounded_memory(tmp_path: Path) -> None:
    out = _move_both_ways(tmp_path, big=16_000, big_size=64_000, small=30_000)
    assert out["db_size"] > 1_000_000_000
    # Built on disk and streamed: the server never holds the database in memory.
    assert out["rss_peak"] - out["rss_before"] < 200 * 2**20, out
    # `etcdstore snapshot restore` reads the bbolt file a page at a time.
    assert out["restore_rss"] < 400 * 2**20, out
