"""Auth tokens: who a request comes from.

Two providers, chosen by --auth-token as in etcd:

* simple (the default): a random 16-letter prefix chosen by the member that receives the
  Authenticate call, plus "." and the Raft index of the Authenticate entry. Every member
  applies that entry and remembers token -> user in memory, so the token works on any member
  (until that member restarts). A token expires after --auth-token-ttl seconds without use;
  deleting a user or changing its password forgets its tokens; disabling auth forgets all.
* jwt: a signed JWT carrying the user name and the auth revision it was issued at; any
  member holding the public key verifies it (see jwt_token.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Protocol

from etcdstore.config import ConfigError

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PREFIX_LEN = 16
# etcd sweeps expired simple tokens once a second; we sweep lazily at most this often, and
# extend a token's life on use at this granularity too.
_SWEEP_EVERY = 1.0
_RESOLUTION = 1.0

# auth: errors etcd reports at start-up for a bad --auth-token (etcdserver refuses to start).
INVALID_AUTH_OPTS = "auth: invalid auth options"


class AuthInfo:
    """The user a request acts as, and the auth revision its credentials were checked at."""

    __slots__ = ("revision", "user")

    def __init__(self, user: str, revision: int) -> None:
        self.user = user
        self.revision = revision

    def __repr__(self) -> str:
        return f"AuthInfo({self.user!r}, {self.revision})"


class TokenProvider(Protocol):
    kind: str

    def info(self, token: str, revision: int) -> AuthInfo | None:
        """The user behind a token (None: unknown/expired/forged). `revision` is the store's current one."""

    def gen_prefix(self) -> str: ...

    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def invalidate_user(self, user: str) -> None: ...


class SimpleTokens:
    """In-memory simple tokens of one member with etcd's sliding TTL."""

    kind = "simple"

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds if ttl_seconds > 0 else 300.0
        self._slack = min(_RESOLUTION, self.ttl / 4)
        self._users: dict[str, str] = {}  # token -> user
        self._deadline: dict[str, float] = {}  # token -> monotonic expiry
        self._enabled = False
        self._swept_at = 0.0

    def gen_prefix(self) -> str:
        return "".join(secrets.choice(_LETTERS) for _ in range(_PREFIX_LEN))

    def assign(self, user: str, prefix: str, index: int) -> str:
        token = f"{prefix}.{index}"
        if self._enabled:
            now = time.monotonic()
            self._users[token] = user
            self._deadline[token] = now + self.ttl
            if now - self._swept_at > _SWEEP_EVERY:
                self._sweep(now)
        return token

    def info(self, token: str, revision: int) -> AuthInfo | None:
        user = self._users.get(token)
        if user is None:
            return None
        now = time.monotonic()
        deadline = self._deadline[token]
        if now > deadline:
            del self._users[token]
            del self._deadline[token]
            return None
        if deadline - now < self.ttl - self._slack:
            self._deadline[token] = now + self.ttl  # each use extends the token's life
        # A simple token carries no revision: it is checked against the store as it is now.
        return AuthInfo(user, revision)

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False
        self._users.clear()
        self._deadline.clear()

    def invalidate_user(self, user: str) -> None:
        for token in [t for t, u in self._users.items() if u == user]:
            del self._users[token]
            del self._deadline[token]

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for token in [t for t, d in self._deadline.items() if now > d]:
            del self._users[token]
            del self._deadline[token]

    def __len__(self) -> int:
        return len(self._users)


def decompose_options(spec: str) -> tuple[str, dict[str, str]]:
    """Split "--auth-token type,k=v,..." as etcd does (no '=' in values, no duplicate keys)."""
    parts = spec.split(",")
    opts: dict[str, str] = {}
    for part in parts[1:]:
        pair = part.split("=")
        if len(pair) != 2 or pair[0] in opts:
            raise ConfigError(INVALID_AUTH_OPTS)
        opts[pair[0]] = pair[1]
    return parts[0], opts


def new_provider(spec: str, ttl_seconds: float) -> TokenProvider:
    """The provider for --auth-token (and --auth-token-ttl for simple tokens)."""
    kind, opts = decompose_options(spec)
    if kind == "simple":
        return SimpleTokens(ttl_seconds)
    if kind == "jwt":
        from etcdstore.auth.jwt_token import JWTTokens

        return JWTTokens.from_options(opts)
    raise ConfigError(INVALID_AUTH_OPTS)
