"""etcd 3.4's KV request semantics (Range, Put, DeleteRange, Txn, Compact) over the MVCC store.

Pure functions used by the server:

* the apply loop, in Raft order, with the write transaction it opened on its batch:
  `put(txn, req, lessor)`, `delete_range(txn, req)`, `txn(txn, req, lessor)`, `compact(...)`;
* the read path (serializable, or after ReadIndex): `range(store, req)`,
  `txn_read_only(store, req)`;
* the API layer, before proposing: `check_range`, `check_put`, `check_delete_range`,
  `check_txn` (etcd's v3rpc request validation).

Responses carry header.revision only; the server fills the rest of the header.
Errors are the `etcdstore.errors` constants etcd's clients know.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from etcdstore import errors
from etcdstore.mvcc.gosort import go_sort
from etcdstore.mvcc.kvstore import KVStore, ReadView, WriteTxn
from etcdstore.proto.etcdserverpb import rpc_pb2

RangeRequest = rpc_pb2.RangeRequest
_RangeResponse = rpc_pb2.RangeResponse
_PutResponse = rpc_pb2.PutResponse
_DeleteRangeResponse = rpc_pb2.DeleteRangeResponse
_TxnResponse = rpc_pb2.TxnResponse

_NONE = RangeRequest.NONE
_ASCEND = RangeRequest.ASCEND
_DESCEND = RangeRequest.DESCEND
_KEY = RangeRequest.KEY
_VERSION = RangeRequest.VERSION
_CREATE = RangeRequest.CREATE
_MOD = RangeRequest.MOD
_VALUE = RangeRequest.VALUE

_C_VERSION = rpc_pb2.Compare.VERSION
_C_CREATE = rpc_pb2.Compare.CREATE
_C_MOD = rpc_pb2.Compare.MOD
_C_VALUE = rpc_pb2.Compare.VALUE
_C_LEASE = rpc_pb2.Compare.LEASE
_EQUAL = rpc_pb2.Compare.EQUAL
_GREATER = rpc_pb2.Compare.GREATER
_LESS = rpc_pb2.Compare.LESS
_NOT_EQUAL = rpc_pb2.Compare.NOT_EQUAL

DEFAULT_MAX_TXN_OPS = 128


class LeaseLookup(Protocol):
    def exists(self, lease_id: int) -> bool: ...


# -- wire helpers ---------------------------------------------------------------------------

_VARINT1 = tuple(bytes((i,)) for i in builtins.range(128))


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINT1[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _range_response_bytes(kvs: list[bytes], more: bool, count: int) -> bytes:
    """A serialized RangeResponse (no header) from serialized KeyValues: one parse, no copies."""
    parts = []
    for v in kvs:
        parts.append(b"\x12")
        parts.append(_varint(len(v)))
        parts.append(v)
    if more:
        parts.append(b"\x18\x01")
    if count:
        parts.append(b"\x20")
        parts.append(_varint(count))
    return b"".join(parts)


# -- Range ----------------------------------------------------------------------------------

_SORT_KEYS: dict[int, Callable[[Any], Any]] = {
    _KEY: lambda kv: kv.key,
    _VERSION: lambda kv: kv.version,
    _CREATE: lambda kv: kv.create_revision,
    _MOD: lambda kv: kv.mod_revision,
    _VALUE: lambda kv: kv.value,
}


def range(
    view: ReadView, req: rpc_pb2.RangeRequest, out: rpc_pb2.RangeResponse | None = None
) -> rpc_pb2.RangeResponse:
    """etcd's applierV3backend.Range: every RangeRequest option; serializable is the caller's.

    Fills `out` (a fresh message if None) and returns it."""
    resp = _RangeResponse() if out is None else out
    order = req.sort_order
    target = req.sort_target
    filtered = (
        req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
    )
    limit = req.limit
    if not filtered and target == _KEY and (order == _NONE or order == _ASCEND) and not req.keys_only:
        # Fast path (Get, List, Count): already in key order; build the response from the
        # stored bytes. Fetch one more than the limit to know whether there is more.
        range_end = req.range_end
        if not range_end and not req.count_only:
            raw, rev = view.get_raw(req.key, req.revision)
            if raw is not None:
                resp.MergeFromString(b"".join((b"\x12", _varint(len(raw)), raw, b"\x20\x01")))
            resp.header.revision = rev
            return resp
        if req.count_only:
            rr = view.range(req.key, req.range_end, req.revision, 0, True)
            resp.count = rr.count
        else:
            rr = view.range_raw(req.key, req.range_end, req.revision, limit + 1 if limit > 0 else 0)
            kvs = rr.kvs
            more = False
            if 0 < limit < len(kvs):
                kvs = kvs[:limit]
                more = True
            resp.MergeFromString(_range_response_bytes(kvs, more, rr.count))
        resp.header.revision = rr.rev
        return resp

    fetch = limit
    if order != _NONE or filtered:
        fetch = 0  # fetch everything; filter, sort and truncate afterwards
    elif fetch > 0:
        fetch += 1
    rr = view.range(req.key, req.range_end, req.revision, fetch, req.count_only)
    kvs = rr.kvs
    if filtered:
        if req.max_mod_revision:
            kvs = [kv for kv in kvs if not kv.mod_revision > req.max_mod_revision]
        if req.min_mod_revision:
            kvs = [kv for kv in kvs if not kv.mod_revision < req.min_mod_revision]
        if req.max_create_revision:
            kvs = [kv for kv in kvs if not kv.create_revision > req.max_create_revision]
        if req.min_create_revision:
            kvs = [kv for kv in kvs if not kv.create_revision < req.min_create_revision]
    if target != _KEY and order == _NONE:
        # etcd: results come in key order, so a non-key target with no order sorts ascending.
        order = _ASCEND
    if order == _ASCEND or order == _DESCEND:
        sort_key = _SORT_KEYS.get(target)
        if sort_key is not None and len(kvs) > 1:
            kvs = go_sort(kvs, sort_key, order == _DESCEND)
    if limit > 0 and len(kvs) > limit:
        kvs = kvs[:limit]
        resp.more = True
    resp.header.revision = rr.rev
    resp.count = rr.count
    if req.keys_only:
        for kv in kvs:
            kv.ClearField("value")
    resp.kvs.extend(kvs)
    return resp


# -- Put / DeleteRange ----------------------------------------------------------------------


def put(txn: WriteTxn, req: rpc_pb2.PutRequest, lessor: LeaseLookup) -> rpc_pb2.PutResponse:
    """A Put request on its own (etcd's Put with no enclosing txn): the lease must exist."""
    if req.lease and not lessor.exists(req.lease):
        raise errors.LEASE_NOT_FOUND()
    return _put(txn, req, _PutResponse())


def _put(txn: WriteTxn, req: rpc_pb2.PutRequest, resp: rpc_pb2.PutResponse) -> rpc_pb2.PutResponse:
    value = req.value
    lease = req.lease
    if req.ignore_value or req.ignore_lease or req.prev_kv:
        raw = txn.range_raw(req.key).kvs
        if not raw:
            if req.ignore_value or req.ignore_lease:
                raise errors.KEY_NOT_FOUND()  # they keep the previous value/lease: there must be one
        else:
            prev = resp.prev_kv
            prev.ParseFromString(raw[0])
            if req.ignore_value:
                value = prev.value
            if req.ignore_lease:
                lease = prev.lease
            if not req.prev_kv:
                resp.ClearField("prev_kv")
    resp.header.revision = txn.put(req.key, value, lease)
    return resp


def delete_range(
    txn: WriteTxn, req: rpc_pb2.DeleteRangeRequest, out: rpc_pb2.DeleteRangeResponse | None = None
) -> rpc_pb2.DeleteRangeResponse:
    resp = _DeleteRangeResponse() if out is None else out
    if req.prev_kv:
        for raw in txn.range_raw(req.key, req.range_end).kvs:
            resp.prev_kvs.add().ParseFromString(raw)
    deleted, rev = txn.delete_range(req.key, req.range_end)
    resp.deleted = deleted
    resp.header.revision = rev
    return resp


def compact(store: KVStore, batch: Any, req: rpc_pb2.CompactionRequest) -> rpc_pb2.CompactionResponse:
    """Schedule a compaction (physical deletion follows via store.compact_step)."""
    store.compact(batch, req.revision)
    resp = rpc_pb2.CompactionResponse()
    resp.header.revision = store.current_revision
    return resp


# -- Txn ------------------------------------------------------------------------------------


class _Path:
    """A txn's outcome, decided before any of its operations runs (as etcd does): which
    branch each (nested) txn takes, the kinds of the chosen ops, and the outcomes of the
    nested txns among them."""

    __slots__ = ("kinds", "nested", "ops", "succeeded")

    def __init__(
        self, succeeded: bool, ops: Sequence[rpc_pb2.RequestOp], kinds: list[str | None], nested: list[_Path]
    ) -> None:
        self.succeeded = succeeded
        self.ops = ops
        self.kinds = kinds
        self.nested = nested


_NO_NESTED: list[_Path] = []


def _resolve(view: ReadView, req: rpc_pb2.TxnRequest) -> _Path:
    ok = True
    for c in req.compare:
        if not _compare(view, c):
            ok = False
            break
    ops = req.success if ok else req.failure
    kinds = [op.WhichOneof("request") for op in ops]
    nested = _NO_NESTED
    if "request_txn" in kinds:
        nested = [_resolve(view, op.request_txn) for op, k in zip(ops, kinds) if k == "request_txn"]
    return _Path(ok, ops, kinds, nested)


_META_FIELD = {_C_MOD: 0, _C_CREATE: 1, _C_VERSION: 2}


def _compare(view: ReadView, c: rpc_pb2.Compare) -> bool:
    target = c.target
    result = c.result
    if target == _C_VALUE or target == _C_LEASE:
        kvs = view.range(c.key, c.range_end).kvs
        if not kvs:
            if target == _C_VALUE:
                # A missing key has no value to compare (nil == empty in gRPC): always false.
                return False
            return _result(result, 0, c.lease)
        if target == _C_VALUE:
            want = c.value
            return all(_result(result, kv.value, want) for kv in kvs)
        want_lease = c.lease
        return all(_result(result, kv.lease, want_lease) for kv in kvs)
    field = _META_FIELD.get(target)
    if field is None:
        # Unknown target: etcd compares nothing (result 0), so only the result decides.
        return _result(result, 0, 0)
    want = c.mod_revision if field == 0 else c.create_revision if field == 1 else c.version
    range_end = c.range_end
    if not range_end:
        meta = view.key_meta(c.key)  # Kubernetes' compare: one key, from the index
        return _result(result, 0 if meta is None else meta[field], want)
    metas = view.range_meta(c.key, range_end)
    if not metas:
        return _result(result, 0, want)  # a missing key compares as all zeros
    for m in metas:
        if not _result(result, m[field], want):
            return False
    return True


def _result(result: int, have: Any, want: Any) -> bool:
    if result == _EQUAL:
        return have == want
    if result == _NOT_EQUAL:
        return have != want
    if result == _GREATER:
        return have > want
    if result == _LESS:
        return have < want
    return True


def _check(view: ReadView, path: _Path, lessor: LeaseLookup | None, writes: bool) -> errors.EtcdError | None:
    """etcd's checkRequests, before anything is applied: put checks (for a txn with writes)
    raise at once; the first range check failure is returned, since etcd runs all put checks
    before any range check."""
    range_err = None
    nested = iter(path.nested)
    for op, kind in zip(path.ops, path.kinds):
        if kind == "request_put":
            if writes:
                p = op.request_put
                if (p.ignore_value or p.ignore_lease) and view.key_meta(p.key) is None:
                    raise errors.KEY_NOT_FOUND()
                if p.lease and (lessor is None or not lessor.exists(p.lease)):
                    raise errors.LEASE_NOT_FOUND()
        elif kind == "request_range":
            if range_err is None:
                rev = op.request_range.revision
                if rev != 0:
                    if rev > view.rev:
                        range_err = errors.FUTURE_REV()
                    elif rev < view.first_rev:
                        range_err = errors.COMPACTED()
        elif kind == "request_txn":
            err = _check(view, next(nested), lessor, writes)
            if range_err is None:
                range_err = err
    return range_err


def _apply(view: ReadView, path: _Path, resp: rpc_pb2.TxnResponse) -> None:
    resp.succeeded = path.succeeded
    nested = iter(path.nested)
    responses = resp.responses
    for op, kind in zip(path.ops, path.kinds):
        out = responses.add()
        if kind == "request_put":
            # a txn's view is a WriteTxn here
            _put(view, op.request_put, out.response_put)  # type: ignore[arg-type]
        elif kind == "request_range":
            range(view, op.request_range, out.response_range)
        elif kind == "request_delete_range":
            # a txn's view is a WriteTxn here
            delete_range(view, op.request_delete_range, out.response_delete_range)  # type: ignore[arg-type]
        elif kind == "request_txn":
            sub = out.response_txn
            sub.header.SetInParent()  # etcd leaves nested txn headers empty
            _apply(view, next(nested), sub)


def txn(view: ReadView, req: rpc_pb2.TxnRequest, lessor: LeaseLookup | None) -> rpc_pb2.TxnResponse:
    """etcd's Txn: compares (all of them, nested ones too) decide the path against the state
    before the txn; then checks; then the ops run in order inside one revision.

    `view` is the write transaction for a txn with writes, or the store for a read-only one.
    """
    path = _resolve(view, req)
    writes = not txn_is_read_only(req)
    if writes and not isinstance(view, WriteTxn):
        raise TypeError("a txn with writes needs a write transaction")
    err = _check(view, path, lessor, writes)
    if err is not None:
        raise err
    resp = _TxnResponse()
    _apply(view, path, resp)
    resp.header.revision = view.rev
    return resp


def txn_read_only(view: ReadView, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
    """A txn whose branches only read, served from the local store (txn_is_read_only)."""
    return txn(view, req, None)


def txn_is_read_only(req: rpc_pb2.TxnRequest) -> bool:
    """etcd's isTxnReadonly: every op of both branches is a Range (nested txns count as writes)."""
    for op in req.success:
        if op.WhichOneof("request") != "request_range":
            return False
    for op in req.failure:
        if op.WhichOneof("request") != "request_range":
            return False
    return True


def txn_is_serializable(req: rpc_pb2.TxnRequest) -> bool:
    """etcd's isTxnSerializable: every op of both branches is a serializable Range."""
    for ops in (req.success, req.failure):
        for op in ops:
            if op.WhichOneof("request") != "request_range" or not op.request_range.serializable:
                return False
    return True


# -- API-layer checks (etcd's v3rpc/key.go), before a request is proposed -------------------


_SORT_TARGETS = frozenset(rpc_pb2.RangeRequest.SortTarget.values())


def check_range(req: rpc_pb2.RangeRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY()
    # etcd 3.4 treats an unknown sort order as "no sorting" (so do we), but panics on an unknown
    # sort target; for that we answer as etcd 3.5 does.
    if req.sort_target not in _SORT_TARGETS:
        raise errors.INVALID_SORT_OPTION()


def check_put(req: rpc_pb2.PutRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY()
    if req.ignore_value and req.value:
        raise errors.VALUE_PROVIDED()
    if req.ignore_lease and req.lease != 0:
        raise errors.LEASE_PROVIDED()


def check_delete_range(req: rpc_pb2.DeleteRangeRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY()


def check_txn(req: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """etcd's checkTxnRequest, then its put/delete overlap check on both branches."""
    _check_txn_request(req, max_txn_ops)
    _check_intervals(req.success)
    _check_intervals(req.failure)


def _check_txn_request(req: rpc_pb2.TxnRequest, max_txn_ops: int) -> None:
    # etcd counts the longest of compare/success/failure, and lets a nested txn use what is
    # left of the budget.
    opc = builtins.max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS()
    for c in req.compare:
        if not c.key:
            raise errors.EMPTY_KEY()
    left = max_txn_ops - opc
    for ops in (req.success, req.failure):
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_range":
                check_range(op.request_range)
            elif kind == "request_put":
                check_put(op.request_put)
            elif kind == "request_delete_range":
                check_delete_range(op.request_delete_range)
            elif kind == "request_txn":
                _check_txn_request(op.request_txn, left)
            else:
                raise errors.KEY_NOT_FOUND()  # an empty op


# A delete's interval: (key, range_end or None for one key). A range_end is taken literally
# here (as etcd's interval tree does), so "\0" makes an empty interval.
_Interval = tuple[bytes, bytes | None]


def _hits(dels: list[_Interval], key: bytes) -> bool:
    for begin, end in dels:
        if end is None:
            if key == begin:
                return True
        elif begin <= key < end:
            return True
    return False


def _check_intervals(ops: Sequence[rpc_pb2.RequestOp]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's checkIntervals: no key may be put twice, or put and deleted, in one txn path.

    Puts in the then/else branches of one nested txn may repeat each other (only one runs).
    Order matters as in etcd: a nested txn's puts are checked against this level's deletes
    and those of the nested txns before it.
    """
    dels: list[_Interval] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end or None))
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        t = op.request_txn
        puts_then, dels_then = _check_intervals(t.success)
        puts_else, dels_else = _check_intervals(t.failure)
        for k in puts_then:
            if k in puts or _hits(dels, k):
                raise errors.DUPLICATE_KEY()
            puts.add(k)
        for k in puts_else:
            if k in puts and k not in puts_then:
                raise errors.DUPLICATE_KEY()
            if _hits(dels, k):
                raise errors.DUPLICATE_KEY()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or _hits(dels, k):
            raise errors.DUPLICATE_KEY()
        puts.add(k)
    return puts, dels
