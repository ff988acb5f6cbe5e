"""The MVCC store on a real RocksDB: revisions, historical reads, ranges, write transactions,
the pending overlay, events, leases, consistent index and restarts."""

from __future__ import annotations

import pytest
from etcdstore import errors
from etcdstore.mvcc import KVStore
from etcdstore.mvcc import revision as rv
from etcdstore.proto.mvccpb import kv_pb2
from etcdstore.storage import backend as bk
from mvcc_support import FakeLessor, Node


def _kvs(rr) -> list[tuple[bytes, bytes, int, int, int]]:
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in rr.kvs]


def test_revisions_versions_and_history(node: Node):
    assert node.kv.current_revision == 1  # as etcd: the first write is revision 2
    assert node.put(b"a", b"1") == 2
    assert node.put(b"a", b"2") == 3
    assert node.put(b"b", b"x") == 4
    assert node.delete(b"a") == (1, 5)
    assert node.delete(b"a") == (0, 5)  # nothing deleted: no new revision
    assert node.put(b"a", b"3") == 6
    kv = node.kv
    assert kv.current_revision == 6
    history = {
        1: [],
        2: [(b"a", b"1", 2, 2, 1)],
        3: [(b"a", b"2", 2, 3, 2)],
        4: [(b"a", b"2", 2, 3, 2), (b"b", b"x", 4, 4, 1)],
        5: [(b"b", b"x", 4, 4, 1)],
        6: [(b"a", b"3", 6, 6, 1), (b"b", b"x", 4, 4, 1)],
    }
    for rev, want in history.items():
        assert _kvs(kv.range(b"a", b"c", rev=rev)) == want
        assert _kvs(kv.range(b"\x00", b"\x00", rev=rev)) == want
        assert _kvs(kv.range(b"a", None, rev=rev)) == [w for w in want if w[0] == b"a"]
        assert kv.range(b"a", b"c", rev=rev).rev == 6
    with pytest.raises(errors.EtcdError) as e:
        kv.range(b"a", rev=7)
    assert e.value == errors.FUTURE_REV


def test_range_forms_count_and_limit(node: Node):
    for k in (b"a", b"b", b"ba", b"c", b"d\x00", b"e"):
        node.put(k, k)
    kv = node.kv
    keys = lambda rr: [x.key for x in rr.kvs]
    assert keys(kv.range(b"b")) == [b"b"]
    assert keys(kv.range(b"b", b"")) == [b"b"]  # empty range_end: the single key
    assert keys(kv.range(b"b", b"\x00")) == [b"b", b"ba", b"c", b"d\x00", b"e"]
    assert keys(kv.range(b"b", b"c")) == [b"b", b"ba"]
    assert keys(kv.range(b"c", b"b")) == []
    rr = kv.range(b"a", b"\x00", limit=2)
    assert keys(rr) == [b"a", b"b"] and rr.count == 6  # count ignores the limit
    rr = kv.range(b"a", b"\x00", count_only=True)
    assert rr.kvs == [] and rr.count == 6
    raw = kv.range_raw(b"b", b"d", limit=1)
    assert raw.count == 3 and kv_pb2.KeyValue.FromString(raw.kvs[0]).key == b"b"
    assert kv.range_meta(b"a", b"c") == [(2, 2, 1), (3, 3, 1), (4, 4, 1)]


def test_one_txn_is_one_revision_with_sub_revisions(node: Node):
    node.put(b"x", b"old")

    def many(t):
        t.put(b"k1", b"a")
        t.put(b"k2", b"b")
        assert t.rev == 3  # reads in the txn see its own writes
        assert [kv.key for kv in t.range(b"k", b"l").kvs] == [b"k1", b"k2"]
        t.delete_range(b"x")
        return t.put(b"k3", b"c")

    assert node.apply(many) == 3
    assert node.kv.current_revision == 3
    keys = sorted(k for k, _ in node.backend.items(bk.KEY))
    assert [(rv.from_bytes(k) >> 32, rv.from_bytes(k) & 0xFFFFFFFF, rv.is_tombstone(k)) for k in keys] == [
        (2, 0, False), (3, 0, False), (3, 1, False), (3, 2, True), (3, 3, False),
    ]  # fmt: skip
    # a txn without writes does not bump the revision
    assert node.apply(lambda t: t.range(b"k1").count) == 1
    assert node.apply(lambda t: t.delete_range(b"nope", b"nope2")) == (0, 3)
    assert node.kv.current_revision == 3


def test_events_carry_prev_kv(node: Node):
    node.put(b"a", b"1")
    b = node.backend.batch()
    t = node.kv.write(b)
    t.put(b"a", b"2")
    t.put(b"n", b"new", lease=0)
    t.delete_range(b"a", b"b")  # the put above and this delete: prev_kv is the state before the txn
    events = t.end()
    node.backend.write(b, sync=False)
    node.kv.batch_written()
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.kv.version) for e in events] == [
        (kv_pb2.Event.PUT, b"a", 3, 2),
        (kv_pb2.Event.PUT, b"n", 3, 1),
        (kv_pb2.Event.DELETE, b"a", 3, 0),
    ]
    assert events[0].prev_kv.value == b"1" and events[0].prev_kv.mod_revision == 2
    assert not events[1].HasField("prev_kv")  # a create has no previous value
    assert events[2].prev_kv.value == b"1"
    node.kv.prev_kv_in_events = False
    events = node.batch(lambda t: t.put(b"n", b"again"))
    assert node.kv.current_revision == 4


