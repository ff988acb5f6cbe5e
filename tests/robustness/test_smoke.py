"""A short robustness run (about 20 s of traffic, one kill and one partition) as part of CI.

The etcdstore case is the same run against our own server; it is skipped until the `etcdstore`
command is on PATH (tests/run-robustness puts the virtualenv's bin on PATH; run it there with
`--target etcdstore` for the full suite).
"""

from __future__ import annotations

import shutil

import pytest

from .cluster import Target
from .runner import format_result, run_once
from .traffic import TrafficConfig

ETCDSTORE = pytest.param(
    "etcdstore",
    marks=pytest.mark.skipif(
        shutil.which("etcdstore") is None,
        reason="etcdstore clustering not ready (the etcdstore command is not on PATH)",
    ),
    id="etcdstore",
)


@pytest.mark.etcd
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "target",
    [
        pytest.param(
            "etcd",
            marks=pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd 3.4 is not installed"),
        ),
        ETCDSTORE,  # <- our store: enabled once `etcdstore` is on PATH
    ],
)
async def test_smoke_run_kill_and_partition(target, tmp_path):
    r = await run_once(
        Target.get(target),
        members=3,
        duration=18,
        seed=20261121,
        faults=["kill", "partition"],
        max_faults=2,
        base=tmp_path,
        traffic=TrafficConfig(rate=100.0),
        log=False,
    )
    print(format_result(r))
    assert r.ok, format_result(r)
    assert sorted(f.split("(", 1)[0] for f in r.faults) == ["kill", "partition"]
    ops = r.report.operations
    assert ops["ok"] > 300, ops  # the run really did something (a floor that holds on a loaded machine)
    assert r.report.watch_events > 0 and r.report.log_events > 200
