"""etcdserverpb.Lease: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from etcdstore import errors
from etcdstore.api.common import abort_with, gate, unary
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.txn.requests import Kind

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

_LEASE_OVERHEAD = 64  # etcd's quota cost of a lease grant
_MAX_ID = (1 << 63) - 1


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        s = self.s
        gate(s, context)
        user, rev = s.auth.credentials(context)  # an invalid token is refused, as for every Raft request
        s.quota.check(_LEASE_OVERHEAD)
        if request.ID == 0:
            # The server picks the ID before proposing, so every member grants the same one.
            request.ID = s.new_request_id() & _MAX_ID
        return await s.propose(Kind.LEASE_GRANT, request.SerializeToString(), user=user, auth_revision=rev)

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_lease_revoke(context, request.ID)
        user, rev = s.auth.credentials(context)
        return await s.propose(Kind.LEASE_REVOKE, request.SerializeToString(), user=user, auth_revision=rev)

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        s = self.s
        try:
            gate(s, context)
            async for req in request_iterator:
                try:
                    ttl = await s.lease_renew(req.ID)
                except errors.EtcdError as e:
                    if e != errors.LEASE_NOT_FOUND:
                        raise
                    ttl = 0  # etcd answers an unknown lease with TTL 0, not an error
                yield rpc_pb2.LeaseKeepAliveResponse(header=s.header(), ID=req.ID, TTL=ttl)
        except errors.EtcdError as e:
            await abort_with(context, e)

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        s = self.s
        gate(s, context)
        try:
            remaining, granted, keys = await s.lease_time_to_live(request.ID)
        except errors.EtcdError as e:
            if e != errors.LEASE_NOT_FOUND:
                raise
            # etcd reports an unknown lease as TTL -1 rather than an error.
            return rpc_pb2.LeaseTimeToLiveResponse(header=s.header(), ID=request.ID, TTL=-1)
        resp = rpc_pb2.LeaseTimeToLiveResponse(
            header=s.header(), ID=request.ID, TTL=remaining, grantedTTL=granted
        )
        if request.keys:
            resp.keys.extend(keys)
        return resp

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        s = self.s
        gate(s, context)
        resp = rpc_pb2.LeaseLeasesResponse(header=s.header())
        for lease_id in sorted(s.lessor.lease_ids()):
            resp.leases.add(ID=lease_id)
        return resp
