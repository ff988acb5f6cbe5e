"""The Client: every etcd v3 service on top of one Transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Self

import grpc

from etcdstore.client.auth import AuthMixin
from etcdstore.client.channels import TLSConfig, parse_endpoints
from etcdstore.client.cluster import ClusterMixin
from etcdstore.client.concurrency import ConcurrencyMixin
from etcdstore.client.kv import KVMixin
from etcdstore.client.leases import LeaseMixin
from etcdstore.client.maintenance import MaintenanceMixin
from etcdstore.client.rpc_errors import OLD_CLUSTER, fresh
from etcdstore.client.transport import _UNSET, DEFAULT_TIMEOUT, Shared
from etcdstore.errors import PERMISSION_DENIED, EtcdError

log = logging.getLogger(__name__)

# clientv3's minimum for RejectOldCluster: etcd 3.2.
MIN_CLUSTER_VERSION = (3, 2)


def is_old_version(version: str, minimum: tuple[int, int] = MIN_CLUSTER_VERSION) -> bool:
    """True when a member's reported version ("3.4.23") is below `minimum` (major, minor).
    A version without a parsable major.minor counts as 0.0, so it is old (as clientv3 does)."""
    parts = version.split(".")
    try:
        major, minor = (int(parts[0]), int(parts[1])) if len(parts) >= 2 else (0, 0)
    except ValueError:
        major, minor = 0, 0
    return (major, minor) < minimum


def grpc_channel_options(
    *,
    keepalive_time: float | None = None,
    keepalive_timeout: float | None = None,
    permit_without_stream: bool = False,
    max_call_send_size: int | None = None,
    max_call_recv_size: int | None = None,
) -> list[tuple[str, Any]]:
    """The grpc channel arguments for clientv3's DialKeepAliveTime/Timeout, PermitWithoutStream
    and MaxCallSendMsgSize/MaxCallRecvMsgSize (None: leave grpc's/our default)."""
    opts: list[tuple[str, Any]] = []
    if keepalive_time is not None:
        opts.append(("grpc.keepalive_time_ms", max(1, round(keepalive_time * 1000))))
        # Keep pinging while no data flows (grpc-core stops after 2 pings otherwise).
        opts.append(("grpc.http2.max_pings_without_data", 0))
    if keepalive_timeout is not None:
        ms = max(1, round(keepalive_timeout * 1000))
        opts.append(("grpc.keepalive_timeout_ms", ms))
        # grpc-core (1.85) arms its ping watchdog with this one (60 s by default), not the above.
        opts.append(("grpc.http2.ping_timeout_ms", ms))
    if permit_without_stream:
        opts.append(("grpc.keepalive_permit_without_calls", 1))
    if max_call_send_size is not None:
        opts.append(("grpc.max_send_message_length", max_call_send_size))
    if max_call_recv_size is not None:
        opts.append(("grpc.max_receive_message_length", max_call_recv_size))
    return opts


class Client(KVMixin, LeaseMixin, ClusterMixin, MaintenanceMixin, AuthMixin, ConcurrencyMixin):
    """An asyncio etcd v3 client; see the package docstring for the whole API and docs/client.md
    for each option next to its clientv3.Config name.

    endpoints             Endpoints: list or comma-separated "host:port" / "http(s)://host:port".
    timeout               per-call deadline in seconds (clientv3: the context of each call).
    dial_timeout          DialTimeout: `await client.connect()` (done by `async with`) fails with
                          DEADLINE_EXCEEDED "context deadline exceeded" unless a connection to
                          some endpoint is up within this many seconds.
    auto_sync_interval    AutoSyncInterval: every so many seconds, replace the endpoints with the
                          client URLs of the cluster's started voting members (MemberList).
    health_check_interval (no clientv3 field; its balancer's health checking): every so many
                          seconds probe each endpoint (as `etcdctl endpoint health`) and send
                          calls to healthy ones first. Without it, endpoints are marked unhealthy
                          only when a call to them fails.
    keepalive_time        DialKeepAliveTime: ping the server after this many idle seconds.
    keepalive_timeout     DialKeepAliveTimeout: close the connection (failing its calls and
                          streams with UNAVAILABLE) when a ping is unanswered this long.
    permit_without_stream PermitWithoutStream: ping even with no call or stream open.
    user, password        Username, Password: Authenticate, send the token, and authenticate
                          again when the server says the token is invalid (expired).
    reject_old_cluster    RejectOldCluster: connect() refuses a cluster older than etcd 3.2
                          (EtcdError "etcdclient: old cluster version").
    max_call_send_size    MaxCallSendMsgSize (bytes; None: no client-side limit; clientv3: 2 MiB)
    max_call_recv_size    MaxCallRecvMsgSize (bytes; None: no limit, as clientv3's MaxInt32)
    tls                   TLS: TLSConfig(ca_file, cert_file, key_file, server_name).
    require_leader        clientv3.WithRequireLeader on every call.
    channel_options       DialOptions: extra grpc channel arguments (they win over the above).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        tls: TLSConfig | None = None,
        user: str | None = None,
        password: str | None = None,
        require_leader: bool = False,
        dial_timeout: float | None = None,
        auto_sync_interval: float | None = None,
        health_check_interval: float | None = None,
        keepalive_time: float | None = None,
        keepalive_timeout: float | None = None,
        permit_without_stream: bool = False,
        reject_old_cluster: bool = False,
        max_call_send_size: int | None = None,
        max_call_recv_size: int | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        for name, value in (
            ("dial_timeout", dial_timeout),
            ("auto_sync_interval", auto_sync_interval),
            ("health_check_interval", health_check_interval),
            ("keepalive_time", keepalive_time),
            ("keepalive_timeout", keepalive_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None)")
        options = grpc_channel_options(
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
            permit_without_stream=permit_without_stream,
            max_call_send_size=max_call_send_size,
            max_call_recv_size=max_call_recv_size,
        )
        options.extend(channel_options)
        shared = Shared(parse_endpoints(endpoints, tls=tls), tls, user, password, options)
        super().__init__(shared, pinned=None, timeout=timeout, require_leader=require_leader, tls=tls)
        self._root = True
        self._dial_timeout = dial_timeout
        self._auto_sync_interval = auto_sync_interval
        self._health_check_interval = health_check_interval
        self._reject_old_cluster = reject_old_cluster

    def _view(self, *, pinned: Any, timeout: float | None, require_leader: bool) -> Client:
        view = object.__new__(Client)
        super(Client, view).__init__(
            self._shared, pinned=pinned, timeout=timeout, require_leader=require_leader, tls=self._tls
        )
        view._root = False
        view._dial_timeout = self._dial_timeout
        view._auto_sync_interval = self._auto_sync_interval
        view._health_check_interval = self._health_check_interval
        view._reject_old_cluster = self._reject_old_cluster
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

    # -- connecting, endpoints and health ------------------------------------------------------

    async def connect(self) -> None:
        """Dial the endpoints (all at once) and return when one connection is up, making it the
        current endpoint; raise DEADLINE_EXCEEDED when none is up within dial_timeout (if not
        given: the per-call timeout; both None: wait).
        Then, with reject_old_cluster, check the cluster's version. `async with Client(...)`
        calls this when dial_timeout or reject_old_cluster is given; otherwise the first call
        dials (clientv3 without DialTimeout does not block either)."""
        sh = self._shared
        if sh.background is None:
            self._start_background()
        eps = list(sh.endpoints)
        tasks = {asyncio.ensure_future(sh.pool.get(ep).channel.channel_ready()): ep for ep in eps}
        try:
            limit = self._dial_timeout if self._dial_timeout is not None else self._timeout
            done, _ = await asyncio.wait(tasks, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        ready = [tasks[t] for t in done if not t.cancelled() and t.exception() is None]
        if not ready:
            raise EtcdError(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
        first = min(ready, key=eps.index)
        if first in sh.endpoints:
            sh.current = sh.endpoints.index(first)
            sh.mark_healthy(first)
        if self._reject_old_cluster:
            await self.check_version()

    async def check_version(self, minimum: tuple[int, int] | None = None) -> str:
        """clientv3's RejectOldCluster check: ask every endpoint's Status at once; the first
        member answering with a version >= `minimum` passes (its version is returned). Raises
        EtcdError "etcdclient: old cluster version" when a member reports an older one and
        none a newer, else the last error. `minimum` defaults to MIN_CLUSTER_VERSION (3, 2)."""
        minimum = minimum or MIN_CLUSTER_VERSION
        timeout = self._dial_timeout if self._dial_timeout is not None else self._timeout

        async def one(ep: str) -> str:
            st = await self.at(ep).with_options(timeout=timeout).status()
            if is_old_version(st.version, minimum):
                raise fresh(OLD_CLUSTER)
            return st.version

        tasks = [asyncio.ensure_future(one(ep)) for ep in self.endpoints]
        error: BaseException | None = None
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    return await fut
                except EtcdError as e:
                    if error is None or e == OLD_CLUSTER:
                        error = e
        finally:
            for t in tasks:
                t.cancel()
        assert error is not None
        raise error

    async def sync_endpoints(self) -> list[str]:
        """clientv3's Sync: set the endpoints to the client URLs of the cluster's members (those
        started, learners left out) from MemberList; returns the new list."""
        resp = await self.member_list()
        urls = [u for m in resp.members if m.name and not m.isLearner for u in m.clientURLs]
        if urls:
            self.set_endpoints(urls)
        return self.endpoints

    def set_endpoints(self, endpoints: Sequence[str] | str) -> None:
        """clientv3's SetEndpoints: replace the endpoint list (the current endpoint stays current
        if it is in the new list). Existing streams stay where they are."""
        self._shared.set_endpoints(parse_endpoints(endpoints, tls=self._tls))

    async def endpoint_health(self, timeout: float = 5.0) -> dict[str, bool]:
        """Probe every endpoint as `etcdctl endpoint health` does (a linearizable Get of "health";
        PERMISSION_DENIED also counts as healthy) and mark the unhealthy ones so calls try them
        last. Returns {endpoint: healthy}."""
        sh = self._shared
        eps = list(sh.endpoints)

        async def probe(ep: Any) -> bool:
            try:
                await self.at(ep.target).with_options(timeout=timeout).get("health")
                return True
            except EtcdError as e:
                return e == PERMISSION_DENIED

        results = await asyncio.gather(*(probe(ep) for ep in eps))
        for ep, ok in zip(eps, results):
            if ok:
                sh.mark_healthy(ep)
            else:
                sh.mark_unhealthy(ep)
        cur = sh.endpoints[sh.current]
        if sh.is_unhealthy(cur):
            healthy = [i for i, ep in enumerate(sh.endpoints) if not sh.is_unhealthy(ep)]
            if healthy:
                sh.current = healthy[0]
        return {ep.target: ok for ep, ok in zip(eps, results)}

    def _start_background(self) -> None:
        sh = self._shared
        sh.background = []
        if self._auto_sync_interval is not None:
            sh.background.append(asyncio.ensure_future(self._root_view()._auto_sync()))
        if self._health_check_interval is not None:
            sh.background.append(asyncio.ensure_future(self._root_view()._health_loop()))

    def _root_view(self) -> Client:
        return self._view(pinned=None, timeout=self._timeout, require_leader=False)

    async def _auto_sync(self) -> None:
        assert self._auto_sync_interval is not None
        while True:
            await asyncio.sleep(self._auto_sync_interval)
            try:
                await self.with_options(timeout=5).sync_endpoints()
            except EtcdError as e:  # as clientv3: log and try again next time
                log.debug("auto-sync failed: %s", e)

    async def _health_loop(self) -> None:
        assert self._health_check_interval is not None
        while True:
            await asyncio.sleep(self._health_check_interval)
            with contextlib.suppress(EtcdError):
                await self.endpoint_health(timeout=min(5.0, max(1.0, self._health_check_interval)))

    async def close(self) -> None:
        """Close every watch stream, lease keeper and channel. Views share them: closing a view
        closes nothing; close the client they came from."""
        if not self._root:
            return
        sh = self._shared
        if sh.closed:
            return
        sh.closed = True
        background = list(sh.background or ())
        for task in background:
            task.cancel()
        if background:
            await asyncio.gather(*background, return_exceptions=True)
        for stream in list(sh.watch_streams.values()):
            stream.close()
        sh.watch_streams.clear()
        keepers = list(sh.keepers)
        if keepers:
            await asyncio.gather(*(k.close() for k in keepers), return_exceptions=True)
        await sh.pool.close()

    async def __aenter__(self) -> Self:
        if self._dial_timeout is not None or self._reject_old_cluster:
            try:
                await self.connect()
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self._pinned.target if self._pinned else ",".join(e.target for e in self._shared.endpoints)
        return f"Client({where})"
