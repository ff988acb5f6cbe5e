"""The v3lock Lock service, called through its gRPC stub, against our server and real etcd 3.4:
the same expectations (keys, headers, errors and their codes, clean-up) must hold on both."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from concurrency_support import Stubs, is_deadline_error, kept_alive, stubs
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.v3lockpb import v3lock_pb2
from testlib import Cluster


def lock_req(name: bytes, lease: int) -> v3lock_pb2.LockRequest:
    return v3lock_pb2.LockRequest(name=name, lease=lease)


async def current_revision(st: Stubs) -> int:
    everything = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)
    return (await st.kv.Range(everything)).header.revision


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


async def test_lock_keys_headers_and_errors(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st, kept_alive(st, 30) as lease:
        # The key is name/ + the lease ID in hex; uncontended, the header is the creating txn's.
        got = await st.lock.Lock(lock_req(b"svc", lease))
        assert got.key == b"svc/%x" % lease
        kv = (await st.get(got.key)).kvs[0]
        assert kv.lease == lease and kv.value == b"" and got.header.revision == kv.create_revision
        assert got.header.member_id and got.header.cluster_id and got.header.raft_term
        # Locking again with the same lease finds the key: no write, answered at once.
        rev = await current_revision(st)
        again = await st.lock.Lock(lock_req(b"svc", lease))
        assert again.key == got.key and again.header.revision == rev == await current_revision(st)
        # Unlock deletes; unlocking a missing key is fine; an empty key is refused (code Unknown,
        # as etcd's in-process client turns server errors into plain errors).
        unlocked = await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=got.key))
        assert unlocked.header.revision == rev + 1 and not (await st.get(got.key)).kvs
        missing = await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=b"svc/none"))
        assert missing.header.revision == rev + 1
        e = await rpc_error(st.lock.Unlock(v3lock_pb2.UnlockRequest(key=b"")))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "etcdserver: key is not provided")
        # An unknown lease.
        e = await rpc_error(st.lock.Lock(lock_req(b"svc", 0x7EAD)))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
        # An empty name locks the prefix "/".
        empty = await st.lock.Lock(lock_req(b"", lease))
        assert empty.key == b"/%x" % lease
        await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=empty.key))


async def test_lock_without_a_lease_gets_a_60s_lease(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st:
        got = await st.lock.Lock(lock_req(b"nolease", 0))
        kv = (await st.get(got.key)).kvs[0]
        assert got.key == b"nolease/%x" % kv.lease
        ttl = await st.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=kv.lease))
        assert ttl.grantedTTL == 60 and 55 <= ttl.TTL <= 60
        await st.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=kv.lease))


async def test_waiter_queues_behind_every_older_key(server: Cluster) -> None:
    async with (
        stubs(server.endpoints[0]) as st,
        kept_alive(st, 30) as l1,
        kept_alive(st, 30) as l2,
        kept_alive(st, 30) as l3,
    ):
        first = await st.lock.Lock(lock_req(b"queue", l1))
        second = asyncio.ensure_future(st.lock.Lock(lock_req(b"queue", l2)))
        await _queued(st, b"queue/", 2)
        third = asyncio.ensure_future(st.lock.Lock(lock_req(b"queue", l3)))
        await _queued(st, b"queue/", 3)
        # The middle waiter gives up: the last one must keep waiting for the holder.
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        await _queued(st, b"queue/", 2)  # a cancelled waiter's key is removed
        await asyncio.sleep(0.5)
        assert not third.done()
        deleted = await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=first.key))
        got = await asyncio.wait_for(third, 10)
        assert got.key == b"queue/%x" % l3
        # A waiter's header is that of the read that saw the way clear: at or after the unlock.
        assert got.header.revision >= deleted.header.revision
        await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=got.key))


async def test_deadline_while_waiting_removes_the_waiters_key(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st, kept_alive(st, 30) as l1, kept_alive(st, 30) as l2:
        held = await st.lock.Lock(lock_req(b"deadline", l1))
        e = await rpc_error(st.lock.Lock(lock_req(b"deadline", l2), timeout=0.5))
        assert is_deadline_error(e.code(), e.details()), e
        await _queued(st, b"deadline/", 1)
        assert await st.keys(b"deadline/") == [held.key]
        await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key))


async def test_lock_is_released_by_lease_expiry_and_revoke(server: Cluster) -> None:
    async with stubs(server.endpoints[0]) as st, kept_alive(st, 30) as l2:
        l1 = await st.grant(3)  # never refreshed
        held = await st.lock.Lock(lock_req(b"expiry", l1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await asyncio.wait_for(st.lock.Lock(lock_req(b"expiry", l2)), 15)
        assert loop.time() - t0 >= 1.0  # waited for the expiry, not released early
        assert got.key == b"expiry/%x" % l2 and not (await st.get(held.key)).kvs
        l3 = await st.grant(30)
        waiter = asyncio.ensure_future(st.lock.Lock(lock_req(b"expiry", l3)))
        await _queued(st, b"expiry/", 2)
        await st.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l2))
        got3 = await asyncio.wait_for(waiter, 10)
        assert got3.key == b"expiry/%x" % l3
        await st.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l3))


async def test_concurrent_lock_loops_are_exclusive_with_fencing(server: Cluster) -> None:
    """Several clients (own connections, own leases) lock, update a shared counter, unlock.

    The update is fenced by the lock key's create revision: it applies only while that key
    still exists with that revision and nobody wrote the counter since we read it. Tokens must
    grow in acquisition order, and no fenced write may fail."""
    ep = server.endpoints[0]
    clients, rounds = 5, 6
    counter = b"fenced-counter"
    inside: list[int] = []
    tokens: list[int] = []
    failures: list[str] = []

    async def client(n: int) -> None:
        async with stubs(ep) as st, kept_alive(st, 30) as lease:
            for _ in range(rounds):
                got = await st.lock.Lock(lock_req(b"fenced", lease))
                inside.append(n)
                if len(inside) != 1:
                    failures.append(f"overlap {inside}")
                token = (await st.get(got.key)).kvs[0].create_revision
                if tokens and token <= tokens[-1]:
                    failures.append(f"token {token} after {tokens[-1]}")
                tokens.append(token)
                cur = await st.get(counter)
                value = int(cur.kvs[0].value) if cur.kvs else 0
                mod = cur.kvs[0].mod_revision if cur.kvs else 0
                await asyncio.sleep(0.01)  # let the others run while we hold the lock
                txn = rpc_pb2.TxnRequest(
                    compare=[
                        rpc_pb2.Compare(key=got.key, target=rpc_pb2.Compare.CREATE, create_revision=token),
                        rpc_pb2.Compare(key=counter, target=rpc_pb2.Compare.MOD, mod_revision=mod),
                    ],
                    success=[
                        rpc_pb2.RequestOp(
                            request_put=rpc_pb2.PutRequest(key=counter, value=b"%d" % (value + 1))
                        )
                    ],
                )
                if not (await st.kv.Txn(txn)).succeeded:
                    failures.append(f"fenced write refused for token {token}")
                inside.remove(n)
                await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=got.key))

    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(clients))), 120)
    assert failures == []
    async with stubs(ep) as st:
        assert int((await st.get(counter)).kvs[0].value) == clients * rounds
        assert await st.keys(b"fenced/") == []
    assert len(tokens) == clients * rounds


async def _queued(st: Stubs, prefix: bytes, n: int) -> None:
    await st.until_keys(prefix, n)
