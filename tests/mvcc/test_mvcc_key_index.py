"""The in-memory key index: generations, tombstones, reads at any revision, compaction."""

from __future__ import annotations

from etcdstore.mvcc.key_index import Index, KeyIndex
from etcdstore.mvcc.revision import pack


def _ki(*ops: tuple[str, int]) -> KeyIndex:
    """Build a key index from ("p", main) puts and ("t", main) tombstones (sub 0)."""
    ki = KeyIndex(b"foo")
    for op, main in ops:
        if op == "p":
            ki.put(pack(main), 0)
        else:
            assert ki.tombstone(pack(main))
    return ki


def _get(ki: KeyIndex, at: int) -> tuple[int, int, int] | None:
    got = ki.get(at)
    return None if got is None else (got[0] >> 32, got[1] >> 32, got[2])


# etcd's documented example: put(1) put(2) tombstone(3) put(4) tombstone(5), plus more
HISTORY = [("p", 2), ("p", 4), ("p", 6), ("t", 8), ("p", 10), ("p", 12), ("p", 14), ("t", 16), ("p", 18)]


def test_get_walks_generations():
    ki = _ki(*HISTORY)
    expect = {
        1: None, 2: (2, 2, 1), 3: (2, 2, 1), 4: (4, 2, 2), 7: (6, 2, 3), 8: None, 9: None,
        10: (10, 10, 1), 13: (12, 10, 2), 15: (14, 10, 3), 16: None, 17: None, 18: (18, 18, 1), 99: (18, 18, 1),
    }  # fmt: skip
    for at, want in expect.items():
        assert _get(ki, at) == want, at


def test_tombstone_of_missing_key_is_refused():
    ki = _ki(("p", 2), ("t", 3))
    assert not ki.tombstone(pack(4))
    assert KeyIndex(b"x").tombstone(pack(1)) is False


def test_put_and_delete_in_one_revision():
    # sibling nested txns may put a key and then delete it: two sub revisions of one main
    ki = _ki(("p", 2))
    ki.put(pack(5, 0), 0)
    assert ki.tombstone(pack(5, 1))
    assert _get(ki, 4) == (2, 2, 1)
    assert _get(ki, 5) is None
    assert not ki.compact(5)
    assert ki.past == [(pack(2), 3, [pack(5, 1)])]


def test_compaction_keeps_newest_revision_at_or_below():
    cases = {
        # compact at -> (expected reads that must still work, revisions left in the index)
        1: [2, 4, 6, 8, 10, 12, 14, 16, 18],
        2: [2, 4, 6, 8, 10, 12, 14, 16, 18],
        5: [4, 6, 8, 10, 12, 14, 16, 18],
        7: [6, 8, 10, 12, 14, 16, 18],
        8: [8, 10, 12, 14, 16, 18],  # a tombstone at exactly the compact revision stays
        9: [10, 12, 14, 16, 18],
        13: [12, 14, 16, 18],
        16: [16, 18],
        17: [18],
        100: [18],
    }
    for at, left in cases.items():
        ki = _ki(*HISTORY)
        before = {r: _get(ki, r) for r in range(at, 20)}
        assert not ki.compact(at)
        revs = []
        for _c, _v, g in ki.past or []:
            revs += [r >> 32 for r in g]
        revs += [r >> 32 for r in ki.revs]
        assert revs == left, at
        assert {r: _get(ki, r) for r in range(at, 20)} == before, at  # reads at >= at unchanged


def test_compaction_empties_a_deleted_key():
    ki = _ki(("p", 2), ("p", 3), ("t", 4))
    assert not ki.compact(4)  # the tombstone at 4 is kept for watchers starting at 4
    assert ki.past == [(pack(2), 3, [pack(4)])]
    assert ki.compact(5)  # then it goes, and the key with it
    assert ki.is_empty()


def test_restore_from_partial_history():
    ki = KeyIndex(b"k")
    ki.restore(pack(3), pack(7), 4, 9)  # first surviving revision: created 3, version 4
    ki.put(pack(8), 9)
    assert _get(ki, 8) == (8, 3, 5)
    assert _get(ki, 7) == (7, 3, 4)
    assert ki.lease == 9
    t = KeyIndex(b"t")
    t.restore_tombstone(pack(5))
    assert _get(t, 5) is None and _get(t, 6) is None
    t.put(pack(6), 0)
    assert _get(t, 6) == (6, 6, 1)
    assert not t.compact(6)
    assert t.past is None and [r >> 32 for r in t.revs] == [6]


def test_index_ranges_and_removal():
    idx = Index()
    for k in (b"b", b"a", b"c", b"ab", b"d"):
        idx.get_or_create(k)
    assert list(idx.keys(b"a", b"c")) == [b"a", b"ab", b"b"]
    assert list(idx.keys(b"b", b"")) == [b"b", b"c", b"d"]
    assert list(idx.keys(b"c", b"a")) == []
    assert list(idx.keys(b"c", b"c")) == []
    idx.remove(b"ab")
    assert list(idx.keys_after(b"a")) == [b"b", b"c", b"d"]
    assert list(idx.keys_after(None)) == [b"a", b"b", b"c", b"d"]
    assert len(idx) == 4


def test_index_keeps_live_and_dead_keys_apart():
    idx = Index()
    for k in (b"b", b"d", b"a"):
        idx.create_live(k).put(pack(2), 0)
    idx.get_or_create(b"c")  # indexed, not live
    assert list(idx.live) == [b"a", b"b", b"d"] and list(idx.dead) == [b"c"]
    assert list(idx.keys(b"", b"")) == [b"a", b"b", b"c", b"d"]
    assert list(idx.keys(b"b", b"d")) == [b"b", b"c"]
    assert list(idx.keys_after(b"a")) == [b"b", b"c", b"d"]
    assert list(idx.live_keys(b"", b"")) == [b"a", b"b", b"d"]
    assert idx.live_count(b"a", b"c") == 2
    assert idx.by_key[b"b"].tombstone(pack(3))
    idx.kill(b"b")
    assert list(idx.live) == [b"a", b"d"] and list(idx.dead) == [b"b", b"c"]
    assert list(idx.keys(b"", b"")) == [b"a", b"b", b"c", b"d"]
    idx.by_key[b"c"].put(pack(4), 0)
    idx.revive(b"c")
    assert list(idx.live) == [b"a", b"c", b"d"] and list(idx.dead) == [b"b"]
    idx.remove(b"b")
    idx.remove(b"a")
    assert list(idx.live) == [b"c", b"d"] and not idx.dead and len(idx) == 2
    assert list(idx.keys_after(None)) == [b"c", b"d"]
    idx.resort()
    assert list(idx.live) == [b"c", b"d"] and not idx.dead
