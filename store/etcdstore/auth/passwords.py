"""bcrypt password hashing with Go's conventions (etcd uses golang.org/x/crypto/bcrypt).

Both are slow by design (cost 10 is ~50 ms): callers run them off the event loop.
"""

from __future__ import annotations

import bcrypt

MIN_COST, MAX_COST, DEFAULT_COST = 4, 31, 10
# bcrypt only ever reads the first 72 bytes of a password; Go's implementation (as vendored by
# etcd 3.4) ignores the rest silently, where the Python binding would refuse longer passwords.
_MAX_PASSWORD = 72


def effective_cost(cost: int) -> int:
    """etcd falls back to the default cost for an out-of-range --bcrypt-cost."""
    return cost if MIN_COST <= cost <= MAX_COST else DEFAULT_COST


def hash_password(password: str, cost: int) -> bytes:
    return bcrypt.hashpw(password.encode()[:_MAX_PASSWORD], bcrypt.gensalt(rounds=effective_cost(cost)))


def check_password(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:_MAX_PASSWORD], hashed)
    except ValueError:  # not a bcrypt hash (e.g. empty)
        return False
