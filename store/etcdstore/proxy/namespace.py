"""`--namespace`: every key the client names is prefixed on the way up and stripped on the way
back (etcd's clientv3/namespace, which its proxy uses)."""

from __future__ import annotations

from collections.abc import Iterable

from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.mvccpb import kv_pb2


def _next_prefix(prefix: bytes) -> bytes:
    # etcd's prefixInterval: the prefix + 1 keeping its length (0xff bytes wrap to 0x00).
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        end[i] = (end[i] + 1) & 0xFF
        if end[i] != 0:
            return bytes(end)
    return b"\0"


class Namespace:
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.n = len(prefix)

    def interval(self, key: bytes, range_end: bytes) -> tuple[bytes, bytes]:
        pk = self.prefix + key
        if range_end == b"\0":
            return pk, _next_prefix(self.prefix)
        if range_end:
            return pk, self.prefix + range_end
        return pk, b""

    # requests (modified in place)
    def range(self, r: rpc_pb2.RangeRequest) -> None:
        r.key, r.range_end = self.interval(r.key, r.range_end)

    def put(self, r: rpc_pb2.PutRequest) -> None:
        r.key = self.prefix + r.key

    def delete(self, r: rpc_pb2.DeleteRangeRequest) -> None:
        r.key, r.range_end = self.interval(r.key, r.range_end)

    def txn(self, r: rpc_pb2.TxnRequest) -> None:
        for c in r.compare:
            key, end = self.interval(c.key, c.range_end)
            c.key = key
            if c.range_end:
                c.range_end = end
        for op in list(r.success) + list(r.failure):
            which = op.WhichOneof("request")
            if which == "request_range":
                self.range(op.request_range)
            elif which == "request_put":
                self.put(op.request_put)
            elif which == "request_delete_range":
                self.delete(op.request_delete_range)
            elif which == "request_txn":
                self.txn(op.request_txn)

    # answers (modified in place)
    def strip_kvs(self, kvs: Iterable[kv_pb2.KeyValue]) -> None:
        for kv in kvs:
            kv.key = kv.key[self.n :]

    def range_response(self, r: rpc_pb2.RangeResponse) -> None:
        self.strip_kvs(r.kvs)

    def put_response(self, r: rpc_pb2.PutResponse) -> None:
        if r.HasField("prev_kv"):
            r.prev_kv.key = r.prev_kv.key[self.n :]

    def delete_response(self, r: rpc_pb2.DeleteRangeResponse) -> None:
        self.strip_kvs(r.prev_kvs)

    def txn_response(self, r: rpc_pb2.TxnResponse) -> None:
        for op in r.responses:
            which = op.WhichOneof("response")
            if which == "response_range":
                self.range_response(op.response_range)
            elif which == "response_put":
                self.put_response(op.response_put)
            elif which == "response_delete_range":
                self.delete_response(op.response_delete_range)
            elif which == "response_txn":
                self.txn_response(op.response_txn)

    def lease_keys(self, keys: Iterable[bytes]) -> list[bytes]:
        return [k[self.n :] for k in keys if k.startswith(self.prefix)]
