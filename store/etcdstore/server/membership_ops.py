"""Membership changes: the checks before proposing them (etcd's strict reconfiguration rules),
applying committed conf changes, learner promotion and leadership transfer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from etcdstore import errors
from etcdstore.logs import get_logger
from etcdstore.membership import Member, parse_conf_context
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.raft import RawNode
from etcdstore.raft import codec as raft_codec
from etcdstore.raft.records import ConfChange, ConfChangeType
from etcdstore.server.leader import Leadership
from etcdstore.server.raftnode import RaftNode
from etcdstore.server.stores import Stores
from etcdstore.server.waiters import IndexWaiters
from etcdstore.storage import backend as bk
from etcdstore.storage.raftlog import RaftLogStorage

if TYPE_CHECKING:
    from etcdstore.transport.peer import PeerTransport

log = get_logger("etcdstore.server")


class MembershipChanges:
    def __init__(
        self,
        member_id: int,
        stores: Stores,
        raft: RaftNode,
        raft_storage: RaftLogStorage,
        leadership: Leadership,
        applied: IndexWaiters,
        *,
        propose_conf_change: Callable[[int, Member], Awaitable[Any]],
        on_removed: Callable[[], None],
        transport: Callable[[], PeerTransport | None],
        strict_reconfig_check: bool,
        election_timeout: float,
        poll_seconds: float,
        request_timeout: float,
    ) -> None:
        self._member_id = member_id
        self._stores = stores  # the member list is read on each use: a snapshot install replaces it
        self._raft = raft
        self._storage = raft_storage
        self._leadership = leadership
        self._applied = applied
        self._propose_conf_change = propose_conf_change
        self._on_removed = on_removed  # stop serving: this member was removed
        self._transport = transport  # told the new member list (it exists once the server started)
        self._strict = strict_reconfig_check
        self._election_timeout = election_timeout
        self._poll = poll_seconds
        self._timeout = request_timeout

    # -- applying committed conf changes (every member) ----------------------------------------------

    def apply_conf_change(self, node: RawNode, batch: bk.Batch, e: Any) -> tuple[int, Any] | None:
        """(request ID, outcome) of a committed conf change entry, if a request of this member waits."""
        cc = raft_codec.decode_conf_change(e.data)
        req_id, member = parse_conf_context(cc.context)
        try:
            self._validate(cc, member)
        except errors.EtcdError as err:
            # Refused on every member alike; Raft still needs to hear the change is done.
            node.apply_conf_change(ConfChange(cc.type, 0, b""))
            return (req_id, err) if req_id else None
        conf_state = node.apply_conf_change(cc)
        self._storage.set_conf_state(batch, conf_state)
        membership = self._stores.membership
        if cc.type == ConfChangeType.ADD_NODE:
            existing = membership.get(cc.node_id)
            if existing is not None and existing.is_learner:
                membership.promote(batch, cc.node_id)
            else:
                membership.add(batch, member)
        elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
            member.is_learner = True
            membership.add(batch, member)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            membership.remove(batch, cc.node_id)
            if cc.node_id == self._member_id:
                # Like etcd, stop shortly after applying our own removal, so the commit of the
                # change still reaches the others (a removed leader hands over first).
                delay = max(1.0, self._election_timeout)
                asyncio.get_running_loop().call_later(delay, self._on_removed)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            membership.update_peer_urls(batch, cc.node_id, member.peer_urls)
        transport = self._transport()
        if transport is not None:
            transport.update_members(membership)
        members = [member_pb(m) for m in membership.sorted_members()]
        return (req_id, members) if req_id else None

    def _validate(self, cc: ConfChange, member: Member) -> None:
        ms = self._stores.membership
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

    # -- checks before proposing (etcd's strict reconfiguration) ---------------------------------------

    def _started_voters(self, exclude: int = 0) -> tuple[int, int]:
        members = [
            m for m in self._stores.membership.members.values() if not m.is_learner and m.id != exclude
        ]
        return len(members), sum(1 for m in members if m.name)

    def check_can_add_voter(self) -> None:
        """etcd's strict reconfig check: adding a voter must not leave the started members short of quorum."""
        if not self._strict:
            return
        n, started = self._started_voters()
        n += 1
        if started == 1 and n == 2:
            return
        if started < n // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED()

    def check_can_remove(self, mid: int) -> None:
        if not self._strict:
            return
        m = self._stores.membership.get(mid)
        if m is None or m.is_learner:
            return
        n, started = self._started_voters(exclude=mid)
        if started < n // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED()

    # -- learner promotion and leadership transfer -----------------------------------------------------

    async def promote(self, mid: int) -> list:
        self._stores.membership.check_promote(mid)

        async def here() -> list:
            if not self._learner_ready(mid):
                raise errors.LEARNER_NOT_READY()
            m = self._stores.membership.get(mid)
            assert m is not None
            result: list = await self._propose_conf_change(
                ConfChangeType.ADD_NODE,
                Member(
                    id=mid,
                    name=m.name,
                    peer_urls=m.peer_urls,
                    client_urls=m.client_urls,
                    is_learner=False,
                ),
            )
            return result

        return await self._leadership.run(here, lambda t, leader: t.forward_promote(leader, mid))

    def _learner_ready(self, mid: int) -> bool:
        """etcd: a learner may be promoted once its log matches >= 90% of the leader's."""
        progress = self._raft.node.status().progress
        pr = progress.get(mid)
        if pr is None:
            return False
        me = self._member_id
        leader_match = progress[me].match if me in progress else self._applied.applied
        return pr.match >= leader_match * 0.9

    async def move_leader(self, target: int) -> None:
        if not self._leadership.is_leader:
            raise errors.NOT_LEADER()
        m = self._stores.membership.get(target)
        if m is None or m.is_learner:
            raise errors.BAD_LEADER_TRANSFEREE()
        if target == self._member_id:
            return
        self._raft.transfer_leadership(target)
        deadline = time.monotonic() + self._timeout
        while self._leadership.leader_id != target:
            if time.monotonic() > deadline:
                raise errors.TIMEOUT()
            await asyncio.sleep(self._poll)


def member_pb(m: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls, isLearner=m.is_learner
    )
