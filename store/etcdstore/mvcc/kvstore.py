"""The versioned key space: every revision of every key in the KEY column family.

Layout (etcd's): KEY maps revision bytes (see `revision`) to a serialized mvccpb.KeyValue;
a delete writes a tombstone revision whose value holds only the key. An in-memory index
(`key_index`) maps each key to its revisions; it is rebuilt at open by scanning KEY.

Writes happen in the server's apply loop, one write transaction at a time, into the
backend Batch the loop writes once per batch of Raft entries:

    txn = store.write(batch); ...txn.put / delete_range / range...; events = txn.end()
    store.set_consistent_index(batch, index, term)
    backend.write(batch, sync=False); store.batch_written()

Until `batch_written()` the batch's values live in a small overlay so that reads (by later
transactions of the same batch, or by readers between applies) see them.

Compaction is recorded at once (`compact`) and carried out in bounded steps
(`compact_step`) that the server runs between batches; scheduled and finished compaction
revisions live in META so a restart resumes an interrupted one.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Final

from etcdstore import errors
from etcdstore.mvcc import revision as rv
from etcdstore.mvcc.key_index import Index, KeyIndex
from etcdstore.mvcc.lessor import Lessor
from etcdstore.proto.mvccpb import kv_pb2
from etcdstore.storage import backend as bk

KEY: Final = bk.KEY
META: Final = bk.META
CONSISTENT_INDEX_KEY: Final = b"consistent_index"
TERM_KEY: Final = b"term"
SCHEDULED_COMPACT_KEY: Final = b"scheduledCompactRev"
FINISHED_COMPACT_KEY: Final = b"finishedCompactRev"

# Families whose content is replicated state (identical on every member at the same
# applied index), for `hash`. META also holds per-member data, so only our compaction
# records from it are hashed.
_HASHED_FAMILIES: Final = tuple(cf for cf in bk.STATE_MACHINE_FAMILIES if cf != META)

_U64: Final = struct.Struct(">Q")
_SUB_BITS: Final = rv.SUB_BITS
_KeyValue = kv_pb2.KeyValue
_Event = kv_pb2.Event
_DELETE: Final = kv_pb2.Event.DELETE
_to_bytes = rv.to_bytes
_REV_UNPACK: Final = struct.Struct(">QcQ").unpack_from  # rv.from_bytes, inlined in _restore


class RangeResult:
    """Result of a range read: kvs (KeyValue messages, or serialized bytes for range_raw),
    the total number of keys in the range (independent of limit) and the view's revision."""

    __slots__ = ("count", "kvs", "rev")

    def __init__(self, kvs: list[Any], count: int, rev: int) -> None:
        self.kvs = kvs
        self.count = count
        self.rev = rev


def key_of_value(value: bytes) -> bytes:
    """The key of a serialized KeyValue without parsing the rest (key is field 1, written first)."""
    if value[:1] == b"\x0a":
        n = 0
        shift = 0
        i = 1
        while True:
            b = value[i]
            n |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                break
            shift += 7
        return value[i : i + n]
    return _KeyValue.FromString(value).key


def _end(range_end: bytes | None) -> bytes | None:
    """Wire range_end -> index bound: None for the single key, b"" for no upper bound."""
    if not range_end:
        return None
    if range_end == b"\x00":
        return b""
    return range_end


