"""Applying committed entries to the state machine.

Every member applies every committed entry, in log order, with the same result: the MVCC
store, leases, alarms, auth and membership change only here. All entries handed over in one
batch are written in ONE backend batch together with the consistent index (the server's apply
loop, server/server.py), so a crash either keeps the whole batch or none of it, and replay after
a restart skips what was applied.

An entry's outcome (a response message or an EtcdError) is returned to the server, which
hands it to the waiting client if this member proposed it.

The applier's dependencies are explicit: the replicated stores (read on every use, as a snapshot
install replaces them), the apply-time auth checks (read on every use, as the auth layer installs
its own after the server is built) and what to do once a compaction is applied. The server's
`Stores` and its `auth` object satisfy the protocols below.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.txn import kv_apply
from etcdstore.txn.requests import Kind, Request

if TYPE_CHECKING:
    from etcdstore.lease.lessor import Lessor
    from etcdstore.membership import Membership
    from etcdstore.mvcc.kvstore import KVStore, WriteTxn
    from etcdstore.storage.backend import Batch

ALARM_NOSPACE = rpc_pb2.NOSPACE


class AlarmStore(Protocol):
    """The replicated alarms, as the applier changes them (server/alarms.py's Alarms)."""

    def active(self, alarm: int) -> bool: ...
    def activate(self, batch: Batch, member_id: int, alarm: int) -> bool: ...
    def deactivate(self, batch: Batch, member_id: int, alarm: int) -> bool: ...
    def list(self, alarm: int = 0) -> list[tuple[int, int]]: ...


class StateStores(Protocol):
    """The stores entries change. Read on every use: a snapshot install replaces them."""

    @property
    def kv(self) -> KVStore: ...
    @property
    def lessor(self) -> Lessor: ...
    @property
    def alarms(self) -> AlarmStore: ...
    @property
    def membership(self) -> Membership: ...


class ApplyAuth(Protocol):
    """The apply-time half of the auth checks (server/authguard.py's AuthGuard has them)."""

    def check_at_apply(self, req: Request, op: str, key: bytes, range_end: bytes) -> None: ...
    def check_txn_at_apply(self, req: Request, txn: rpc_pb2.TxnRequest) -> None: ...
    def check_lease_revoke_at_apply(self, req: Request, keys: list[bytes]) -> None: ...


def txn_has_writes(r: rpc_pb2.TxnRequest) -> bool:
    """Whether either branch of a txn (or a nested one) puts; etcd refuses those under NOSPACE."""
    for ops in (r.success, r.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_put":
                return True
            if which == "request_txn" and txn_has_writes(op.request_txn):
                return True
    return False


class Applier:
    """Turns one decoded request into state changes inside the current batch."""

    def __init__(
        self,
        stores: StateStores,
        auth: Callable[[], ApplyAuth],
        compaction_scheduled: Callable[[], None],
    ) -> None:
        self._stores = stores
        self._auth = auth  # the auth layer installs its checks after the server is built
        self._compaction_scheduled = compaction_scheduled  # compaction runs on in the background
        self._handlers: dict[int, Callable[[Batch, Request], Any]] = {
            Kind.PUT: self._put,
            Kind.DELETE_RANGE: self._delete_range,
            Kind.TXN: self._txn,
            Kind.COMPACTION: self._compaction,
            Kind.LEASE_GRANT: self._lease_grant,
            Kind.LEASE_REVOKE: self._lease_revoke,
            Kind.LEASE_CHECKPOINT: self._lease_checkpoint,
            Kind.ALARM: self._alarm,
            Kind.MEMBER_PUBLISH: self._member_publish,
        }
        # Auth requests are handled by the auth store when it is present.
        self.events: list[Any] = []
        self.index = 0  # Raft index of the entry being applied (auth's simple tokens use it)

    def register(self, kind: int, handler: Callable[[Batch, Request], Any]) -> None:
        self._handlers[kind] = handler

    def apply(self, batch: Batch, req: Request) -> Any:
        handler = self._handlers.get(req.kind)
        if handler is None:
            # An entry kind this version does not know: refuse it the same way on every member.
            return errors.EtcdError(errors.NOT_CAPABLE.code, errors.NOT_CAPABLE.message)
        try:
            return handler(batch, req)
        except errors.EtcdError as e:
            return e

    # -- KV -------------------------------------------------------------------------------------

    def _nospace(self) -> bool:
        return self._stores.alarms.active(ALARM_NOSPACE)

    def _write(self, batch: Batch, fn: Callable[[WriteTxn], Any]) -> Any:
        txn = self._stores.kv.write(batch)
        try:
            resp = fn(txn)
        finally:
            self.events.extend(txn.end())
        return resp

    def _put(self, batch: Batch, req: Request) -> Any:
        if self._nospace():
            raise errors.NO_SPACE()
        r = rpc_pb2.PutRequest.FromString(req.payload)
        self._auth().check_at_apply(req, "put", r.key, b"")
        return self._write(batch, lambda txn: kv_apply.put(txn, r, self._stores.lessor))

    def _delete_range(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.DeleteRangeRequest.FromString(req.payload)
        self._auth().check_at_apply(req, "delete", r.key, r.range_end)
        return self._write(batch, lambda txn: kv_apply.delete_range(txn, r))

    def _txn(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.TxnRequest.FromString(req.payload)
        if self._nospace() and txn_has_writes(r):
            raise errors.NO_SPACE()
        self._auth().check_txn_at_apply(req, r)
        return self._write(batch, lambda txn: kv_apply.txn(txn, r, self._stores.lessor))

    def _compaction(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.CompactionRequest.FromString(req.payload)
        self._stores.kv.compact(batch, r.revision)
        self._compaction_scheduled()
        return rpc_pb2.CompactionResponse()

    # -- leases ---------------------------------------------------------------------------------

    def _lease_grant(self, batch: Batch, req: Request) -> Any:
        if self._nospace():
            raise errors.NO_SPACE()
        r = rpc_pb2.LeaseGrantRequest.FromString(req.payload)
        lease = self._stores.lessor.grant(batch, r.ID, r.TTL)
        return rpc_pb2.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)

    def _lease_revoke(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.LeaseRevokeRequest.FromString(req.payload)
        lessor = self._stores.lessor
        lease = lessor.lookup(r.ID)
        if lease is not None:
            self._auth().check_lease_revoke_at_apply(req, sorted(lease.keys))
        keys = lessor.revoke(batch, r.ID)
        if keys:
            # All of the lease's keys go in one revision.
            txn = self._stores.kv.write(batch)
            try:
                for key in keys:
                    txn.delete_range(key, b"")
            finally:
                self.events.extend(txn.end())
        return rpc_pb2.LeaseRevokeResponse()

    def _lease_checkpoint(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.LeaseCheckpointRequest.FromString(req.payload)
        lessor = self._stores.lessor
        for cp in r.checkpoints:
            lessor.checkpoint(batch, cp.ID, cp.remaining_TTL)
        return rpc_pb2.LeaseCheckpointResponse()

    # -- alarms and membership --------------------------------------------------------------------

    def _alarm(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AlarmRequest.FromString(req.payload)
        resp = rpc_pb2.AlarmResponse()
        alarms = self._stores.alarms
        if r.action == rpc_pb2.AlarmRequest.ACTIVATE:
            if alarms.activate(batch, r.memberID, r.alarm):
                resp.alarms.add(memberID=r.memberID, alarm=r.alarm)
        elif r.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            if alarms.deactivate(batch, r.memberID, r.alarm):
                resp.alarms.add(memberID=r.memberID, alarm=r.alarm)
        else:
            for mid, alarm in alarms.list(r.alarm):
                resp.alarms.add(memberID=mid, alarm=alarm)
        return resp

    def _member_publish(self, batch: Batch, req: Request) -> Any:
        doc = json.loads(req.payload)
        self._stores.membership.publish(batch, int(doc["id"]), doc.get("name", ""), doc.get("clientURLs", []))
        return None
