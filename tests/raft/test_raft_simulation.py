"""Randomized whole-cluster runs (see raft_sim.py for the world and the checks).

The default run covers seeds 0..RAFT_SIM_SEEDS-1 (2000) in blocks of 50; a failure names
its seed and a command that reruns it alone:

    RAFT_SIM_SEED=<seed> .venv/bin/python -m pytest tests/raft/test_raft_simulation.py::test_one_seed -x

Longer stress runs are marked slow (excluded by tests/run).
"""

from __future__ import annotations

import os
from dataclasses import fields

import pytest
from etcdstore.raft import raft as raft_module
from etcdstore.raft.log import RaftLog
from etcdstore.raft.progress import ProgressTracker
from raft_sim import Params, Sim, SimFailure, Stats, run_seed

SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "2000"))
BLOCK = 50


def _sum(stats: list[Stats]) -> dict[str, int]:
    return {f.name: sum(getattr(s, f.name) for s in stats) for f in fields(Stats) if f.name != "seed"}


@pytest.mark.parametrize("first", range(0, SEEDS, BLOCK), ids=lambda f: f"seeds_{f}_{f + BLOCK - 1}")
def test_simulation_block(first: int) -> None:
    stats = [run_seed(seed) for seed in range(first, min(first + BLOCK, SEEDS))]
    total = _sum(stats)
    # The block must have exercised the machinery it is meant to check.
    for what in (
        "leaders",
        "committed",
        "reads",
        "conf_changes",
        "crashes",
        "snapshots_installed",
        "transfers",
        "early_sends",
        "crash_points",
    ):
        assert total[what] > 0, f"seeds {first}..{first + BLOCK - 1} never exercised {what}: {total}"


@pytest.mark.skipif("RAFT_SIM_SEED" not in os.environ, reason="set RAFT_SIM_SEED=<n> to rerun one seed")
def test_one_seed() -> None:
    stats = run_seed(int(os.environ["RAFT_SIM_SEED"]))
    print(stats)


@pytest.mark.slow
@pytest.mark.parametrize("first", range(SEEDS, SEEDS + 20_000, 500), ids=lambda f: f"seeds_{f}")
def test_simulation_more_seeds(first: int) -> None:
    for seed in range(first, first + 500):
        run_seed(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100_000, 100_040))
def test_simulation_long_runs(seed: int) -> None:
    import random

    params = Params.draw(random.Random(seed))
    params.chaos_ticks = 3000
    params.p_conf = max(params.p_conf, 0.03)
    run_seed(seed, params=params)


# -- the checker catches broken rules ------------------------------------------------------------------
def _first_failing_seed(n: int) -> tuple[int, str] | None:
    for seed in range(n):
        try:
            Sim(seed).run()
        except SimFailure as exc:
            return seed, str(exc)
    return None


def test_checker_catches_a_vote_rule_that_ignores_log_freshness(monkeypatch):
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    found = _first_failing_seed(400)
    assert found is not None, "granting votes to stale candidates went unnoticed"
    _, why = found
    assert any(
        k in why
        for k in (
            "lacks entry",
            "has last index",
            "committed index",
            "state machine",
            "log matching",
            "diverged",
            "committed term",
        )
    ), why


def test_checker_catches_a_commit_rule_without_a_majority(monkeypatch):
    def any_single_ack(self: ProgressTracker) -> int:  # "committed" once anyone has it
        return max((self.progress[v].match for v in self.voters), default=0)

    monkeypatch.setattr(ProgressTracker, "committed", any_single_ack)
    found = _first_failing_seed(400)
    assert found is not None, "committing without a majority went unnoticed"


def test_checker_catches_a_leader_counting_entries_it_has_not_persisted(monkeypatch):
    # etcd 3.4's rule: the leader counts itself as soon as it appends. Combined with sending
    # appends before persisting them (which the sim does when a Ready allows it), a crash
    # loses entries that were already reported committed.
    monkeypatch.setattr(RaftLog, "persisted_index", lambda self: self.last_index())
    real = raft_module.Raft.propose_local

    def propose_and_count_self(self, datas):
        real(self, datas)
        self._self_ack()

    monkeypatch.setattr(raft_module.Raft, "propose_local", propose_and_count_self)
    found = _first_failing_seed(400)
    assert found is not None, "counting unpersisted entries went unnoticed"
    assert "committed" in found[1]


def test_checker_catches_reads_served_without_confirming_leadership(monkeypatch):
    def lease_free_read(self, m):  # answer from our commit index without a heartbeat round
        self._answer_read(m, self.log.committed)

    monkeypatch.setattr(raft_module.Raft, "_leader_read_index", lease_free_read)
    found = _first_failing_seed(1500)
    assert found is not None, "stale reads went unnoticed"
    assert "ReadIndex not linearizable" in found[1]


def test_failure_message_names_the_seed_and_how_to_rerun(monkeypatch):
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    found = _first_failing_seed(400)
    assert found is not None
    with pytest.raises(SimFailure) as info:
        run_seed(found[0])
    text = str(info.value)
    assert f"seed {found[0]} failed" in text and f"RAFT_SIM_SEED={found[0]}" in text and "trace tail" in text
