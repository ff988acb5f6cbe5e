"""Test support for the MVCC tests: a store driven like the server's apply loop, and a real
etcd 3.4 member to compare with (see conftest.py for the fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from etcdstore import errors
from etcdstore.mvcc import KVStore
from etcdstore.mvcc.watchable import WatchableStore
from etcdstore.proto.etcdserverpb import rpc_pb2 as pb
from etcdstore.proto.etcdserverpb import rpc_pb2_grpc
from etcdstore.storage.backend import Backend
from etcdstore.txn import kv_apply
from testlib import Member


class FakeLessor:
    """Just the lease bookkeeping the store and kv_apply call (the real lessor is not ours)."""

    def __init__(self, leases: tuple[int, ...] = ()) -> None:
        self.keys: dict[int, set[bytes]] = {lid: set() for lid in leases}

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.keys

    def attach(self, lease_id: int, key: bytes) -> None:
        self.keys.setdefault(lease_id, set()).add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        self.keys.get(lease_id, set()).discard(key)


class Node:
    """One member's MVCC state, driven like the server's apply loop drives it."""

    def __init__(self, path: Path, lessor: FakeLessor | None = None, watchable: bool = False) -> None:
        self.path = path
        self.lessor = lessor or FakeLessor()
        self.backend = Backend(path)
        self.kv = KVStore(self.backend, lessor=self.lessor)
        self.watchable = WatchableStore(self.kv) if watchable else None
        self.index = self.kv.consistent_index

    def reopen(self) -> None:
        self.backend.close()
        self.backend = Backend(self.path)
        self.kv = KVStore(self.backend, lessor=self.lessor)

    def close(self) -> None:
        if self.watchable is not None:
            self.watchable.close()
        self.backend.close()

    # -- the apply loop ------------------------------------------------------------------------

    def batch(self, *fns: Callable[[Any], Any]) -> list[Any]:
        """Apply several requests in ONE backend batch (each fn gets its own write txn)."""
        b = self.backend.batch()
        results = []
        events = []
        self.txn_events: list[list[Any]] = []  # the events of each txn of the last batch
        for fn in fns:
            txn = self.kv.write(b)
            try:
                results.append(fn(txn))
            except errors.EtcdError as e:
                results.append(e)
            finally:
                self.txn_events.append(txn.end())
                events.extend(self.txn_events[-1])
        self.index += 1
        self.kv.set_consistent_index(b, self.index, 1)
        self.backend.write(b, sync=False)
        self.kv.batch_written()
        if self.watchable is not None and events:
            self.watchable.notify(events, self.kv.current_revision)
        return results

    def apply(self, fn: Callable[[Any], Any]) -> Any:
        r = self.batch(fn)[0]
        if isinstance(r, errors.EtcdError):
            raise r
        return r

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return self.apply(lambda t: t.put(key, value, lease))

    def delete(self, key: bytes, end: bytes | None = None) -> tuple[int, int]:
        return self.apply(lambda t: t.delete_range(key, end))

    def compact(self, rev: int, *, physical: bool = True) -> None:
        b = self.backend.batch()
        self.kv.compact(b, rev)
        self.backend.write(b, sync=False)
        self.kv.batch_written()
        if physical:
            self.kv.compact_all(limit=7)

    # -- etcd requests (API-layer checks, then apply or read) ------------------------------------

    def request(self, req: Any) -> Any:
        if isinstance(req, pb.RangeRequest):
            kv_apply.check_range(req)
            return kv_apply.range(self.kv, req)
        if isinstance(req, pb.PutRequest):
            kv_apply.check_put(req)
            return self.apply(lambda t: kv_apply.put(t, req, self.lessor))
        if isinstance(req, pb.DeleteRangeRequest):
            kv_apply.check_delete_range(req)
            return self.apply(lambda t: kv_apply.delete_range(t, req))
        if isinstance(req, pb.TxnRequest):
            kv_apply.check_txn(req)
            if kv_apply.txn_is_read_only(req):
                return kv_apply.txn_read_only(self.kv, req)
            return self.apply(lambda t: kv_apply.txn(t, req, self.lessor))
        if isinstance(req, pb.CompactionRequest):
            b = self.backend.batch()
            resp = kv_apply.compact(self.kv, b, req)
            self.backend.write(b, sync=False)
            self.kv.batch_written()
            self.kv.compact_all()
            return resp
        raise TypeError(req)


# -- a real etcd 3.4 ----------------------------------------------------------------------------


class Etcd:
    """A single-member etcd with fresh data and a KV stub; `request` mirrors Node.request."""

    def __init__(self, data: Path) -> None:
        self.member = Member.single(data, binary="etcd", name="m")
        self.client_port = self.member.client_port
        self.channel = grpc.insecure_channel(self.member.endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)

    def request(self, req: Any) -> Any:
        call = {
            pb.RangeRequest: self.kv.Range,
            pb.PutRequest: self.kv.Put,
            pb.DeleteRangeRequest: self.kv.DeleteRange,
            pb.TxnRequest: self.kv.Txn,
            pb.CompactionRequest: self.kv.Compact,
        }[type(req)]
        try:
            return call(req, timeout=10)
        except grpc.RpcError as e:
            return errors.EtcdError(e.code(), e.details())

    def close(self) -> None:
        self.channel.close()
        self.member.kill()


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, value: int = 0) -> int:
    """CRC-32C (Castagnoli), zlib.crc32's calling convention; slow, for tests only."""
    c = value ^ 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
