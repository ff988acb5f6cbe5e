"""Differential tests: the same requests on a real etcd 3.4 and on our store must give the same
responses, message for message (headers compared on revision only; the rest is the server's)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest
from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2 as pb
from etcdstore.proto.etcdserverpb import rpc_pb2_grpc
from mvcc_support import Etcd, FakeLessor, Node

pytestmark = pytest.mark.etcd

LEASE = 0x1234


def _normalize(resp: Any) -> Any:
    if isinstance(resp, errors.EtcdError):
        return (resp.code, resp.message)
    resp = type(resp).FromString(resp.SerializeToString())
    if resp.HasField("header"):
        rev = resp.header.revision
        resp.header.Clear()
        resp.header.revision = rev
    return resp


def check_same(etcd: Etcd, node: Node, req: Any) -> Any:
    theirs = _normalize(etcd.request(req))
    try:
        ours = _normalize(node.request(req))
    except errors.EtcdError as e:
        ours = _normalize(e)
    assert ours == theirs, f"request:\n{req}\netcd:\n{theirs}\nours:\n{ours}"
    return ours


@pytest.fixture
def pair(etcd: Etcd, tmp_path):
    etcd.lease.LeaseGrant(pb.LeaseGrantRequest(ID=LEASE, TTL=3600), timeout=10)
    n = Node(tmp_path / "ours", lessor=FakeLessor((LEASE,)))
    yield etcd, n
    n.close()


def _put(k: bytes, v: bytes, **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=k, value=v, **kw)


def _rng(k: bytes, end: bytes = b"", **kw: Any) -> pb.RangeRequest:
    return pb.RangeRequest(key=k, range_end=end, **kw)


def _op(req: Any) -> pb.RequestOp:
    field = {
        pb.RangeRequest: "request_range",
        pb.PutRequest: "request_put",
        pb.DeleteRangeRequest: "request_delete_range",
        pb.TxnRequest: "request_txn",
    }[type(req)]
    return pb.RequestOp(**{field: req})


def _cmp(key: bytes, target: str, result: str, value: Any, range_end: bytes = b"") -> pb.Compare:
    t = getattr(pb.Compare, target)
    field = {
        "VERSION": "version",
        "CREATE": "create_revision",
        "MOD": "mod_revision",
        "VALUE": "value",
        "LEASE": "lease",
    }[target]
    return pb.Compare(
        key=key, target=t, result=getattr(pb.Compare, result), range_end=range_end, **{field: value}
    )


def test_puts_deletes_and_every_range_option(pair):
    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)
    for i in range(15):
        same(_put(b"k%02d" % i, b"v%d" % (i % 4)))
    for i in range(0, 15, 3):
        same(_put(b"k%02d" % i, b"w%d" % (i % 5), prev_kv=True))
    same(_put(b"k01", b"", lease=LEASE, prev_kv=True))
    same(_put(b"k01", b"", ignore_value=True, prev_kv=True))
    same(_put(b"k01", b"new", ignore_lease=True))
    same(_put(b"nokey", b"", ignore_value=True))  # KEY_NOT_FOUND
    same(_put(b"k02", b"x", ignore_value=True))  # VALUE_PROVIDED
    same(_put(b"k02", b"", ignore_lease=True, lease=LEASE))  # LEASE_PROVIDED
    same(_put(b"k02", b"x", lease=999))  # LEASE_NOT_FOUND
    same(_put(b"", b"x"))  # EMPTY_KEY
    same(pb.DeleteRangeRequest(key=b"k05", prev_kv=True))
    same(pb.DeleteRangeRequest(key=b"k05", prev_kv=True))  # nothing: no revision
    same(pb.DeleteRangeRequest(key=b"k10", range_end=b"k12", prev_kv=True))
    same(pb.DeleteRangeRequest(key=b"zzz", range_end=b"\x00"))
    same(pb.DeleteRangeRequest(key=b""))
    for i in (5, 10, 11):
        same(_put(b"k%02d" % i, b"again"))
    cur = same(_rng(b"k00")).header.revision
    ranges = [
        _rng(b"k00"), _rng(b"nokey"), _rng(b"k", b"l"), _rng(b"\x00", b"\x00"), _rng(b"k07", b"\x00"),
        _rng(b"k05", b"k01"), _rng(b"k03", b"k03"), _rng(b""),
    ]  # fmt: skip
    revs = [0, -3, 1, 2, 5, 12, cur, cur + 1]
    for base in ranges:
        for rev in revs:
            same(pb.RangeRequest(key=base.key, range_end=base.range_end, revision=rev))
    rnd = random.Random(7)
    for _ in range(300):
        base = rnd.choice(ranges[:5])
        req = pb.RangeRequest(
            key=base.key,
            range_end=base.range_end,
            limit=rnd.choice([0, 0, 1, 2, 5, 30, -1]),
            revision=rnd.choice([0, 0, 0, 14, cur - 3]),
            sort_order=rnd.choice([0, 0, 1, 2]),
            sort_target=rnd.choice([0, 0, 1, 2, 3, 4]),
            keys_only=rnd.random() < 0.3,
            count_only=rnd.random() < 0.15,
            min_mod_revision=rnd.choice([0, 0, 0, 10, 20]),
            max_mod_revision=rnd.choice([0, 0, 0, 15, 25]),
            min_create_revision=rnd.choice([0, 0, 0, 5]),
            max_create_revision=rnd.choice([0, 0, 0, 12]),
            serializable=rnd.random() < 0.5,
        )
        same(req)


def test_sort_ties_follow_go_sort(pair):
    """Many keys with equal sort values: etcd's (unstable) Go sort order must be reproduced."""
    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)
    rnd = random.Random(3)
    for i in range(120):
        k = b"t/%03d" % rnd.randrange(60)
        same(_put(k, b"v%d" % rnd.randrange(5)))
    # a few revisions holding several keys (same create/mod revision)
    for j in range(4):
        same(pb.TxnRequest(success=[_op(_put(b"t/m%d-%02d" % (j, i), b"v%d" % (i % 3))) for i in range(20)]))
    for target in range(5):
        for order in range(3):
            for limit in (0, 7, 40):
                same(_rng(b"t/", b"t0", sort_target=target, sort_order=order, limit=limit))
    # mostly equal versions: unbalanced partitions make Go's pdqsort break patterns with
    # its xorshift generator, which we must reproduce too
    for i in range(150):
        same(pb.TxnRequest(success=[_op(_put(b"u/%03d" % i, b"x"))]))
    for i in range(150):
        if rnd.random() < 0.15:
            for _ in range(rnd.randrange(1, 4)):
                same(_put(b"u/%03d" % i, b"y"))
    for order in (pb.RangeRequest.ASCEND, pb.RangeRequest.DESCEND, pb.RangeRequest.NONE):
        same(_rng(b"u/", b"u0", sort_target=pb.RangeRequest.VERSION, sort_order=order))


