"""KV methods against a real etcd 3.4 member: values, revisions and errors."""

from __future__ import annotations

import pytest
from etcdstore import errors
from etcdstore.client import Client, Compare, Op, SortOrder, SortTarget
from etcdstore.errors import EtcdError

pytestmark = pytest.mark.etcd


async def test_put_get_revisions_and_str_keys(client: Client) -> None:
    r1 = await client.put("a", "1")
    r2 = await client.put(b"a", b"2", prev_kv=True)
    assert r2.header.revision == r1.header.revision + 1
    assert r2.prev_kv.value == b"1" and r2.prev_kv.mod_revision == r1.header.revision
    got = await client.get("a")
    assert got.count == 1
    kv = got.kvs[0]
    assert (kv.key, kv.value, kv.version) == (b"a", b"2", 2)
    assert (kv.create_revision, kv.mod_revision) == (r1.header.revision, r2.header.revision)
    old = await client.get("a", revision=r1.header.revision)
    assert old.kvs[0].value == b"1"
    assert (await client.get("missing")).count == 0
    assert (await client.get("a", serializable=True)).kvs[0].value == b"2"
    await client.put("ü", "ö")
    assert (await client.get("ü".encode())).kvs[0].value == "ö".encode()


async def test_ranges_limits_sorting_filters(client: Client) -> None:
    revs = {}
    for k in ["p/a", "p/b", "p/c", "q"]:
        revs[k] = (await client.put(k, k.upper())).header.revision
    r = await client.get("p/", prefix=True)
    assert [kv.key for kv in r.kvs] == [b"p/a", b"p/b", b"p/c"]
    r = await client.get("p/", prefix=True, limit=2)
    assert (len(r.kvs), r.count, r.more) == (2, 3, True)
    r = await client.get("p/b", from_key=True)
    assert [kv.key for kv in r.kvs] == [b"p/b", b"p/c", b"q"]
    r = await client.get("p/a", range_end="p/c")
    assert [kv.key for kv in r.kvs] == [b"p/a", b"p/b"]
    r = await client.get("p/", prefix=True, sort_order=SortOrder.DESCEND, sort_target=SortTarget.KEY)
    assert [kv.key for kv in r.kvs] == [b"p/c", b"p/b", b"p/a"]
    r = await client.get("p/", prefix=True, keys_only=True)
    assert [kv.value for kv in r.kvs] == [b"", b"", b""] and r.kvs[0].key == b"p/a"
    r = await client.get("p/", prefix=True, count_only=True)
    assert (r.count, len(r.kvs)) == (3, 0)
    r = await client.get("p/", prefix=True, min_mod_revision=revs["p/b"])
    assert [kv.key for kv in r.kvs] == [b"p/b", b"p/c"]
    r = await client.get("p/", prefix=True, max_create_revision=revs["p/a"])
    assert [kv.key for kv in r.kvs] == [b"p/a"]
    r = await client.get("p/", prefix=True, min_create_revision=revs["p/c"], max_mod_revision=revs["p/c"])
    assert [kv.key for kv in r.kvs] == [b"p/c"]
    r = await client.get(b"\0", from_key=True)
    assert r.count == 4
    with pytest.raises(ValueError):
        await client.get("p/", prefix=True, from_key=True)


async def test_put_options_and_leases(client: Client) -> None:
    lease = (await client.lease_grant(60)).ID
    await client.put("k", "v1", lease=lease)
    await client.put("k", "", ignore_value=True)  # keeps value, drops the lease (no ignore_lease)
    kv = (await client.get("k")).kvs[0]
    assert (kv.value, kv.lease) == (b"v1", 0)
    await client.put("k", "v2", lease=lease)
    await client.put("k", "v3", ignore_lease=True)
    kv = (await client.get("k")).kvs[0]
    assert (kv.value, kv.lease) == (b"v3", lease)
    with pytest.raises(EtcdError) as e:
        await client.put("nokey", "", ignore_value=True)
    assert e.value == errors.KEY_NOT_FOUND
    with pytest.raises(EtcdError) as e:
        await client.put("k", "v", ignore_value=True)
    assert e.value == errors.VALUE_PROVIDED
    with pytest.raises(EtcdError) as e:
        await client.put("k", "v", lease=lease, ignore_lease=True)
    assert e.value == errors.LEASE_PROVIDED
    with pytest.raises(EtcdError) as e:
        await client.put("", "x")
    assert e.value == errors.EMPTY_KEY
    with pytest.raises(EtcdError) as e:
        await client.put("k", "x", lease=12345)
    assert e.value == errors.LEASE_NOT_FOUND


