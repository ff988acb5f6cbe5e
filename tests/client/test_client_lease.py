"""Leases against a real etcd 3.4 member: grant, TTLs, keepalive past the TTL, loss."""

from __future__ import annotations

import asyncio
import time

import pytest
from etcdstore import errors
from etcdstore.client import Client
from etcdstore.errors import EtcdError

pytestmark = pytest.mark.etcd


async def test_grant_ttl_leases_revoke(client: Client) -> None:
    g = await client.lease_grant(30)
    assert g.TTL == 30 and g.ID != 0
    fixed = await client.lease_grant(20, id=0x1234)
    assert fixed.ID == 0x1234
    with pytest.raises(EtcdError) as e:
        await client.lease_grant(20, id=0x1234)
    assert e.value == errors.LEASE_EXIST
    await client.put("l1", "v", lease=g.ID)
    await client.put("l2", "v", lease=g.ID)
    ttl = await client.lease_time_to_live(g.ID, keys=True)
    assert ttl.grantedTTL == 30 and 28 <= ttl.TTL <= 30
    assert sorted(ttl.keys) == [b"l1", b"l2"]
    assert not (await client.lease_time_to_live(g.ID)).keys
    assert sorted(s.ID for s in (await client.lease_leases()).leases) == sorted([g.ID, 0x1234])
    await client.lease_revoke(g.ID)
    assert (await client.get("l", prefix=True)).count == 0  # its keys went with it
    assert (await client.lease_time_to_live(g.ID)).TTL == -1
    with pytest.raises(EtcdError) as e:
        await client.lease_revoke(g.ID)
    assert e.value == errors.LEASE_NOT_FOUND
    with pytest.raises(EtcdError) as e:
        await client.lease_grant(10**12)
    assert e.value == errors.LEASE_TTL_TOO_LARGE


async def test_keepalive_once(client: Client) -> None:
    g = await client.lease_grant(10)
    await asyncio.sleep(1.1)
    assert (await client.lease_time_to_live(g.ID)).TTL <= 9
    resp = await client.lease_keepalive_once(g.ID)
    assert resp.ID == g.ID and resp.TTL == 10
    assert (await client.lease_time_to_live(g.ID)).TTL >= 9
    with pytest.raises(EtcdError) as e:
        await client.lease_keepalive_once(987654321)
    assert e.value == errors.LEASE_NOT_FOUND


async def test_keepalive_holds_past_ttl_then_expires_after_close(client: Client) -> None:
    g = await client.lease_grant(2)
    await client.put("held", "v", lease=g.ID)
    lost = []
    keeper = await client.lease_keepalive(g.ID, on_lost=lost.append)
    assert keeper.ttl == 2 and keeper.alive
    await asyncio.sleep(5)  # 2.5 x the TTL
    assert (await client.get("held")).count == 1
    assert keeper.alive and not lost
    await keeper.close()
    # Functional, not a timing claim: once closed, the lease only counts down, then expires.
    last = (await client.lease_time_to_live(g.ID)).TTL
    deadline = time.monotonic() + 30  # a hang guard only
    while (await client.get("held")).count == 1:
        ttl = (await client.lease_time_to_live(g.ID)).TTL
        assert ttl <= last, "the lease was refreshed after the keeper closed"
        last = ttl
        assert time.monotonic() < deadline, "the lease never expired after the keeper closed"
        await asyncio.sleep(0.2)
    assert not lost  # closing is not a loss


async def test_keepalive_reports_loss_when_revoked(client: Client) -> None:
    g = await client.lease_grant(3)
    lost = []
    keeper = await client.lease_keepalive(g.ID, on_lost=lost.append)
    await client.lease_revoke(g.ID)
    why = await asyncio.wait_for(keeper.wait_lost(), 5)
    assert why == errors.LEASE_NOT_FOUND and lost == [keeper] and not keeper.alive
    await keeper.close()


async def test_keepalive_of_missing_lease_raises(client: Client) -> None:
    with pytest.raises(EtcdError) as e:
        await client.lease_keepalive(424242)
    assert e.value == errors.LEASE_NOT_FOUND


async def test_keepalive_lost_when_member_stays_down(etcd, client: Client) -> None:
    g = await client.lease_grant(2)
    keeper = await client.lease_keepalive(g.ID)
    etcd.members[0].kill()
    why = await asyncio.wait_for(keeper.wait_lost(), 8)
    assert why is not None and why.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    await client.close()  # closes the (already lost) keeper too
