"""clientv3/concurrency's recipes (Session, Mutex, Election, STM) and clientv3/namespace and
clientv3/mirror's helpers, each against a real etcd 3.4 and against etcdstore (`server` fixture)."""

from __future__ import annotations

import asyncio

import pytest
from etcdstore import errors
from etcdstore.client import Client, Compare, Op
from etcdstore.client.mirror import Syncer, mirror
from etcdstore.client.namespace import EMPTY_KEY, Namespace
from etcdstore.client.recipes import ELECTION_NO_LEADER, ELECTION_NOT_LEADER, LOCKED, Election, Mutex, Session
from etcdstore.client.stm import STM, Isolation, stm
from etcdstore.errors import EtcdError
from testlib import eventually_async

pytestmark = pytest.mark.etcd


@pytest.fixture
async def c(cluster1):
    async with Client(cluster1.endpoints, timeout=10) as client:
        yield client


async def count(c: Client, prefix: str) -> int:
    return (await c.get(prefix, prefix=True, count_only=True)).count


# -- Session -------------------------------------------------------------------------------------


async def test_session_keeps_its_lease_and_close_revokes_it(c) -> None:
    async with Session(c, ttl=5) as s:
        lease = s.lease
        await c.put("sess/k", "v", lease=lease)
        # Kept alive: a refresh after the first one arrives (every TTL/3) and the lease lives on.
        first = s._keeper.last_response
        await eventually_async(lambda: s._keeper.last_response is not first, 20, message="a refresh")
        assert s._keeper.ttl == 5 and (await c.lease_time_to_live(lease)).TTL > 0
        assert not s.done.is_set()
    assert s.done.is_set()
    assert (await c.lease_time_to_live(lease)).TTL == -1  # revoked, not left to expire
    assert await count(c, "sess/") == 0
    async with Session(c, ttl=5) as s2:
        await s2.orphan()  # keepalive stopped, lease not revoked
        assert (await c.lease_time_to_live(s2.lease)).TTL > 0


# -- Mutex ---------------------------------------------------------------------------------------


async def test_mutex_is_exclusive_queued_and_fenced(c) -> None:
    async with Session(c, ttl=10) as s1, Session(c, ttl=10) as s2, Session(c, ttl=10) as s3:
        m1, m2 = Mutex(s1, "/lk"), Mutex(s2, "/lk")
        await m1.lock()
        assert m1.key == f"/lk/{s1.lease:x}".encode()  # clientv3's key layout
        waiter = asyncio.create_task(m2.lock())
        await eventually_async(lambda: _count_is(c, "/lk/", 2), 20, message="m2 queued")
        assert not waiter.done()
        with pytest.raises(EtcdError) as e:
            await Mutex(s3, "/lk").try_lock()
        assert e.value == LOCKED
        assert await count(c, "/lk/") == 2  # try_lock left no key behind
        ok = await c.txn([m1.is_owner()], [Op.put("fenced", "1")])
        assert ok.succeeded
        first_rev = m1.header.revision
        await m1.unlock()
        await asyncio.wait_for(waiter, 10)
        assert m2.header.revision > first_rev  # fencing order
        assert not (await c.txn([Compare.create_revision(m1._my_key()) > 0], [])).succeeded
        # Interop with etcd's server-side lock service (it uses the same key layout).
        lease = (await c.lease_grant(10)).ID
        server_side = asyncio.create_task(c.lock("/lk", lease))
        await eventually_async(lambda: _count_is(c, "/lk/", 2), 20, message="server-side lock queued")
        assert not server_side.done()
        await m2.unlock()
        held = await asyncio.wait_for(server_side, 10)
        assert held.key == f"/lk/{lease:x}".encode()
        await c.unlock(held.key)
    # A session that ends releases its lock: the next waiter gets it.
    async with Session(c, ttl=10) as s4:
        s5 = await Session(c, ttl=10).start()
        await Mutex(s5, "/lk2").lock()
        m4 = Mutex(s4, "/lk2")
        waiter = asyncio.create_task(m4.lock())
        await eventually_async(lambda: _count_is(c, "/lk2/", 2), 20, message="m4 queued")
        await s5.close()
        await asyncio.wait_for(waiter, 10)
        async with Mutex(s4, "/lk3") as m:  # the context-manager form
            key = m.key
            assert (await c.get(key)).count == 1
        assert (await c.get(key)).count == 0 and m.key == b""


async def _count_is(c: Client, prefix: str, n: int) -> bool:
    return await count(c, prefix) == n


# -- Election ------------------------------------------------------------------------------------


