"""The v3election Election service, called through its gRPC stub, against our server and real
etcd 3.4: the same expectations (leader keys, headers, errors and codes, Observe order) on both."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from concurrency_support import Stubs, is_deadline_error, kept_alive, stubs
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.v3electionpb import v3election_pb2 as epb
from testlib import Cluster

UNKNOWN = grpc.StatusCode.UNKNOWN


async def rpc_error(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code(), e.value.details()


async def current_revision(st: Stubs) -> int:
    everything = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)
    return (await st.kv.Range(everything)).header.revision


async def test_election_requests_and_errors(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st, kept_alive(st, 30) as lease:
        e = st.election
        assert await rpc_error(e.Leader(epb.LeaderRequest(name=b"e1"))) == (UNKNOWN, "election: no leader")
        missing = (UNKNOWN, '"leader" field must be provided')
        assert await rpc_error(e.Proclaim(epb.ProclaimRequest(value=b"x"))) == missing
        assert await rpc_error(e.Resign(epb.ResignRequest())) == missing
        bogus = epb.LeaderKey(name=b"e1", key=b"e1/1", rev=5, lease=lease)
        assert await rpc_error(e.Proclaim(epb.ProclaimRequest(leader=bogus, value=b"x"))) == (
            UNKNOWN,
            "election: not leader",
        )
        rev = await current_revision(st)
        assert (await e.Resign(epb.ResignRequest(leader=bogus))).header.revision == rev  # nothing to resign
        assert await rpc_error(e.Campaign(epb.CampaignRequest(name=b"e1", lease=0x7EAD, value=b"v"))) == (
            UNKNOWN,
            "etcdserver: requested lease not found",
        )

        won = await e.Campaign(epb.CampaignRequest(name=b"e1", lease=lease, value=b"v1"))
        key = b"e1/%x" % lease
        assert won.leader == epb.LeaderKey(name=b"e1", key=key, rev=won.header.revision, lease=lease)
        leader = await e.Leader(epb.LeaderRequest(name=b"e1"))
        assert (leader.kv.key, leader.kv.value, leader.kv.lease) == (key, b"v1", lease)
        assert leader.kv.create_revision == won.leader.rev == leader.header.revision

        # Campaigning again with the same lease keeps the term (same rev) and updates the value;
        # the answer carries the header of the (failed) creating txn, from before the update.
        rev = await current_revision(st)
        again = await e.Campaign(epb.CampaignRequest(name=b"e1", lease=lease, value=b"v2"))
        assert again.leader == won.leader and again.header.revision == rev
        leader = await e.Leader(epb.LeaderRequest(name=b"e1"))
        assert (leader.kv.value, leader.kv.mod_revision) == (b"v2", rev + 1)

        proclaimed = await e.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"v3"))
        assert proclaimed.header.revision == rev + 2
        assert (await e.Leader(epb.LeaderRequest(name=b"e1"))).kv.value == b"v3"

        # A LeaderKey with lease 0 makes the server take a fresh 60 s lease for the put.
        no_lease = epb.LeaderKey(name=b"e1", key=key, rev=won.leader.rev)
        await e.Proclaim(epb.ProclaimRequest(leader=no_lease, value=b"v4"))
        kv = (await e.Leader(epb.LeaderRequest(name=b"e1"))).kv
        assert kv.value == b"v4" and kv.lease not in (0, lease)
        ttl = await st.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=kv.lease))
        assert ttl.grantedTTL == 60

        resigned = await e.Resign(epb.ResignRequest(leader=won.leader))
        assert resigned.header.revision == rev + 4 and not (await st.get(key)).kvs
        assert (await e.Resign(epb.ResignRequest(leader=won.leader))).header.revision == rev + 4
        assert await rpc_error(e.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"v5"))) == (
            UNKNOWN,
            "election: not leader",
        )
        assert await rpc_error(e.Leader(epb.LeaderRequest(name=b"e1"))) == (UNKNOWN, "election: no leader")
        await st.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=kv.lease))


async def test_campaign_waits_and_a_given_up_candidate_withdraws(server: Cluster) -> None:
    async with (
        stubs(server.endpoints[0]) as st,
        kept_alive(st, 30) as l1,
        kept_alive(st, 30) as l2,
        kept_alive(st, 30) as l3,
    ):
        e = st.election
        first = await e.Campaign(epb.CampaignRequest(name=b"e2", lease=l1, value=b"a"))
        # A candidate whose deadline passes is resigned (its key deleted), as etcd does.
        code, details = await rpc_error(
            e.Campaign(epb.CampaignRequest(name=b"e2", lease=l2, value=b"b"), timeout=0.5)
        )
        assert is_deadline_error(code, details), (code, details)
        await _candidates(st, b"e2/", 1)
        third = asyncio.ensure_future(e.Campaign(epb.CampaignRequest(name=b"e2", lease=l3, value=b"c")))
        await _candidates(st, b"e2/", 2)
        await asyncio.sleep(0.3)
        assert not third.done()
        assert (await e.Leader(epb.LeaderRequest(name=b"e2"))).kv.value == b"a"
        await st.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l1))  # the leader's lease goes
        won = await asyncio.wait_for(third, 10)
        assert won.leader.key == b"e2/%x" % l3 and won.leader.rev > first.leader.rev
        assert (await e.Leader(epb.LeaderRequest(name=b"e2"))).kv.value == b"c"
        await e.Resign(epb.ResignRequest(leader=won.leader))


async def test_observe_streams_leader_changes_in_order(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st, kept_alive(st, 30) as l1, kept_alive(st, 30) as l2:
        e = st.election
        seen: list[tuple[bytes, bytes, int]] = []
        headers: list[int] = []
        got = asyncio.Event()

        async def observe() -> None:
            async for resp in e.Observe(epb.LeaderRequest(name=b"e3")):
                seen.append((resp.kv.key, resp.kv.value, resp.kv.mod_revision))
                headers.append(resp.header.revision)
                got.set()

        async def next_seen(n: int) -> None:
            while len(seen) < n:
                got.clear()
                await asyncio.wait_for(got.wait(), 10)

        task = asyncio.create_task(observe())
        try:
            await asyncio.sleep(0.3)
            assert seen == []  # no leader yet: nothing, and no error
            # The first candidate to appear is reported with its put's revision as the header.
            first = await e.Campaign(epb.CampaignRequest(name=b"e3", lease=l1, value=b"one"))
            await next_seen(1)
            k1 = first.leader.key
            assert seen[0] == (k1, b"one", first.leader.rev) and headers[0] == first.leader.rev
            p = await e.Proclaim(epb.ProclaimRequest(leader=first.leader, value=b"one-b"))
            await next_seen(2)
            assert seen[1] == (k1, b"one-b", p.header.revision)
            two = epb.CampaignRequest(name=b"e3", lease=l2, value=b"two")
            second = asyncio.ensure_future(e.Campaign(two))
            await _candidates(st, b"e3/", 2)
            await asyncio.sleep(0.2)
            assert len(seen) == 2  # a waiting candidate is not the leader
            await e.Resign(epb.ResignRequest(leader=first.leader))
            won = await asyncio.wait_for(second, 10)
            await next_seen(3)
            assert seen[2][:2] == (won.leader.key, b"two")
            assert headers == sorted(headers)
            await e.Resign(epb.ResignRequest(leader=won.leader))
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def test_observe_starts_with_the_current_leader(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st, kept_alive(st, 30) as l1:
        e = st.election
        won = await e.Campaign(epb.CampaignRequest(name=b"e4", lease=l1, value=b"now"))
        stream = e.Observe(epb.LeaderRequest(name=b"e4"))
        try:
            first = await asyncio.wait_for(stream.read(), 10)
            assert (first.kv.key, first.kv.value) == (won.leader.key, b"now")
            assert first.header.revision >= won.header.revision
        finally:
            stream.cancel()
        await e.Resign(epb.ResignRequest(leader=won.leader))


async def _candidates(st: Stubs, prefix: bytes, n: int) -> None:
    await st.until_keys(prefix, n)
