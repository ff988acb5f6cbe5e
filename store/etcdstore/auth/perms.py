"""A user's merged key permissions, and etcd's rules for checking a request against them.

etcd keeps, per user, an interval tree of every READ and every WRITE permission of every role
the user has, and asks "does the union of these intervals cover [key, range_end)?" (range
requests) or "does any of them contain key?" (single keys). The union of intervals is all
that matters, so we keep it pre-merged: a sorted list of disjoint intervals, and each check
is one binary search.

Key encoding follows etcd's `BytesAffineComparable`:
- an empty key compares greater than every other key (it is +infinity), so a permission whose
  key is empty never covers anything, and a request with an empty key is never covered;
- a permission's range end "\\0" means "to the end of the key space" (+infinity);
- a permission without range end covers the single key, i.e. [key, key + "\\0").
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from etcdstore.proto.authpb import auth_pb2

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

_FROM_KEY = b"\x00"


class Intervals:
    """A union of half-open key intervals [start, end); `end is None` means +infinity."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: Iterable[tuple[bytes, bytes | None]] = ()) -> None:
        merged: list[tuple[bytes, bytes | None]] = []
        for start, end in sorted(spans, key=_start):
            if merged:
                last_start, last_end = merged[-1]
                if last_end is None or start <= last_end:  # overlaps or touches: extend
                    if last_end is not None and (end is None or end > last_end):
                        merged[-1] = (last_start, end)
                    continue
            merged.append((start, end))
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def covers(self, key: bytes, end: bytes | None) -> bool:
        """Whether [key, end) lies inside one merged interval (end None = +infinity)."""
        i = bisect_right(self.starts, key) - 1
        if i < 0:
            return False
        have = self.ends[i]
        if have is None:
            return True
        # The interval must also reach past `key` (etcd only counts intervals that overlap).
        return end is not None and have >= end and have > key

    def contains(self, key: bytes) -> bool:
        i = bisect_right(self.starts, key) - 1
        if i < 0:
            return False
        have = self.ends[i]
        return have is None or key < have


def _start(span: tuple[bytes, bytes | None]) -> bytes:
    return span[0]


def permission_span(perm: auth_pb2.Permission) -> tuple[bytes, bytes | None] | None:
    """The interval a stored permission grants, or None when it can never match anything."""
    key, range_end = perm.key, perm.range_end
    if not key:
        return None  # an empty begin is +infinity in etcd's ordering: covers nothing
    if not range_end:
        return key, key + b"\x00"
    if range_end == _FROM_KEY:
        return key, None
    if range_end <= key:
        return None  # an empty or reversed interval never overlaps a request
    return key, range_end


class UserPermissions:
    """The merged READ and WRITE intervals of one user (etcd's unifiedRangePermissions)."""

    __slots__ = ("read", "write")

    def __init__(self, roles: Iterable[auth_pb2.Role]) -> None:
        reads: list[tuple[bytes, bytes | None]] = []
        writes: list[tuple[bytes, bytes | None]] = []
        for role in roles:
            for perm in role.keyPermission:
                span = permission_span(perm)
                if span is None:
                    continue
                t = perm.permType
                if t == READ or t == READWRITE:
                    reads.append(span)
                if t == WRITE or t == READWRITE:
                    writes.append(span)  # (an unknown type grants nothing, as in etcd)
        self.read = Intervals(reads)
        self.write = Intervals(writes)

    def permits(self, key: bytes, range_end: bytes, perm_type: int) -> bool:
        """etcd's isRangeOpPermitted for one request (range_end as sent by the client)."""
        ivs = self.read if perm_type == READ else self.write
        if not key:
            return False  # +infinity: no permission interval reaches it
        if not range_end:
            return ivs.contains(key)
        return ivs.covers(key, None if range_end == _FROM_KEY else range_end)