def test_txn_semantics(pair):
    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)
    same(_put(b"a", b"1"))
    same(_put(b"b", b"2", lease=LEASE))
    same(_put(b"c", b"3"))
    txns = [
        # Kubernetes' optimistic update and create
        pb.TxnRequest(
            compare=[_cmp(b"a", "MOD", "EQUAL", 2)],
            success=[_op(_put(b"a", b"1b"))],
            failure=[_op(_rng(b"a"))],
        ),
        pb.TxnRequest(
            compare=[_cmp(b"a", "MOD", "EQUAL", 2)],
            success=[_op(_put(b"a", b"1c"))],
            failure=[_op(_rng(b"a"))],
        ),
        pb.TxnRequest(
            compare=[_cmp(b"new", "MOD", "EQUAL", 0)],
            success=[_op(_put(b"new", b"n", prev_kv=True))],
            failure=[_op(_rng(b"new"))],
        ),
        # every target and result, on present and missing keys, and on ranges
        *[
            pb.TxnRequest(
                compare=[_cmp(k, t, r, v, end)], success=[_op(_rng(b"a"))], failure=[_op(_rng(b"b"))]
            )
            for k, end in ((b"a", b""), (b"missing", b""), (b"a", b"d"), (b"a", b"\x00"), (b"x", b"z"))
            for t, v in (
                ("VERSION", 1),
                ("CREATE", 3),
                ("MOD", 3),
                ("VALUE", b"2"),
                ("LEASE", LEASE),
                ("VALUE", b""),
            )
            for r in ("EQUAL", "GREATER", "LESS", "NOT_EQUAL")
        ],
        # nested txns, all in one revision; reads see the txn's own earlier writes
        pb.TxnRequest(
            compare=[_cmp(b"c", "VALUE", "EQUAL", b"3")],
            success=[
                _op(_put(b"d", b"4")),
                _op(_rng(b"a", b"z")),
                _op(
                    pb.TxnRequest(
                        compare=[_cmp(b"d", "VERSION", "EQUAL", 0)],  # decided before the put above
                        success=[_op(_put(b"e", b"5")), _op(pb.DeleteRangeRequest(key=b"a", prev_kv=True))],
                        failure=[_op(_put(b"f", b"6"))],
                    )
                ),
                _op(pb.TxnRequest()),
                _op(_rng(b"a", b"z", revision=2)),
            ],
        ),
        # a txn that changes nothing keeps the revision
        pb.TxnRequest(success=[_op(pb.DeleteRangeRequest(key=b"nothing")), _op(_rng(b"c"))]),
        pb.TxnRequest(),
        # put then delete of one key in sibling nested txns is allowed
        pb.TxnRequest(
            success=[
                _op(pb.TxnRequest(success=[_op(_put(b"g", b"7"))])),
                _op(pb.TxnRequest(success=[_op(pb.DeleteRangeRequest(key=b"g", prev_kv=True))])),
            ]
        ),
        # errors decided before anything is applied
        pb.TxnRequest(success=[_op(_put(b"h", b"8")), _op(_put(b"i", b"", ignore_value=True))]),
        pb.TxnRequest(success=[_op(_put(b"h", b"8")), _op(_put(b"i", b"9", lease=777))]),
        pb.TxnRequest(success=[_op(_put(b"h", b"8")), _op(_rng(b"a", revision=1000))]),
        pb.TxnRequest(success=[_op(_rng(b"a", revision=-5))]),
        pb.TxnRequest(success=[_op(_put(b"a", b"", ignore_lease=True, ignore_value=True, prev_kv=True))]),
        pb.TxnRequest(compare=[_cmp(b"", "VERSION", "EQUAL", 0)]),
        pb.TxnRequest(success=[pb.RequestOp()]),
        pb.TxnRequest(success=[_op(_put(b"", b"x"))]),
        pb.TxnRequest(failure=[_op(pb.DeleteRangeRequest(key=b""))]),
    ]
    for t in txns:
        same(t)
    for k in (b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"):
        same(_rng(k))


def test_txn_validation(pair):
    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)
    P = lambda k: _op(_put(k, b"v"))
    D = lambda k, e=b"": _op(pb.DeleteRangeRequest(key=k, range_end=e))
    T = lambda s=(), f=(), c=(): _op(pb.TxnRequest(compare=list(c), success=list(s), failure=list(f)))
    cases = [
        [P(b"a"), P(b"a")],
        [P(b"a"), D(b"a")],
        [D(b"a"), P(b"a")],
        [D(b"a", b"c"), P(b"b")],
        [D(b"a", b"\x00"), P(b"b")],  # etcd takes "\0" literally here: no overlap
        [D(b"b", b"a"), P(b"a")],
        [T([P(b"a")]), P(b"a")],
        [T([P(b"a")], [P(b"a")])],
        [T([P(b"a")]), T(f=[P(b"a")])],
        [T([D(b"a")]), T([P(b"a")])],
        [T([P(b"a")]), T([D(b"a")])],
        [D(b"a"), T([P(b"a")])],
        [T([P(b"a")]), D(b"a")],
        [T([T([P(b"x")])]), P(b"x")],
        [T([D(b"x", b"y")]), T([T([P(b"xa")])])],
        [D(b"a"), D(b"a")],
        [P(b"a"), P(b"b"), T([P(b"c")], [P(b"c")])],
    ]
    for ops in cases:
        same(pb.TxnRequest(success=ops))
        same(pb.TxnRequest(failure=ops, compare=[_cmp(b"zz", "VERSION", "EQUAL", 5)]))
    # operation limits: the longest of compare/success/failure, nested txns share the budget
    same(pb.TxnRequest(success=[P(b"k%d" % i) for i in range(128)]))
    same(pb.TxnRequest(success=[P(b"l%d" % i) for i in range(129)]))
    same(pb.TxnRequest(compare=[_cmp(b"a", "VERSION", "EQUAL", 0)] * 129))
    same(pb.TxnRequest(success=[P(b"m%d" % i) for i in range(100)] + [T([P(b"n%d" % i) for i in range(28)])]))
    same(pb.TxnRequest(success=[P(b"o%d" % i) for i in range(100)] + [T([P(b"p%d" % i) for i in range(29)])]))


