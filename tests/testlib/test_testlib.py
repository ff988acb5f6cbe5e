"""The support package's own tests: ports, eventually, the oracle check and the harness."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from testlib import (
    Member,
    check_etcd_oracle,
    etcdctl,
    eventually,
    eventually_async,
    free_ports,
    have_etcd,
    oracles,
)


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(50)
    assert len(set(ports)) == 50
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_eventually_returns_the_first_truthy_value():
    calls = []

    def pred():
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert eventually(pred, timeout=5, interval=0.001) == 3


def test_eventually_retries_assertions_and_reports_the_last_one():
    def pred():
        raise AssertionError("still 7 keys")

    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"replicated not met within 0.2s .*still 7 keys"):
        eventually(pred, timeout=0.2, interval=0.01, message="replicated")
    assert time.monotonic() - t0 >= 0.2


def test_eventually_message_may_be_computed_at_the_deadline():
    state = {"n": 0}

    def pred():
        state["n"] += 1
        return False

    with pytest.raises(AssertionError, match=r"^n is [1-9]\d* not met within"):
        eventually(pred, timeout=0.05, interval=0.01, message=lambda: f"n is {state['n']}")


def test_eventually_lets_other_errors_through():
    def pred():
        raise KeyError("boom")

    with pytest.raises(KeyError):
        eventually(pred, timeout=5)


async def test_eventually_async_awaits_and_times_out():
    n = 0

    async def pred():
        nonlocal n
        n += 1
        await asyncio.sleep(0)
        return n >= 2

    assert await eventually_async(pred, timeout=5, interval=0.001) is True
    with pytest.raises(AssertionError, match="last result: False"):
        await eventually_async(lambda: False, timeout=0.05, interval=0.01)


def test_oracle_check_names_the_fix(monkeypatch, tmp_path):
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\necho 'etcd Version: 3.5.9'; echo 'etcdctl version: 3.5.9'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(oracles, "ETCD_BIN", str(fake))
    monkeypatch.setattr(oracles, "ETCDCTL_BIN", str(fake))
    oracles.etcd_versions.cache_clear()
    try:
        with pytest.raises(
            AssertionError, match=r"etcd 3\.4\.x.*3\.5\.9.*apt-get install etcd-server etcd-client"
        ):
            check_etcd_oracle()
    finally:
        oracles.etcd_versions.cache_clear()
    monkeypatch.setattr(oracles, "ETCD_BIN", str(tmp_path / "missing"))
    with pytest.raises(AssertionError, match="is not installed"):
        check_etcd_oracle()


@pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")
def test_installed_oracle_is_34():
    check_etcd_oracle()
    assert all(v.startswith("3.4.") for v in oracles.etcd_versions())


@pytest.mark.etcd
@pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")
@pytest.mark.parametrize("binary", ["etcd", "etcdstore"])
def test_single_member_serves_and_dies_with_the_harness(tmp_path, binary):
    with Member.single(tmp_path, binary=binary) as m:
        etcdctl(m.endpoint, "put", "k", "v")
        assert etcdctl(m.endpoint, "get", "k", "--print-value-only").stdout.strip() == "v"
        proc = m.proc
    assert proc is not None and proc.poll() is not None
