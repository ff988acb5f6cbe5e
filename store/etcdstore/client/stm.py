"""Software transactional memory over etcd (clientv3/concurrency's STM).

    async def transfer(s: STM) -> None:
        a = int(await s.get("acct/a") or b"0")
        b = int(await s.get("acct/b") or b"0")
        s.put("acct/a", str(a - 10))
        s.put("acct/b", str(b + 10))

    resp = await stm(client, transfer)                      # TxnResponse of the commit
    await stm(client, transfer, isolation=Isolation.READ_COMMITTED)

`apply` reads with `await s.get(key)` and buffers writes with s.put / s.delete; stm() commits
them in one txn guarded by the isolation level's conditions, and on conflict runs `apply` again
(from scratch, on fresh reads) until a commit succeeds. An exception from `apply` aborts
(nothing is written) and is raised.

Isolation levels (clientv3's names):
    SERIALIZABLE_SNAPSHOT  (default) all reads at the revision of the first read; commit fails if
                           a key read changed since, or a key written changed after that revision.
    SERIALIZABLE           all reads at the first read's revision; commit fails if a key read changed.
    REPEATABLE_READS       each key read once (then cached); commit fails if a key read changed.
    READ_COMMITTED         reads cached but never checked: the commit always applies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING

from etcdstore.client.requests import Bytes, Compare, Op, to_bytes
from etcdstore.proto.etcdserverpb import rpc_pb2

if TYPE_CHECKING:
    from etcdstore.client.client import Client


class Isolation(Enum):
    SERIALIZABLE_SNAPSHOT = "SerializableSnapshot"
    SERIALIZABLE = "Serializable"
    REPEATABLE_READS = "RepeatableReads"
    READ_COMMITTED = "ReadCommitted"


class STM:
    """The view `apply` gets: reads go to etcd (once per key per attempt), writes are buffered."""

    def __init__(self, client: Client, isolation: Isolation) -> None:
        self._client = client
        self._isolation = isolation
        self._rset: dict[bytes, rpc_pb2.RangeResponse] = {}
        self._wset: dict[bytes, tuple[bytes, rpc_pb2.RequestOp]] = {}
        self._prefetch: dict[bytes, rpc_pb2.RangeResponse] = {}
        self._read_revision = 0  # serializable levels: every read at this revision (0: not yet)

    @property
    def _serializable(self) -> bool:
        return self._isolation in (Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE)

    def _reset(self) -> None:
        self._rset, self._wset = {}, {}
        self._read_revision = 0

    async def _fetch(self, key: bytes) -> rpc_pb2.RangeResponse:
        resp = self._rset.get(key)
        if resp is not None:
            return resp
        if key in self._prefetch:
            resp = self._prefetch.pop(key)
        elif self._serializable:
            resp = await self._client.get(
                key, revision=self._read_revision, serializable=self._read_revision != 0
            )
        else:
            resp = await self._client.get(key, serializable=True)
        if self._serializable and not self._read_revision:
            self._read_revision = resp.header.revision  # the first read fixes the snapshot
        self._rset[key] = resp
        return resp

    async def get(self, *keys: Bytes) -> bytes:
        """The value of the first of `keys` that exists (written in this transaction or stored),
        b"" if none does."""
        for key in map(to_bytes, keys):
            if key in self._wset:
                return self._wset[key][0]
            resp = await self._fetch(key)
            if resp.kvs:
                return resp.kvs[0].value
        return b""

    async def rev(self, key: Bytes) -> int:
        """The mod revision of `key` as read (0 if it does not exist)."""
        resp = await self._fetch(to_bytes(key))
        return resp.kvs[0].mod_revision if resp.kvs else 0

    def put(self, key: Bytes, value: Bytes, *, lease: int = 0) -> None:
        k, v = to_bytes(key), to_bytes(value)
        self._wset[k] = (v, Op.put(k, v, lease=lease))

    def delete(self, key: Bytes) -> None:
        k = to_bytes(key)
        self._wset[k] = (b"", Op.delete(k))

    def _conditions(self) -> list[rpc_pb2.Compare]:
        """Every key read is unchanged since read (mod revision as read, 0 if it did not exist);
        SerializableSnapshot adds: no key written was changed after the first read's revision."""
        if self._isolation is Isolation.READ_COMMITTED:
            return []
        conds = [
            Compare.mod_revision(k) == (r.kvs[0].mod_revision if r.kvs else 0) for k, r in self._rset.items()
        ]
        if self._isolation is Isolation.SERIALIZABLE_SNAPSHOT and self._wset and self._rset:
            first = min(r.header.revision for r in self._rset.values())
            conds += [Compare.mod_revision(k) < first + 1 for k in self._wset]
        return conds

    async def _commit(self) -> rpc_pb2.TxnResponse | None:
        keys = list(self._rset) if self._serializable else []
        resp = await self._client.txn(
            self._conditions(), [op for _, op in self._wset.values()], [Op.get(k) for k in keys]
        )
        if resp.succeeded:
            return resp
        # Conflict: the failure branch read the keys again; the next attempt starts from those.
        self._prefetch = _ranges(keys, resp)
        return None


def _ranges(keys: list[bytes], resp: rpc_pb2.TxnResponse) -> dict[bytes, rpc_pb2.RangeResponse]:
    """The txn's range responses by key (each with the txn's revision in its header)."""
    out = {}
    for k, r in zip(keys, resp.responses):
        rr = r.response_range
        if not rr.header.revision:
            rr.header.CopyFrom(resp.header)
        out[k] = rr
    return out


async def stm(
    client: Client,
    apply: Callable[[STM], Awaitable[object]],
    *,
    isolation: Isolation = Isolation.SERIALIZABLE_SNAPSHOT,
    prefetch: Iterable[Bytes] = (),
    max_attempts: int | None = None,
) -> rpc_pb2.TxnResponse:
    """Run `apply` until its transaction commits (clientv3's NewSTM); returns the commit's
    TxnResponse. `prefetch`: keys read in one request before the first attempt (WithPrefetch).
    `max_attempts`: give up with RuntimeError after so many conflicts (clientv3: no limit)."""
    s = STM(client, isolation)
    pre = [to_bytes(k) for k in prefetch]
    if pre:
        resp = await client.txn([], [Op.get(k, serializable=not s._serializable) for k in pre])
        s._prefetch = _ranges(pre, resp)
    attempts = 0
    while True:
        attempts += 1
        s._reset()
        await apply(s)
        committed = await s._commit()
        if committed is not None:
            return committed
        if max_attempts is not None and attempts >= max_attempts:
            raise RuntimeError(f"stm: no commit after {attempts} attempts (conflicts)")
