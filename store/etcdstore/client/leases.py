"""Lease methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from etcdstore.client.lease import KEEPALIVE, LeaseKeeper, keepalive_exchange
from etcdstore.client.methods import method
from etcdstore.client.rpc_errors import to_etcd_error
from etcdstore.client.transport import Transport
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

_GRANT = method("Lease.LeaseGrant")
_REVOKE = method("Lease.LeaseRevoke")
_TTL = method("Lease.LeaseTimeToLive")
_LEASES = method("Lease.LeaseLeases")


class LeaseMixin(Transport):
    async def lease_grant(self, ttl: int, id: int = 0) -> rpc_pb2.LeaseGrantResponse:
        """A new lease of `ttl` seconds (`id` 0: the server picks the ID)."""
        return await self._call(_GRANT, rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=id), idempotent=False)

    async def lease_revoke(self, id: int) -> rpc_pb2.LeaseRevokeResponse:
        """End the lease now, deleting its keys."""
        return await self._call(_REVOKE, rpc_pb2.LeaseRevokeRequest(ID=id), idempotent=False)

    async def lease_time_to_live(self, id: int, keys: bool = False) -> rpc_pb2.LeaseTimeToLiveResponse:
        """Remaining TTL (-1 when the lease does not exist) and, with keys=True, its keys."""
        return await self._call(_TTL, rpc_pb2.LeaseTimeToLiveRequest(ID=id, keys=keys), idempotent=True)

    async def lease_leases(self) -> rpc_pb2.LeaseLeasesResponse:
        return await self._call(_LEASES, rpc_pb2.LeaseLeasesRequest(), idempotent=True)

    async def lease_keepalive_once(self, id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        """One refresh on a short-lived stream; raises LEASE_NOT_FOUND when the lease is gone."""
        await self._ensure_token()
        call: Any = self._connection().callable(KEEPALIVE)(metadata=self._metadata())
        try:
            return await keepalive_exchange(call, id, self._timeout)
        except grpc.aio.AioRpcError as e:
            raise to_etcd_error(e) from None
        except TimeoutError:
            raise EtcdError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            call.cancel()

    async def lease_keepalive(
        self, id: int, *, on_lost: Callable[[LeaseKeeper], Any] | None = None
    ) -> LeaseKeeper:
        """Keep lease `id` alive in the background until the keeper is closed (see LeaseKeeper).
        Raises LEASE_NOT_FOUND at once if the lease does not exist."""
        await self._ensure_token()
        keeper = LeaseKeeper(self, id, on_lost)
        await keeper._start()
        self._shared.keepers.add(keeper)
        return keeper
