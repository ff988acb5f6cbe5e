"""Randomized property test: the store against a plain in-memory model of etcd's MVCC
semantics, through batches of multi-change transactions, reads at random revisions, events,
compactions (run in random small steps) and restarts (also in the middle of a compaction).

(Seeded `random` rather than hypothesis, which is not installed in this environment.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from etcdstore import errors
from etcdstore.proto.mvccpb import kv_pb2
from mvcc_support import FakeLessor, Node

KEYS = [b"k%02d" % i for i in range(24)] + [b"k1\x00", b"k\xff", b"l"]


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create: int
    mod: int
    version: int
    lease: int


class Model:
    def __init__(self) -> None:
        self.rev = 1
        self.compact = -1
        self.hist: dict[bytes, list[tuple[int, KV | None]]] = {}

    def at(self, key: bytes, rev: int) -> KV | None:
        state = None
        for main, kv in self.hist.get(key, []):
            if main > rev:
                break
            state = kv
        return state

    def latest(self, key: bytes) -> KV | None:
        h = self.hist.get(key)
        return h[-1][1] if h else None

    def put(self, key: bytes, value: bytes, lease: int, main: int) -> KV:
        prev = self.latest(key)
        kv = KV(key, value, prev.create if prev else main, main, prev.version + 1 if prev else 1, lease)
        self.hist.setdefault(key, []).append((main, kv))
        return kv

    def delete(self, key: bytes, main: int) -> bool:
        if self.latest(key) is None:
            return False
        self.hist[key].append((main, None))
        return True

    def range(self, key: bytes, end: bytes | None, rev: int) -> list[KV]:
        if end is None:
            keys = [key]
        else:
            keys = sorted(k for k in self.hist if key <= k and (end == b"" or k < end))
        out = [self.at(k, rev) for k in keys]
        return [kv for kv in out if kv is not None]


def _as_kv(m: kv_pb2.KeyValue) -> KV:
    return KV(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def _wire_end(end: bytes | None) -> bytes | None:
    return b"\x00" if end == b"" else end


def _check_reads(node: Node, model: Model, rnd: random.Random) -> None:
    kv = node.kv
    assert kv.current_revision == model.rev
    for _ in range(6):
        key = rnd.choice(KEYS)
        end = rnd.choice([None, b"", rnd.choice(KEYS), b"k1", b"m"])
        rev = rnd.choice([0, model.rev, rnd.randint(-2, model.rev + 2)])
        limit = rnd.choice([0, 0, 1, 3])
        try:
            rr = kv.range(key, _wire_end(end), rev=rev, limit=limit)
        except errors.EtcdError as e:
            if rev > model.rev:
                assert e == errors.FUTURE_REV
            else:
                assert e == errors.COMPACTED and 0 < rev < model.compact
            continue
        assert rev <= model.rev and not (0 < rev < model.compact)
        want = model.range(key, end, rev if rev > 0 else model.rev)
        assert rr.count == len(want)
        assert [_as_kv(m) for m in rr.kvs] == (want[:limit] if limit else want)
    for _ in range(3):
        # the index alone (what Txn compares use) agrees with the stored values
        key, end = rnd.choice(KEYS), rnd.choice([None, b"", rnd.choice(KEYS)])
        want = [(m.mod, m.create, m.version) for m in model.range(key, end, model.rev)]
        assert kv.range_meta(key, _wire_end(end)) == want
    # historical versions from the index (its generations), at revisions still readable
    key = rnd.choice(KEYS)
    ki = kv._index.by_key.get(key)
    lo = max(model.compact, 1)
    for r in {rnd.randint(lo, model.rev) for _ in range(20)} | {lo, model.rev}:
        m = model.at(key, r)
        got = ki.get(r) if ki is not None else None
        assert (None if got is None else (got[0] >> 32, got[1] >> 32, got[2])) == (
            None if m is None else (m.mod, m.create, m.version)
        )


@pytest.mark.parametrize("seed", range(6))
def test_store_matches_model(tmp_path, seed: int):
    rnd = random.Random(seed)
    lessor = FakeLessor((5, 6))
    node = Node(tmp_path / "db", lessor=lessor)
    model = Model()
    for step in range(250):
        action = rnd.random()
        if action < 0.75:
            # a batch of 1-3 transactions, each with up to 4 changes on distinct keys
            txns = []
            for _ in range(rnd.randint(1, 3)):
                keys = rnd.sample(KEYS, rnd.randint(1, 4))
                txns.append(
                    [
                        (k, rnd.random() < 0.25, b"v%d" % rnd.randrange(100), rnd.choice([0, 0, 5, 6]))
                        for k in keys
                    ]
                )
            if rnd.random() < 0.1:
                txns.append([("range", rnd.choice(KEYS), b"k2", 0)])  # a delete_range of a key range
            node.batch(*[_txn_fn(t) for t in txns])
            for t, events in zip(txns, node.txn_events):
                main = model.rev + 1
                expect = []
                for key, is_del, value, lease in t:
                    if key == "range":
                        for k in sorted(k for k in model.hist if is_del <= k < value):
                            if model.latest(k) is not None:
                                expect.append(("del", k, model.at(k, main - 1)))
                                model.delete(k, main)
                    elif is_del:
                        prev = model.at(key, main - 1)
                        if model.delete(key, main):
                            expect.append(("del", key, prev))
                    else:
                        prev = model.at(key, main - 1)
                        expect.append(("put", model.put(key, value, lease, main), prev))
                if expect:
                    model.rev = main
                assert len(events) == len(expect)
                for ev, (kind, kv, prev) in zip(events, expect):
                    if kind == "put":
                        assert ev.type == kv_pb2.Event.PUT and _as_kv(ev.kv) == kv
                    else:
                        assert (
                            ev.type == kv_pb2.Event.DELETE
                            and ev.kv.key == kv
                            and ev.kv.mod_revision == model.rev
                        )
                    if prev is None:
                        assert not ev.HasField("prev_kv")
                    else:
                        assert _as_kv(ev.prev_kv) == prev
        elif action < 0.82 and model.rev > 2:
            at = rnd.randint(max(model.compact, 1), model.rev)
            if at <= model.compact:
                continue
            node.compact(at, physical=False)
            model.compact = at
            for _ in range(rnd.randint(0, 4)):
                node.kv.compact_step(rnd.randint(1, 30))
        elif action < 0.85:  # a restart (opening RocksDB is the slow part: not too often)
            node.reopen()
            node.lessor = lessor
        else:
            node.kv.compact_step(rnd.randint(1, 50))
        _check_reads(node, model, rnd)
        if step % 50 == 0:
            _check_leases(node, model, lessor)
    node.kv.compact_all()
    _check_reads(node, model, rnd)
    node.reopen()
    _check_reads(node, model, rnd)
    node.close()


def _check_leases(node: Node, model: Model, lessor: FakeLessor) -> None:
    want: dict[int, set[bytes]] = {5: set(), 6: set()}
    for k in model.hist:
        kv = model.latest(k)
        if kv is not None and kv.lease:
            want[kv.lease].add(k)
    assert {lid: keys for lid, keys in lessor.keys.items() if lid in want} == want
    assert sorted(node.kv.leased_keys()) == sorted((k, lid) for lid, ks in want.items() for k in ks)


def _txn_fn(changes):
    def fn(t):
        for key, is_del, value, lease in changes:
            if key == "range":
                t.delete_range(is_del, value)
            elif is_del:
                t.delete_range(key)
            else:
                t.put(key, value, lease)

    return fn
