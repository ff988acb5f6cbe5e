"""A 3-member real etcd cluster: failover rules, membership changes, per-member calls."""

from __future__ import annotations

import asyncio

import pytest
from etcdstore import errors
from etcdstore.client import Client, Op, never_reached_server
from etcdstore.errors import EtcdError
from testlib import eventually_async

pytestmark = pytest.mark.etcd


async def test_read_fails_over_when_first_member_is_killed(etcd3) -> None:
    eps = etcd3.endpoints
    async with Client(eps, timeout=10) as c:
        await c.put("k", "v")
        assert c.endpoints[0] == eps[0]
        etcd3.members[0].kill()
        for serializable in (False, True):
            r = await c.get("k", serializable=serializable)
            assert r.kvs[0].value == b"v"
        assert c.endpoints[0] != eps[0]  # moved on for good
        assert r.header.member_id != 0
        assert (await c.status()).header.member_id == r.header.member_id
        assert len((await c.member_list()).members) == 3


async def test_read_in_flight_is_retried_on_another_member(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=10) as c:
        await c.put("k", "v")
        m0 = etcd3.members[0]
        m0.pause()
        before = m0.unread_bytes()
        task = asyncio.create_task(c.get("k"))
        await eventually_async(lambda: m0.unread_bytes() > before, message="the read sent to the stopped m0")
        m0.kill()
        assert (await task).kvs[0].value == b"v"


async def test_write_with_unknown_outcome_is_raised_not_retried(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=5) as c:
        base = (await c.put("w", "0")).header.revision
        m0 = etcd3.members[0]
        m0.pause()
        before = m0.unread_bytes()
        task = asyncio.create_task(c.put("w", "1"))
        await eventually_async(lambda: m0.unread_bytes() > before, message="the write sent to the stopped m0")
        m0.kill()
        with pytest.raises(EtcdError) as e:
            await task
        assert e.value.code.name == "UNAVAILABLE" and not never_reached_server(e.value)
        # Not resent elsewhere: the cluster never saw it (the member got it while stopped).
        r = await c.get("w")
        assert r.kvs[0].value == b"0" and r.header.revision == base
        # The next write cannot reach the dead member at all, so it moves on safely.
        etcd3.leader_index()
        await c.put("w", "2")
        assert (await c.get("w")).kvs[0].value == b"2"


async def test_write_to_refused_endpoint_moves_on(etcd3) -> None:
    etcd3.members[0].kill()
    etcd3.leader_index()  # m0 may have led: a write would wait out the election
    async with Client(etcd3.endpoints, timeout=5) as c:
        r = await c.put("x", "1")
        assert r.header.revision > 1
        txn = await c.txn([], [Op.put("y", "2")])
        assert txn.succeeded


async def test_pinned_view_does_not_fail_over(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=5) as c:
        pinned = c.at(etcd3.endpoints[1])
        st = await pinned.status()
        assert st.header.member_id == etcd3.members[1].status().header.member_id
        etcd3.members[1].kill()
        with pytest.raises(EtcdError) as e:
            await pinned.get("k")
        assert e.value.code.name == "UNAVAILABLE"
        with pytest.raises(EtcdError) as e:
            await pinned.put("k", "v")
        assert never_reached_server(e.value)  # refused: certainly not applied
        await c.get("k")  # the unpinned client is unaffected
        await pinned.close()  # a view closes nothing
        await c.get("k")


async def test_hash_kv_is_equal_on_every_member(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=5) as c:
        for i in range(10):
            await c.put(f"h{i}", str(i))
        rev = (await c.get("h0")).header.revision

        async def hash_at(ep: str):
            try:
                return await c.at(ep).hash_kv(rev)
            except EtcdError as e:
                if e != errors.FUTURE_REV:
                    raise
                return None  # a follower may lag a moment behind the leader

        hashes = set()
        for ep in etcd3.endpoints:
            r = await eventually_async(lambda ep=ep: hash_at(ep), message=f"hash_kv({rev}) at {ep}")
            hashes.add((r.hash, r.compact_revision))
        assert len(hashes) == 1


async def test_move_leader(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=10) as c:
        leader = etcd3.leader_index()
        target = (leader + 1) % 3
        target_id = etcd3.members[target].status().header.member_id
        follower = c.at(etcd3.endpoints[target])
        with pytest.raises(EtcdError) as e:
            await follower.move_leader(target_id)
        assert e.value == errors.NOT_LEADER
        await c.at(etcd3.endpoints[leader]).move_leader(target_id)
        assert (await follower.status()).leader == target_id
        with pytest.raises(EtcdError) as e:
            await follower.move_leader(12345)
        assert e.value == errors.BAD_LEADER_TRANSFEREE


