"""kv_apply: etcd 3.4's KV request semantics, with expectations derived from etcd's code
(etcdserver/apply.go, api/v3rpc/key.go). test_mvcc_etcd_diff.py checks the same against a
real etcd; these run without it."""

from __future__ import annotations

import pytest
from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2 as pb
from etcdstore.txn import kv_apply as ka
from mvcc_support import FakeLessor, Node

R = pb.RangeRequest


def op(req) -> pb.RequestOp:
    field = {
        pb.RangeRequest: "request_range",
        pb.PutRequest: "request_put",
        pb.DeleteRangeRequest: "request_delete_range",
        pb.TxnRequest: "request_txn",
    }[type(req)]
    return pb.RequestOp(**{field: req})


def put(k: bytes, v: bytes = b"v", **kw) -> pb.RequestOp:
    return op(pb.PutRequest(key=k, value=v, **kw))


def dele(k: bytes, end: bytes = b"") -> pb.RequestOp:
    return op(pb.DeleteRangeRequest(key=k, range_end=end))


def txn(success=(), failure=(), compare=()) -> pb.RequestOp:
    return op(pb.TxnRequest(success=list(success), failure=list(failure), compare=list(compare)))


def raises(err: errors.EtcdError, fn, *args, **kw) -> None:
    with pytest.raises(errors.EtcdError) as e:
        fn(*args, **kw)
    assert e.value == err


@pytest.fixture
def n(tmp_path):
    node = Node(tmp_path / "db", lessor=FakeLessor((5,)))
    # keys a..e, versions 1..5 (e has 5 versions), values reversed
    for i, k in enumerate((b"a", b"b", b"c", b"d", b"e")):
        for _ in range(i + 1):
            node.put(k, b"%c" % (ord("z") - i))
    yield node
    node.close()


# -- API-layer checks ----------------------------------------------------------------------------


def test_request_checks():
    raises(errors.EMPTY_KEY, ka.check_range, R())
    raises(errors.EMPTY_KEY, ka.check_put, pb.PutRequest(value=b"x"))
    raises(errors.VALUE_PROVIDED, ka.check_put, pb.PutRequest(key=b"k", value=b"x", ignore_value=True))
    raises(errors.LEASE_PROVIDED, ka.check_put, pb.PutRequest(key=b"k", lease=1, ignore_lease=True))
    raises(errors.EMPTY_KEY, ka.check_delete_range, pb.DeleteRangeRequest())
    ka.check_put(pb.PutRequest(key=b"k", ignore_value=True, ignore_lease=True))


def test_txn_op_limits_are_counted_as_etcd_counts_them():
    many = lambda n, p="k": [put(b"%s%d" % (p.encode(), i)) for i in range(n)]
    ka.check_txn(pb.TxnRequest(success=many(128), failure=many(128, "f")))  # each branch on its own
    raises(errors.TOO_MANY_OPS, ka.check_txn, pb.TxnRequest(success=many(129)))
    cmp = pb.Compare(key=b"a")
    raises(errors.TOO_MANY_OPS, ka.check_txn, pb.TxnRequest(compare=[cmp] * 129))
    # a nested txn gets what is left after the longest list of its parent (101 ops here)
    ka.check_txn(pb.TxnRequest(success=many(100) + [txn(many(27, "n"))]), 128)
    raises(errors.TOO_MANY_OPS, ka.check_txn, pb.TxnRequest(success=many(100) + [txn(many(28, "n"))]))
    raises(errors.TOO_MANY_OPS, ka.check_txn, pb.TxnRequest(compare=[cmp] * 120, success=[txn(many(9, "n"))]))
    ka.check_txn(pb.TxnRequest(success=many(5)), 5)
    raises(errors.TOO_MANY_OPS, ka.check_txn, pb.TxnRequest(success=many(6)), 5)


def test_txn_field_checks():
    raises(errors.EMPTY_KEY, ka.check_txn, pb.TxnRequest(compare=[pb.Compare(key=b"")]))
    raises(errors.KEY_NOT_FOUND, ka.check_txn, pb.TxnRequest(success=[pb.RequestOp()]))
    raises(errors.EMPTY_KEY, ka.check_txn, pb.TxnRequest(failure=[op(R())]))
    raises(errors.VALUE_PROVIDED, ka.check_txn, pb.TxnRequest(success=[txn([put(b"k", ignore_value=True)])]))
    raises(errors.EMPTY_KEY, ka.check_txn, pb.TxnRequest(success=[dele(b"")]))


