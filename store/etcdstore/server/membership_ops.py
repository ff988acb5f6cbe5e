"""Membership changes: the checks before proposing them (etcd's strict reconfiguration rules),
applying committed conf changes, learner promotion and leadership transfer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from etcdstore import errors
from etcdstore.logs import get_logger
from etcdstore.membership import Member, parse_conf_context
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.raft import RawNode
from etcdstore.raft import codec as raft_codec
from etcdstore.raft.records import ConfChange, ConfChangeType
from etcdstore.storage import backend as bk

log = get_logger("etcdstore.server")


class MembershipOpsMixin:
    """Part of EtcdServer (see server.py); methods use its state."""

    def _apply_conf_change(self, node: RawNode, batch: bk.Batch, e: Any) -> tuple[int, Any] | None:
        cc = raft_codec.decode_conf_change(e.data)
        req_id, member = parse_conf_context(cc.context)
        try:
            self._validate_conf_change(cc, member)
        except errors.EtcdError as err:
            # Refused on every member alike; Raft still needs to hear the change is done.
            node.apply_conf_change(ConfChange(cc.type, 0, b""))
            return (req_id, err) if req_id else None
        conf_state = node.apply_conf_change(cc)
        self.raft_storage.set_conf_state(batch, conf_state)
        if cc.type == ConfChangeType.ADD_NODE:
            existing = self.membership.get(cc.node_id)
            if existing is not None and existing.is_learner:
                self.membership.promote(batch, cc.node_id)
            else:
                self.membership.add(batch, member)
        elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
            member.is_learner = True
            self.membership.add(batch, member)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.membership.remove(batch, cc.node_id)
            if cc.node_id == self.member_id:
                # Like etcd, stop shortly after applying our own removal, so the commit of the
                # change still reaches the others (a removed leader hands over first).
                delay = max(1.0, self.cfg.election_timeout_ms / 1000.0)
                asyncio.get_running_loop().call_later(delay, self.on_removed)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            self.membership.update_peer_urls(batch, cc.node_id, member.peer_urls)
        if self.transport is not None:
            self.transport.update_members(self.membership)
        members = [member_pb(m) for m in self.membership.sorted_members()]
        return (req_id, members) if req_id else None

    def _validate_conf_change(self, cc: ConfChange, member: Member) -> None:
        ms = self.membership
        if cc.type == ConfChangeType.ADD_NODE:
            existing = ms.get(cc.node_id)
            if existing is not None and existing.is_learner:
                return  # promotion
            ms.check_add(member, max_learners=1 << 30)
        elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
            ms.check_add(member, max_learners=1 << 30)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            ms.check_remove(cc.node_id)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            ms.check_update(cc.node_id, member.peer_urls)

    def _started_voters(self, exclude: int = 0) -> tuple[int, int]:
        members = [m for m in self.membership.members.values() if not m.is_learner and m.id != exclude]
        return len(members), sum(1 for m in members if m.name)

    def check_can_add_voter(self) -> None:
        """etcd's strict reconfig check: adding a voter must not leave the started members short of quorum."""
        if not self.cfg.strict_reconfig_check:
            return
        n, started = self._started_voters()
        n += 1
        if started == 1 and n == 2:
            return
        if started < n // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED()

    def check_can_remove(self, mid: int) -> None:
        if not self.cfg.strict_reconfig_check:
            return
        m = self.membership.get(mid)
        if m is None or m.is_learner:
            return
        n, started = self._started_voters(exclude=mid)
        if started < n // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED()

    async def promote_member(self, mid: int) -> list:
        self.membership.check_promote(mid)
        while True:
            if self.is_leader:
                if not self._learner_ready(mid):
                    raise errors.LEARNER_NOT_READY()
                m = self.membership.get(mid)
                assert m is not None
                return await self.propose_conf_change(
                    ConfChangeType.ADD_NODE,
                    Member(
                        id=mid,
                        name=m.name,
                        peer_urls=m.peer_urls,
                        client_urls=m.client_urls,
                        is_learner=False,
                    ),
                )
            leader = await self.wait_leader()
            if self.transport is None or leader == self.member_id:
                await asyncio.sleep(self.cfg.tick_seconds)
                continue
            return await self.transport.forward_promote(leader, mid)

    def _learner_ready(self, mid: int) -> bool:
        """etcd: a learner may be promoted once its log matches >= 90% of the leader's."""
        progress = self.node.status().progress
        pr = progress.get(mid)
        if pr is None:
            return False
        leader_match = progress[self.member_id].match if self.member_id in progress else self.applied_index
        return pr.match >= leader_match * 0.9

    async def move_leader(self, target: int) -> None:
        if not self.is_leader:
            raise errors.NOT_LEADER()
        m = self.membership.get(target)
        if m is None or m.is_learner:
            raise errors.BAD_LEADER_TRANSFEREE()
        if target == self.member_id:
            return
        self.transfer_leadership(target)
        deadline = time.monotonic() + self.request_timeout
        while self.leader_id != target:
            if time.monotonic() > deadline:
                raise errors.TIMEOUT()
            await asyncio.sleep(self.cfg.tick_seconds)


def member_pb(m: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls, isLearner=m.is_learner
    )
