"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from etcdstore.api.common import gate, unary
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.txn import kv_apply
from etcdstore.txn.requests import Kind

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server

    @unary
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        s = self.s
        gate(s, context, learner_ok=request.serializable)
        kv_apply.check_range(request)
        s.auth.authorize_range(context, request)
        if not request.serializable:
            await s.read_index()
        resp = s.local_range(request)
        s.fill_header(resp.header)
        return resp

    @unary
    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        s = self.s
        gate(s, context)
        kv_apply.check_put(request)
        s.quota.check(_KV_OVERHEAD + len(request.key) + len(request.value))
        user, rev = s.auth.authorize_put(context, request)
        return await s.propose(Kind.PUT, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        s = self.s
        gate(s, context)
        kv_apply.check_delete_range(request)
        user, rev = s.auth.authorize_delete(context, request)
        return await s.propose(Kind.DELETE_RANGE, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        s = self.s
        gate(s, context)
        kv_apply.check_txn(request, s.cfg.max_txn_ops)
        user, rev = s.auth.authorize_txn(context, request)
        if kv_apply.txn_is_read_only(request):
            # Read-only txns are served locally (after ReadIndex unless all reads are serializable).
            if not kv_apply.txn_is_serializable(request):
                await s.read_index()
            resp = s.local_txn(request)
            s.fill_header(resp.header)
            return resp
        cost = _txn_cost(request)
        if cost:
            s.quota.check(cost)
        return await s.propose(Kind.TXN, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "Compact")
        resp = await s.propose(Kind.COMPACTION, request.SerializeToString())
        if request.physical:
            await s.wait_compaction_done()
        return resp


# etcd's estimate of a key's metadata cost when checking the backend quota.
_KV_OVERHEAD = 256


def _txn_cost(r: rpc_pb2.TxnRequest) -> int:
    """The quota cost etcd charges a txn: the puts of its larger branch (top level only)."""

    def branch(ops: object) -> int:
        return sum(
            _KV_OVERHEAD + len(op.request_put.key) + len(op.request_put.value)
            for op in ops
            if op.HasField("request_put")
        )

    return max(branch(r.success), branch(r.failure))
