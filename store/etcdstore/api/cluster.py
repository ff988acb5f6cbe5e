"""etcdserverpb.Cluster: MemberAdd, MemberRemove, MemberUpdate, MemberList, MemberPromote."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from etcdstore import errors
from etcdstore.api.common import gate, unary
from etcdstore.config import parse_url
from etcdstore.membership import Member, member_id
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.raft.records import ConfChangeType

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI


def _check_urls(urls: list[str]) -> list[str]:
    if not urls:
        raise errors.MEMBER_BAD_URLS()
    try:
        return [str(parse_url(u)) for u in urls]
    except ValueError:
        raise errors.MEMBER_BAD_URLS() from None


def _header(s: ServerAPI) -> rpc_pb2.ResponseHeader:
    # etcd's cluster server fills no revision in its headers.
    return s.header(revision=0)


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server

    def _members(self) -> list[rpc_pb2.Member]:
        return [
            rpc_pb2.Member(
                ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls, isLearner=m.is_learner
            )
            for m in self.s.membership.sorted_members()
        ]

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        s = self.s
        gate(s, context, learner_ok=not request.linearizable)
        if request.linearizable:
            await s.read_index()
        return rpc_pb2.MemberListResponse(header=_header(s), members=self._members())

    @unary
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "MemberAdd")
        urls = _check_urls(list(request.peerURLs))
        mid = member_id(urls, s.cfg.initial_cluster_token, int(time.time()))
        member = Member(id=mid, peer_urls=sorted(urls), is_learner=request.isLearner)
        s.membership.check_add(member)
        if not request.isLearner:
            s.check_can_add_voter()
        cc_type = ConfChangeType.ADD_LEARNER_NODE if request.isLearner else ConfChangeType.ADD_NODE
        members = await s.propose_conf_change(cc_type, member)
        added = rpc_pb2.Member(ID=mid, peerURLs=member.peer_urls, isLearner=request.isLearner)
        return rpc_pb2.MemberAddResponse(header=_header(s), member=added, members=members)

    @unary
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "MemberRemove")
        s.membership.check_remove(request.ID)
        s.check_can_remove(request.ID)
        members = await s.propose_conf_change(ConfChangeType.REMOVE_NODE, Member(id=request.ID))
        return rpc_pb2.MemberRemoveResponse(header=_header(s), members=members)

    @unary
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "MemberUpdate")
        urls = _check_urls(list(request.peerURLs))
        s.membership.check_update(request.ID, urls)
        current = s.membership.get(request.ID)
        member = Member(
            id=request.ID,
            name=current.name if current else "",
            peer_urls=sorted(urls),
            client_urls=current.client_urls if current else [],
            is_learner=current.is_learner if current else False,
        )
        members = await s.propose_conf_change(ConfChangeType.UPDATE_NODE, member)
        return rpc_pb2.MemberUpdateResponse(header=_header(s), members=members)

    @unary
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "MemberPromote")
        members = await s.promote_member(request.ID)
        return rpc_pb2.MemberPromoteResponse(header=_header(s), members=members)