async def test_delete(client: Client) -> None:
    for k in ["d/1", "d/2", "d/3", "e"]:
        await client.put(k, "v" + k)
    r = await client.delete("d/1", prev_kv=True)
    assert r.deleted == 1 and r.prev_kvs[0].value == b"vd/1"
    r = await client.delete("d/", prefix=True)
    assert r.deleted == 2 and not r.prev_kvs
    assert (await client.delete("nothing")).deleted == 0
    r = await client.delete("e", range_end="f", prev_kv=True)
    assert [kv.key for kv in r.prev_kvs] == [b"e"]
    await client.put("x", "1")
    await client.put("y", "2")
    assert (await client.delete("x", from_key=True)).deleted == 2
    assert (await client.get(b"\0", from_key=True)).count == 0


async def test_txn_compare_branches_and_nesting(client: Client) -> None:
    rev = (await client.put("t", "1")).header.revision
    r = await client.txn(
        [Compare.mod_revision("t") == rev, Compare.value("t") == "1", Compare.version("t") > 0],
        [Op.put("t", "2"), Op.get("t"), Op.txn([], [Op.put("u", "x")], [])],
        [Op.get("t")],
    )
    assert r.succeeded
    assert r.responses[1].response_range.kvs[0].value == b"2"
    assert r.responses[0].response_put.header.revision == rev + 1  # one txn, one revision
    assert (await client.get("u")).kvs[0].mod_revision == rev + 1
    r = await client.txn(
        [Compare.value("t") != "2"], [Op.delete("t")], [Op.get("t"), Op.delete("u", prev_kv=True)]
    )
    assert not r.succeeded
    assert r.responses[0].response_range.kvs[0].value == b"2"
    assert r.responses[1].response_delete_range.prev_kvs[0].key == b"u"
    r = await client.txn(
        [Compare.create_revision("absent") == 0, Compare.lease("t") == 0, Compare.mod_revision("t") < 10**6]
    )
    assert r.succeeded and not r.responses
    r = await client.txn([Compare.version("t", prefix=True) > 5])
    assert not r.succeeded


async def test_txn_errors(client: Client) -> None:
    with pytest.raises(EtcdError) as e:
        await client.txn([], [Op.put(f"k{i}", "v") for i in range(129)])
    assert e.value == errors.TOO_MANY_OPS
    with pytest.raises(EtcdError) as e:
        await client.txn([], [Op.put("dup", "1"), Op.put("dup", "2")])
    assert e.value == errors.DUPLICATE_KEY
    r = await client.txn([], [Op.put(f"k{i}", "v") for i in range(128)])
    assert r.succeeded and len(r.responses) == 128


async def test_compact(client: Client) -> None:
    first = (await client.put("c", "1")).header.revision
    await client.put("c", "2")
    last = (await client.put("c", "3")).header.revision
    await client.compact(last, physical=True)
    with pytest.raises(EtcdError) as e:
        await client.get("c", revision=first)
    assert e.value == errors.COMPACTED
    assert (await client.get("c", revision=last)).kvs[0].value == b"3"
    with pytest.raises(EtcdError) as e:
        await client.compact(first)
    assert e.value == errors.COMPACTED
    with pytest.raises(EtcdError) as e:
        await client.compact(last + 100)
    assert e.value == errors.FUTURE_REV


async def test_deadline_exceeded_is_an_etcd_error(etcd, client: Client) -> None:
    await client.get("x")  # connected first: a paused server then simply never answers
    etcd.members[0].pause()
    try:
        with pytest.raises(EtcdError) as e:
            await client.with_options(timeout=0.3).get("x")
        assert e.value.code.name == "DEADLINE_EXCEEDED", e.value
    finally:
        etcd.members[0].resume()
    assert (await client.get("x")).count == 0


async def test_closed_client_raises(etcd) -> None:
    c = Client(etcd.endpoints)
    await c.put("a", "b")
    await c.close()
    with pytest.raises(EtcdError) as e:
        await c.get("a")
    assert e.value.message == "etcdclient: client is closed"
