"""One test per clientv3.Config option of etcdstore.client.Client, each run against a real etcd 3.4
and against etcdstore (the `server` fixture is parametrized over both; see conftest.py).

docs/client.md lists the options with their clientv3 names and these tests' names.
"""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from etcdstore import errors
from etcdstore.client import Client, TLSConfig
from etcdstore.client import client as client_mod
from etcdstore.client.rpc_errors import OLD_CLUSTER
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import eventually_async, free_port

pytestmark = pytest.mark.etcd


# -- Endpoints: failover and health --------------------------------------------------------------


async def test_endpoints_failover_when_its_member_is_killed(cluster3) -> None:
    eps = cluster3.endpoints
    async with Client(eps, timeout=10) as c:
        await c.put("k", "v0")
        assert c.endpoints[0] == eps[0]  # the member the client uses
        used_id = (await c.status()).header.member_id
        cluster3.members[0].kill()
        cluster3.leader_index()  # m0 may have led: writes wait for the next leader anyway
        # A write refused by the dead member never left the client: it moves on and is applied.
        put = await c.put("k", "v1")
        got = await c.get("k")
        assert got.kvs[0].value == b"v1" and got.kvs[0].mod_revision == put.header.revision
        assert got.header.member_id != used_id
        assert c.endpoints[0] != eps[0] and c.endpoints[-1] == eps[0]  # the dead one goes last
        health = await c.endpoint_health(timeout=2)
        assert health == {eps[0]: False, eps[1]: True, eps[2]: True}
        cluster3.members[0].restart()

        async def all_healthy() -> bool:
            return await c.endpoint_health(timeout=2) == dict.fromkeys(eps, True)

        await eventually_async(all_healthy, 20, message="m0 healthy again")
        assert c.endpoints == eps[1:] + eps[:1]  # no longer last for being marked


async def test_health_check_interval_marks_a_hung_member_before_any_call_fails(cluster3) -> None:
    eps = cluster3.endpoints
    async with Client(eps, timeout=3, health_check_interval=0.3) as c:
        await c.get("k")  # starts the background checks
        cluster3.members[1].pause()  # hung: a call sent there waits for its deadline
        await eventually_async(
            lambda: c.endpoints == [eps[0], eps[2], eps[1]], 20, message="m1 marked unhealthy"
        )
        cluster3.members[0].kill()
        # The current member is gone: the call skips m1 (marked) and goes straight to m2, where a
        # serializable read is served even without quorum. Unmarked, m1 would be tried first and
        # the read would run out of its 3 s deadline there.
        r = await c.get("k", serializable=True)
        assert r.header.member_id == cluster3.members[2].status().header.member_id
        assert c.endpoints[0] == eps[2]


# -- AutoSyncInterval ----------------------------------------------------------------------------


async def test_auto_sync_interval_learns_every_member(cluster3) -> None:
    eps = cluster3.endpoints
    async with Client(eps[:1], timeout=10, auto_sync_interval=0.2) as c:
        assert c.endpoints == eps[:1]
        await c.get("k")  # starts the background sync
        await eventually_async(lambda: sorted(c.endpoints) == sorted(eps), 20, message="synced endpoints")
        assert c.endpoints[0] == eps[0]  # the current endpoint stays current
        cluster3.members[0].kill()  # the only endpoint it was given
        cluster3.leader_index()
        await c.put("k", "after")
        assert (await c.get("k")).kvs[0].value == b"after"
    async with Client(eps[1], timeout=10) as c:  # Sync by hand (clientv3's Client.Sync)
        assert sorted(await c.sync_endpoints()) == sorted(eps)


# -- DialTimeout ---------------------------------------------------------------------------------


async def test_dial_timeout(cluster1) -> None:
    live = cluster1.endpoints[0]
    dead = f"127.0.0.1:{free_port()}"
    async with Client([dead, live], dial_timeout=5, timeout=5) as c:  # connect() picks the live one
        assert c.endpoints[0] == live
        assert (await c.status()).version == "3.4.23"
    with pytest.raises(EtcdError) as e:
        async with Client([dead], dial_timeout=0.5):
            pass
    assert (
        e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and e.value.message == "context deadline exceeded"
    )
    # A member that accepts TCP but never speaks HTTP/2 (stopped) is not "connected" either.
    cluster1.members[0].pause()
    try:
        with pytest.raises(EtcdError) as e:
            async with Client([live], dial_timeout=0.5):
                pass
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        cluster1.members[0].resume()


# -- DialKeepAliveTime / DialKeepAliveTimeout / PermitWithoutStream -------------------------------


@pytest.mark.etcd_args("--grpc-keepalive-min-time", "100ms")
async def test_keepalive_time_and_timeout_break_a_stream_to_a_hung_member(cluster1) -> None:
    async with Client(cluster1.endpoints, timeout=5, keepalive_time=0.3, keepalive_timeout=0.5) as c:
        w = await c.watch("k")
        await c.put("k", "1")
        assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.value == b"1"
        cluster1.members[0].pause()  # the kernel still ACKs: only a ping notices
        try:
            with pytest.raises(EtcdError) as e:
                await asyncio.wait_for(w.__anext__(), 30)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
        finally:
            cluster1.members[0].resume()


