"""A watch opened with `hasleader: true` (clientv3.WithRequireLeader, as kube-apiserver opens every
watch) is cancelled with "etcdserver: no leader" once its member has had no leader for three election
timeouts: the apiserver's watch cache then re-watches through another member instead of silently
receiving nothing from a member cut off from the cluster. Judged against real etcd 3.4 with etcdctl
(whose `watch` uses WithRequireLeader)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from localkube.stores import Store, etcdctl_path

pytestmark = [pytest.mark.timeout(180), pytest.mark.etcd]


@pytest.mark.parametrize("kind", ["etcd", "etcdstore"])
def test_watch_on_isolated_follower_is_cancelled_no_leader(kind: str, tmp_path: Path) -> None:
    if kind == "etcd" and not os.path.exists("/usr/bin/etcd"):
        pytest.skip("real etcd 3.4 not installed")
    store = Store(kind, 3, tmp_path, tmp_path / "pids")
    store.start()
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while (leader := store.leader_index()) is None:
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.2)
        follower = next(i for i in range(3) if i != leader)
        endpoint = store.members[follower].endpoint
        # Watch from the revision of a write, so the watch is known to be established once it
        # prints that write (no race between the watch starting and the put).
        put = subprocess.run(
            [etcdctl_path(), "--endpoints", endpoint, "put", "k", "v1", "-w", "json"],
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        )
        rev = json.loads(put.stdout)["header"]["revision"]
        watch = subprocess.Popen(
            [etcdctl_path(), "--endpoints", endpoint, "watch", "k", f"--rev={rev}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        assert [watch.stdout.readline().strip() for _ in range(3)] == ["PUT", "k", "v1"]
        for i in range(3):
            if i != follower:
                os.kill(store.members[i].proc.pid, signal.SIGSTOP)
                stopped.append(i)
        t0 = time.monotonic()
        _, err = watch.communicate(timeout=30)  # etcd: 3 election timeouts (3 s) + up to 1 s
        elapsed = time.monotonic() - t0
        assert "etcdserver: no leader" in err, err
        assert watch.returncode != 0
        assert 2.0 < elapsed < 15.0, elapsed
        # Counted as grpc-go's interceptor counts it: a bidi stream ended with Unavailable.
        with urllib.request.urlopen(store.members[follower].client_url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        started = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("grpc_server_started_total{")
            and 'grpc_method="Watch"' in ln
            and 'grpc_type="bidi_stream"' in ln
        ]
        handled = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("grpc_server_handled_total{")
            and 'grpc_method="Watch"' in ln
            and 'grpc_code="Unavailable"' in ln
        ]
        assert started and float(started[0].rsplit(" ", 1)[1]) >= 1, started
        assert handled and float(handled[0].rsplit(" ", 1)[1]) >= 1, handled
    finally:
        for i in stopped:
            os.kill(store.members[i].proc.pid, signal.SIGCONT)
        store.stop()
