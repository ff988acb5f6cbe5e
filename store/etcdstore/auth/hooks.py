"""The auth layer as the server sees it: `server.auth`, set up by `install(server)`.

Requests are checked twice, as in etcd:
* at the API, against this member's store (fail fast, and reads are never proposed), with
  the user and auth revision of the request's credentials; those two travel in the Raft entry;
* writes again at apply time, against the replicated store: an entry checked at an older auth
  revision is refused ("revision of auth store is old", the client re-authenticates and
  retries), so a permission revoked between the two checks never lets a write through.

Credentials: the `token` (or `authorization`) gRPC metadata; without one, the verified client
certificate's CN when --client-cert-auth is on (etcd's AuthInfoFromTLS). An unknown or expired
token is refused even while auth is disabled, as etcd does.

With auth disabled a check costs one metadata scan and one attribute test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from etcdstore import errors
from etcdstore.auth.apply import AuthApplier
from etcdstore.auth.perms import READ, WRITE
from etcdstore.auth.store import AuthStore
from etcdstore.auth.tokens import AuthInfo, TokenProvider, new_provider
from etcdstore.proto.etcdserverpb import rpc_pb2

if TYPE_CHECKING:
    from etcdstore.config import ServerConfig
    from etcdstore.lease.lessor import Lessor
    from etcdstore.storage.backend import Backend
    from etcdstore.txn.requests import Request


class AuthHost(Protocol):
    """What the auth layer needs of the server it is installed on (the auth package sits below
    the server and never imports it). `lessor` and `backend` are read on each use: a snapshot
    install replaces the lessor."""

    cfg: ServerConfig
    applier: Any  # register(kind, handler); index (the Raft index being applied)
    auth: Any

    @property
    def backend(self) -> Backend: ...
    @property
    def lessor(self) -> Lessor: ...


# How etcd 3.4 guards each admin RPC (it differs per RPC; these are facts of etcd, not choices):
_RAW_AUTH_ERRORS = frozenset({"Hash", "HashKV", "Defragment", "Snapshot"})  # root; bare "auth: ..." errors
_TOKEN_ONLY = frozenset({"Compact", "Alarm"})  # any valid credentials (the applier asks no more)
_UNGUARDED = frozenset({"MoveLeader"})  # etcd 3.4 checks nothing
# Everything else (member changes, unknown callers) needs the root role.

# Maintenance RPCs return the auth store's own errors, which gRPC reports as code Unknown.
_BARE = {
    errors.USER_EMPTY: "auth: user name is empty",
    errors.USER_NOT_FOUND: "auth: user not found",
    errors.PERMISSION_DENIED: "auth: permission denied",
    errors.INVALID_AUTH_TOKEN: "auth: invalid auth token",
}
# The reasons a refused watch gives; everything else is reported as "permission denied".
_WATCH_REASONS = (errors.INVALID_AUTH_TOKEN, errors.AUTH_OLD_REVISION, errors.USER_EMPTY)
_GO_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
}


class AuthHooks:
    """The object the server and the API call on every request (`server.auth`; it implements
    etcdstore.server.authguard.AuthGuard, as its no-op stand-in NoAuth does)."""

    def __init__(self, server: AuthHost, store: AuthStore, tokens: TokenProvider) -> None:
        self.s = server
        self.store = store
        self.tokens = tokens
        self.client_cert_auth = bool(server.cfg.client_cert_auth)
        # Set by the process wiring once the client port exists: gRPC call -> verified cert CN.
        self.peer_identity: Callable[[grpc.aio.ServicerContext], str | None] | None = None

    # ---- credentials --------------------------------------------------------------------------

    def auth_info(self, context: grpc.aio.ServicerContext) -> AuthInfo | None:
        """Who the request acts as (None: nobody); raises INVALID_AUTH_TOKEN for a bad token."""
        token = alt = gateway = None
        for key, value in context.invocation_metadata() or ():
            if key == "token":
                token = value
            elif key == "authorization":
                alt = value
            elif key == "grpcgateway-accept":
                gateway = value
        if token is None:
            token = alt
        if token is not None:
            info = self.tokens.info(token, self.store.revision)
            if info is None:
                raise errors.INVALID_AUTH_TOKEN()
            return info
        if self.client_cert_auth and self.peer_identity is not None and gateway is None:
            # The gateway proxies with its own client certificate: its CN must never count.
            cn = self.peer_identity(context)
            if cn:
                return AuthInfo(cn, self.store.revision)
        return None

    def credentials(self, context: grpc.aio.ServicerContext) -> tuple[str, int]:
        """(user, auth revision) to put in a Raft entry; ("", 0) without credentials."""
        info = self.auth_info(context)
        return (info.user, info.revision) if info is not None else ("", 0)

    # ---- API-time checks ------------------------------------------------------------------------

    def authorize_range(self, context: grpc.aio.ServicerContext, req: rpc_pb2.RangeRequest) -> None:
        info = self.auth_info(context)
        st = self.store
        if st.enabled:
            user, rev = (info.user, info.revision) if info is not None else ("", 0)
            st.check(user, rev, req.key, req.range_end, READ)

    def authorize_put(self, context: grpc.aio.ServicerContext, req: rpc_pb2.PutRequest) -> tuple[str, int]:
        user, rev = self.credentials(context)
        if self._precheck(rev):
            self._check_put(user, rev, req.key, req.lease, req.prev_kv)
        return user, rev

    def authorize_delete(
        self, context: grpc.aio.ServicerContext, req: rpc_pb2.DeleteRangeRequest
    ) -> tuple[str, int]:
        user, rev = self.credentials(context)
        if self._precheck(rev):
            self._check_delete(user, rev, req.key, req.range_end, req.prev_kv)
        return user, rev

    def authorize_txn(self, context: grpc.aio.ServicerContext, req: rpc_pb2.TxnRequest) -> tuple[str, int]:
        user, rev = self.credentials(context)
        if self._precheck(rev):
            self.store.check_txn(user, rev, req)
        return user, rev

    def authorize_watch(self, context: grpc.aio.ServicerContext, key: bytes, range_end: bytes) -> None:
        """Raises an error whose message is the cancel reason etcd gives a refused watch."""
        try:
            info = self.auth_info(context)
            st = self.store
            if not st.enabled:
                return
            if range_end == b"\x00":
                range_end = b""  # etcd 3.4 checks a from-key watch against its first key only
            user, rev = (info.user, info.revision) if info is not None else ("", 0)
            st.check(user, rev, key, range_end, READ)
        except errors.EtcdError as e:
            raise _watch_refusal(e) from None

    def authorize_lease_revoke(self, context: grpc.aio.ServicerContext, lease_id: int) -> None:
        """Revoking deletes the lease's keys: the user must be allowed to write every one."""
        user, rev = self.credentials(context)
        if not self.store.enabled:
            return
        lease = self.s.lessor.lookup(lease_id)
        if lease is not None and lease.keys:
            self.store.check_keys_writable(user, rev, sorted(lease.keys))

    def authorize_admin(self, context: grpc.aio.ServicerContext, rpc: str = "") -> tuple[str, int]:
        # Without an RPC name, the servicer method is the caller.
        rpc = rpc or sys._getframe(1).f_code.co_name
        if rpc in _UNGUARDED:
            return "", 0
        if rpc in _RAW_AUTH_ERRORS:
            try:
                info = self.auth_info(context)
                self.store.check_admin(info.user if info is not None else "")
            except errors.EtcdError as e:
                bare = _BARE.get(e)
                raise (errors.EtcdError(grpc.StatusCode.UNKNOWN, bare) if bare else e) from None
            return (info.user, info.revision) if info is not None else ("", 0)
        user, rev = self.credentials(context)
        if rpc not in _TOKEN_ONLY:
            self.store.check_admin(user)
        return user, rev

    # ---- apply-time checks (deterministic: replicated state and the entry only) --------------------

    def check_at_apply(self, req: Request, op: str, key: bytes, range_end: bytes) -> None:
        if req.system or not self.store.enabled:
            return
        if op == "put":
            r = rpc_pb2.PutRequest.FromString(req.payload)
            self._check_put(req.user, req.auth_revision, r.key, r.lease, r.prev_kv)
        else:
            d = rpc_pb2.DeleteRangeRequest.FromString(req.payload)
            self._check_delete(req.user, req.auth_revision, d.key, d.range_end, d.prev_kv)

    def check_txn_at_apply(self, req: Request, txn: rpc_pb2.TxnRequest) -> None:
        if not req.system and self.store.enabled:
            self.store.check_txn(req.user, req.auth_revision, txn)

    def check_lease_revoke_at_apply(self, req: Request, keys: list[bytes]) -> None:
        """Revoking deletes the lease's keys: the caller must be allowed to write every one,
        judged again in log order (the API-time check may be stale)."""
        if not req.system and self.store.enabled and keys:
            self.store.check_keys_writable(req.user, req.auth_revision, keys)

    def reload(self) -> None:
        """After a snapshot install replaced the backend's contents."""
        self.store.load(self.s.backend)

    # ---- helpers -------------------------------------------------------------------------------------

    def _precheck(self, rev: int) -> bool:
        # A token newer than this member's store (JWT from a member ahead of us) cannot be judged
        # here without false refusals: the apply-time check, in log order, decides.
        st = self.store
        return st.enabled and rev <= st.revision

    def _check_put(self, user: str, rev: int, key: bytes, lease_id: int, prev_kv: bool) -> None:
        st = self.store
        st.check(user, rev, key, b"", WRITE)
        if lease_id:
            # Attaching a key to a lease the user could not revoke is refused (etcd's checkLeasePuts).
            lease = self.s.lessor.lookup(lease_id)
            if lease is not None and lease.keys:
                st.check_keys_writable(user, rev, sorted(lease.keys))
        if prev_kv:
            st.check(user, rev, key, b"", READ)

    def _check_delete(self, user: str, rev: int, key: bytes, range_end: bytes, prev_kv: bool) -> None:
        st = self.store
        st.check(user, rev, key, range_end, WRITE)
        if prev_kv:
            st.check(user, rev, key, range_end, READ)


