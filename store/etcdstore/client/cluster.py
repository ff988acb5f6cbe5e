"""Cluster membership methods."""

from __future__ import annotations

from collections.abc import Iterable

from etcdstore.client.methods import method
from etcdstore.client.transport import Transport
from etcdstore.proto.etcdserverpb import rpc_pb2

_ADD = method("Cluster.MemberAdd")
_REMOVE = method("Cluster.MemberRemove")
_UPDATE = method("Cluster.MemberUpdate")
_LIST = method("Cluster.MemberList")
_PROMOTE = method("Cluster.MemberPromote")


class ClusterMixin(Transport):
    async def member_add(self, peer_urls: Iterable[str], learner: bool = False) -> rpc_pb2.MemberAddResponse:
        req = rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)
        return await self._call(_ADD, req, idempotent=False)

    async def member_remove(self, id: int) -> rpc_pb2.MemberRemoveResponse:
        return await self._call(_REMOVE, rpc_pb2.MemberRemoveRequest(ID=id), idempotent=False)

    async def member_update(self, id: int, peer_urls: Iterable[str]) -> rpc_pb2.MemberUpdateResponse:
        req = rpc_pb2.MemberUpdateRequest(ID=id, peerURLs=list(peer_urls))
        return await self._call(_UPDATE, req, idempotent=False)

    async def member_list(self, linearizable: bool = False) -> rpc_pb2.MemberListResponse:
        """Members as this endpoint knows them (linearizable=True asks the leader first; etcd 3.5+)."""
        req = rpc_pb2.MemberListRequest(linearizable=linearizable)
        return await self._call(_LIST, req, idempotent=True)

    async def member_promote(self, id: int) -> rpc_pb2.MemberPromoteResponse:
        """Make a learner a voting member (etcd refuses until it has caught up with the leader)."""
        return await self._call(_PROMOTE, rpc_pb2.MemberPromoteRequest(ID=id), idempotent=False)
