"""The in-memory key index: for each key, the revisions at which it changed.

A key's history is a list of generations. A generation starts with the put that creates
the key and ends with the tombstone that deletes it; the key's current generation is open
(and empty while the key does not exist). Each generation remembers its create revision
and how many changes it holds, which gives create_revision, mod_revision and version of
the key at any revision without reading values.

Compaction at revision C drops, per key, every revision below the newest one <= C, and
every generation whose tombstone is below C. A tombstone at exactly C is kept (a watcher
starting at C must still see that delete; etcd fixed this in 3.5.15).

Revisions are packed ints (see `revision`); "main" comparisons shift by SUB_BITS.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from heapq import merge

from sortedcontainers import SortedList

from etcdstore.mvcc.revision import SUB_BITS

# A closed generation: (create revision, number of changes incl. the tombstone, revisions).
Generation = tuple[int, int, list[int]]


class KeyIndex:
    """Revisions of one key. The open generation is inlined (most keys have only one)."""

    __slots__ = ("created", "key", "lease", "past", "revs", "ver")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.created = 0  # create revision of the open generation (0 while it is empty)
        self.ver = 0  # changes in the open generation
        self.revs: list[int] = []  # open generation; empty => the key does not exist now
        self.lease = 0  # lease of the newest put (so a put/delete can detach without a read)
        self.past: list[Generation] | None = None  # closed generations, oldest first

    # -- changes ------------------------------------------------------------------------

    def put(self, rev: int, lease: int) -> None:
        if not self.revs:
            self.created = rev
            self.ver = 0
        self.revs.append(rev)
        self.ver += 1
        self.lease = lease

    def tombstone(self, rev: int) -> bool:
        """Close the open generation with a tombstone; False if the key does not exist."""
        if not self.revs:
            return False
        self.revs.append(rev)
        closed = (self.created, self.ver + 1, self.revs)
        if self.past is None:
            self.past = [closed]
        else:
            self.past.append(closed)
        self.created = 0
        self.ver = 0
        self.revs = []
        self.lease = 0
        return True

    def restore(self, created: int, rev: int, ver: int, lease: int) -> None:
        """Start from a revision read back from disk whose predecessors may be compacted away."""
        self.created = created
        self.ver = ver
        self.revs = [rev]
        self.lease = lease

    @staticmethod
    def restored(key: bytes, created: int, rev: int, ver: int, lease: int) -> KeyIndex:
        """A new KeyIndex holding `restore(created, rev, ver, lease)` (the bulk path of a restart)."""
        ki = KeyIndex.__new__(KeyIndex)
        ki.key = key
        ki.created = created
        ki.ver = ver
        ki.revs = [rev]
        ki.lease = lease
        ki.past = None
        return ki

    def restore_tombstone(self, rev: int) -> None:
        """A key whose only surviving revision is a tombstone (kept by a compaction at its revision)."""
        self.past = [(0, 1, [rev])]

    # -- reads --------------------------------------------------------------------------

    def get(self, at_main: int) -> tuple[int, int, int] | None:
        """(mod revision, create revision, version) of the key at main revision `at_main`, or None."""
        revs = self.revs
        if revs:
            last = revs[-1]
            if last >> SUB_BITS <= at_main:
                return last, self.created, self.ver
            if revs[0] >> SUB_BITS <= at_main:
                return _walk(revs, at_main, self.created, self.ver, len(revs))
        past = self.past
        if past:
            for created, ver, prevs in reversed(past):
                if prevs[-1] >> SUB_BITS <= at_main:
                    return None  # deleted by then (tombstone at or before at_main)
                if prevs[0] >> SUB_BITS <= at_main:
                    return _walk(prevs, at_main, created, ver, len(prevs))
        return None

    def is_empty(self) -> bool:
        return not self.revs and not self.past

    # -- compaction -----------------------------------------------------------------------

    def compact(self, at_main: int) -> bool:
        """Drop what compaction at `at_main` makes unreachable; True if nothing is left."""
        past = self.past
        if past is None and len(self.revs) <= 1:
            return not self.revs  # one revision (most keys) or none: nothing to drop
        if past:
            i = 0
            n = len(past)
            while i < n and past[i][2][-1] >> SUB_BITS < at_main:
                i += 1
            if i == n:
                self.past = None
            else:
                if i:
                    del past[:i]
                created, ver, prevs = past[0]
                j = _last_at_or_below(prevs, at_main)
                if j > 0:
                    past[0] = (created, ver, prevs[j:])
                return False
        revs = self.revs
        if revs:
            j = _last_at_or_below(revs, at_main)
            if j > 0:
                del revs[:j]
            return False
        return True

    def __repr__(self) -> str:
        return f"KeyIndex({self.key!r}, past={self.past}, open=({self.created}, {self.ver}, {self.revs}))"


def _walk(revs: list[int], at_main: int, created: int, ver: int, n: int) -> tuple[int, int, int]:
    i = n - 1
    while revs[i] >> SUB_BITS > at_main:
        i -= 1
    return revs[i], created, ver - (n - 1 - i)


def _last_at_or_below(revs: list[int], at_main: int) -> int:
    """Index of the newest revision with main <= at_main (-1 if none)."""
    return bisect_left(revs, (at_main + 1) << SUB_BITS) - 1


class Index:
    """All keys' KeyIndex, by key, and in key order split in two sorted lists: `live`, the keys
    that exist now (open generation not empty), and `dead`, the others (deleted, history not
    yet compacted). Reads at the latest revision (Kubernetes' lists and counts) walk only
    `live` and count it by bisection; reads at older revisions walk both, merged.

    Each key is in exactly one of the two lists, so creating a key costs one sorted insertion
    (a bulk load of new keys touches only `live`); the writer moves keys between the lists
    when they are deleted and created again (`kill`, `revive`)."""

    __slots__ = ("by_key", "dead", "live")

    def __init__(self) -> None:
        self.by_key: dict[bytes, KeyIndex] = {}
        self.live: SortedList[bytes] = SortedList()
        self.dead: SortedList[bytes] = SortedList()

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, key: bytes) -> KeyIndex | None:
        return self.by_key.get(key)

    def get_or_create(self, key: bytes) -> KeyIndex:
        """The key's KeyIndex; a new one is empty (not live until `revive`)."""
        ki = self.by_key.get(key)
        if ki is None:
            ki = self.by_key[key] = KeyIndex(key)
            self.dead.add(key)
        return ki

    def create_live(self, key: bytes) -> KeyIndex:
        """A new KeyIndex for a key not in the index, which the caller puts at once (live)."""
        ki = self.by_key[key] = KeyIndex(key)
        self.live.add(key)
        return ki

    def revive(self, key: bytes) -> None:
        """An indexed key that did not exist is created again."""
        self.dead.remove(key)
        self.live.add(key)

    def kill(self, key: bytes) -> None:
        """A live key is deleted (its history stays until compaction)."""
        self.live.remove(key)
        self.dead.add(key)

    def resort(self) -> None:
        """Rebuild the key orders after keys were added to `by_key` directly (bulk load)."""
        self.live = SortedList(k for k, ki in self.by_key.items() if ki.revs)
        self.dead = SortedList(k for k, ki in self.by_key.items() if not ki.revs)

    def remove(self, key: bytes) -> None:
        ki = self.by_key.pop(key, None)
        if ki is not None:
            (self.live if ki.revs else self.dead).remove(key)

    def keys(self, key: bytes, end: bytes) -> Iterator[bytes]:
        """Keys in [key, end) in order; end == b'' means no upper bound."""
        if end:
            if end <= key:
                return iter(())
            live = self.live.irange(key, end, (True, False))
            if not self.dead:
                return live
            return merge(live, self.dead.irange(key, end, (True, False)))
        if not self.dead:
            return self.live.irange(key, None)
        return merge(self.live.irange(key, None), self.dead.irange(key, None))

    def live_keys(self, key: bytes, end: bytes) -> Iterator[bytes]:
        """Keys that exist now in [key, end) (end b'': no upper bound), in order."""
        if end:
            if end <= key:
                return iter(())
            return self.live.irange(key, end, (True, False))
        return self.live.irange(key, None)

    def live_count(self, key: bytes, end: bytes) -> int:
        live = self.live
        lo = live.bisect_left(key)
        if not end:
            return len(live) - lo
        if end <= key:
            return 0
        return live.bisect_left(end) - lo

    def keys_after(self, key: bytes | None) -> Iterator[bytes]:
        """Keys strictly after `key` (all keys when None), in order; for resumable walks."""
        if key is None:
            if not self.dead:
                return iter(self.live)
            return merge(self.live, self.dead)
        live = self.live.irange(key, None, (False, False))
        if not self.dead:
            return live
        return merge(live, self.dead.irange(key, None, (False, False)))
