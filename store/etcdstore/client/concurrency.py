"""Distributed lock and leader election (etcd's v3lock and v3election services)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from etcdstore.client.methods import method
from etcdstore.client.requests import Bytes, to_bytes
from etcdstore.client.transport import Transport
from etcdstore.proto.v3electionpb import v3election_pb2
from etcdstore.proto.v3lockpb import v3lock_pb2

_LOCK = method("Lock.Lock")
_UNLOCK = method("Lock.Unlock")
_CAMPAIGN = method("Election.Campaign")
_PROCLAIM = method("Election.Proclaim")
_LEADER = method("Election.Leader")
_OBSERVE = method("Election.Observe")
_RESIGN = method("Election.Resign")

LeaderKey = v3election_pb2.LeaderKey


class ConcurrencyMixin(Transport):
    async def lock(self, name: Bytes, lease: int, *, timeout: float | None = None) -> v3lock_pb2.LockResponse:
        """Block until lock `name` is held by a key bound to `lease`; returns it (`.key`, and
        `.header.revision`, usable as a fencing token). No deadline unless `timeout` is given."""
        req = v3lock_pb2.LockRequest(name=to_bytes(name), lease=lease)
        return await self._call(_LOCK, req, idempotent=False, timeout=timeout)

    async def unlock(self, key: Bytes) -> v3lock_pb2.UnlockResponse:
        """Release the lock held by `key` (LockResponse.key)."""
        return await self._call(_UNLOCK, v3lock_pb2.UnlockRequest(key=to_bytes(key)), idempotent=False)

    async def campaign(
        self, name: Bytes, lease: int, value: Bytes, *, timeout: float | None = None
    ) -> v3election_pb2.CampaignResponse:
        """Block until elected leader of `name` (no deadline unless `timeout`); `.leader` is the
        LeaderKey to pass to proclaim() and resign()."""
        req = v3election_pb2.CampaignRequest(name=to_bytes(name), lease=lease, value=to_bytes(value))
        return await self._call(_CAMPAIGN, req, idempotent=False, timeout=timeout)

    async def proclaim(
        self, leader: v3election_pb2.LeaderKey, value: Bytes
    ) -> v3election_pb2.ProclaimResponse:
        """Publish a new value as the current leader."""
        req = v3election_pb2.ProclaimRequest(leader=leader, value=to_bytes(value))
        return await self._call(_PROCLAIM, req, idempotent=False)

    async def leader(self, name: Bytes) -> v3election_pb2.LeaderResponse:
        """The current leader's key-value of election `name` (etcd: "election: no leader" if none)."""
        return await self._call(_LEADER, v3election_pb2.LeaderRequest(name=to_bytes(name)), idempotent=True)

    async def observe(self, name: Bytes) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        """Every leader value of election `name`, the current one first (stream until closed)."""
        async for resp in self._server_stream(_OBSERVE, v3election_pb2.LeaderRequest(name=to_bytes(name))):
            yield resp

    async def resign(self, leader: v3election_pb2.LeaderKey) -> v3election_pb2.ResignResponse:
        """Give up leadership held by `leader` (CampaignResponse.leader)."""
        return await self._call(_RESIGN, v3election_pb2.ResignRequest(leader=leader), idempotent=False)
