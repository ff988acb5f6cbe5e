"""Lease operations that only the leader performs (renewal, time-to-live, expiry) and the
forwarding of them from followers."""

from __future__ import annotations

import asyncio
import time

from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.txn import requests as rq

# Leases whose revoke the leader proposes per expiry check (etcd: leaseRevokeRate / 2).
_REVOKE_PER_CHECK = 500


class LeaseOpsMixin:
    """Part of EtcdServer (see server.py); methods use its state."""

    async def wait_leader(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout or self.request_timeout)
        while self.leader_id == 0:
            if time.monotonic() > deadline:
                raise errors.NO_LEADER()
            await asyncio.sleep(self.cfg.tick_seconds)
        return self.leader_id

    async def lease_renew(self, lease_id: int) -> int:
        while True:
            if self.is_leader:
                # A fresh leader first applies everything committed, so it knows every lease.
                await self._applied.wait(self.raft_storage.hard_state.commit)
                return self.lessor.renew(lease_id)
            leader = await self.wait_leader()
            if self.transport is None or leader == self.member_id:
                await asyncio.sleep(self.cfg.tick_seconds)
                continue
            return await self.transport.forward_lease_renew(leader, lease_id)

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int, list[bytes]]:
        while True:
            if self.is_leader:
                await self._applied.wait(self.raft_storage.hard_state.commit)
                return self.lessor.time_to_live(lease_id)
            leader = await self.wait_leader()
            if self.transport is None or leader == self.member_id:
                await asyncio.sleep(self.cfg.tick_seconds)
                continue
            return await self.transport.forward_lease_ttl(leader, lease_id)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.is_leader:
                continue
            for lease_id in self.lessor.expired(_REVOKE_PER_CHECK):
                payload = rpc_pb2.LeaseRevokeRequest(ID=lease_id).SerializeToString()
                self._spawn_proposal(rq.Kind.LEASE_REVOKE, payload)