@pytest.mark.etcd_args("--grpc-keepalive-min-time", "100ms")
async def test_keepalive_pings_accepted_by_the_server(cluster1) -> None:
    """Pings at the server's --grpc-keepalive-min-time are not answered with a GOAWAY
    (too_many_pings): a watch stays open across many keepalive periods."""
    async with Client(cluster1.endpoints, timeout=5, keepalive_time=0.2, keepalive_timeout=2) as c:
        w = await c.watch("k")
        for i in range(8):  # ~8 pings' worth of idle time between writes, then an event
            await asyncio.sleep(0.25)
            await c.put("k", str(i))
            assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.value == str(i).encode()
        await w.cancel()


async def test_keepalive_time_below_the_servers_minimum_is_refused(cluster1) -> None:
    """With the server's default --grpc-keepalive-min-time (5 s), pings every 0.2 s get a GOAWAY
    ENHANCE_YOUR_CALM "too_many_pings" (grpc-go's policy in etcd): the stream fails."""
    async with Client(cluster1.endpoints, timeout=5, keepalive_time=0.2, keepalive_timeout=2) as c:
        w = await c.watch("k")
        with pytest.raises(EtcdError) as e:
            await asyncio.wait_for(w.__anext__(), 30)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and "too_many_pings" in e.value.message


@pytest.mark.etcd_args("--grpc-keepalive-min-time", "100ms")
async def test_permit_without_stream_detects_a_hung_member_while_idle(cluster1) -> None:
    async with Client(
        cluster1.endpoints, timeout=5, keepalive_time=0.3, keepalive_timeout=0.5, permit_without_stream=True
    ) as c:
        await c.get("k")  # connected, then idle: no call, no stream
        channel = c._shared.pool.get(c._shared.endpoints[0]).channel
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        cluster1.members[0].pause()
        try:
            await eventually_async(
                lambda: channel.get_state() != grpc.ChannelConnectivity.READY,
                30,
                message="the idle connection dropped by keepalive",
            )
        finally:
            cluster1.members[0].resume()
        assert (await c.get("k")).count == 0  # reconnects


# -- Username / Password (token refresh) ---------------------------------------------------------


@pytest.mark.etcd_args("--auth-token", "simple", "--auth-token-ttl", "1")
async def test_username_password_and_token_refresh_on_expiry(cluster1) -> None:
    eps = cluster1.endpoints
    async with Client(eps, timeout=10) as admin:
        await admin.user_add("root", "rootpw")
        await admin.user_grant_role("root", "root")
        await admin.auth_enable()
        with pytest.raises(EtcdError) as e:
            await admin.get("k")
        assert e.value == errors.USER_EMPTY
    async with Client(eps, user="root", password="wrong", timeout=10) as bad:
        with pytest.raises(EtcdError) as e:
            await bad.get("k")
        assert e.value == errors.AUTH_FAILED
    async with Client(eps, user="root", password="rootpw", timeout=10) as c:
        await c.put("k", "1")
        first = c._shared.token
        assert first and c._shared.token_gen == 1
        # The server drops a simple token unused for --auth-token-ttl (1 s; checked each second).
        # The old token is now refused as etcd refuses it:
        await _wait_token_expired(eps[0], first)
        await c.put("k", "2")  # "invalid auth token" -> Authenticate -> the put is resent once
        assert c._shared.token != first and c._shared.token_gen == 2
        assert (await c.get("k")).kvs[0].value == b"2"
        second = c._shared.token
        await _wait_token_expired(eps[0], second)
        w = await c.watch("k")  # a watch refused for its token re-authenticates too
        assert c._shared.token_gen == 3
        await c.put("k", "3")
        assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.value == b"3"
        await w.cancel()
        await c.auth_disable()


async def _wait_token_expired(endpoint: str, token: str) -> None:
    """Until the server has dropped `token`. Each probe would renew a live token, so the probe
    waits out one TTL plus the server's 1 s expiry tick between tries; the expiry is the
    condition (checked with a raw call carrying the token), not the time slept."""
    md = (("token", token),)
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for _ in range(5):
            await asyncio.sleep(2.5)
            try:
                await kv.Range(rpc_pb2.RangeRequest(key=b"probe"), metadata=md, timeout=5)
            except grpc.aio.AioRpcError as e:
                assert e.details() == errors.INVALID_AUTH_TOKEN.message, e.details()
                return
    pytest.fail("the token never expired")


# -- RejectOldCluster ----------------------------------------------------------------------------


