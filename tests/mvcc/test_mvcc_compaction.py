"""Compaction: never serves compacted revisions, removes exactly what etcd removes, runs in
bounded steps between batches, finishes after a restart, and revisions never go back."""

from __future__ import annotations

import random

import pytest
from etcdstore import errors
from etcdstore.mvcc import revision as rv
from etcdstore.mvcc.kvstore import FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY
from etcdstore.storage import backend as bk
from mvcc_support import Node


def _history(node: Node, n: int = 200, seed: int = 1) -> None:
    rnd = random.Random(seed)
    for _ in range(n):
        k = b"k%02d" % rnd.randrange(25)
        if rnd.random() < 0.2:
            node.delete(k)
        elif rnd.random() < 0.05:
            node.delete(k, k[:-1] + b"\xff")
        else:
            node.put(k, b"v%d" % rnd.randrange(1000))


def _disk(node: Node) -> list[tuple[int, int, bool]]:
    return [
        (rv.from_bytes(k) >> 32, rv.from_bytes(k) & 0xFFFFFFFF, rv.is_tombstone(k))
        for k, _ in node.backend.items(bk.KEY)
    ]


def _expected_after_compaction(before: list[tuple[int, int, bool]], keys: dict, at: int) -> list:
    """What etcd (3.5.15+ rule) keeps: every revision above `at`; per key the newest revision
    <= at if it is a put; and tombstones at exactly `at`."""
    keep = set()
    newest: dict[bytes, tuple[int, int, bool]] = {}
    for r in before:
        if r[0] > at:
            keep.add(r)
        elif r[0] <= at:
            newest[keys[r]] = r
    for r in newest.values():
        if not r[2] or r[0] == at:
            keep.add(r)
    return sorted(keep)


def _keys_of(node: Node) -> dict:
    from etcdstore.mvcc.kvstore import key_of_value

    return {
        (rv.from_bytes(k) >> 32, rv.from_bytes(k) & 0xFFFFFFFF, rv.is_tombstone(k)): key_of_value(v)
        for k, v in node.backend.items(bk.KEY)
    }


