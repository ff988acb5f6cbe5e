"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from etcdstore.api.common import gate, unary
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.server import kv_apply
from etcdstore.server.requests import Kind

if TYPE_CHECKING:
    from etcdstore.server.server import EtcdServer


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.s = server

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        s = self.s
        gate(s, context, learner_ok=request.serializable)
        kv_apply.check_range(request)
        s.authorize_range(context, request)
        if not request.serializable:
            await s.read_index()
        resp = kv_apply.range(s.kv, request)
        _fill(s, resp.header)
        return resp

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        s = self.s
        gate(s, context)
        kv_apply.check_put(request)
        s.check_quota(_KV_OVERHEAD + len(request.key) + len(request.value))
        user, rev = s.authorize_put(context, request)
        return await s.propose(Kind.PUT, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        s = self.s
        gate(s, context)
        kv_apply.check_delete_range(request)
        user, rev = s.authorize_delete(context, request)
        return await s.propose(Kind.DELETE_RANGE, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        s = self.s
        gate(s, context)
        kv_apply.check_txn(request, s.cfg.max_txn_ops)
        user, rev = s.authorize_txn(context, request)
        if kv_apply.txn_is_read_only(request):
            # Read-only txns are served locally (after ReadIndex unless all reads are serializable).
            if not kv_apply.txn_is_serializable(request):
                await s.read_index()
            resp = kv_apply.txn_read_only(s.kv, request)
            _fill(s, resp.header)
            return resp
        cost = _txn_cost(request)
        if cost:
            s.check_quota(cost)
        return await s.propose(Kind.TXN, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        s = self.s
        gate(s, context)
        s.authorize_admin(context, "Compact")
        resp = await s.propose(Kind.COMPACTION, request.SerializeToString())
        if request.physical:
            await s.wait_compaction_done()
        return resp


# etcd's estimate of a key's metadata cost when checking the backend quota.
_KV_OVERHEAD = 256


def _txn_cost(r: rpc_pb2.TxnRequest) -> int:
    """The quota cost etcd charges a txn: the puts of its larger branch (top level only)."""

    def branch(ops: object) -> int:
        return sum(_KV_OVERHEAD + len(op.request_put.key) + len(op.request_put.value)
                   for op in ops if op.HasField("request_put"))  # type: ignore[attr-defined]

    return max(branch(r.success), branch(r.failure))


def _fill(s: EtcdServer, header: rpc_pb2.ResponseHeader) -> None:
    header.cluster_id = s.cluster_id
    header.member_id = s.member_id
    header.raft_term = s.term
    if not header.revision:
        header.revision = s.kv.current_revision