# etcd refuses reconfiguration until peers have been connected for 5 s ("unhealthy cluster");
# a fresh test cluster skips that wait.
@pytest.mark.etcd_args("--strict-reconfig-check=false")
async def test_member_add_update_promote_remove(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=10) as c:
        ml = await c.member_list()
        assert sorted(m.name for m in ml.members) == ["m0", "m1", "m2"]
        assert {u for m in ml.members for u in m.clientURLs} == {m.client_url for m in etcd3.members}
        added = await c.member_add(["http://127.0.0.1:1"], learner=True)
        new_id = added.member.ID
        assert added.member.isLearner and added.member.name == ""  # not started yet
        assert len(added.members) == 4
        with pytest.raises(EtcdError) as e:
            await c.member_add(["http://127.0.0.1:1", "http://127.0.0.1:9"])
        assert e.value == errors.PEER_URL_EXIST
        with pytest.raises(EtcdError) as e:
            await c.member_add(["http://127.0.0.1:2"], learner=True)
        assert e.value == errors.TOO_MANY_LEARNERS
        with pytest.raises(EtcdError) as e:
            await c.member_promote(new_id)
        assert e.value == errors.LEARNER_NOT_READY
        voter = ml.members[0].ID

        # etcd checks that the member's log is within 90% of the leader's before it looks at
        # whether it is a learner at all, so a voter a few entries behind first gets "not ready";
        # once it has caught up the answer is "not a learner".
        async def promote_voter() -> EtcdError | None:
            with pytest.raises(EtcdError) as e:
                await c.member_promote(voter)
            return None if e.value == errors.LEARNER_NOT_READY else e.value

        err = await eventually_async(promote_voter, 10, message="the voter caught up")
        assert err == errors.MEMBER_NOT_LEARNER
        updated = await c.member_update(new_id, ["http://127.0.0.1:3"])
        assert [m.peerURLs for m in updated.members if m.ID == new_id] == [["http://127.0.0.1:3"]]
        removed = await c.member_remove(new_id)
        assert new_id not in [m.ID for m in removed.members]
        with pytest.raises(EtcdError) as e:
            await c.member_remove(new_id)
        assert e.value == errors.MEMBER_NOT_FOUND


@pytest.mark.etcd_args("--strict-reconfig-check=false")
async def test_real_learner_joins_and_is_promoted(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=10) as c:
        for i in range(20):
            await c.put(f"d{i}", "x")
        m3 = etcd3.new_member("m3")
        added = await c.member_add([m3.peer_url], learner=True)
        m3.initial_cluster = ",".join(f"{m.name or 'm3'}={m.peerURLs[0]}" for m in added.members)
        m3.spawn()
        etcd3.members.append(m3)

        async def promote():
            try:
                return await c.member_promote(added.member.ID)
            except EtcdError as e:
                if e != errors.LEARNER_NOT_READY:
                    raise
                return None

        promoted = await eventually_async(promote, 20, message="the learner caught up")
        assert [m.isLearner for m in promoted.members if m.ID == added.member.ID] == [False]

        async def m3_has_all() -> bool:  # in sync means >= 90% of the leader's log, not all of it yet
            return (await c.at(m3.endpoint).get("d", prefix=True, serializable=True)).count == 20

        await eventually_async(m3_has_all, 5, message="the promoted member caught up")


async def test_watch_on_killed_member_raises_and_new_watch_moves(etcd3) -> None:
    async with Client(etcd3.endpoints, timeout=5) as c:
        w = await c.watch("k")
        etcd3.members[0].kill()
        with pytest.raises(EtcdError):
            async for _ in w:
                pass
        w2 = await c.watch("k")  # the dead member refuses: the new stream goes elsewhere
        etcd3.leader_index()  # m0 may have been the leader: writes wait for a new one
        await c.put("k", "v")
        resp = await asyncio.wait_for(w2.__anext__(), 5)
        assert resp.events[0].kv.value == b"v"


async def test_require_leader_fails_fast_without_quorum(etcd3) -> None:
    async with Client(etcd3.endpoints[:1], timeout=5, require_leader=True) as c:
        await c.put("q", "1")
        etcd3.members[1].kill()
        etcd3.members[2].kill()

        # Without a leader (after the election timeout) etcd answers "no leader" at once.
        async def no_leader() -> bool:
            try:
                await c.with_options(timeout=1).get("q")
            except EtcdError as e:
                return e == errors.NO_LEADER
            return False

        await eventually_async(no_leader, 10, message="etcdserver: no leader")


async def test_keepalive_survives_losing_its_member(etcd3) -> None:
    eps = etcd3.endpoints
    async with Client(eps, timeout=10) as c:
        g = await c.lease_grant(5)
        keeper = await c.lease_keepalive(g.ID)
        etcd3.members[0].kill()  # the keeper's stream was on m0
        await asyncio.sleep(8)  # longer than the TTL: only a reopened stream keeps it alive
        assert keeper.alive and keeper.error is None
        assert c.endpoints[0] != eps[0]  # it moved on to another member
        ttl = await c.lease_time_to_live(g.ID)
        assert ttl.TTL > 0
        await keeper.close()


async def test_require_leader_watch_is_canceled_without_leader(etcd3) -> None:
    async with Client(etcd3.endpoints[:1], timeout=5, require_leader=True) as c:
        w = await c.watch("k")
        etcd3.members[1].kill()
        etcd3.members[2].kill()
        with pytest.raises(EtcdError) as e:
            await asyncio.wait_for(w.__anext__(), 20)
        assert e.value == errors.NO_LEADER