@pytest.mark.parametrize(
    "ops,ok",
    [
        ([put(b"a"), put(b"b")], True),
        ([put(b"a"), put(b"a")], False),
        ([put(b"a"), dele(b"a")], False),
        ([dele(b"a"), dele(b"a")], True),
        ([dele(b"a", b"c"), put(b"b")], False),
        ([dele(b"a", b"c"), put(b"c")], True),
        ([dele(b"a", b"\x00"), put(b"b")], True),  # "\0" taken literally: an empty interval
        ([txn([put(b"a")], [put(b"a")])], True),  # then/else: only one runs
        ([txn([put(b"a")]), txn(failure=[put(b"a")])], False),
        ([txn([put(b"a")]), put(b"a")], False),
        ([dele(b"a"), txn([put(b"a")])], False),
        ([txn([dele(b"a")]), txn([put(b"a")])], False),
        ([txn([put(b"a")]), txn([dele(b"a")])], True),  # order matters, as in etcd
        ([txn([put(b"a")]), dele(b"a")], False),
        ([txn([txn([put(b"x")])]), put(b"x")], False),
    ],
)
def test_duplicate_keys(ops, ok):
    for req in (pb.TxnRequest(success=ops), pb.TxnRequest(failure=ops)):
        if ok:
            ka.check_txn(req)
        else:
            raises(errors.DUPLICATE_KEY, ka.check_txn, req)


def test_read_only_and_serializable_classification():
    r = op(R(key=b"a"))
    rs = op(R(key=b"a", serializable=True))
    assert ka.txn_is_read_only(pb.TxnRequest(success=[r], failure=[r]))
    assert ka.txn_is_read_only(pb.TxnRequest())
    assert not ka.txn_is_read_only(pb.TxnRequest(success=[r], failure=[put(b"a")]))
    assert not ka.txn_is_read_only(pb.TxnRequest(success=[txn([r])]))
    assert ka.txn_is_serializable(pb.TxnRequest(success=[rs]))
    assert not ka.txn_is_serializable(pb.TxnRequest(success=[rs], failure=[r]))


# -- Range ---------------------------------------------------------------------------------------


def keys(resp) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def test_range_limit_more_count(n: Node):
    s = n.kv
    resp = ka.range(s, R(key=b"a", range_end=b"\x00", limit=2))
    assert keys(resp) == [b"a", b"b"] and resp.more and resp.count == 5
    resp = ka.range(s, R(key=b"a", range_end=b"\x00", limit=5))
    assert len(resp.kvs) == 5 and not resp.more
    resp = ka.range(s, R(key=b"\x00", range_end=b"\x00", count_only=True, limit=1))
    assert resp.count == 5 and not resp.kvs and not resp.more
    resp = ka.range(s, R(key=b"b", range_end=b"d", keys_only=True))
    assert keys(resp) == [b"b", b"c"] and all(not kv.value for kv in resp.kvs)
    assert resp.header.revision == s.current_revision == 16
    assert ka.range(s, R(key=b"zz")).count == 0


def test_range_sort_rules(n: Node):
    s = n.kv
    # a non-key target with no order sorts ascending
    assert keys(ka.range(s, R(key=b"a", range_end=b"f", sort_target=R.VALUE))) == [
        b"e",
        b"d",
        b"c",
        b"b",
        b"a",
    ]
    assert keys(ka.range(s, R(key=b"a", range_end=b"f", sort_target=R.VERSION, sort_order=R.DESCEND))) == [
        b"e", b"d", b"c", b"b", b"a",
    ]  # fmt: skip
    assert keys(ka.range(s, R(key=b"a", range_end=b"f", sort_order=R.DESCEND, limit=2))) == [b"e", b"d"]
    assert keys(ka.range(s, R(key=b"a", range_end=b"f", sort_target=R.MOD, sort_order=R.ASCEND, limit=3))) == [
        b"a", b"b", b"c",
    ]  # fmt: skip
    resp = ka.range(s, R(key=b"a", range_end=b"f", sort_target=R.CREATE, sort_order=R.DESCEND, limit=1))
    assert keys(resp) == [b"e"] and resp.more and resp.count == 5