def test_compaction_errors_and_reads(pair):
    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)
    for i in range(30):
        same(_put(b"c%d" % (i % 7), b"v%d" % i))
    same(pb.DeleteRangeRequest(key=b"c3"))
    same(pb.CompactionRequest(revision=100))  # future
    same(pb.CompactionRequest(revision=10))
    same(pb.CompactionRequest(revision=10))  # already compacted
    same(pb.CompactionRequest(revision=5))
    for rev in (0, 5, 9, 10, 11, 31, 32, 33):
        same(_rng(b"c", b"d", revision=rev))
        same(_rng(b"c3", revision=rev))
        same(pb.TxnRequest(success=[_op(_rng(b"c", b"d", revision=rev))]))
    same(pb.CompactionRequest(revision=32))
    same(_rng(b"c", b"d"))
    same(_rng(b"c", b"d", revision=32))
    same(_rng(b"c", b"d", revision=31))
    same(_put(b"c9", b"after"))
    same(_rng(b"c", b"d", count_only=True))


def test_hash_kv_and_revision_match_on_same_history(pair):
    """HashKV is ours (a different hash than etcd's), but compact/hash revisions must agree."""
    etcd, node = pair
    for i in range(10):
        check_same(etcd, node, _put(b"h%d" % (i % 3), b"v%d" % i))
    check_same(etcd, node, pb.CompactionRequest(revision=6))
    theirs = etcd.maintenance.HashKV(pb.HashKVRequest(revision=0), timeout=10)
    _h, compact_rev, hash_rev = node.kv.hash_kv(0)
    assert compact_rev == theirs.compact_revision == 6
    assert hash_rev == theirs.header.revision