def _watch_refusal(e: errors.EtcdError) -> errors.EtcdError:
    """etcd puts the formatted Go gRPC status in the cancel reason of a refused watch."""
    if e not in _WATCH_REASONS:
        e = errors.PERMISSION_DENIED()
    return errors.EtcdError(e.code, f"rpc error: code = {_GO_CODE[e.code]} desc = {e.message}")


def install(server: AuthHost) -> AuthHooks:
    """Create the auth store of `server`, register its apply handlers and hook it in.

    Must run before `server.start()`: entries replayed at start-up need the handlers.
    Raises ConfigError for a bad --auth-token.
    """
    cfg = server.cfg
    tokens = new_provider(cfg.auth_token, float(cfg.auth_token_ttl))
    store = AuthStore(server.backend, tokens)

    def entry_index() -> int:
        # The Raft index of the entry being applied, when the server exposes it (etcd's simple
        # token suffix); tokens stay unique without it thanks to their random prefix.
        return int(getattr(server.applier, "index", 0) or 0)

    applier = AuthApplier(store, cfg.bcrypt_cost, entry_index)
    for kind, handler in applier.handlers().items():
        server.applier.register(kind, handler)
    hooks = AuthHooks(server, store, tokens)
    server.auth = hooks
    return hooks


def hooks_of(server: AuthHost) -> AuthHooks:
    auth: Any = server.auth
    if not isinstance(auth, AuthHooks):
        raise TypeError("auth is not installed on this server")
    return auth