def test_range_revision_filters_leave_count_alone(n: Node):
    s = n.kv
    # mod revisions: a 2, b 4, c 7, d 11, e 16; create revisions: a 2, b 3, c 5, d 8, e 12
    resp = ka.range(s, R(key=b"a", range_end=b"f", min_mod_revision=4, max_mod_revision=11))
    assert keys(resp) == [b"b", b"c", b"d"] and resp.count == 5
    resp = ka.range(s, R(key=b"a", range_end=b"f", min_create_revision=3, max_create_revision=8, limit=1))
    assert keys(resp) == [b"b"] and resp.more and resp.count == 5
    resp = ka.range(s, R(key=b"a", range_end=b"f", min_create_revision=5, max_create_revision=7, limit=1))
    assert keys(resp) == [b"c"] and not resp.more
    resp = ka.range(s, R(key=b"a", range_end=b"f", min_mod_revision=100, limit=1))
    assert keys(resp) == [] and not resp.more and resp.count == 5


def test_range_revisions_and_errors(n: Node):
    s = n.kv
    assert ka.range(s, R(key=b"e", revision=12)).kvs[0].version == 1
    assert ka.range(s, R(key=b"e", revision=11)).count == 0
    assert ka.range(s, R(key=b"e", revision=-1)).kvs[0].version == 5  # <= 0: newest
    raises(errors.FUTURE_REV, ka.range, s, R(key=b"e", revision=17))
    n.compact(8)
    raises(errors.COMPACTED, ka.range, s, R(key=b"e", revision=7))
    assert ka.range(s, R(key=b"a", range_end=b"f", revision=8)).count == 4


# -- Put / DeleteRange -----------------------------------------------------------------------------


def test_put_options(n: Node):
    p = lambda **kw: n.apply(lambda t: ka.put(t, pb.PutRequest(**kw), n.lessor))
    raises(errors.LEASE_NOT_FOUND, p, key=b"a", value=b"1", lease=6)
    resp = p(key=b"a", value=b"1", lease=5, prev_kv=True)
    assert resp.prev_kv.value == b"z" and resp.header.revision == 17
    resp = p(key=b"a", ignore_value=True, prev_kv=True)
    assert resp.prev_kv.lease == 5
    kv = n.kv.range(b"a").kvs[0]
    assert (kv.value, kv.lease) == (b"1", 0)  # ignore_value keeps the value, the lease is replaced
    p(key=b"a", value=b"2", lease=5)
    p(key=b"a", value=b"3", ignore_lease=True)
    kv = n.kv.range(b"a").kvs[0]
    assert (kv.value, kv.lease) == (b"3", 5)
    raises(errors.KEY_NOT_FOUND, p, key=b"new", ignore_lease=True)
    raises(errors.KEY_NOT_FOUND, p, key=b"new", ignore_value=True)
    assert not p(key=b"new", value=b"x", prev_kv=True).HasField("prev_kv")


def test_delete_range_response(n: Node):
    d = lambda **kw: n.apply(lambda t: ka.delete_range(t, pb.DeleteRangeRequest(**kw)))
    resp = d(key=b"b", range_end=b"d", prev_kv=True)
    assert (
        resp.deleted == 2 and [kv.key for kv in resp.prev_kvs] == [b"b", b"c"] and resp.header.revision == 17
    )
    resp = d(key=b"b", range_end=b"d")
    assert resp.deleted == 0 and resp.header.revision == 17
    assert d(key=b"a", range_end=b"\x00").deleted == 3


# -- Txn -------------------------------------------------------------------------------------------


def cmp(key, target, result, value, end=b""):
    field = {
        "VERSION": "version",
        "CREATE": "create_revision",
        "MOD": "mod_revision",
        "VALUE": "value",
        "LEASE": "lease",
    }
    return pb.Compare(
        key=key, range_end=end, target=getattr(pb.Compare, target), result=getattr(pb.Compare, result),
        **{field[target]: value},
    )  # fmt: skip


def run_txn(n: Node, req: pb.TxnRequest):
    ka.check_txn(req)
    if ka.txn_is_read_only(req):
        return ka.txn_read_only(n.kv, req)
    return n.apply(lambda t: ka.txn(t, req, n.lessor))


