"""NOSPACE recovery against a real etcd 3.4 (issue 14 item 7): the alarm is disarmed only when
compaction and defragmentation free enough space, and a CORRUPT alarm is never disarmed."""

from __future__ import annotations

import json

import pytest
from etcdoperator.members import Credentials, Members, SpaceNotRecoverable
from etcdoperator.naming import ClusterRef
from etcdstore import errors
from etcdstore.client.requests import AlarmType
from etcdstore.errors import EtcdError
from testlib import Member, eventually_async, free_port, have_etcd

QUOTA = 1024 * 1024
REF = ClusterRef("ns", "c")
pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcd not installed")


@pytest.fixture
async def members(tmp_path, monkeypatch):
    quota = [f"--quota-backend-bytes={QUOTA}"]
    with Member("c-0", tmp_path / "d", free_port(), free_port(), binary="etcd", extra_args=quota) as etcd:
        etcd.spawn()
        book = tmp_path / "addresses.json"
        book.write_text(json.dumps({f"{REF.pod_host(0)}:2379": etcd.endpoint}))
        monkeypatch.setenv("ETCDOPERATOR_ADDRESS_MAP", str(book))
        m = Members(REF, Credentials(client_tls=False, peer_tls=False))
        try:

            async def serving() -> bool:
                view = await m.observe([0])
                return bool(view.reachable and view.leader_id)

            await eventually_async(serving, 30, message="etcd serving, seen through Members")
            yield m
        finally:
            await m.close()


async def _fill(m: Members, *, distinct: bool) -> None:
    blob = b"x" * (100 * 1024)
    with pytest.raises(EtcdError) as exc:
        for i in range(200):
            await m.current().put(f"k{i}" if distinct else "k", blob)
    assert exc.value == errors.NO_SPACE


async def _alarms(m: Members) -> set[int]:
    return {a.alarm for a in (await m.current().alarm_list()).alarms}


async def test_history_is_freed_and_the_alarm_disarmed(members):
    await _fill(members, distinct=False)  # one key overwritten: compaction frees the history
    await members.recover_space([0], QUOTA)
    assert await _alarms(members) == set()
    await members.current().put("after", "works")


async def test_live_data_over_the_quota_keeps_the_alarm(members):
    await _fill(members, distinct=True)  # every value is live: nothing to free
    calls = []
    real = members.current().at

    def spy(url):
        client = real(url)
        original = client.with_options

        def with_options(**kw):
            calls.append("defragment")
            return original(**kw)

        client.with_options = with_options
        return client

    members.current().at = spy
    with pytest.raises(SpaceNotRecoverable, match="alarm stays armed"):
        await members.recover_space([0], QUOTA)
    assert calls == ["defragment"]
    assert await _alarms(members) == {AlarmType.NOSPACE}
    with pytest.raises(SpaceNotRecoverable):  # again: same revision, no second defragmentation yet
        await members.recover_space([0], QUOTA)
    assert calls == ["defragment"]
    assert await _alarms(members) == {AlarmType.NOSPACE}
    # Once the wait has passed it is defragmented again (its compaction may have lagged the first one).
    k, (rev, _when, wait) = next(iter(members._defragmented.items()))
    members._defragmented[k] = (rev, _when - wait, wait)
    with pytest.raises(SpaceNotRecoverable):
        await members.recover_space([0], QUOTA)
    assert calls == ["defragment", "defragment"]
    assert members._defragmented[k][2] == 2 * wait  # and the next wait is longer


async def test_corrupt_alarm_is_never_disarmed(members):
    await _fill(members, distinct=False)
    view = await members.observe([0])
    await members.current().alarm_activate(view.members[0].id, AlarmType.CORRUPT)
    view = await members.observe([0])
    assert view.corrupt and view.nospace
    try:
        await members.recover_space([0], QUOTA)
    except EtcdError:
        pass  # etcd refuses the compaction under CORRUPT; the planner does not even try
    assert AlarmType.CORRUPT in await _alarms(members)
