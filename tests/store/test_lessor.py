"""Lease rules: TTL bounds, expiry only on the primary, renew, checkpoints, persistence."""

import pytest
from etcdstore import errors
from etcdstore.lease.lessor import MAX_LEASE_TTL, Lessor, min_lease_ttl
from etcdstore.storage.backend import Backend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path):
    be = Backend(tmp_path / "db")
    clock = Clock()
    yield be, clock, Lessor(be, min_ttl=2, clock=clock)
    be.close()


def grant(be, lessor, lease_id, ttl):
    b = be.batch()
    lease = lessor.grant(b, lease_id, ttl)
    be.write(b, sync=False)
    return lease


def test_min_ttl_matches_etcd_defaults():
    assert min_lease_ttl(10, 0.1) == 2  # 1.5 s rounded up
    assert min_lease_ttl(50, 0.1) == 8  # 7.5 s rounded up


def test_grant_rules(env):
    be, _, lessor = env
    assert grant(be, lessor, 7, 1).ttl == 2  # raised to the minimum
    with pytest.raises(errors.EtcdError) as e:
        grant(be, lessor, 7, 10)
    assert e.value == errors.LEASE_EXIST
    with pytest.raises(errors.EtcdError) as e:
        grant(be, lessor, 8, MAX_LEASE_TTL + 1)
    assert e.value == errors.LEASE_TTL_TOO_LARGE


def test_only_primary_expires_and_renew_restarts_ttl(env):
    be, clock, lessor = env
    grant(be, lessor, 1, 10)
    clock.now += 100
    assert lessor.expired(10) == []  # followers never expire leases
    lessor.promote(extend=1.0)
    clock.now += 10.5
    assert lessor.expired(10) == []  # extended by an election timeout on promotion
    clock.now += 1.0
    assert lessor.expired(10) == [1]
    assert lessor.expired(10) == []  # not re-proposed at once while the revoke is in flight
    assert lessor.renew(1) == 10
    clock.now += 9
    assert lessor.expired(10) == []
    assert lessor.time_to_live(1)[0] == 1
    clock.now += 2
    assert lessor.expired(10) == [1]


def test_revoke_returns_keys_and_persists(env, tmp_path):
    be, _, lessor = env
    grant(be, lessor, 5, 30)
    grant(be, lessor, 6, 40)
    lessor.attach(5, b"b")
    lessor.attach(5, b"a")
    lessor.detach(5, b"b")
    b = be.batch()
    assert lessor.revoke(b, 5) == [b"a"]
    be.write(b, sync=True)
    with pytest.raises(errors.EtcdError) as e:
        lessor.renew(5)
    assert e.value == errors.LEASE_NOT_FOUND
    again = Lessor(be, min_ttl=2)
    assert again.lease_ids() == [6] and again.lookup(6).ttl == 40


def test_checkpoint_survives_leader_change(env):
    be, clock, lessor = env
    grant(be, lessor, 3, 100)
    b = be.batch()
    lessor.checkpoint(b, 3, 20)
    be.write(b, sync=False)
    other = Lessor(be, min_ttl=2, clock=clock)  # a member restarting from disk
    other.promote(extend=0)
    assert other.time_to_live(3)[0] == 20
    clock.now += 21
    assert other.expired(5) == [3]