def _etcd_watch_events(etcd: Etcd, create: pb.WatchCreateRequest, until_rev: int) -> list:
    """Events a real etcd delivers to one watch, up to revision `until_rev`."""
    import queue

    stub = rpc_pb2_grpc.WatchStub(etcd.channel)
    requests: queue.Queue = queue.Queue()
    requests.put(pb.WatchRequest(create_request=create))

    def gen():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    events = []
    call = stub.Watch(gen(), timeout=20)
    try:
        for resp in call:
            assert not resp.canceled, resp
            events.extend(resp.events)
            if events and events[-1].kv.mod_revision >= until_rev:
                break
    finally:
        requests.put(None)
        call.cancel()
    return events


async def test_watch_events_match_etcd(pair):
    """Historical watch events (kv, prev_kv, types, filters) are the ones etcd sends."""
    from etcdstore.mvcc.watchable import WatchableStore

    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)
    rnd = random.Random(11)
    for i in range(60):
        k = b"w/%d" % rnd.randrange(8)
        if rnd.random() < 0.2:
            same(pb.DeleteRangeRequest(key=k))
        else:
            same(_put(k, b"v%d" % i, lease=LEASE if rnd.random() < 0.2 else 0))
    same(
        pb.TxnRequest(
            success=[
                _op(pb.TxnRequest(success=[_op(_put(b"w/1", b"in-txn"))])),
                _op(pb.TxnRequest(success=[_op(pb.DeleteRangeRequest(key=b"w/1"))])),
                _op(_put(b"w/x", b"x")),
            ]
        )
    )
    same(pb.DeleteRangeRequest(key=b"w/", range_end=b"w/4"))
    cur = same(_rng(b"w/")).header.revision
    ws = WatchableStore(node.kv)
    try:
        for create in (
            pb.WatchCreateRequest(key=b"w/", range_end=b"w0", start_revision=2, prev_kv=True),
            pb.WatchCreateRequest(key=b"w/3", start_revision=5, prev_kv=True),
            pb.WatchCreateRequest(
                key=b"w/", range_end=b"w0", start_revision=10, filters=[pb.WatchCreateRequest.NOPUT]
            ),
            pb.WatchCreateRequest(key=b"w/", range_end=b"w0", start_revision=1),
        ):
            until = (
                cur
                if not create.filters
                else max(
                    e.kv.mod_revision
                    for e in _etcd_watch_events(
                        etcd,
                        pb.WatchCreateRequest(
                            key=create.key, range_end=create.range_end, start_revision=create.start_revision
                        ),
                        cur,
                    )
                    if e.type == 1
                )
            )
            theirs = _etcd_watch_events(etcd, create, until)
            stream = ws.new_stream()
            stream.watch(
                0,
                create.key,
                create.range_end,
                create.start_revision,
                prev_kv=create.prev_kv,
                filters=list(create.filters),
            )
            ours = []
            while not ours or ours[-1].kv.mod_revision < until:
                r = await asyncio.wait_for(stream.recv(), 5)
                ours.extend(r.events)
            stream.close()
            assert [e.SerializeToString() for e in ours] == [e.SerializeToString() for e in theirs]
    finally:
        ws.close()


