"""Request builders shared by the client methods and the txn builders `Compare` and `Op`."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from etcdstore.proto.etcdserverpb import rpc_pb2

Bytes = bytes | str  # keys and values: str is encoded as UTF-8


class SortOrder(IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class WatchFilter(IntEnum):
    NOPUT = 0
    NODELETE = 1


class AlarmType(IntEnum):
    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class PermissionType(IntEnum):
    READ = 0
    WRITE = 1
    READWRITE = 2


def to_bytes(value: Bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff (or empty): every key from `prefix` on


def range_end_for(key: bytes, range_end: Bytes | None, prefix: bool, from_key: bool) -> bytes:
    """The wire range_end from the three ways of asking for a range (at most one may be used)."""
    if (range_end is not None) + prefix + from_key > 1:
        raise ValueError("use only one of range_end, prefix, from_key")
    if prefix:
        return prefix_end(key)
    if from_key:
        return b"\0"
    return b"" if range_end is None else to_bytes(range_end)


def range_request(
    key: Bytes,
    *,
    range_end: Bytes | None = None,
    prefix: bool = False,
    from_key: bool = False,
    limit: int = 0,
    revision: int = 0,
    sort_order: SortOrder = SortOrder.NONE,
    sort_target: SortTarget = SortTarget.KEY,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> rpc_pb2.RangeRequest:
    k = to_bytes(key)
    return rpc_pb2.RangeRequest(
        key=k,
        range_end=range_end_for(k, range_end, prefix, from_key),
        limit=limit,
        revision=revision,
        sort_order=int(sort_order),
        sort_target=int(sort_target),
        serializable=serializable,
        keys_only=keys_only,
        count_only=count_only,
        min_mod_revision=min_mod_revision,
        max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision,
        max_create_revision=max_create_revision,
    )


def put_request(
    key: Bytes,
    value: Bytes,
    *,
    lease: int = 0,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(
        key=to_bytes(key),
        value=to_bytes(value),
        lease=lease,
        prev_kv=prev_kv,
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )


def delete_request(
    key: Bytes,
    *,
    range_end: Bytes | None = None,
    prefix: bool = False,
    from_key: bool = False,
    prev_kv: bool = False,
) -> rpc_pb2.DeleteRangeRequest:
    k = to_bytes(key)
    return rpc_pb2.DeleteRangeRequest(
        key=k, range_end=range_end_for(k, range_end, prefix, from_key), prev_kv=prev_kv
    )


def txn_request(
    compare: Iterable[rpc_pb2.Compare] = (),
    success: Iterable[rpc_pb2.RequestOp] = (),
    failure: Iterable[rpc_pb2.RequestOp] = (),
) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def txn_is_read_only(txn: rpc_pb2.TxnRequest) -> bool:
    """No put or delete in any branch, nested txns included (then it is as safe to resend as a Range)."""
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            if not txn_is_read_only(op.request_txn):
                return False
        elif kind != "request_range":
            return False
    return True


_C = rpc_pb2.Compare


class _CompareTarget:
    """`Compare.<target>(key)` compared with ==, !=, < or > gives the protobuf Compare."""

    __slots__ = ("_field", "_key", "_range_end", "_target")

    def __init__(self, target: int, field: str, key: Bytes, range_end: bytes) -> None:
        self._target = target
        self._field = field
        self._key = to_bytes(key)
        self._range_end = range_end

    def _make(self, result: int, operand: int | Bytes) -> rpc_pb2.Compare:
        if self._field == "value":
            operand = to_bytes(operand)  # type: ignore[arg-type]  # an int only for non-value fields
        elif not isinstance(operand, int):
            raise TypeError(f"Compare.{self._field} needs an int operand")
        c = _C(result=result, target=self._target, key=self._key, range_end=self._range_end)
        setattr(c, self._field, operand)
        return c

    # == builds a Compare, not a bool
    def __eq__(self, other: object) -> rpc_pb2.Compare:  # type: ignore[override]
        return self._make(_C.EQUAL, other)  # type: ignore[arg-type]  # == builds a Compare, any operand

    # != builds a Compare, not a bool
    def __ne__(self, other: object) -> rpc_pb2.Compare:  # type: ignore[override]
        return self._make(_C.NOT_EQUAL, other)  # type: ignore[arg-type]  # != builds a Compare, any operand

    def __lt__(self, other: int | Bytes) -> rpc_pb2.Compare:
        return self._make(_C.LESS, other)

    def __gt__(self, other: int | Bytes) -> rpc_pb2.Compare:
        return self._make(_C.GREATER, other)

    __hash__ = None  # type: ignore[assignment]  # unhashable: == builds a Compare


class Compare:
    """Txn conditions: `Compare.mod_revision("k") == 5`, `Compare.value("k") != "x"`,
    `Compare.version("dir/", prefix=True) > 0` (every key in the range must satisfy it)."""

    @staticmethod
    def _target(target: int, field: str, key: Bytes, range_end: Bytes | None, prefix: bool) -> _CompareTarget:
        k = to_bytes(key)
        return _CompareTarget(target, field, k, range_end_for(k, range_end, prefix, False))

    @staticmethod
    def version(key: Bytes, *, range_end: Bytes | None = None, prefix: bool = False) -> _CompareTarget:
        return Compare._target(_C.VERSION, "version", key, range_end, prefix)

    @staticmethod
    def create_revision(
        key: Bytes, *, range_end: Bytes | None = None, prefix: bool = False
    ) -> _CompareTarget:
        return Compare._target(_C.CREATE, "create_revision", key, range_end, prefix)

    @staticmethod
    def mod_revision(key: Bytes, *, range_end: Bytes | None = None, prefix: bool = False) -> _CompareTarget:
        return Compare._target(_C.MOD, "mod_revision", key, range_end, prefix)

    @staticmethod
    def value(key: Bytes, *, range_end: Bytes | None = None, prefix: bool = False) -> _CompareTarget:
        return Compare._target(_C.VALUE, "value", key, range_end, prefix)

    @staticmethod
    def lease(key: Bytes, *, range_end: Bytes | None = None, prefix: bool = False) -> _CompareTarget:
        return Compare._target(_C.LEASE, "lease", key, range_end, prefix)


class Op:
    """Txn operations; the keyword options are those of Client.get/put/delete/txn."""

    @staticmethod
    def get(key: Bytes, **options: object) -> rpc_pb2.RequestOp:
        # keyword options forwarded
        return rpc_pb2.RequestOp(request_range=range_request(key, **options))  # type: ignore[arg-type]

    @staticmethod
    def put(key: Bytes, value: Bytes, **options: object) -> rpc_pb2.RequestOp:
        # keyword options forwarded
        return rpc_pb2.RequestOp(request_put=put_request(key, value, **options))  # type: ignore[arg-type]

    @staticmethod
    def delete(key: Bytes, **options: object) -> rpc_pb2.RequestOp:
        # keyword options forwarded
        return rpc_pb2.RequestOp(request_delete_range=delete_request(key, **options))  # type: ignore[arg-type]

    @staticmethod
    def txn(
        compare: Iterable[rpc_pb2.Compare] = (),
        success: Iterable[rpc_pb2.RequestOp] = (),
        failure: Iterable[rpc_pb2.RequestOp] = (),
    ) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(request_txn=txn_request(compare, success, failure))
