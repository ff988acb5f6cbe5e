"""KV through the proxy: the range cache (cache.py) and the namespace (namespace.py)
around calls to the cluster (etcd 3.4's grpcproxy/kv.go)."""

from __future__ import annotations

from typing import Any

from etcdstore import errors
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proxy.cache import RangeCache
from etcdstore.proxy.namespace import Namespace
from etcdstore.proxy.rpc import fail, forward, unary_handler
from etcdstore.proxy.upstream import Upstream

_KV = "/etcdserverpb.KV/"


def _read_only(txn: rpc_pb2.TxnRequest) -> bool:
    for op in list(txn.success) + list(txn.failure):
        which = op.WhichOneof("request")
        if which == "request_txn":
            if not _read_only(op.request_txn):
                return False
        elif which != "request_range":
            return False
    return True


class KVProxy:
    def __init__(self, up: Upstream, namespace: Namespace | None, cache: RangeCache | None = None) -> None:
        self.up = up
        self.ns = namespace
        self.cache = cache if cache is not None else RangeCache()

    def handlers(self) -> dict[str, Any]:
        return {
            "Range": unary_handler(self.Range, rpc_pb2.RangeRequest, rpc_pb2.RangeResponse),
            "Put": unary_handler(self.Put, rpc_pb2.PutRequest, rpc_pb2.PutResponse),
            "DeleteRange": unary_handler(
                self.DeleteRange, rpc_pb2.DeleteRangeRequest, rpc_pb2.DeleteRangeResponse
            ),
            "Txn": unary_handler(self.Txn, rpc_pb2.TxnRequest, rpc_pb2.TxnResponse),
            "Compact": unary_handler(self.Compact, rpc_pb2.CompactionRequest, rpc_pb2.CompactionResponse),
        }

    async def _empty_key(self, key: bytes, context: Any) -> None:
        if self.ns is not None and not key:  # clientv3/namespace refuses an empty key itself
            await fail(context, errors.EMPTY_KEY())

    async def Range(self, req: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        if req.serializable:
            try:
                hit = self.cache.get(req)
            except EtcdError as e:
                self.cache.hits += 1
                await fail(context, e)
            if hit is not None:
                self.cache.hits += 1
                return hit
        self.cache.misses += 1
        await self._empty_key(req.key, context)
        up_req = req
        if self.ns is not None:
            up_req = rpc_pb2.RangeRequest()
            up_req.CopyFrom(req)
            self.ns.range(up_req)
        data = await forward(self.up, _KV + "Range", up_req.SerializeToString(), context, idempotent=True)
        resp = rpc_pb2.RangeResponse.FromString(data)
        if self.ns is not None:
            self.ns.range_response(resp)
        self.cache.add(req, resp)
        return resp

    async def Put(self, req: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:
        self.cache.invalidate(req.key)
        await self._empty_key(req.key, context)
        if self.ns is not None:
            self.ns.put(req)
        resp = rpc_pb2.PutResponse.FromString(
            await forward(self.up, _KV + "Put", req.SerializeToString(), context)
        )
        if self.ns is not None:
            self.ns.put_response(resp)
        return resp

    async def DeleteRange(self, req: rpc_pb2.DeleteRangeRequest, context: Any) -> rpc_pb2.DeleteRangeResponse:
        self.cache.invalidate(req.key, req.range_end)
        await self._empty_key(req.key, context)
        if self.ns is not None:
            self.ns.delete(req)
        data = await forward(self.up, _KV + "DeleteRange", req.SerializeToString(), context)
        resp = rpc_pb2.DeleteRangeResponse.FromString(data)
        if self.ns is not None:
            self.ns.delete_response(resp)
        return resp

    async def Txn(self, req: rpc_pb2.TxnRequest, context: Any) -> rpc_pb2.TxnResponse:
        up_req = req
        if self.ns is not None:
            up_req = rpc_pb2.TxnRequest()
            up_req.CopyFrom(req)
            self.ns.txn(up_req)
        data = await forward(
            self.up, _KV + "Txn", up_req.SerializeToString(), context, idempotent=_read_only(req)
        )
        resp = rpc_pb2.TxnResponse.FromString(data)
        if self.ns is not None:
            self.ns.txn_response(resp)
        for c in req.compare:
            self.cache.invalidate(c.key, c.range_end)
        self._txn_to_cache(req.success if resp.succeeded else req.failure, resp.responses)
        return resp

    def _txn_to_cache(self, ops: Any, responses: Any) -> None:
        for op, r in zip(ops, responses):
            which = r.WhichOneof("response")
            if which == "response_put":
                self.cache.invalidate(op.request_put.key)
            elif which == "response_delete_range":
                self.cache.invalidate(op.request_delete_range.key, op.request_delete_range.range_end)
            elif which == "response_range":
                self.cache.add(op.request_range, r.response_range)
            elif which == "response_txn":
                t = op.request_txn
                for c in t.compare:
                    self.cache.invalidate(c.key, c.range_end)
                self._txn_to_cache(
                    t.success if r.response_txn.succeeded else t.failure, r.response_txn.responses
                )

    async def Compact(self, req: rpc_pb2.CompactionRequest, context: Any) -> rpc_pb2.CompactionResponse:
        data = await forward(self.up, _KV + "Compact", req.SerializeToString(), context)
        self.cache.compact(req.revision)
        return rpc_pb2.CompactionResponse.FromString(data)