def test_hash_kv_counts_the_entries_etcd_counts(pair):
    """With etcd's checksum (CRC-32C) our HashKV is etcd's, at every revision, around compactions."""
    from mvcc_support import crc32c

    etcd, node = pair
    same = lambda req: check_same(etcd, node, req)

    def ours(rev: int) -> tuple[int, int]:
        for result in node.kv._hash_kv_steps(rev, 1 << 62, crc=crc32c):
            if result is not None:
                return result[0], result[1]
        raise AssertionError

    def compare(rev: int) -> None:
        try:
            theirs = etcd.maintenance.HashKV(pb.HashKVRequest(revision=rev), timeout=10)
        except grpc.RpcError as e:
            with pytest.raises(errors.EtcdError) as mine:
                ours(rev)
            assert (mine.value.code, mine.value.message) == (e.code(), e.details())
            return
        assert ours(rev) == (theirs.hash, theirs.compact_revision), rev

    rnd = random.Random(21)
    for i in range(40):
        k = b"h/%d" % rnd.randrange(6)
        if rnd.random() < 0.25:
            same(pb.DeleteRangeRequest(key=k))
        else:
            same(_put(k, b"v%d" % i))
    cur = same(_rng(b"h/")).header.revision
    for rev in (0, 1, 5, cur // 2, cur, cur + 1, -2):
        compare(rev)
    same(pb.CompactionRequest(revision=cur // 2))
    for rev in (0, cur // 2 - 1, cur // 2, cur // 2 + 1, cur - 3, cur):
        compare(rev)
    same(pb.DeleteRangeRequest(key=b"h/", range_end=b"h0"))  # nothing alive any more
    cur = same(_rng(b"h/")).header.revision
    # etcd then hashes whatever is still on disk at or below the compaction: wait for its
    # physical compaction to finish so that this is well defined
    same(pb.CompactionRequest(revision=cur - 1, physical=True))
    for rev in (0, cur - 1, cur):
        compare(rev)