async def test_election_campaign_proclaim_resign_observe(c) -> None:
    async with Session(c, ttl=10) as s1, Session(c, ttl=10) as s2:
        e1, e2 = Election(s1, "/el"), Election(s2, "/el")
        with pytest.raises(EtcdError) as e:
            await e1.leader()
        assert e.value == ELECTION_NO_LEADER
        seen: list[bytes] = []

        async def observe() -> None:
            async for kv in Election(s1, "/el").observe():
                seen.append(kv.value)
                if len(seen) == 3:
                    return

        observer = asyncio.create_task(observe())
        await e1.campaign(b"a")
        assert (await e1.leader()).value == b"a"
        assert (await c.leader("/el")).kv.value == b"a"  # the server-side service agrees
        second = asyncio.create_task(e2.campaign(b"b"))
        await eventually_async(lambda: _count_is(c, "/el/", 2), 20, message="e2 queued")
        await eventually_async(lambda: seen == [b"a"], 20, message="observer saw a")
        await e1.proclaim(b"a2")
        assert not second.done()
        await eventually_async(lambda: seen == [b"a", b"a2"], 20, message="observer saw a2")
        await e1.resign()
        await asyncio.wait_for(second, 10)
        assert (await e2.leader()).value == b"b"
        await asyncio.wait_for(observer, 10)
        assert seen == [b"a", b"a2", b"b"]
        with pytest.raises(EtcdError) as e:
            await e1.proclaim(b"x")
        assert e.value == ELECTION_NOT_LEADER
        await e2.resign()
        assert await count(c, "/el/") == 0


# -- STM -----------------------------------------------------------------------------------------


async def test_stm_counter_under_contention(c) -> None:
    for iso in Isolation:
        if iso is Isolation.READ_COMMITTED:
            continue  # no conflict check: lost updates are allowed (see the next test)
        key = f"cnt/{iso.value}"

        async def incr(s: STM, key: str = key) -> None:
            s.put(key, str(int(await s.get(key) or b"0") + 1))

        await asyncio.gather(*(stm(c, incr, isolation=iso) for _ in range(8)))
        assert (await c.get(key)).kvs[0].value == b"8", iso


async def test_stm_isolation_levels_differ_as_clientv3s(c) -> None:
    other = c

    async def run(iso: Isolation, apply_body) -> int:
        attempts = 0

        async def apply(s: STM) -> None:
            nonlocal attempts
            attempts += 1
            await apply_body(s, attempts)

        await stm(c, apply, isolation=iso)
        return attempts

    # Lost update: read x, someone else writes x, write x+1.
    async def lost_update(s: STM, attempt: int) -> None:
        x = int(await s.get("x") or b"0")
        if attempt == 1:
            await other.put("x", "100")
        s.put("x", str(x + 1))

    expected = {
        Isolation.READ_COMMITTED: 1,
        Isolation.REPEATABLE_READS: 2,
        Isolation.SERIALIZABLE: 2,
        Isolation.SERIALIZABLE_SNAPSHOT: 2,
    }
    for iso, n in expected.items():
        await c.put("x", "0")
        assert await run(iso, lost_update) == n, iso
        assert (await c.get("x")).kvs[0].value == (b"1" if n == 1 else b"101"), iso

    # Write skew on a key only written: only SerializableSnapshot checks the write set.
    async def blind_write(s: STM, attempt: int) -> None:
        await s.get("a")
        if attempt == 1:
            await other.put("b", "theirs")
        s.put("b", "mine")

    for iso, n in {Isolation.SERIALIZABLE: 1, Isolation.SERIALIZABLE_SNAPSHOT: 2}.items():
        assert await run(iso, blind_write) == n, iso

    # Snapshot reads: after a concurrent write to b, Serializable still reads b as of the first
    # read (then retries, as b changed); RepeatableReads reads the new b and commits.
    async def snapshot(s: STM, attempt: int) -> None:
        await s.get("a")
        if attempt == 1:
            await other.put("b", f"new{attempt}")
        b = await s.get("b")
        s.put("seen", b)

    await c.put("b", "old")
    assert await run(Isolation.SERIALIZABLE, snapshot) == 2
    assert (await c.get("seen")).kvs[0].value == b"new1"  # the second attempt read it
    await c.put("b", "old")
    assert await run(Isolation.REPEATABLE_READS, snapshot) == 1
    assert (await c.get("seen")).kvs[0].value == b"new1"

    # An exception in apply aborts: nothing written.
    async def boom(s: STM) -> None:
        s.put("never", "1")
        raise KeyError("abort")

    with pytest.raises(KeyError):
        await stm(c, boom)
    assert (await c.get("never")).count == 0
    # The txn's range responses carry the revision in their own header, as etcd's do (the
    # Serializable STM's prefetch relies on it).
    r = await c.txn([Compare.version("x") < 0], [], [Op.get("x")])
    assert r.responses[0].response_range.header.revision == r.header.revision


# -- namespace -----------------------------------------------------------------------------------


