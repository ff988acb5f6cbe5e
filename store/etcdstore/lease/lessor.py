"""Leases: TTL-bound groups of keys that vanish together when the lease ends.

Two kinds of state, kept apart on purpose:

* Replicated state, changed only by applied Raft entries on every member alike: which
  leases exist, their granted TTL, a checkpointed remaining TTL, and which keys are
  attached (attachments are derived from the keys' `lease` field, so they are rebuilt
  from the MVCC store on restart rather than stored twice).
* Leader-local timing: expiry instants on the monotonic clock. Only the leader ("primary")
  tracks expiry; when a lease runs out it proposes a revoke through Raft, so every member
  deletes the keys at the same revision. Followers keep leases "forever". A new leader
  resets every expiry to now + remaining TTL + an election timeout, so leadership changes
  can delay an expiry but never bring one forward.
"""

from __future__ import annotations

import heapq
import math
import struct
import time
from collections.abc import Callable, Iterable

from etcdstore import errors
from etcdstore.storage import backend as bk

NO_LEASE = 0
MAX_LEASE_TTL = 9_000_000_000  # seconds, etcd's MaxLeaseTTL
_FOREVER = math.inf
_RECORD = struct.Struct(">qqq")  # id, granted ttl, checkpointed remaining ttl
_KEY = struct.Struct(">q")


def min_lease_ttl(election_ticks: int, heartbeat_seconds: float) -> int:
    """etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds."""
    return math.ceil(((3 * election_ticks) // 2) * heartbeat_seconds - 1e-9)


class Lease:
    __slots__ = ("expiry", "id", "keys", "remaining_ttl", "ttl")

    def __init__(self, lease_id: int, ttl: int, remaining_ttl: int = 0) -> None:
        self.id = lease_id
        self.ttl = ttl
        # Set by checkpoints: the TTL left when the leader last recorded it (0: none).
        self.remaining_ttl = remaining_ttl
        self.expiry = _FOREVER
        self.keys: set[bytes] = set()

    def effective_ttl(self) -> int:
        return self.remaining_ttl if self.remaining_ttl > 0 else self.ttl

    def remaining(self, now: float) -> float:
        return self.expiry - now


class Lessor:
    """Lease bookkeeping for one member; see the module docstring for the split of duties."""

    def __init__(
        self,
        backend: bk.Backend,
        *,
        min_ttl: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self.min_ttl = max(1, min_ttl)
        self._clock = clock
        self._leases: dict[int, Lease] = {}
        self._primary = False
        # (expiry, lease id) min-heap; stale entries are skipped lazily.
        self._heap: list[tuple[float, int]] = []
        for _, value in backend.items(bk.LEASE):
            lease_id, ttl, remaining = _RECORD.unpack(value)
            self._leases[lease_id] = Lease(lease_id, ttl, remaining)

    # -- replicated state (apply path; deterministic on every member) -------------------------

    def exists(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def lookup(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def grant(self, batch: bk.Batch, lease_id: int, ttl: int) -> Lease:
        if lease_id == NO_LEASE:
            raise errors.LEASE_NOT_FOUND()
        if ttl > MAX_LEASE_TTL:
            raise errors.LEASE_TTL_TOO_LARGE()
        if lease_id in self._leases:
            raise errors.LEASE_EXIST()
        lease = Lease(lease_id, max(ttl, self.min_ttl))
        self._leases[lease_id] = lease
        self._persist(batch, lease)
        if self._primary:
            self._refresh(lease, 0.0)
        return lease

    def revoke(self, batch: bk.Batch, lease_id: int) -> list[bytes]:
        """Forget the lease; returns its keys (sorted) for the caller to delete in the same revision."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise errors.LEASE_NOT_FOUND()
        batch.delete(bk.LEASE, _KEY.pack(lease_id))
        return sorted(lease.keys)

    def checkpoint(self, batch: bk.Batch, lease_id: int, remaining_ttl: int) -> None:
        """Record the leader's view of the TTL left, so a new leader does not restart it from full."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return  # revoked meanwhile: nothing to record
        lease.remaining_ttl = remaining_ttl
        self._persist(batch, lease)
        if self._primary:
            self._refresh(lease, 0.0)

    def attach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def _persist(self, batch: bk.Batch, lease: Lease) -> None:
        batch.put(bk.LEASE, _KEY.pack(lease.id), _RECORD.pack(lease.id, lease.ttl, lease.remaining_ttl))

    # -- leader-local timing ----------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        return self._primary

    def promote(self, extend: float) -> None:
        """Become the lease primary: every lease now expires at now + its TTL + `extend`."""
        self._primary = True
        self._heap = []
        for lease in self._leases.values():
            self._refresh(lease, extend)

    def demote(self) -> None:
        self._primary = False
        self._heap = []
        for lease in self._leases.values():
            lease.expiry = _FOREVER

    def renew(self, lease_id: int) -> int:
        """Keep-alive on the primary: restart the TTL; returns it. Raises LEASE_NOT_FOUND."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND()
        if not self._primary:
            raise errors.NOT_LEADER()
        lease.remaining_ttl = 0  # a renewal supersedes any checkpoint
        self._refresh(lease, 0.0)
        return lease.ttl

    def expired(self, limit: int) -> list[int]:
        """Up to `limit` leases past their expiry (primary only), oldest first.

        A returned lease is pushed back by a retry interval so that it is not proposed
        again on every check while its revoke is on its way through Raft.
        """
        if not self._primary:
            return []
        now = self._clock()
        out: list[int] = []
        heap = self._heap
        while heap and len(out) < limit and heap[0][0] <= now:
            expiry, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or lease.expiry != expiry:
                continue  # revoked, or renewed since this entry was pushed
            out.append(lease_id)
            lease.expiry = now + 3.0
            heapq.heappush(heap, (lease.expiry, lease_id))
        return out

    def time_to_live(self, lease_id: int) -> tuple[int, int, list[bytes]]:
        """(remaining seconds, granted TTL, sorted keys); remaining as etcd computes it."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND()
        if lease.expiry == _FOREVER:
            remaining = lease.effective_ttl()
        else:
            remaining = max(0, int(lease.remaining(self._clock())))
        return remaining, lease.ttl, sorted(lease.keys)

    def checkpoints_due(self, now_remaining_over: int = 0) -> list[tuple[int, int]]:
        """(id, remaining seconds) for every lease, for the primary to propose as checkpoints."""
        if not self._primary:
            return []
        now = self._clock()
        out = []
        for lease in self._leases.values():
            remaining = math.ceil(lease.remaining(now))
            if remaining > now_remaining_over and remaining < lease.ttl:
                out.append((lease.id, remaining))
        return out

    def lease_ids(self) -> list[int]:
        return list(self._leases)

    def __len__(self) -> int:
        return len(self._leases)

    def _refresh(self, lease: Lease, extend: float) -> None:
        lease.expiry = self._clock() + extend + lease.effective_ttl()
        heapq.heappush(self._heap, (lease.expiry, lease.id))


def attached_keys(kvs: Iterable[tuple[bytes, int]], lessor: Lessor) -> None:
    """Re-attach (key, lease) pairs read from the MVCC store after a restart."""
    for key, lease_id in kvs:
        if lease_id:
            lessor.attach(lease_id, key)
