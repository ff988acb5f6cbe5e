"""The short kube-apiserver compatibility run (issue 13 item 5): the same script against a control
plane stored in real etcd 3.4 and in etcdstore (one member each, 100 ConfigMaps, leases watched for
60 s, compaction every 10 s); every normalised result must be equal. The full run (500 objects,
3-member clusters with a kill -9 of the leader, leases held 8 min) is `e2e/compat.sh`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from localkube import compat

pytestmark = [pytest.mark.timeout(1200), pytest.mark.etcd]


@pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="real etcd 3.4 not installed")
def test_short_compat_run_etcd_vs_etcdstore(k8s_bin: Path, tmp_path: Path) -> None:
    opts = compat.Options(objects=100, lease_hold=60, compaction_interval="10s")
    runs = [compat.run_backend(store, 1, opts, tmp_path, print) for store in ("etcd", "etcdstore")]
    print(compat.table(runs))
    for run in runs:
        assert not run.error, f"{run.label}: {run.error}"
        failed = {step: o.value for step, o in run.results.items() if o.value.startswith("FAILED")}
        assert not failed, f"{run.label}: {failed}"
    assert compat.differences(runs) == []
