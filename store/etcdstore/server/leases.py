"""Lease operations that only the leader performs (renewal, time-to-live, expiry) and the
forwarding of them from followers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.server.leader import Leadership
from etcdstore.server.stores import Stores
from etcdstore.server.waiters import IndexWaiters
from etcdstore.storage.raftlog import RaftLogStorage
from etcdstore.txn import requests as rq

# Leases whose revoke the leader proposes per expiry check (etcd: leaseRevokeRate / 2).
_REVOKE_PER_CHECK = 500


class LeaseOps:
    def __init__(
        self,
        stores: Stores,
        raft_storage: RaftLogStorage,
        applied: IndexWaiters,
        leadership: Leadership,
        propose_in_background: Callable[[int, bytes], None],
    ) -> None:
        self._stores = stores  # the lessor is read on each use: a snapshot install replaces it
        self._storage = raft_storage
        self._applied = applied
        self._leadership = leadership
        self._propose = propose_in_background  # a system proposal nobody waits for

    async def renew(self, lease_id: int) -> int:
        async def here() -> int:
            # A fresh leader first applies everything committed, so it knows every lease.
            await self._applied.wait(self._storage.hard_state.commit)
            return self._stores.lessor.renew(lease_id)

        return await self._leadership.run(here, lambda t, leader: t.forward_lease_renew(leader, lease_id))

    async def time_to_live(self, lease_id: int) -> tuple[int, int, list[bytes]]:
        async def here() -> tuple[int, int, list[bytes]]:
            await self._applied.wait(self._storage.hard_state.commit)
            return self._stores.lessor.time_to_live(lease_id)

        return await self._leadership.run(here, lambda t, leader: t.forward_lease_ttl(leader, lease_id))

    async def expire(self) -> None:
        """The leader's expiry loop: revoke expired leases through Raft, a bounded number per check."""
        while True:
            await asyncio.sleep(0.5)
            if not self._leadership.is_leader:
                continue
            for lease_id in self._stores.lessor.expired(_REVOKE_PER_CHECK):
                payload = rpc_pb2.LeaseRevokeRequest(ID=lease_id).SerializeToString()
                self._propose(rq.Kind.LEASE_REVOKE, payload)
