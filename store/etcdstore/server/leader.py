"""Leader-only operations: run here when this member leads, else forwarded to the leader over the
peer transport, after waiting for one to be elected (etcd's waitLeader and the forwarding loops of
its LeaseRenew, LeaseTimeToLive and PromoteMember)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from etcdstore import errors
from etcdstore.raft.records import Role
from etcdstore.server.raftnode import RaftNode

if TYPE_CHECKING:
    from etcdstore.transport.peer import PeerTransport

T = TypeVar("T")

# A forward that failed for one of these reached no leader: try again (etcd throttles its retries
# of a forwarded lease renewal by 50 ms).
_LEADER_GONE = (errors.LEADER_CHANGED, errors.NOT_LEADER, errors.NO_LEADER)
_FORWARD_RETRY_SECONDS = 0.05


class Leadership:
    def __init__(
        self,
        raft: RaftNode,
        member_id: int,
        transport: Callable[[], PeerTransport | None],
        *,
        poll_seconds: float,
        request_timeout: float,
    ) -> None:
        self._raft = raft  # leadership as the driver last saw it
        self._member_id = member_id
        self._transport = transport  # the peer transport exists once the server started
        self._poll = poll_seconds
        self._timeout = request_timeout

    @property
    def is_leader(self) -> bool:
        return self._raft.role == Role.LEADER

    @property
    def leader_id(self) -> int:
        return self._raft.leader_id

    async def wait(self, timeout: float | None = None) -> int:
        """The leader's ID, once there is one; NO_LEADER after `timeout` (the request timeout)."""
        deadline = time.monotonic() + (timeout or self._timeout)
        while self._raft.leader_id == 0:
            if time.monotonic() > deadline:
                raise errors.NO_LEADER()
            await asyncio.sleep(self._poll)
        return self._raft.leader_id

    async def run(
        self,
        local: Callable[[], Awaitable[T]],
        forward: Callable[[PeerTransport, int], Awaitable[T]],
    ) -> T:
        """`local()` while this member leads; otherwise `forward(transport, leader)`. As etcd's
        LeaseRenew, LeaseTimeToLive and PromoteMember do, a forward that fails because the leader
        went away or stopped leading is tried again (every 50 ms, against the leader then known)
        until the request timeout (then etcd's "request timed out"); the request's own errors are
        returned at once."""
        deadline = time.monotonic() + self._timeout
        while True:
            if self.is_leader:
                return await local()
            leader = await self.wait(max(deadline - time.monotonic(), 0.001))
            transport = self._transport()
            if transport is None or leader == self._member_id:
                await asyncio.sleep(self._poll)
                continue
            try:
                return await forward(transport, leader)
            except errors.EtcdError as e:
                if e not in _LEADER_GONE:
                    raise
                if time.monotonic() >= deadline:
                    raise errors.TIMEOUT() from None
            await asyncio.sleep(_FORWARD_RETRY_SECONDS)