class ReadView:
    """Reads at one revision of the store: the store itself, or a write transaction.

    `end` everywhere is a range_end as on the wire: None or b"" for the single key `key`,
    b"\\0" for every key >= key, otherwise the keys in [key, end).
    """

    __slots__ = ()
    _s: KVStore

    @property
    def rev(self) -> int:
        raise NotImplementedError

    @property
    def first_rev(self) -> int:
        """Oldest readable revision bound: reads below it fail with COMPACTED (etcd's FirstRev)."""
        return self._s._compact

    def _at(self, rev: int) -> tuple[int, int]:
        cur = self.rev
        if rev > cur:
            raise errors.FUTURE_REV()
        if rev <= 0:
            rev = cur
        if rev < self._s._compact:
            raise errors.COMPACTED()
        return cur, rev

    def _latest(self) -> bool:
        """Whether the index's live-key order describes this view's revision (it always has
        every change made so far, so not for the store while a txn with changes is open)."""
        txn = self._s._txn
        return txn is None or txn is self or not txn._events

    def _revs(
        self, key: bytes, range_end: bytes | None, at: int, cur: int, limit: int, count_only: bool = False
    ) -> tuple[list[int], int]:
        """(revisions of the first `limit` keys (<= 0: all; none if count_only) of the range
        alive at `at`, how many keys of the range are alive at `at`)."""
        index = self._s._index
        end = _end(range_end)
        if end is None:
            ki = index.by_key.get(key)
            if ki is None:
                return [], 0
            got = ki.get(at)
            return ([], 0) if got is None else ([got[0]], 1)
        by_key = index.by_key
        if at == cur and self._latest():
            count = index.live_count(key, end)
            if count_only:
                return [], count
            keys = index.live_keys(key, end)
            if 0 < limit < count:
                keys = islice(keys, limit)
            return [by_key[k].revs[-1] for k in keys], count
        out: list[int] = []
        append = out.append
        for k in index.keys(key, end):
            ki = by_key[k]
            revs = ki.revs
            if revs and revs[-1] >> _SUB_BITS <= at:
                append(revs[-1])  # alive, unchanged since `at`
            elif revs or ki.past:
                got = ki.get(at)
                if got is not None:
                    append(got[0])
        count = len(out)
        if count_only:
            return [], count
        if 0 < limit < count:
            del out[limit:]
        return out, count

    def range_raw(self, key: bytes, end: bytes | None = None, rev: int = 0, limit: int = 0) -> RangeResult:
        """Like `range` with kvs as serialized KeyValue bytes (no parsing; for building responses)."""
        cur, at = self._at(rev)
        revs, count = self._revs(key, end, at, cur, limit)
        read = self._s._read
        return RangeResult([read(r) for r in revs], count, cur)

    def range(
        self, key: bytes, end: bytes | None = None, rev: int = 0, limit: int = 0, count_only: bool = False
    ) -> RangeResult:
        """Keys in the range at revision `rev` (<= 0: the view's revision), as etcd's mvcc Range.

        Raises FUTURE_REV / COMPACTED.
        """
        cur, at = self._at(rev)
        revs, count = self._revs(key, end, at, cur, limit, count_only)
        if count_only:
            return RangeResult([], count, cur)
        read = self._s._read
        parse = _KeyValue.FromString
        return RangeResult([parse(read(r)) for r in revs], count, cur)

    def get_raw(self, key: bytes, rev: int = 0) -> tuple[bytes | None, int]:
        """(serialized KeyValue or None, view revision) of one key: the Get hot path."""
        cur, at = self._at(rev)
        ki = self._s._index.by_key.get(key)
        if ki is None:
            return None, cur
        revs = ki.revs
        if revs and revs[-1] >> _SUB_BITS <= at:
            return self._s._read(revs[-1]), cur
        got = ki.get(at)
        return (None, cur) if got is None else (self._s._read(got[0]), cur)

    def key_meta(self, key: bytes) -> tuple[int, int, int] | None:
        """(mod_revision, create_revision, version) of one key at the view's revision, from
        the index alone: the Txn compare hot path."""
        ki = self._s._index.by_key.get(key)
        if ki is None:
            return None
        at = self.rev
        revs = ki.revs
        if revs and revs[-1] >> _SUB_BITS <= at:
            return revs[-1] >> _SUB_BITS, ki.created >> _SUB_BITS, ki.ver
        got = ki.get(at)
        return None if got is None else (got[0] >> _SUB_BITS, got[1] >> _SUB_BITS, got[2])

    def range_meta(self, key: bytes, end: bytes | None = None) -> list[tuple[int, int, int]]:
        """(mod_revision, create_revision, version) of each live key in the range at the view's
        revision, from the index alone (no value reads): enough for most Txn compares."""
        index = self._s._index
        at = self.rev
        end = _end(end)
        if end is None:
            keys: Iterator[bytes] = iter((key,))
        elif self._latest():
            keys = index.live_keys(key, end)
        else:
            keys = index.keys(key, end)
        by_key = index.by_key
        out = []
        for k in keys:
            ki = by_key.get(k)
            if ki is None:
                continue
            got = ki.get(at)
            if got is not None:
                out.append((got[0] >> _SUB_BITS, got[1] >> _SUB_BITS, got[2]))
        return out


