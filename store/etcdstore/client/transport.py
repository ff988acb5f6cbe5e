"""Calls with failover, auth tokens and metadata: the base every client method builds on.

Failover rule (the linearizability checker depends on it): a call moves to the next endpoint on
UNAVAILABLE only when resending cannot apply it twice: either the request is idempotent (reads,
Status, MemberList, ...) or it never reached a server ("failed to connect"). Such calls go round
the endpoints until the deadline (pausing between rounds, at most _MAX_ROUNDS rounds). Any other
failure of a write is raised, because its outcome is unknown. A pinned view never retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from etcdstore import errors
from etcdstore.client.channels import ChannelPool, Connection, Endpoint, TLSConfig, parse_endpoint
from etcdstore.client.methods import Method, method
from etcdstore.client.rpc_errors import CLIENT_CLOSED, REFRESH_TOKEN_ERRORS, fresh, never_sent, to_etcd_error
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

DEFAULT_TIMEOUT = 30.0
_UNSET: Any = object()
_AUTHENTICATE = method("Auth.Authenticate")
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Safe retries go round the endpoints at most this often, pausing longer after each round.
_MAX_ROUNDS = 20
_ROUND_PAUSE = 0.05
_MAX_ROUND_PAUSE = 0.5
# How long an endpoint that failed stays at the back of the line (clientv3 3.3's health
# balancer used 3 s..5 s); it is tried again at once when every endpoint is marked.
UNHEALTHY_FOR = 5.0


class Shared:
    """State common to a client and every view made from it by at() / with_options()."""

    __slots__ = (
        "auth_lock",
        "background",
        "closed",
        "current",
        "endpoints",
        "keepers",
        "password",
        "pool",
        "token",
        "token_gen",
        "unhealthy",
        "unhealthy_for",
        "user",
        "watch_streams",
    )

    def __init__(
        self,
        endpoints: list[Endpoint],
        tls: TLSConfig | None,
        user: str | None,
        password: str | None,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        self.pool = ChannelPool(tls, channel_options)
        self.endpoints = endpoints
        self.current = 0  # index of the endpoint unpinned calls go to first
        self.user = user
        self.password = password
        self.token: str | None = None
        self.token_gen = 0  # bumped on every (re)authentication; 0 = not yet authenticated
        self.auth_lock: asyncio.Lock | None = None
        self.closed = False
        self.watch_streams: dict[Any, Any] = {}  # key -> watch.WatchStream
        self.keepers: set[Any] = set()  # lease.LeaseKeeper
        # Endpoints that answered UNAVAILABLE (or failed a health check): target -> when. Calls
        # try them last for `unhealthy_for` seconds; a success clears the mark.
        self.unhealthy: dict[str, float] = {}
        self.unhealthy_for = UNHEALTHY_FOR
        self.background: list[asyncio.Task[None]] | None = None  # None: not started yet

    def set_endpoints(self, endpoints: list[Endpoint]) -> None:
        """Replace the endpoint list, keeping the current endpoint current if it is still there."""
        if not endpoints:
            raise ValueError("no endpoints given")
        now = self.endpoints[self.current].target if self.endpoints else None
        self.endpoints = list(endpoints)
        targets = [e.target for e in self.endpoints]
        self.current = targets.index(now) if now in targets else 0
        for t in [t for t in self.unhealthy if t not in targets]:
            del self.unhealthy[t]

    def mark_unhealthy(self, ep: Endpoint) -> None:
        """Only the client's own endpoints are marked (a pinned view may use any address)."""
        if any(e.target == ep.target for e in self.endpoints):
            self.unhealthy[ep.target] = time.monotonic()

    def mark_healthy(self, ep: Endpoint) -> None:
        self.unhealthy.pop(ep.target, None)

    def is_unhealthy(self, ep: Endpoint) -> bool:
        since = self.unhealthy.get(ep.target)
        if since is None:
            return False
        if time.monotonic() - since >= self.unhealthy_for:
            del self.unhealthy[ep.target]
            return False
        return True


