"""The whole pipeline must catch a real anomaly produced by real processes.

Serializable reads are served from a member's local state without consulting the leader, so a
follower cut off from the others keeps answering with old values while the majority moves on:
etcd documents exactly that. With traffic reading that way and a follower isolated for a while,
the run's checker has to report linearizability anomalies (stale reads). A checker that passed
this run could not be trusted when it passes the real ones.
"""

from __future__ import annotations

import shutil

import pytest

from .cluster import Target
from .runner import format_result, run_once
from .traffic import TrafficConfig

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd 3.4 is not installed"),
]


@pytest.mark.timeout(200)
async def test_stale_serializable_reads_are_reported(tmp_path):
    r = await run_once(
        Target.get("etcd"),
        members=3,
        duration=12,
        seed=7,
        faults=["partition-minority"],
        max_faults=1,
        hold=(6.0, 6.0),
        base=tmp_path,
        traffic=TrafficConfig(rate=120.0, serializable_reads=True),
        log=False,
    )
    print(format_result(r))
    assert not r.failures, r.failures
    assert r.faults and r.faults[0].startswith("partition-minority")
    assert "linearizability" in r.report.anomalies, format_result(r)
    assert r.report.lost_writes == 0  # stale reads, not lost writes: the checker tells them apart
    assert not r.ok
