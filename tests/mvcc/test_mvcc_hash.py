"""hash_kv and hash: equal on members with the same history, different when it differs,
independent of how far a compaction's physical deletion has got."""

from __future__ import annotations

import asyncio
import random

import pytest
from etcdstore import errors
from mvcc_support import Node


def _feed(node: Node, ops: list[tuple]) -> None:
    for op in ops:
        if op[0] == "put":
            node.put(op[1], op[2])
        elif op[0] == "del":
            node.delete(op[1], op[2])
        elif op[0] == "compact":
            node.compact(op[1], physical=op[2])


def _ops(seed: int, n: int = 150) -> list[tuple]:
    rnd = random.Random(seed)
    ops: list[tuple] = []
    rev = 1
    for _ in range(n):
        k = b"h%02d" % rnd.randrange(20)
        if rnd.random() < 0.15:
            ops.append(("del", k, None))
        else:
            ops.append(("put", k, b"%d" % rnd.randrange(10**6)))
            rev += 1
    return ops


@pytest.fixture
def two(tmp_path):
    a, b = Node(tmp_path / "a"), Node(tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def test_same_history_same_hash_at_every_revision(two):
    a, b = two
    ops = _ops(1)
    _feed(a, ops)
    _feed(b, ops)
    cur = a.kv.current_revision
    hashes = {a.kv.hash_kv(r) for r in range(1, cur + 1)}
    assert len(hashes) == cur  # every revision hashes differently here
    for r in range(1, cur + 1):
        assert a.kv.hash_kv(r) == b.kv.hash_kv(r)
    assert a.kv.hash_kv(0) == b.kv.hash_kv(0) == a.kv.hash_kv(cur)
    assert a.kv.hash_kv(0)[1:] == (-1, cur)
    assert a.kv.hash() == b.kv.hash()


def test_different_history_different_hash(two):
    a, b = two
    ops = _ops(2)
    _feed(a, ops)
    ops2 = list(ops)
    i = next(i for i, o in enumerate(ops2) if o[0] == "put")
    ops2[i] = ("put", ops2[i][1], ops2[i][2] + b"x")  # one value differs
    _feed(b, ops2)
    assert a.kv.current_revision == b.kv.current_revision
    assert a.kv.hash_kv() != b.kv.hash_kv()
    assert a.kv.hash() != b.kv.hash()


def test_hash_ignores_physical_compaction_progress_and_consistent_index(two):
    a, b = two
    ops = _ops(3, 300)
    _feed(a, ops)
    _feed(b, ops)
    b.index += 1000  # a member that applied other (non-KV) entries has another consistent index
    b.put(b"z", b"z")
    a.put(b"z", b"z")
    cur = a.kv.current_revision
    at = cur // 2
    a.compact(at, physical=True)
    b.compact(at, physical=False)
    b.kv.compact_step(3)
    for r in (at + 1, cur - 5, cur):
        assert a.kv.hash_kv(r) == b.kv.hash_kv(r)
    b.kv.compact_all()
    assert a.kv.hash_kv() == b.kv.hash_kv()
    assert a.kv.hash() == b.kv.hash()
    assert a.kv.consistent_index != b.kv.consistent_index
    for bad, err in ((at, errors.COMPACTED), (1, errors.COMPACTED), (cur + 1, errors.FUTURE_REV)):
        with pytest.raises(errors.EtcdError) as e:
            a.kv.hash_kv(bad)
        assert e.value == err


def test_hash_kv_covers_an_open_batch(node: Node):
    node.put(b"a", b"1")
    b = node.backend.batch()
    t = node.kv.write(b)
    t.put(b"a", b"2")
    t.end()
    open_hash = node.kv.hash_kv()
    node.backend.write(b, sync=False)
    node.kv.batch_written()
    assert node.kv.hash_kv() == open_hash


async def test_hash_kv_async_in_chunks_while_writing(two):
    a, b = two
    ops = _ops(5, 400)
    _feed(a, ops)
    _feed(b, ops)
    rev = a.kv.current_revision
    a.compact(rev // 3, physical=False)
    b.compact(rev // 3)
    want = b.kv.hash_kv(rev)
    task = asyncio.ensure_future(a.kv.hash_kv_async(rev, chunk=7))
    steps = 0
    while not task.done():
        a.put(b"h00", b"meanwhile")  # new revisions are above `rev`: not part of the hash
        a.kv.compact_step(5)  # physical deletion in between does not change it either
        steps += 1
        await asyncio.sleep(0)
    assert steps > 10
    assert task.result() == want
    # a compaction scheduled meanwhile makes it start over on the new compaction revision
    task = asyncio.ensure_future(a.kv.hash_kv_async(rev, chunk=5))
    await asyncio.sleep(0)
    a.compact(rev - 1, physical=False)
    b.compact(rev - 1)
    assert await task == b.kv.hash_kv(rev)