class Transport:
    """Unary and streaming calls for one view of a client (pinned or not, with its options)."""

    def __init__(
        self,
        shared: Shared,
        *,
        pinned: Endpoint | None,
        timeout: float | None,
        require_leader: bool,
        tls: TLSConfig | None,
    ) -> None:
        self._shared = shared
        self._pinned = pinned
        self._timeout = timeout
        self._require_leader = require_leader
        self._tls = tls
        self._md_gen = -1
        self._md: tuple[tuple[str, str], ...] | None = None

    # -- endpoint choice ---------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """The endpoints this view may use, in the order a call tries them now."""
        return [e.target for e in self._candidates()]

    def _candidates(self) -> list[Endpoint]:
        if self._pinned is not None:
            return [self._pinned]
        sh = self._shared
        eps = sh.endpoints
        i = sh.current
        order = eps[i:] + eps[:i]
        if sh.unhealthy:
            # Healthy endpoints first, in rotation order; marked ones last.
            order.sort(key=sh.is_unhealthy)
        return order

    def _moved_off(self, ep: Endpoint) -> None:
        sh = self._shared
        sh.mark_unhealthy(ep)
        if self._pinned is None and sh.endpoints[sh.current] == ep:
            n = len(sh.endpoints)
            for step in range(1, n + 1):
                nxt = (sh.current + step) % n
                if not sh.is_unhealthy(sh.endpoints[nxt]) or step == n:
                    sh.current = nxt
                    break

    def _endpoint(self, endpoint: str) -> Endpoint:
        return parse_endpoint(endpoint, tls=self._tls)

    # -- metadata and auth -------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        sh = self._shared
        if self._md_gen != sh.token_gen:
            md: list[tuple[str, str]] = []
            if sh.token:
                md.append(("token", sh.token))
            if self._require_leader:
                md.append(("hasleader", "true"))
            self._md = tuple(md) or None
            self._md_gen = sh.token_gen
        return self._md

    async def _refresh_token(self, seen_gen: int) -> None:
        """Authenticate unless another task already did since `seen_gen` was read."""
        sh = self._shared
        if sh.auth_lock is None:
            sh.auth_lock = asyncio.Lock()
        async with sh.auth_lock:
            if sh.token_gen != seen_gen:
                return
            request = rpc_pb2.AuthenticateRequest(name=sh.user or "", password=sh.password or "")
            try:
                resp = await self._call_once(
                    _AUTHENTICATE, request, idempotent=True, timeout=_UNSET, token=False
                )
                sh.token = resp.token
            except EtcdError as e:
                if e != errors.AUTH_NOT_ENABLED:
                    raise
                # Auth is off: work without a token; "user name is empty" later re-authenticates.
                sh.token = None
            sh.token_gen += 1

    # -- calls -------------------------------------------------------------------------------

    async def _call(
        self, m: Method, request: Any, *, idempotent: bool, timeout: float | None = _UNSET
    ) -> Any:
        """One unary RPC with failover (see the module docstring) and one token refresh."""
        sh = self._shared
        if sh.background is None:
            self._start_background()
        await self._ensure_token()
        gen = sh.token_gen
        try:
            return await self._call_once(m, request, idempotent=idempotent, timeout=timeout)
        except EtcdError as e:
            if sh.user is None or e not in REFRESH_TOKEN_ERRORS:
                raise
        await self._refresh_token(gen)
        return await self._call_once(m, request, idempotent=idempotent, timeout=timeout)

    async def _call_once(
        self, m: Method, request: Any, *, idempotent: bool, timeout: float | None, token: bool = True
    ) -> Any:
        sh = self._shared
        if sh.closed:
            raise fresh(CLIENT_CLOSED)
        t = self._timeout if timeout is _UNSET else timeout
        loop = asyncio.get_running_loop()
        deadline = None if t is None else loop.time() + t
        md = self._metadata() if token else (("hasleader", "true"),) if self._require_leader else None
        candidates = self._candidates()
        n = len(candidates)
        attempt = 0
        while True:
            ep = candidates[attempt % n]
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                resp = await sh.pool.get(ep).callable(m)(request, timeout=remaining, metadata=md)
                if sh.unhealthy:
                    sh.mark_healthy(ep)
                return resp
            except grpc.aio.AioRpcError as e:
                if self._pinned is not None or e.code() != _UNAVAILABLE or not (idempotent or never_sent(e)):
                    raise to_etcd_error(e) from None
                self._moved_off(ep)
                attempt += 1
                if attempt % n == 0:
                    # Every endpoint said UNAVAILABLE (e.g. all followers during an election):
                    # go round again after a pause, while the deadline allows.
                    pause = min(_ROUND_PAUSE * attempt // n, _MAX_ROUND_PAUSE)
                    if attempt // n >= _MAX_ROUNDS or (
                        deadline is not None and deadline - loop.time() <= pause
                    ):
                        raise to_etcd_error(e) from None
                    await asyncio.sleep(pause)

    def _connection(self) -> Connection:
        """Where a new stream goes: the pinned endpoint or the current one."""
        if self._shared.closed:
            raise fresh(CLIENT_CLOSED)
        ep = self._pinned or self._shared.endpoints[self._shared.current]
        return self._shared.pool.get(ep)

    async def _server_stream(self, m: Method, request: Any) -> AsyncIterator[Any]:
        """A server-streaming read. It moves to another endpoint only before the first message
        (a stream broken midway raises: the caller holds a partial result)."""
        sh = self._shared
        await self._ensure_token()
        refreshed = False
        candidates = self._candidates()
        i = 0
        while True:
            if sh.closed:
                raise fresh(CLIENT_CLOSED)
            ep = candidates[i]
            gen = sh.token_gen
            call = sh.pool.get(ep).callable(m)(request, metadata=self._metadata())
            got_any = False
            try:
                async for resp in call:
                    got_any = True
                    yield resp
                return
            except grpc.aio.AioRpcError as e:
                err = to_etcd_error(e)
                if not got_any:
                    if err in REFRESH_TOKEN_ERRORS and sh.user is not None and not refreshed:
                        refreshed = True
                        await self._refresh_token(gen)
                        continue
                    if i + 1 < len(candidates) and e.code() == _UNAVAILABLE:
                        self._moved_off(ep)
                        i += 1
                        continue
                raise err from None
            finally:
                call.cancel()

    def _start_background(self) -> None:
        """Start the client's background tasks (auto-sync, health checks); the Client overrides it."""
        self._shared.background = []

    async def _ensure_token(self) -> None:
        sh = self._shared
        if sh.user is not None and sh.token_gen == 0:
            await self._refresh_token(0)