@pytest.mark.parametrize(
    "compare,expect",
    [
        (cmp(b"e", "VERSION", "EQUAL", 5), True),
        (cmp(b"e", "VERSION", "GREATER", 4), True),
        (cmp(b"e", "VERSION", "LESS", 5), False),
        (cmp(b"e", "MOD", "EQUAL", 16), True),
        (cmp(b"e", "CREATE", "NOT_EQUAL", 12), False),
        (cmp(b"a", "VALUE", "EQUAL", b"z"), True),
        (cmp(b"a", "VALUE", "GREATER", b"y"), True),
        (cmp(b"a", "LEASE", "EQUAL", 0), True),
        (cmp(b"missing", "VERSION", "EQUAL", 0), True),  # a missing key compares as zeros
        (cmp(b"missing", "MOD", "LESS", 1), True),
        (cmp(b"missing", "LEASE", "EQUAL", 0), True),
        (cmp(b"missing", "VALUE", "EQUAL", b""), False),  # ... except its value: always false
        (cmp(b"missing", "VALUE", "NOT_EQUAL", b"x"), False),
        (cmp(b"a", "VERSION", "GREATER", 0, b"f"), True),  # every key of a range must match
        (cmp(b"a", "VERSION", "GREATER", 1, b"f"), False),
        (cmp(b"b", "VERSION", "GREATER", 1, b"\x00"), True),
        (cmp(b"x", "VERSION", "EQUAL", 0, b"z"), True),  # an empty range compares as zeros
    ],
)
def test_compares(n: Node, compare, expect):
    resp = run_txn(n, pb.TxnRequest(compare=[compare], success=[op(R(key=b"a"))]))
    assert resp.succeeded is expect
    assert len(resp.responses) == (1 if expect else 0)


def test_nested_txn_one_revision_and_path_decided_first(n: Node):
    req = pb.TxnRequest(
        compare=[cmp(b"a", "VALUE", "EQUAL", b"z")],
        success=[
            put(b"n1"),
            op(R(key=b"n", range_end=b"o")),
            txn(
                compare=[cmp(b"n1", "VERSION", "EQUAL", 0)],  # evaluated before put(n1) ran
                success=[put(b"n2"), dele(b"a")],
                failure=[put(b"n3")],
            ),
            op(R(key=b"n", range_end=b"o", revision=16)),
        ],
    )
    resp = run_txn(n, req)
    assert resp.succeeded and resp.header.revision == 17
    r = resp.responses
    assert r[0].response_put.header.revision == 17
    assert keys(r[1].response_range) == [b"n1"] and r[1].response_range.header.revision == 17
    nested = r[2].response_txn
    assert nested.succeeded and nested.HasField("header") and nested.header.revision == 0
    assert nested.responses[1].response_delete_range.deleted == 1
    assert keys(r[3].response_range) == []
    assert n.kv.current_revision == 17
    assert [kv.key for kv in n.kv.range(b"n", b"o").kvs] == [b"n1", b"n2"]


def test_txn_errors_apply_nothing(n: Node):
    cases = [
        (pb.TxnRequest(success=[put(b"x"), put(b"a", b"", ignore_value=True, prev_kv=True), put(b"y", ignore_lease=True)]),
         errors.KEY_NOT_FOUND),
        (pb.TxnRequest(success=[put(b"x"), put(b"y", lease=9)]), errors.LEASE_NOT_FOUND),
        (pb.TxnRequest(success=[put(b"x"), op(R(key=b"a", revision=17))]), errors.FUTURE_REV),
        (pb.TxnRequest(success=[op(R(key=b"a", revision=-5))]), errors.COMPACTED),  # etcd: below FirstRev (-1)
        # put checks come first
        (pb.TxnRequest(success=[op(R(key=b"a", revision=17)), put(b"y", lease=9)]), errors.LEASE_NOT_FOUND),
    ]  # fmt: skip
    for req, err in cases:
        raises(err, run_txn, n, req)
        assert n.kv.current_revision == 16
    assert n.kv.range(b"x").count == 0
    assert run_txn(n, pb.TxnRequest(success=[op(R(key=b"a", revision=-1))])).succeeded  # -1 == FirstRev: fine
    n.compact(10)
    raises(errors.COMPACTED, run_txn, n, pb.TxnRequest(success=[op(R(key=b"a", revision=9))]))
    raises(errors.COMPACTED, run_txn, n, pb.TxnRequest(success=[op(R(key=b"a", revision=-1))]))


def test_txn_without_changes_keeps_the_revision(n: Node):
    resp = run_txn(n, pb.TxnRequest(success=[dele(b"nothing"), op(R(key=b"a"))]))
    assert resp.header.revision == 16 and n.kv.current_revision == 16
    assert resp.responses[0].response_delete_range.header.revision == 16
    resp = run_txn(n, pb.TxnRequest())
    assert resp.succeeded and resp.header.revision == 16


def test_read_only_txn_on_the_store_refuses_writes(n: Node):
    req = pb.TxnRequest(success=[put(b"k")])
    with pytest.raises(TypeError):
        ka.txn(n.kv, req, n.lessor)