def test_is_old_version() -> None:
    assert client_mod.MIN_CLUSTER_VERSION == (3, 2)
    for old in ("3.1.20", "3.0.0", "2.3.8", "3", "", "x.y"):
        assert client_mod.is_old_version(old), old
    for new in ("3.2.0", "3.4.23", "3.10.1", "4.0.0"):
        assert not client_mod.is_old_version(new), new


async def test_reject_old_cluster_checks_the_reported_version(cluster1, monkeypatch) -> None:
    eps = cluster1.endpoints
    async with Client(eps, timeout=5, reject_old_cluster=True) as c:  # 3.4.23 >= 3.2: accepted
        assert await c.check_version() == (await c.status()).version == "3.4.23"
    # The same check with the bar above what the server reports refuses it.
    monkeypatch.setattr(client_mod, "MIN_CLUSTER_VERSION", (3, 5))
    with pytest.raises(EtcdError) as e:
        async with Client(eps, timeout=5, reject_old_cluster=True):
            pass
    assert e.value == OLD_CLUSTER and e.value.message == "etcdclient: old cluster version"
    async with Client(eps, timeout=5) as c:  # without the option nothing is checked
        await c.put("k", "v")


# -- MaxCallSendMsgSize / MaxCallRecvMsgSize -----------------------------------------------------


async def test_max_call_send_size(cluster1) -> None:
    eps = cluster1.endpoints
    async with Client(eps, timeout=5, max_call_send_size=1024) as c:
        await c.put("small", b"x" * 500)
        with pytest.raises(EtcdError) as e:
            await c.put("big", b"x" * 2000)
        # grpc-python's own refusal: the request never left the client.
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.fullmatch(r"CLIENT: Sent message larger than max \(\d+ vs\. 1024\)", e.value.message)
        assert (await c.get("big")).count == 0
    async with Client(eps, timeout=5) as c:  # no client limit: the server's own (1.5 MiB) answers
        with pytest.raises(EtcdError) as e:
            await c.put("big", b"x" * (1536 * 1024 + 1))
        assert e.value == errors.REQUEST_TOO_LARGE


async def test_max_call_recv_size(cluster1) -> None:
    eps = cluster1.endpoints
    async with Client(eps, timeout=5) as writer:
        await writer.put("big", b"x" * 2000)
        await writer.put("small", b"x" * 10)
    async with Client(eps, timeout=5, max_call_recv_size=1024) as c:
        assert (await c.get("small")).kvs[0].value == b"x" * 10
        with pytest.raises(EtcdError) as e:
            await c.get("big")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.search(r"CLIENT: Received message larger than max \(\d+ vs\. 1024\)", e.value.message)


# -- TLS -----------------------------------------------------------------------------------------


async def test_tls(tls_cluster, tls_files) -> None:
    m = tls_cluster.members[0]
    full = TLSConfig(ca_file=tls_files.ca, cert_file=tls_files.client_cert, key_file=tls_files.client_key)
    async with Client(m.client_url, tls=full, timeout=5) as c:  # https://...
        await c.put("tls", "yes")
        w = await c.watch("tls")
        await c.put("tls", "again")
        assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.value == b"again"
        assert (await c.status()).version == "3.4.23"
    async with Client(m.endpoint, tls=full, timeout=5, dial_timeout=5) as c:  # host:port + tls=
        assert (await c.get("tls")).kvs[0].value == b"again"
    for bad in (
        TLSConfig(ca_file=tls_files.ca),  # no client certificate: --client-cert-auth refuses
        TLSConfig(cert_file=tls_files.client_cert, key_file=tls_files.client_key),  # unknown CA
        TLSConfig(
            ca_file=tls_files.ca,
            cert_file=tls_files.client_cert,
            key_file=tls_files.client_key,
            server_name="wrong.example",
        ),  # name not in the server certificate
    ):
        async with Client(m.client_url, tls=bad, timeout=3) as c:
            with pytest.raises(EtcdError) as e:
                await c.get("tls")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE, bad
    async with Client(f"http://{m.endpoint}", timeout=3) as c:  # plaintext to a TLS port
        with pytest.raises(EtcdError) as e:
            await c.get("tls")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


# -- WithRequireLeader ---------------------------------------------------------------------------


async def test_require_leader_fails_fast_without_quorum(cluster3) -> None:
    async with Client(cluster3.endpoints[:1], timeout=5, require_leader=True) as c:
        await c.put("q", "1")
        w = await c.watch("q")
        cluster3.members[1].kill()
        cluster3.members[2].kill()
        # Once m0 has noticed it has no leader, it answers "no leader" at once, and cancels
        # the watch that asked for a leader.
        with pytest.raises(EtcdError) as e:
            await asyncio.wait_for(w.__anext__(), 30)
        assert e.value == errors.NO_LEADER

        async def no_leader() -> bool:
            try:
                await c.with_options(timeout=2).get("q")
            except EtcdError as e:
                return e == errors.NO_LEADER
            return False

        await eventually_async(no_leader, 30, message="etcdserver: no leader")
