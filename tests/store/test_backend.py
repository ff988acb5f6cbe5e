"""The RocksDB backend: atomic multi-family batches, ordered iteration, read views, reopen."""

from etcdstore.storage import backend as bk
from etcdstore.storage.backend import Backend


def test_batch_is_atomic_across_families_and_survives_reopen(tmp_path):
    be = Backend(tmp_path / "db")
    b = be.batch()
    b.put(bk.KEY, b"k1", b"v1")
    b.put(bk.META, b"consistent_index", (7).to_bytes(8, "big"))
    assert be.get(bk.KEY, b"k1") is None  # nothing visible before write
    be.write(b, sync=True)
    be.close()
    be = Backend(tmp_path / "db")
    assert be.get(bk.KEY, b"k1") == b"v1"
    assert be.get(bk.META, b"consistent_index") == (7).to_bytes(8, "big")
    be.close()


def test_items_bounds_and_reverse(tmp_path):
    be = Backend(tmp_path / "db")
    b = be.batch()
    for k in (b"a", b"b", b"c", b"d"):
        b.put(bk.KEY, k, k.upper())
    b.put(bk.LEASE, b"b2", b"other family")
    be.write(b, sync=False)
    assert [k for k, _ in be.items(bk.KEY, b"b", b"d")] == [b"b", b"c"]
    assert [k for k, _ in be.items(bk.KEY, b"b", b"d", reverse=True)] == [b"c", b"b"]
    assert [k for k, _ in be.items(bk.KEY)] == [b"a", b"b", b"c", b"d"]
    b = be.batch()
    b.delete_range(bk.KEY, b"a", b"c")
    be.write(b, sync=False)
    assert [k for k, _ in be.items(bk.KEY)] == [b"c", b"d"]
    be.close()


def test_checkpoint_is_point_in_time(tmp_path):
    be = Backend(tmp_path / "db")
    b = be.batch()
    b.put(bk.KEY, b"x", b"1")
    b.put(bk.LEASE, b"l", b"lease")
    be.write(b, sync=False)
    be.checkpoint(tmp_path / "cp")
    b = be.batch()
    b.put(bk.KEY, b"x", b"2")
    b.put(bk.KEY, b"y", b"new")
    be.write(b, sync=False)
    cp = Backend.open_read_only(tmp_path / "cp")
    assert cp.get(bk.KEY, b"x") == b"1"
    assert list(cp.items(bk.KEY)) == [(b"x", b"1")]
    assert list(cp.items(bk.LEASE)) == [(b"l", b"lease")]
    assert be.get(bk.KEY, b"x") == b"2"
    cp.close()
    be.close()


def test_sizes_and_defragment(tmp_path):
    be = Backend(tmp_path / "db")
    b = be.batch()
    for i in range(2000):
        b.put(bk.KEY, i.to_bytes(8, "big"), b"v" * 256)
    be.write(b, sync=True)
    assert be.size() > 0
    b = be.batch()
    b.delete_range(bk.KEY, (0).to_bytes(8, "big"), (2000).to_bytes(8, "big"))
    be.write(b, sync=True)
    be.defragment()
    assert list(be.items(bk.KEY)) == []
    assert be.size_in_use() >= 0
    be.close()


def test_prefix_scan_and_clear_reach_keys_with_high_bytes(tmp_path):
    # Member IDs are random 64-bit numbers: 1 in 256 starts with 0xff, and a scan bounded by
    # prefix + b"\xff" lost such a member on every restart.
    be = Backend(tmp_path / "db")
    b = be.batch()
    high = [b"member/\xff" + bytes(7), b"member/\xff" * 3, b"member/\x00"]
    for k in high + [b"membes", b"member0", b"removed/x"]:
        b.put(bk.MEMBERS, k, b"v")
    b.put(bk.AUTH_USERS, b"\xff" * 80, b"a user whose name is all high bytes")
    b.put(bk.AUTH_USERS, b"alice", b"")
    b.put(bk.KEY, b"other", b"family")
    be.write(b, sync=False)
    assert [k for k, _ in be.items_with_prefix(bk.MEMBERS, b"member/")] == sorted(high)
    assert [k for k, _ in be.items_with_prefix(bk.MEMBERS, b"nothing/")] == []
    b = be.batch()
    be.clear_family(b, bk.AUTH_USERS)
    be.clear_family(b, bk.LEASE)  # empty: nothing to do
    be.write(b, sync=False)
    assert list(be.items(bk.AUTH_USERS)) == []
    assert [k for k, _ in be.items(bk.KEY)] == [b"other"]
    be.close()
