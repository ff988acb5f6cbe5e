"""Where Raft reads its durable log from: the `Storage` protocol and `MemoryStorage`.

Raft only ever *reads* storage. The host writes to it while handling a `Ready`
(append entries, set the hard state, install a snapshot) and compacts it after taking
snapshots of its state machine. A storage keeps a contiguous run of entries
``[first_index(), last_index()]`` plus the term of the entry just before the run (the
index and term of the latest snapshot), so ``term(first_index() - 1)`` always works.

Byte limits (``max_size``) count entry payload bytes (``len(entry.data)``); at least one
entry is returned whenever any is in range, so a single oversized entry still moves.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import attrgetter
from typing import Protocol

from etcdstore.raft.errors import CompactedError, SnapshotOutOfDate, UnavailableError
from etcdstore.raft.records import ConfState, Entry, HardState, Snapshot, SnapshotMetadata

_data = attrgetter("data")


def slice_within(src: list[Entry], lo: int, hi: int, max_size: int | None) -> list[Entry]:
    """``src[lo:hi]`` cut short so its payload stays within `max_size` (never below 1 entry).

    Sizes are summed in geometrically growing chunks so the work is proportional to the
    entries returned, not to ``hi - lo`` (a far-behind follower must not cost O(log)).
    """
    if max_size is None or hi - lo <= 1:
        return src[lo:hi]
    pos, step, total = lo, 64, 0
    while pos < hi:
        end = min(hi, pos + step)
        sums = list(accumulate(map(len, map(_data, src[pos:end])), initial=total))
        if sums[-1] > max_size:
            fit = bisect_right(sums, max_size) - 1  # entries of this chunk that fit
            return src[lo : max(pos + fit, lo + 1)]
        total = sums[-1]
        pos = end
        step <<= 1
    return src[lo:hi]


def payload_size(entries: list[Entry]) -> int:
    return sum(map(len, map(_data, entries)))


class Storage(Protocol):
    """Read access to the durable Raft state. Errors: CompactedError, UnavailableError,
    SnapshotTemporarilyUnavailable (from `snapshot`)."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the membership as of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries with index in [lo, hi), limited by payload bytes (None: unlimited)."""
        ...

    def term(self, i: int) -> int:
        """Term of entry `i`, for i in [first_index() - 1, last_index()]. Must be O(1)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry stored (the snapshot index when there are none)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (to send to a follower that needs compacted entries)."""
        ...


class MemoryStorage:
    """`Storage` in memory: a list of entries whose element 0 is a data-less placeholder
    holding the index and term of the latest snapshot (so term lookups are O(1))."""

    __slots__ = ("_ents", "_hard_state", "_snapshot")

    def __init__(self, conf_state: ConfState | None = None) -> None:
        """Empty storage. With `conf_state`, the storage describes a group that already
        exists with that membership and an empty log (an alternative to bootstrapping
        with conf-change entries)."""
        self._ents: list[Entry] = [Entry(0, 0)]
        self._hard_state = HardState()
        self._snapshot = (
            Snapshot(SnapshotMetadata(0, 0, conf_state)) if conf_state is not None else Snapshot()
        )

    # -- Storage protocol -------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        ents = self._ents
        offset = ents[0].index
        if lo <= offset:
            raise CompactedError(f"entry {lo} is compacted (first index {offset + 1})")
        if hi > offset + len(ents):
            raise UnavailableError(
                f"entries up to {hi - 1} requested, last index is {offset + len(ents) - 1}"
            )
        return slice_within(ents, lo - offset, hi - offset, max_size)

    def term(self, i: int) -> int:
        ents = self._ents
        k = i - ents[0].index
        if k < 0:
            raise CompactedError(f"entry {i} is compacted")
        if k >= len(ents):
            raise UnavailableError(f"entry {i} is beyond the last index {ents[0].index + len(ents) - 1}")
        return ents[k].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        ents = self._ents
        return ents[0].index + len(ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- host-side writes ----------------------------------------------------------------
    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: list[Entry]) -> None:
        """Append entries, replacing any stored suffix they conflict with."""
        if not entries:
            return
        ents = self._ents
        first = ents[0].index + 1
        if entries[-1].index < first:
            return  # all already compacted: nothing to keep
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        k = entries[0].index - ents[0].index
        if k < len(ents):
            del ents[k:]
        elif k > len(ents):
            raise UnavailableError(
                f"missing log entry: last index {ents[0].index + len(ents) - 1}, "
                f"appending from {entries[0].index}"
            )
        ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by `snap` (a follower installing its leader's snapshot)."""
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot {snap.metadata.index} is not newer than {self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(snap.metadata.term, snap.metadata.index)]

    def create_snapshot(self, i: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot the host took of its state machine at applied index `i`."""
        if i <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(f"snapshot at {i} is not newer than {self._snapshot.metadata.index}")
        if i > self.last_index():
            raise UnavailableError(f"snapshot index {i} is beyond the last index {self.last_index()}")
        self._snapshot = Snapshot(SnapshotMetadata(i, self.term(i), conf_state), data)
        return self._snapshot

    def compact(self, i: int) -> None:
        """Drop entries up to and including `i`; `i` must be covered by the snapshot."""
        ents = self._ents
        offset = ents[0].index
        if i <= offset:
            raise CompactedError(f"already compacted up to {offset}")
        if i > self._snapshot.metadata.index:
            raise ValueError(
                f"compacting to {i} beyond the snapshot at {self._snapshot.metadata.index} "
                "would leave followers no way to catch up"
            )
        k = i - offset
        term = ents[k].term
        del ents[:k]
        ents[0] = Entry(term, i)
