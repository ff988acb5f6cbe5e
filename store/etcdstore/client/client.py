"""The Client: every etcd v3 service on top of one Transport."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from etcdstore.client.auth import AuthMixin
from etcdstore.client.channels import TLSConfig, parse_endpoints
from etcdstore.client.cluster import ClusterMixin
from etcdstore.client.concurrency import ConcurrencyMixin
from etcdstore.client.kv import KVMixin
from etcdstore.client.leases import LeaseMixin
from etcdstore.client.maintenance import MaintenanceMixin
from etcdstore.client.transport import _UNSET, DEFAULT_TIMEOUT, Shared


class Client(KVMixin, LeaseMixin, ClusterMixin, MaintenanceMixin, AuthMixin, ConcurrencyMixin):
    """An asyncio etcd v3 client; see the package docstring for the whole API."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        tls: TLSConfig | None = None,
        user: str | None = None,
        password: str | None = None,
        require_leader: bool = False,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        shared = Shared(parse_endpoints(endpoints, tls=tls), tls, user, password, channel_options)
        super().__init__(shared, pinned=None, timeout=timeout, require_leader=require_leader, tls=tls)
        self._root = True

    def _view(self, *, pinned: Any, timeout: float | None, require_leader: bool) -> Client:
        view = object.__new__(Client)
        super(Client, view).__init__(
            self._shared, pinned=pinned, timeout=timeout, require_leader=require_leader, tls=self._tls
        )
        view._root = False
        return view

    def at(self, endpoint: str) -> Client:
        """A view of this client pinned to one member: no failover. Use it for per-member calls
        (status, hash_kv, defragment, alarms, snapshot, move_leader). `endpoint` need not be one
        of the client's endpoints (e.g. a client URL from member_list)."""
        return self._view(
            pinned=self._endpoint(endpoint), timeout=self._timeout, require_leader=self._require_leader
        )

    def with_options(self, *, timeout: float | None = _UNSET, require_leader: bool | None = None) -> Client:
        """A view with another per-call timeout and/or leader requirement (sharing connections)."""
        return self._view(
            pinned=self._pinned,
            timeout=self._timeout if timeout is _UNSET else timeout,
            require_leader=self._require_leader if require_leader is None else require_leader,
        )

    @property
    def timeout(self) -> float | None:
        return self._timeout

    async def close(self) -> None:
        """Close every watch stream, lease keeper and channel. Views share them: closing a view
        closes nothing; close the client they came from."""
        if not self._root:
            return
        sh = self._shared
        if sh.closed:
            return
        sh.closed = True
        for stream in list(sh.watch_streams.values()):
            stream.close()
        sh.watch_streams.clear()
        keepers = list(sh.keepers)
        if keepers:
            await asyncio.gather(*(k.close() for k in keepers), return_exceptions=True)
        await sh.pool.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self._pinned.target if self._pinned else ",".join(e.target for e in self._shared.endpoints)
        return f"Client({where})"
