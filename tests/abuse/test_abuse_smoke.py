"""The abuse suite's short form (issue 18): a few attacks for ~4 s each on a fresh member of real
etcd 3.4 and of etcdstore, in the same run, while a probe client does a put+get every 200 ms on
its own connection. For each attack:

* availability: etcdstore answers at least 90% as many probes within 1 s as etcd did;
* memory: etcdstore's RSS grows by less than RSS_GROWTH_LIMIT during the attack.

The long form (every attack, 20 s each, one table) is `tests/run-abuse`; docs/h2-abuse.md.
Assertions that today's code is known to fail are xfail(strict=True) with the reason: when a fix
makes one pass, the strict xfail fails and its marker must go.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testlib import have_etcd

from . import runner

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_etcd(), reason="real etcd 3.4 not installed"),
]

DURATION = 4.0
RSS_GROWTH_LIMIT = 200 << 20

# Known failures of the code under test, per (attack, assertion): the reason, from issue 18.
KNOWN: dict[tuple[str, str], str] = {}
SMOKE = ["rapid_reset", "continuation_flood", "huffman_literals", "ping_flood_noread", "settings_churn"]


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], runner.Result]:
    """Each attack runs once per target; both tests of an attack read the same run."""
    return {}


def _result(results: dict, attack: str, target: str, base: Path) -> runner.Result:
    key = (attack, target)
    if key not in results:
        results[key] = runner.run_one(target, attack, DURATION, "short", base)
    return results[key]


def _params(check: str) -> list:
    out = []
    for a in SMOKE:
        reason = KNOWN.get((a, check))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(a, marks=marks, id=a))
    return out


@pytest.mark.parametrize("attack", _params("availability"))
def test_others_served_under_attack(
    attack: str, results: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("abuse")
    ref = _result(results, attack, "etcd", base)
    mine = _result(results, attack, "etcdstore", base)
    assert ref.probes >= 10 and mine.probes >= 10  # the probe ran for the whole attack
    if ref.availability < 0.5:  # no reference to judge by: the machine itself is the bottleneck
        pytest.skip(f"etcd itself served only {ref.ok}/{ref.probes} probes: the machine is overloaded")
    assert not mine.member_died, "etcdstore died under the attack"
    assert mine.availability >= 0.9 * ref.availability, (
        f"{attack}: etcdstore served {mine.ok}/{mine.probes} probes within 1 s, etcd {ref.ok}/{ref.probes}"
    )


@pytest.mark.parametrize("attack", _params("rss"))
def test_memory_bounded_under_attack(
    attack: str, results: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("abuse")
    mine = _result(results, attack, "etcdstore", base)
    growth = mine.rss_peak - mine.rss_start
    assert mine.rss_start > 0 and mine.rss_peak >= mine.rss_start  # the sampler saw the member
    assert growth < RSS_GROWTH_LIMIT, (
        f"{attack}: etcdstore's RSS went {mine.rss_start >> 20} -> {mine.rss_peak >> 20} MB"
    )