class KVStore(ReadView):
    """One member's MVCC key space on its Backend. Reads see the latest applied revision."""

    __slots__ = (
        "_b",
        "_batch_open",
        "_ci",
        "_compact",
        "_compaction",
        "_current",
        "_index",
        "_pending",
        "_term",
        "_txn",
        "lessor",
        "prev_kv_in_events",
    )

    def __init__(self, backend: bk.Backend, lessor: Lessor | None = None) -> None:
        self._b = backend
        self._index = Index()
        self._current = 1  # etcd starts at 1: the first write is revision 2
        self._compact = -1  # etcd's compactMainRev: -1 until the first compaction
        self._pending: dict[bytes, bytes] = {}
        self._batch_open = False
        self._txn: WriteTxn | None = None
        self._compaction: _Compaction | None = None
        self.lessor = lessor
        # Whether events carry prev_kv; the watchable store turns this off while no watcher
        # wants prev_kv (and fills it itself if one appears), saving a read per change.
        self.prev_kv_in_events = True
        ci = backend.get(META, CONSISTENT_INDEX_KEY)
        self._ci = _U64.unpack(ci)[0] if ci else 0
        term = backend.get(META, TERM_KEY)
        self._term = _U64.unpack(term)[0] if term else 0
        self._restore()
        if lessor is not None:
            for key, lease in self.leased_keys():
                lessor.attach(lease, key)

    @property
    def _s(self) -> KVStore:  # type: ignore[override]  # the views' `_s: KVStore` attribute, read-only here
        return self

    # -- state ----------------------------------------------------------------------------

    @property
    def rev(self) -> int:
        return self._current

    @property
    def current_revision(self) -> int:
        return self._current

    @property
    def compact_revision(self) -> int:
        """Revision of the latest compaction (-1 if none): reads below it fail with COMPACTED."""
        return self._compact

    @property
    def first_revision(self) -> int:
        """The oldest revision that can still be read."""
        return max(self._compact, 1)

    @property
    def consistent_index(self) -> int:
        return self._ci

    @property
    def consistent_term(self) -> int:
        return self._term

    def compaction_unfinished(self) -> bool:
        """A scheduled compaction still has work for compact_step."""
        return self._compaction is not None

    @property
    def backend(self) -> bk.Backend:
        return self._b

    def key_count(self) -> int:
        """Keys in the index (live or with history not yet compacted)."""
        return len(self._index)

    def leased_keys(self) -> Iterator[tuple[bytes, int]]:
        """(key, lease ID) of every live key with a lease, to re-attach after a restart."""
        for key, ki in self._index.by_key.items():
            if ki.revs and ki.lease:
                yield key, ki.lease

    # -- open ------------------------------------------------------------------------------

    def _restore(self) -> None:
        b = self._b
        finished = b.get(META, FINISHED_COMPACT_KEY)
        scheduled = b.get(META, SCHEDULED_COMPACT_KEY)
        finished_main = rv.from_bytes(finished) >> _SUB_BITS if finished else -1
        scheduled_main = rv.from_bytes(scheduled) >> _SUB_BITS if scheduled else -1
        index = self._index
        by_key = index.by_key
        unpack = _REV_UNPACK
        tomb_len = rv.REV_BYTES_LEN + 1
        restored = KeyIndex.restored
        parse = _KeyValue.FromString
        get = by_key.get
        last = b""
        for k, v in b.items(KEY):
            main, _, sub = unpack(k)
            rev = main << _SUB_BITS | sub
            if len(k) == tomb_len and k[-1] == 0x74:  # rv.is_tombstone
                key = key_of_value(v)
                ki = get(key)
                if ki is None:
                    # Its earlier revisions were compacted: keep the tombstone indexed so that
                    # the next compaction removes it.
                    ki = by_key[key] = KeyIndex(key)
                    ki.restore_tombstone(rev)
                else:
                    ki.tombstone(rev)
            else:
                kv = parse(v)
                key = kv.key
                ki = get(key)
                if ki is None:
                    by_key[key] = restored(key, kv.create_revision << _SUB_BITS, rev, kv.version, kv.lease)
                else:
                    ki.put(rev, kv.lease)
            last = k
        last_main = rv.from_bytes(last) >> _SUB_BITS if last else 1
        index.resort()  # key order once at the end: cheaper than one insertion per key
        # Compaction may have removed the newest revisions (tombstones) at or below the
        # compaction revision: revisions must never go back, so floor at it.
        self._current = max(last_main, finished_main, scheduled_main, 1)
        self._compact = finished_main
        if scheduled_main > finished_main:
            # A compaction was scheduled but not finished before the restart: finish it.
            self._compact = scheduled_main
            self._compaction = _Compaction(scheduled_main)

    # -- reads -----------------------------------------------------------------------------

    def _read(self, rev: int) -> bytes:
        rb = _to_bytes(rev)
        pending = self._pending
        if pending:
            v = pending.get(rb)
            if v is not None:
                return v
        v = self._b.get(KEY, rb)
        if v is None:
            raise RuntimeError(
                f"mvcc: revision {rev >> _SUB_BITS}.{rev & rv.SUB_MASK} in index but not on disk"
            )
        return v

    def get_kv(self, key: bytes, at_main: int) -> kv_pb2.KeyValue | None:
        """The key's KeyValue at a revision, None if absent then or if that revision is compacted."""
        if at_main < self._compact or at_main > self._current:
            return None
        ki = self._index.by_key.get(key)
        if ki is None:
            return None
        got = ki.get(at_main)
        if got is None:
            return None
        return _KeyValue.FromString(self._read(got[0]))

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: bk.Batch) -> WriteTxn:
        """Open the write transaction of one request; it writes into `batch` (one main revision)."""
        if self._txn is not None:
            raise RuntimeError("mvcc: a write transaction is already open")
        self._batch_open = True
        txn = self._txn = WriteTxn(self, batch)
        return txn

    def set_consistent_index(self, batch: bk.Batch, index: int, term: int) -> None:
        """Record the applied Raft index (and its term) in the same batch as the data it produced."""
        batch.put(META, CONSISTENT_INDEX_KEY, _U64.pack(index))
        batch.put(META, TERM_KEY, _U64.pack(term))
        self._ci = index
        self._term = term
        self._batch_open = True

    def batch_written(self) -> None:
        """The server wrote the batch: its values are readable from RocksDB now."""
        if self._txn is not None:
            raise RuntimeError("mvcc: batch written while a write transaction is open")
        if self._pending:
            self._pending = {}
        self._batch_open = False

    # -- compaction ------------------------------------------------------------------------

    def compact(self, batch: bk.Batch, rev: int) -> None:
        """Compact up to `rev` (etcd's Compact): from now on reads below it fail with COMPACTED.

        Records the scheduled compaction in `batch`; old revisions are removed later by
        compact_step. Raises COMPACTED (rev <= last compaction) or FUTURE_REV.
        """
        if rev <= self._compact:
            raise errors.COMPACTED()
        if rev > self._current:
            raise errors.FUTURE_REV()
        batch.put(META, SCHEDULED_COMPACT_KEY, rv.main_bytes(rev))
        self._batch_open = True
        self._compact = rev
        # A newer compaction supersedes an unfinished one; its pass starts over.
        self._compaction = _Compaction(rev)

    def compact_step(self, limit: int = 1000) -> bool:
        """Do a bounded piece (about `limit` revisions) of the scheduled compaction.

        Call it between batches (it does nothing while a batch is open, since that batch's
        revisions are not on disk yet). Writes its deletions itself. Returns True when no
        compaction work is left.
        """
        c = self._compaction
        if c is None:
            return True
        if self._batch_open:
            return False
        target = c.target
        batch = self._b.batch()
        end = rv.main_bytes(target + 1)
        n = 0
        last = b""  # read only when n >= limit >= 1, so after at least one key
        index = self._index
        by_key = index.by_key
        is_tomb = rv.is_tombstone
        from_bytes = rv.from_bytes
        # One pass over the revisions up to the target, in revision order. The key index is
        # compacted on the way, at the visit of each key's revision that survives (the newest
        # <= target) or of a tombstone (a key deleted by then, whose history may all go): every
        # key with anything to drop has one of those on disk, so no separate pass over all keys.
        for k, v in self._b.items(KEY, c.disk_cursor, end):
            n += 1
            last = k
            rev = from_bytes(k)
            if is_tomb(k):
                keep = rev >> _SUB_BITS == target
                ki = by_key.get(key_of_value(v))
                if ki is not None and ki.compact(target):
                    index.remove(ki.key)
            else:
                ki = by_key.get(key_of_value(v))
                keep = False
                if ki is not None:
                    got = ki.get(target)
                    if got is not None and got[0] == rev:
                        keep = True
                        ki.compact(target)
            if not keep:
                batch.delete(KEY, k)
            if n >= limit:
                break
        done = n < limit
        if done:
            batch.put(META, FINISHED_COMPACT_KEY, rv.main_bytes(target))
            self._compaction = None
        else:
            c.disk_cursor = last + b"\x00"
        self._b.write(batch, sync=False)
        return done

    def compact_all(self, limit: int = 10000) -> None:
        """Run compact_step until done (tests, startup)."""
        while not self.compact_step(limit):
            if self._batch_open:
                raise RuntimeError("mvcc: compact_all with a batch open")

    # -- hashes ----------------------------------------------------------------------------

    def _hash_kv_steps(
        self, rev: int, chunk: int, crc: Callable[[bytes, int], int] = zlib.crc32
    ) -> Iterator[tuple[int, int, int] | None]:
        """hash_kv in steps: yields None after every `chunk` entries (the caller may let other
        work run; revisions are immutable and new ones are above `rev`), then the result."""
        compact = self._compact
        if 0 < rev <= compact:
            raise errors.COMPACTED()
        if rev > self._current:
            raise errors.FUTURE_REV()
        if rev == 0:
            rev = self._current
        h = crc(b"key", 0)
        if rev < 0:
            yield h, compact, rev  # etcd hashes nothing for a negative revision
            return
        by_key = self._index.by_key
        # etcd 3.4's HashByRev: at or below the compaction revision only each key's newest
        # revision at `rev` counts (so the hash does not depend on how far the deletion of
        # compacted revisions has got); if no key is alive at `rev`, what compaction keeps.
        keep_at = rev
        alive = rev == self._current and len(self._index.live) > 0  # the cheap common answer
        if compact > 0 and not alive and not any(ki.get(rev) is not None for ki in by_key.values()):
            keep_at = compact
        from_bytes = rv.from_bytes
        is_tomb = rv.is_tombstone
        end = rv.main_bytes(rev + 1)
        start = b""
        while True:
            n = 0
            last = b""
            for k, v in self._b.items(KEY, start, end):
                n += 1
                last = k
                r = from_bytes(k)
                if r >> _SUB_BITS <= compact:
                    if is_tomb(k):
                        continue
                    ki = by_key.get(key_of_value(v))
                    got = None if ki is None else ki.get(keep_at)
                    if got is None or got[0] != r:
                        continue
                h = crc(v, crc(k, h))
                if n >= chunk:
                    break
            if n < chunk:
                break
            start = last + b"\x00"
            yield None
        # Revisions of the open batch are not on disk yet (they sort after everything there).
        for k in sorted(self._pending):
            if start <= k < end:
                h = crc(self._pending[k], crc(k, h))
        yield h, compact, rev

    def hash_kv(self, rev: int = 0) -> tuple[int, int, int]:
        """(hash, compact_revision, hash_revision) as etcd 3.4's HashKV: a CRC-32 of the KEY
        entries up to `rev` (0: current) that etcd counts (the same entries, so with CRC-32C
        it would be etcd's very hash; zlib's CRC-32 is what we have). Members with the same
        history agree whatever their progress in deleting compacted revisions.
        Raises COMPACTED (0 < rev <= compact revision) / FUTURE_REV."""
        for result in self._hash_kv_steps(rev, 1 << 62):
            if result is not None:
                return result
        raise AssertionError("unreachable")

    async def hash_kv_async(self, rev: int = 0, chunk: int = 10000) -> tuple[int, int, int]:
        """hash_kv that yields to the event loop every `chunk` revisions (big stores). Starts
        over if a compaction is scheduled meanwhile (it changes what is hashed)."""
        while True:
            compact = self._compact
            for result in self._hash_kv_steps(rev, chunk):
                if result is not None:
                    return result
                await asyncio.sleep(0)
                if self._compact != compact:
                    break

    def hash(self) -> int:
        """CRC-32 of the replicated state as stored (etcd's Hash RPC): every state-machine
        family except META, plus the compaction records in META. Written data only."""
        crc = zlib.crc32
        h = 0
        b = self._b
        for cf in _HASHED_FAMILIES:
            h = crc(cf.encode(), h)
            for k, v in b.items(cf):
                h = crc(v, crc(k, h))
        for name in (SCHEDULED_COMPACT_KEY, FINISHED_COMPACT_KEY):
            got = b.get(META, name)
            if got is not None:
                h = crc(got, crc(name, h))
        return h


