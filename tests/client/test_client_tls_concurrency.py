"""TLS with client certificates, and the lock / election services, against real etcd 3.4."""

from __future__ import annotations

import asyncio

import pytest
from etcdstore.client import Client, TLSConfig
from etcdstore.errors import EtcdError
from testlib import eventually_async

pytestmark = pytest.mark.etcd


async def queued(client: Client, prefix: str, n: int) -> bool:
    """Whether `n` keys (lock waiters, election candidates) are under `prefix`."""
    return (await client.get(prefix, prefix=True, count_only=True)).count == n


def tls_config(files, **kw) -> TLSConfig:
    return TLSConfig(ca_file=files.ca, cert_file=files.client_cert, key_file=files.client_key, **kw)


async def test_tls_with_client_certificate(etcd_tls, tls_files) -> None:
    m = etcd_tls.members[0]
    async with Client(m.client_url, tls=tls_config(tls_files), timeout=5) as c:  # https://...
        await c.put("tls", "yes")
        assert (await c.get("tls")).kvs[0].value == b"yes"
        w = await c.watch("tls")
        await c.put("tls", "again")
        assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.value == b"again"
    # "host:port" plus tls= means TLS as well; the name checked can be overridden.
    async with Client(m.endpoint, tls=tls_config(tls_files, server_name="localhost"), timeout=5) as c:
        assert (await c.status()).version == "3.4.23"


async def test_tls_refusals(etcd_tls, tls_files) -> None:
    m = etcd_tls.members[0]
    no_cert = TLSConfig(ca_file=tls_files.ca)
    async with Client(m.client_url, tls=no_cert, timeout=3) as c:
        with pytest.raises(EtcdError) as e:
            await c.get("x")  # --client-cert-auth: the handshake fails
        assert e.value.code.name == "UNAVAILABLE"
    async with Client(m.client_url, tls=tls_config(tls_files, server_name="wrong.example"), timeout=3) as c:
        with pytest.raises(EtcdError):
            await c.get("x")
    async with Client(f"http://{m.endpoint}", timeout=3) as c:  # plaintext to a TLS port
        with pytest.raises(EtcdError):
            await c.get("x")
    with pytest.raises(ValueError):
        TLSConfig(cert_file=tls_files.client_cert).credentials()


async def test_lock_is_exclusive_until_unlocked(client: Client) -> None:
    l1 = (await client.lease_grant(30)).ID
    l2 = (await client.lease_grant(30)).ID
    held = await client.lock("mylock", l1)
    assert held.key.startswith(b"mylock/")
    second = asyncio.create_task(client.lock("mylock", l2))
    await eventually_async(lambda: queued(client, "mylock/", 2), message="the second waiter queued")
    await asyncio.sleep(0.5)  # a window in which it must not be granted
    assert not second.done()  # blocked behind the first holder
    await client.unlock(held.key)
    got = await asyncio.wait_for(second, 5)
    assert got.key != held.key and got.header.revision > held.header.revision  # fencing order
    assert (await client.get(got.key)).kvs[0].lease == l2
    with pytest.raises(EtcdError) as e:
        await client.lock("mylock", l1, timeout=0.5)
    # Whoever sees the deadline first answers: the client (DEADLINE_EXCEEDED) or etcd's lock
    # handler, whose context error grpc-go sends as UNKNOWN "context deadline exceeded".
    assert e.value.code.name == "DEADLINE_EXCEEDED" or "deadline exceeded" in e.value.message
    await client.lease_revoke(l2)  # losing the lease releases the lock
    again = await asyncio.wait_for(client.lock("mylock", l1), 5)
    await client.unlock(again.key)


async def test_election_campaign_proclaim_observe_resign(client: Client) -> None:
    l1 = (await client.lease_grant(30)).ID
    l2 = (await client.lease_grant(30)).ID
    with pytest.raises(EtcdError) as e:
        await client.leader("elect")
    assert "no leader" in e.value.message
    first = await client.campaign("elect", l1, "node-1")
    assert first.leader.name == b"elect" and first.leader.lease == l1
    assert (await client.leader("elect")).kv.value == b"node-1"

    seen: list[bytes] = []

    async def observe() -> None:
        async for resp in client.observe("elect"):
            seen.append(resp.kv.value)
            if len(seen) == 3:
                return

    observer = asyncio.create_task(observe())
    await eventually_async(lambda: seen == [b"node-1"], message="the observer saw the leader")
    await client.proclaim(first.leader, "node-1-v2")
    second = asyncio.create_task(client.campaign("elect", l2, "node-2"))
    await eventually_async(lambda: queued(client, "elect/", 2), message="the second candidate queued")
    await asyncio.sleep(0.3)  # a window in which it must not win
    assert not second.done()
    await client.resign(first.leader)
    won = await asyncio.wait_for(second, 5)
    assert won.leader.lease == l2
    await asyncio.wait_for(observer, 5)
    assert seen == [b"node-1", b"node-1-v2", b"node-2"]
    assert (await client.leader("elect")).kv.value == b"node-2"