def test_compacted_revisions_are_never_served(node: Node):
    _history(node)
    cur = node.kv.current_revision
    at = cur // 2
    snapshot = {r: node.kv.range(b"\x00", b"\x00", rev=r).kvs for r in range(at, cur + 1)}
    node.compact(at, physical=False)
    for r in range(1, at):
        with pytest.raises(errors.EtcdError) as e:
            node.kv.range(b"\x00", b"\x00", rev=r)
        assert e.value == errors.COMPACTED
    # reads at and above the compaction revision are unchanged, before and after the deletion
    assert {r: node.kv.range(b"\x00", b"\x00", rev=r).kvs for r in range(at, cur + 1)} == snapshot
    node.kv.compact_all(limit=5)
    assert {r: node.kv.range(b"\x00", b"\x00", rev=r).kvs for r in range(at, cur + 1)} == snapshot
    b = node.backend.batch()
    with pytest.raises(errors.EtcdError) as e:
        node.kv.compact(b, at)
    assert e.value == errors.COMPACTED
    with pytest.raises(errors.EtcdError) as e:
        node.kv.compact(b, cur + 1)
    assert e.value == errors.FUTURE_REV


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_physical_deletion_keeps_exactly_the_right_revisions(node: Node, seed: int):
    _history(node, seed=seed)
    cur = node.kv.current_revision
    for at in (cur // 3, cur // 2, cur - 1, cur):
        before = _disk(node)
        keys = _keys_of(node)
        node.compact(at)
        assert _disk(node) == _expected_after_compaction(before, keys, at)
        assert not node.kv.compaction_unfinished()
        assert node.backend.get(bk.META, FINISHED_COMPACT_KEY) == rv.main_bytes(at)
        node.put(b"k00", b"more")
        node.delete(b"k01")
        cur = node.kv.current_revision


def test_tombstone_at_compaction_revision_stays(node: Node):
    node.put(b"a", b"1")
    node.put(b"b", b"1")
    node.delete(b"a")  # revision 4
    node.compact(4)
    assert (4, 0, True) in _disk(node)
    assert node.kv.current_revision == 4
    node.reopen()
    assert node.kv.current_revision == 4  # the newest revision is a delete at the compaction revision
    node.put(b"c", b"1")
    node.compact(5)
    assert _disk(node) == [(3, 0, False), (5, 0, False)]


def test_steps_are_bounded_and_wait_for_the_open_batch(node: Node):
    _history(node, n=300)
    cur = node.kv.current_revision
    b = node.backend.batch()
    node.kv.compact(b, cur - 10)
    assert not node.kv.compact_step(10)  # the batch holding the schedule is not written yet
    node.backend.write(b, sync=False)
    node.kv.batch_written()
    steps = 0
    while not node.kv.compact_step(10):
        steps += 1
        if steps % 3 == 0:
            node.put(b"k%02d" % (steps % 25), b"during")  # writes interleave with the steps
    assert steps > 10
    node.put(b"x", b"y")
    assert node.kv.range(b"x").kvs[0].value == b"y"


def test_restart_during_compaction_finishes_it(tmp_path):
    a = Node(tmp_path / "a")
    ref = Node(tmp_path / "ref")
    for n in (a, ref):
        _history(n, n=400, seed=9)
    cur = a.kv.current_revision
    at = cur - 20
    ref.compact(at)
    a.compact(at, physical=False)
    for _ in range(5):
        assert not a.kv.compact_step(20)
    assert a.backend.get(bk.META, SCHEDULED_COMPACT_KEY) == rv.main_bytes(at)
    assert a.backend.get(bk.META, FINISHED_COMPACT_KEY) is None
    a.reopen()  # "crash" in the middle
    assert a.kv.compaction_unfinished()
    assert a.kv.compact_revision == at  # the scheduled compaction holds at once after restart
    assert a.kv.current_revision == cur
    with pytest.raises(errors.EtcdError):
        a.kv.range(b"k00", rev=at - 1)
    assert a.kv.hash_kv() == ref.kv.hash_kv()
    a.kv.compact_all(limit=50)
    assert _disk(a) == _disk(ref)
    assert a.kv.hash_kv() == ref.kv.hash_kv()
    a.reopen()
    assert not a.kv.compaction_unfinished()
    assert a.kv.compact_revision == at
    a.close()
    ref.close()


def test_revisions_never_go_back_after_restart(tmp_path):
    """Even if nothing at the newest revision is left on disk (all of it compacted away)."""
    node = Node(tmp_path / "db")
    node.put(b"a", b"1")
    node.put(b"a", b"2")
    node.batch(lambda t: (t.put(b"b", b"x"), t.delete_range(b"a"), t.delete_range(b"b")))  # rev 4
    node.compact(4)
    node.reopen()
    assert node.kv.current_revision == 4
    # Drop everything at revision 4 from disk, as a compaction's deletions that reached disk
    # before its "finished" record would (our rule keeps them; etcd before 3.5.15 did not).
    b = node.backend.batch()
    for k, _ in list(node.backend.items(bk.KEY, rv.main_bytes(4), rv.main_bytes(5))):
        b.delete(bk.KEY, k)
    node.backend.write(b, sync=False)
    for marker in (FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY):
        node.reopen()
        assert node.kv.current_revision == 4
        assert node.put(b"c", b"1") == 5
        node.reopen()
        assert node.kv.current_revision == 5
        # the same with only the scheduled record (a crash before "finished")
        b = node.backend.batch()
        b.delete(bk.KEY, rv.to_bytes(rv.pack(5)))
        b.delete(bk.META, FINISHED_COMPACT_KEY)
        b.put(bk.META, SCHEDULED_COMPACT_KEY, rv.main_bytes(4))
        node.backend.write(b, sync=False)
    node.close()


def test_newer_compaction_supersedes_unfinished_one(node: Node):
    _history(node, n=300, seed=4)
    cur = node.kv.current_revision
    before = _disk(node)
    keys = _keys_of(node)
    node.compact(cur // 3, physical=False)
    node.kv.compact_step(5)
    node.kv.compact_step(5)
    node.compact(cur // 2, physical=True)
    assert _disk(node) == _expected_after_compaction(before, keys, cur // 2)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compacted_index_matches_a_rebuilt_one(tmp_path, seed: int):
    """The index compaction done during the pass over the revisions leaves the same keys, the
    same key orders and the same answers at every readable revision as an index rebuilt from
    the compacted disk (a reopen)."""
    node = Node(tmp_path / "db")
    rnd = random.Random(seed)
    for round_ in range(3):
        _history(node, n=250, seed=seed * 10 + round_)
        node.put(b"hot", b"%d" % round_)
        cur = node.kv.current_revision
        node.compact(rnd.randrange(max(cur - 100, node.kv.compact_revision + 1), cur + 1))
        at = node.kv.compact_revision
        index = node.kv._index
        got = (sorted(index.by_key), list(index.live), list(index.dead))
        answers = {
            (k, r): index.by_key[k].get(r)
            for k in index.by_key
            for r in range(at, node.kv.current_revision + 1)
        }
        node.reopen()
        index = node.kv._index
        assert got == (sorted(index.by_key), list(index.live), list(index.dead))
        for (k, r), want in answers.items():
            g = index.by_key[k].get(r)
            assert (g and (g[0], g[2])) == (want and (want[0], want[2])), (k, r)
    node.close()