async def test_namespace_confines_keys(c) -> None:
    ns = Namespace(c, "ns/")
    await c.put("nr", "before")  # sorts before ns/, outside
    await c.put("nt", "after")  # "ns0" < "nt": outside, right after the namespace's range end
    await ns.put("a", "1")
    p = await ns.put("a", "2", prev_kv=True)
    assert p.prev_kv.key == b"a" and p.prev_kv.value == b"1"
    await ns.put("b", "3")
    assert (await c.get("ns/a")).kvs[0].value == b"2"
    r = await ns.get("a")
    assert [kv.key for kv in r.kvs] == [b"a"]
    assert [kv.key for kv in (await ns.get("", from_key=True)).kvs] == [b"a", b"b"]
    assert [kv.key for kv in (await ns.get("", prefix=True)).kvs] == [b"a", b"b"]
    assert [kv.key for kv in (await ns.get("a", range_end="b")).kvs] == [b"a"]
    with pytest.raises(EtcdError) as e:
        await ns.put("", "x")
    assert e.value == EMPTY_KEY

    t = await ns.txn(
        [Compare.value("a") == "2"],
        [Op.get("", from_key=True), Op.put("c", "4", prev_kv=True), Op.txn([], [Op.get("b")])],
    )
    assert t.succeeded
    assert [kv.key for kv in t.responses[0].response_range.kvs] == [b"a", b"b"]
    assert t.responses[2].response_txn.responses[0].response_range.kvs[0].key == b"b"
    assert not (await ns.txn([Compare.version("zz") > 0])).succeeded

    w = await ns.watch("", prefix=True, prev_kv=True)
    await c.put("outside", "x")
    await ns.put("a", "5")
    await ns.delete("c")
    got = []
    async for resp in w:
        got += [(ev.type, ev.kv.key, ev.prev_kv.key) for ev in resp.events]
        if len(got) == 2:
            break
    await w.cancel()
    assert got == [(0, b"a", b"a"), (1, b"c", b"c")]

    lease = (await c.lease_grant(30)).ID
    await ns.put("l", "x", lease=lease)
    await c.put("outside-l", "x", lease=lease)
    assert list((await ns.lease_time_to_live(lease, keys=True)).keys) == [b"l"]
    d = await ns.delete("", from_key=True, prev_kv=True)
    assert sorted(kv.key for kv in d.prev_kvs) == [b"a", b"b", b"l"]
    assert (await c.get("nr")).count == (await c.get("nt")).count == 1  # outside: untouched
    assert (await ns.status()).version == "3.4.23"  # other methods pass through


# -- mirror --------------------------------------------------------------------------------------


async def test_syncer_and_mirror(c) -> None:
    for i in range(0, 1500, 100):
        await c.txn([], [Op.put(f"src/{j:05d}", str(j)) for j in range(i, i + 100)])
    await c.put("srd", "outside")
    syncer = Syncer(c, "src/")
    pages = [page async for page in syncer.sync_base()]
    assert [len(p.kvs) for p in pages] == [1000, 500]
    assert pages[0].header.revision == syncer.revision  # the first page fixed the revision
    keys = [kv.key for p in pages for kv in p.kvs]
    assert keys == sorted(keys) and len(set(keys)) == 1500
    assert all(kv.mod_revision <= syncer.revision for p in pages for kv in p.kvs)
    await c.put("src/new", "n")
    async with await syncer.sync_updates() as w:
        resp = await asyncio.wait_for(w.__anext__(), 5)
        assert resp.events[0].kv.key == b"src/new"  # nothing between base and updates is missed

    synced = asyncio.Event()
    task = asyncio.create_task(mirror(c, c, "src/", dest_prefix="dst/", on_synced=lambda rev: synced.set()))
    try:
        await asyncio.wait_for(synced.wait(), 30)
        assert await count(c, "dst/") == 1501
        await c.put("src/00001", "changed")
        await c.delete("src/00002")
        await c.txn([], [Op.put("src/t1", "1"), Op.put("src/t2", "2")])
        await eventually_async(lambda: _count_is(c, "dst/", 1502), 20, message="mirrored updates")
        await eventually_async(lambda: _value_is(c, "dst/00001", b"changed"), 20, message="mirrored put")
        assert (await c.get("dst/00002")).count == 0
        assert (await c.get("dst/t2")).kvs[0].value == b"2"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _value_is(c: Client, key: str, value: bytes) -> bool:
    r = await c.get(key)
    return bool(r.kvs) and r.kvs[0].value == value


def test_errors_have_clientv3_texts() -> None:
    assert LOCKED.message == "mutex: Locked by another session"
    assert ELECTION_NOT_LEADER.message == "election: not leader"
    assert ELECTION_NO_LEADER.message == "election: no leader"
    assert EMPTY_KEY.message == "etcdclient: key is not provided"
    assert errors.from_message("etcdserver: request is too large") is not None