def test_pending_overlay_within_and_across_txns_of_one_batch(node: Node):
    node.put(b"base", b"0")
    kv = node.kv
    b = node.backend.batch()
    t1 = kv.write(b)
    t1.put(b"p", b"1")
    t1.put(b"base", b"1")
    assert kv.range(b"p").kvs == []  # readers see the last finished revision until end()
    assert [x.key for x in kv.range(b"\x00", b"\x00").kvs] == [b"base"]
    assert kv.range(b"\x00", b"\x00", count_only=True).count == 1
    assert kv.range_meta(b"\x00", b"\x00") == [(2, 2, 1)]
    assert t1.range(b"\x00", b"\x00", count_only=True).count == 2  # the txn sees its own
    t1.end()
    assert node.backend.get(bk.KEY, rv.to_bytes(rv.pack(3))) is None  # not on disk yet
    assert kv.range(b"p").kvs[0].value == b"1"  # ... but readable
    t2 = kv.write(b)
    assert t2.range(b"p").kvs[0].value == b"1"  # a later txn of the same batch sees it
    t2.put(b"p", b"2")
    ev = t2.end()
    assert ev[0].prev_kv.value == b"1"  # prev_kv from the overlay
    assert kv.range(b"p", rev=3).kvs[0].value == b"1"
    assert kv.range(b"base", rev=2).kvs[0].value == b"0"
    node.backend.write(b, sync=False)
    kv.batch_written()
    assert kv._pending == {}
    assert kv.range(b"p").kvs[0].value == b"2"
    assert kv.range(b"p", rev=3).kvs[0].value == b"1"


def test_only_one_write_txn_at_a_time(node: Node):
    b = node.backend.batch()
    t = node.kv.write(b)
    with pytest.raises(RuntimeError):
        node.kv.write(b)
    t.end()
    with pytest.raises(RuntimeError):
        t.end()


def test_leases_follow_puts_and_deletes(tmp_path):
    lessor = FakeLessor((7, 8))
    node = Node(tmp_path / "db", lessor=lessor)
    node.put(b"a", b"1", lease=7)
    node.put(b"b", b"1", lease=7)
    assert lessor.keys[7] == {b"a", b"b"}
    node.put(b"a", b"2", lease=8)
    assert lessor.keys == {7: {b"b"}, 8: {b"a"}}
    node.put(b"a", b"3")
    assert lessor.keys[8] == set()
    node.delete(b"b")
    assert lessor.keys[7] == set()
    node.put(b"c", b"1", lease=8)
    node.delete(b"c")
    node.put(b"c", b"2")
    node.put(b"d", b"1", lease=7)
    # a restart re-attaches the live leased keys
    node.backend.close()
    fresh = FakeLessor()
    node.backend = bk.Backend(tmp_path / "db")
    node.kv = KVStore(node.backend, lessor=fresh)
    assert fresh.keys == {7: {b"d"}}
    assert sorted(node.kv.leased_keys()) == [(b"d", 7)]
    node.close()


def test_restart_gives_the_same_state(tmp_path):
    node = Node(tmp_path / "db")
    for i in range(50):
        node.put(b"k%d" % (i % 7), b"v%d" % i)
        if i % 5 == 0:
            node.delete(b"k%d" % (i % 3))
    cur = node.kv.current_revision
    before = {r: node.kv.range(b"\x00", b"\x00", rev=r).kvs for r in range(1, cur + 1)}
    h = node.kv.hash_kv()
    ci = node.kv.consistent_index
    node.reopen()
    assert node.kv.current_revision == cur
    assert node.kv.consistent_index == ci and node.kv.consistent_term == 1
    assert {r: node.kv.range(b"\x00", b"\x00", rev=r).kvs for r in range(1, cur + 1)} == before
    assert node.kv.hash_kv() == h
    assert node.put(b"k1", b"after") == cur + 1
    node.close()


def test_unwritten_batch_is_lost_on_restart_and_reapplied(tmp_path):
    """The consistent index goes with the data: after a crash before the batch write, the
    store is exactly at the previous index and replaying the entry gives the same result."""
    node = Node(tmp_path / "db")
    node.put(b"a", b"1")
    b = node.backend.batch()
    t = node.kv.write(b)
    t.put(b"a", b"2")
    t.end()
    node.kv.set_consistent_index(b, 99, 3)
    # crash: the batch is never written
    node.reopen()
    assert node.kv.consistent_index == 1
    assert node.kv.current_revision == 2
    assert node.put(b"a", b"2") == 3
    node.close()
