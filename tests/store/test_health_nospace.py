"""Issue 14 item 7: a NOSPACE alarm does not make a member unready, and reads keep working.

A three-member cluster with a tiny --quota-backend-bytes is filled until every member has raised
its own NOSPACE alarm; then /health, /health?exclude=NOSPACE and /readyz are asked on each member,
of our store and of the real etcd 3.4 (the oracle), and the answers compared. The member pods'
readiness probe (operator: READINESS_PATH) is the form that must stay healthy.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from etcdoperator.build.statefulset import READINESS_PATH
from testlib import Cluster, etcdctl, eventually, have_etcd

QUOTA = 256 * 1024
VALUE = "x" * 65536
HEALTH_TRUE, HEALTH_FALSE = '{"health":"true"}', '{"health":"false"}'  # compared as JSON: the store spaces it
BINARIES = [
    pytest.param("etcd", marks=pytest.mark.skipif(not have_etcd(), reason="etcd 3.4 not installed")),
    "etcdstore",
]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _nospace_alarms(endpoints: list[str]) -> list[str]:
    out = etcdctl(endpoints, "alarm", "list").stdout
    return [line for line in out.splitlines() if "NOSPACE" in line]


def _fill_until_nospace(c: Cluster) -> None:
    deadline = time.monotonic() + 120
    i = 0
    while time.monotonic() < deadline:
        r = etcdctl(c.endpoints, "put", f"k{i}", VALUE, check=False)
        i += 1
        if r.returncode != 0 and "space" in r.stderr.lower():
            break
    else:
        raise AssertionError("no NOSPACE within 120 s")
    eventually(lambda: _nospace_alarms(c.endpoints), 30, 0.1, message="a NOSPACE alarm listed")


def _answers(c: Cluster) -> dict[str, set[tuple[int, str]]]:
    out: dict[str, set[tuple[int, str]]] = {}
    for path in ("/health", READINESS_PATH, "/readyz"):
        out[path] = set()
        for m in c.members:
            status, body = _get(m.client_url + path)
            text = body.strip()
            if status != 404 and text.startswith("{"):
                text = json.dumps(json.loads(text), separators=(",", ":"))
            out[path].add((status, text if status != 404 else "404"))
    return out


@pytest.fixture(scope="module")
def nospace() -> dict[str, dict[str, set[tuple[int, str]]]]:
    return {}


@pytest.mark.parametrize("binary", BINARIES)
def test_nospace_alarm_keeps_members_ready_and_readable(binary, tmp_path, nospace) -> None:
    with Cluster.start(tmp_path, size=3, binary=binary, extra_args=[f"--quota-backend-bytes={QUOTA}"]) as c:
        _fill_until_nospace(c)
        answers = _answers(c)
        nospace[binary] = answers
        # reads keep working under the alarm
        got = etcdctl(c.endpoints, "get", "k0", "--print-value-only").stdout.strip()
        assert got == VALUE
        assert answers["/health"] == {(503, HEALTH_FALSE)}, answers
        # the member pods' readiness probe (the operator's READINESS_PATH) stays true
        assert READINESS_PATH == "/health?exclude=NOSPACE"
        assert answers[READINESS_PATH] == {(200, HEALTH_TRUE)}, answers
        if binary == "etcdstore":
            # the store's /readyz (etcd 3.5+ form; 3.4 has none) ignores NOSPACE too, as etcd 3.5's does
            assert {s for s, _ in answers["/readyz"]} == {200}, answers


def test_store_answers_as_etcd(nospace) -> None:
    if set(nospace) != {"etcd", "etcdstore"}:
        pytest.skip("needs both runs above")
    for path in ("/health", READINESS_PATH):
        assert nospace["etcdstore"][path] == nospace["etcd"][path], (path, nospace)
    assert nospace["etcd"]["/readyz"] == {(404, "404")}  # etcd 3.4 has no /readyz
