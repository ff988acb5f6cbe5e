"""The same etcdctl battery through etcd 3.4's grpc-proxy (over etcd) and through ours (over etcd,
and over etcdstore) gives the same answers."""

from __future__ import annotations

import pytest
from proxyprocs import Proxy, battery
from testlib import Cluster, have_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")]


def _run(tmp_path, name: str, binary: str, kind: str) -> list[tuple[str, str]]:
    with (
        Cluster.start(tmp_path / name, size=1, binary=binary) as c,
        Proxy(kind, c.endpoints, tmp_path / f"{name}.log").start() as p,
    ):
        return battery(p.endpoint)


def test_same_answers_as_etcd_grpc_proxy(tmp_path):
    ref = _run(tmp_path, "etcd-proxy", "etcd", "etcd")
    assert len(ref) > 50
    assert any("txn-yes" in out for _, out in ref)  # the battery did real work
    for name, binary in (("ours-over-etcd", "etcd"), ("ours-over-etcdstore", "etcdstore")):
        ours = _run(tmp_path, name, binary, "etcdstore")
        diffs = [(a[0], a[1], b[1]) for a, b in zip(ref, ours) if a != b]
        assert [c for c, _ in ref] == [c for c, _ in ours]
        assert not diffs, f"{name}: " + "\n".join(
            f"{c}:\n  etcd proxy: {x!r}\n  ours:       {y!r}" for c, x, y in diffs
        )
