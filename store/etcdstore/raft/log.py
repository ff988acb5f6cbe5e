"""The Raft log as one node sees it: durable entries in `Storage` plus an unstable tail.

Entries (and an incoming snapshot) live in the unstable part until the host reports
them durable (`stable_to` / `stable_snap_to`, driven by `RawNode.advance`). Indexes and
terms resolve in O(1); conflict search and term-based backtracking use binary search
(terms never decrease along a log), so the length of the log never shows up in the cost
of handling a message.
"""

from __future__ import annotations

from etcdstore.raft.errors import CompactedError, RaftError, StorageError
from etcdstore.raft.records import Entry, Snapshot
from etcdstore.raft.storage import Storage, payload_size, slice_within


class Unstable:
    """Entries not yet durable, from index `offset`, optionally preceded by a snapshot."""

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def stable_to(self, i: int, t: int) -> bool:
        """Entries up to `i` (of term `t`) are durable; False if that entry was replaced since."""
        k = i - self.offset
        if k < 0 or k >= len(self.entries) or self.entries[k].term != t:
            return False
        del self.entries[: k + 1]
        self.offset = i + 1
        return True

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        k = after - self.offset
        if k == len(self.entries):
            self.entries.extend(ents)  # the common case: plain append
        elif k <= 0:
            # Replaces everything unstable; storage entries from `after` on are
            # shadowed and the host truncates them when it persists these.
            self.offset = after
            self.entries = list(ents)
        elif k < len(self.entries):
            del self.entries[k:]
            self.entries.extend(ents)
        else:
            raise RaftError(f"log gap: appending index {after} after {self.offset + len(self.entries) - 1}")


class RaftLog:
    __slots__ = ("applied", "committed", "max_next_ents_size", "storage", "unstable")

    def __init__(self, storage: Storage, max_next_ents_size: int | None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1
        self.max_next_ents_size = max_next_ents_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # -- index/term lookups ---------------------------------------------------------------
    def first_index(self) -> int:
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term of entry `i`; 0 when `i` is outside [first_index - 1, last_index].
        Raises CompactedError only if storage lost the entry under our feet."""
        u = self.unstable
        k = i - u.offset
        ents = u.entries
        if k >= 0:
            if k < len(ents):
                return ents[k].term
            if ents or u.snapshot is not None:
                return 0  # beyond the last index
            st = self.storage
            return st.term(i) if i <= st.last_index() else 0
        snap = u.snapshot
        if snap is not None:
            return snap.metadata.term if snap.metadata.index == i else 0
        st = self.storage
        if i < st.first_index() - 1:
            return 0
        return st.term(i)

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except StorageError:
            return False

    def persisted_index(self) -> int:
        """Highest index known durable and part of this log (0 while a snapshot is pending)."""
        if self.unstable.snapshot is not None:
            return 0
        return self.unstable.offset - 1

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft's election restriction: is a log ending at (last_index, term) at least as new as ours?"""
        our_last = self.last_index()
        our_term = self.term(our_last)
        return term > our_term or (term == our_term and last_index >= our_last)

    # -- appending ------------------------------------------------------------------------
    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        if ents[0].index - 1 < self.committed:
            raise RaftError(
                f"appending after {ents[0].index - 1} would overwrite committed entries "
                f"(committed {self.committed})"
            )
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, committed: int, ents: list[Entry]) -> int | None:
        """Follower side of AppendEntries: None if (index, log_term) does not match our log,
        else the last index the message covers (after appending what was new)."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci:
                if ci <= self.committed:
                    raise RaftError(f"entry {ci} conflicts with committed entry (committed {self.committed})")
                self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry of `ents` not in our log (0 if all present).

        `ents` follow an entry we matched, so by the log matching property they agree with
        our log up to some point and differ (or run past our end) after it: binary search.
        """
        first = ents[0].index
        last_ours = self.last_index()
        overlap_end = min(ents[-1].index, last_ours)
        if overlap_end < first:
            return first
        if self.match_term(overlap_end, ents[overlap_end - first].term):
            return overlap_end + 1 if overlap_end < ents[-1].index else 0
        lo, hi = first, overlap_end  # first mismatch lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self.match_term(mid, ents[mid - first].term):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= `term` (a leader's or follower's guess of where
        two logs may still agree, used to skip whole terms when backtracking)."""
        lo = self.first_index() - 1
        if index < lo:
            return index
        index = min(index, self.last_index())
        try:
            if self.term(index) <= term:
                return index
            if self.term(lo) > term:
                return lo
        except CompactedError:
            return lo
        # term(lo) <= term < term(index): find the last such i in [lo, index)
        hi = index
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.term(mid) <= term:
                lo = mid
            else:
                hi = mid
        return lo

    # -- commit / apply / persistence -----------------------------------------------------------
    def commit_to(self, to: int) -> None:
        if to > self.committed:
            if to > self.last_index():
                raise RaftError(
                    f"commit {to} is beyond the last index {self.last_index()}; "
                    "was the log lost or truncated?"
                )
            self.committed = to

    def maybe_commit(self, max_index: int, term: int) -> bool:
        if max_index > self.committed and self.term(max_index) == term:
            self.committed = max_index
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise RaftError(f"applied index {i} out of range [{self.applied}, {self.committed}]")
        self.applied = i

    def stable_to(self, i: int, t: int) -> bool:
        return self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- reading ranges ---------------------------------------------------------------------------
    def unstable_entries(self) -> list[Entry]:
        return self.unstable.entries[:]

    def has_next_entries(self) -> bool:
        committed = self.committed
        return committed > self.applied and committed >= self.first_index()

    def next_entries(self) -> list[Entry]:
        """Committed entries not yet applied, up to `max_next_ents_size` payload bytes."""
        lo = max(self.applied + 1, self.first_index())
        if self.committed + 1 > lo:
            return self.slice(lo, self.committed + 1, self.max_next_ents_size)
        return []

    def entries(self, i: int, max_size: int | None) -> list[Entry]:
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries [lo, hi) from storage and/or the unstable tail. Raises CompactedError if
        `lo` is below the first index."""
        if lo < self.first_index():
            raise CompactedError(f"entry {lo} is compacted")
        if hi > self.last_index() + 1:
            raise RaftError(f"slice [{lo}, {hi}) out of bounds (last index {self.last_index()})")
        if lo >= hi:
            return []
        u = self.unstable
        offset = u.offset
        if lo >= offset:
            return slice_within(u.entries, lo - offset, hi - offset, max_size)
        stored = self.storage.entries(lo, min(hi, offset), max_size)
        if hi <= offset or len(stored) < min(hi, offset) - lo:
            return stored  # all from storage, or the byte limit was hit there
        if max_size is None:
            return stored + u.entries[: hi - offset]
        budget = max_size - payload_size(stored)
        if budget <= 0:
            return stored
        tail = slice_within(u.entries, 0, hi - offset, budget)
        if payload_size(tail[:1]) > budget:
            return stored  # the limit only lets the first unstable entry in when it fits
        return stored + tail