class _Compaction:
    """Progress of the physical part of a compaction (in memory; restarts from scratch)."""

    __slots__ = ("disk_cursor", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.disk_cursor = b""


class WriteTxn(ReadView):
    """The changes of one request: at most one main revision, one sub revision per change."""

    __slots__ = ("_batch", "_begin", "_events", "_lessor", "_s")

    def __init__(self, store: KVStore, batch: bk.Batch) -> None:
        self._s = store
        self._batch = batch
        self._begin = store._current
        self._events: list[kv_pb2.Event] = []
        self._lessor = store.lessor

    @property
    def rev(self) -> int:
        """The revision reads in this transaction see: its own changes included."""
        return self._begin + 1 if self._events else self._begin

    @property
    def begin_rev(self) -> int:
        return self._begin

    @property
    def changes(self) -> int:
        return len(self._events)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write a new revision of `key`; returns the transaction's revision."""
        s = self._s
        main = self._begin + 1
        rev = main << _SUB_BITS | len(self._events)
        ki = s._index.by_key.get(key)
        created = False
        if ki is None:
            ki = s._index.create_live(key)
            created = True
        revs = ki.revs
        ev = _Event()
        kv = ev.kv
        kv.key = key
        if revs:
            kv.create_revision = ki.created >> _SUB_BITS
            kv.version = ki.ver + 1
            old_lease = ki.lease
            if s.prev_kv_in_events:
                last = revs[-1]
                if last >> _SUB_BITS <= self._begin:
                    ev.prev_kv.ParseFromString(s._read(last))
                else:
                    _prev_at(s, ki, self._begin, ev)
        else:
            kv.create_revision = main
            kv.version = 1
            old_lease = 0
            if not created:
                s._index.revive(key)
                if ki.past is not None and s.prev_kv_in_events:
                    _prev_at(s, ki, self._begin, ev)
        kv.mod_revision = main
        kv.value = value
        if lease:
            kv.lease = lease
        data = kv.SerializeToString()
        rb = _to_bytes(rev)
        self._batch.put(KEY, rb, data)
        s._pending[rb] = data
        ki.put(rev, lease)
        self._events.append(ev)
        if old_lease != lease and self._lessor is not None:
            if old_lease:
                self._lessor.detach(old_lease, key)
            if lease:
                self._lessor.attach(lease, key)
        return main

    def delete_range(self, key: bytes, end: bytes | None = None) -> tuple[int, int]:
        """Delete the live keys in the range (end as in `range`); returns (deleted, revision)."""
        index = self._s._index
        end = _end(end)
        if end is None:
            ki = index.by_key.get(key)
            targets = [ki] if ki is not None and ki.revs else []
        else:
            by_key = index.by_key
            targets = [by_key[k] for k in index.live_keys(key, end)]
        for ki in targets:
            self._delete(ki)
        if targets or self._events:
            return len(targets), self._begin + 1
        return 0, self._begin

    def _delete(self, ki: KeyIndex) -> None:
        s = self._s
        main = self._begin + 1
        rev = main << _SUB_BITS | len(self._events)
        key = ki.key
        ev = _Event(type=_DELETE)
        kv = ev.kv
        kv.key = key
        data = kv.SerializeToString()  # a tombstone's value holds only the key (as etcd's)
        kv.mod_revision = main
        if s.prev_kv_in_events:
            last = ki.revs[-1]
            if last >> _SUB_BITS <= self._begin:
                ev.prev_kv.ParseFromString(s._read(last))
            else:
                _prev_at(s, ki, self._begin, ev)
        rb = rv.tombstone_bytes(rev)
        self._batch.put(KEY, rb, data)
        s._pending[rb] = data
        lease = ki.lease
        ki.tombstone(rev)
        s._index.kill(key)
        self._events.append(ev)
        if lease and self._lessor is not None:
            self._lessor.detach(lease, key)

    def end(self) -> list[kv_pb2.Event]:
        """Close the transaction; returns its events (revision order). Bumps the store's
        revision if anything changed. The events are shared: treat them as read-only."""
        s = self._s
        if s._txn is not self:
            raise RuntimeError("mvcc: transaction already ended")
        s._txn = None
        if self._events:
            s._current = self._begin + 1
        return self._events


def _prev_at(s: KVStore, ki: KeyIndex, at_main: int, ev: kv_pb2.Event) -> None:
    """Fill ev.prev_kv with the key's value at `at_main` (the revision before the change)."""
    got = ki.get(at_main)
    if got is not None:
        ev.prev_kv.ParseFromString(s._read(got[0]))
