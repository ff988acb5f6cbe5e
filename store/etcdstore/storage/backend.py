"""The one RocksDB database a member keeps its state in.

Every piece of durable state (MVCC data, leases, auth, membership, alarms, the Raft
log and hard state) lives in a column family of one RocksDB database. Column families
share RocksDB's write-ahead log, which gives two properties the server relies on:

* a WriteBatch spanning several column families is atomic, so the applied Raft index
  ("consistent index") is stored in the same batch as the data it produced;
* a synced write makes every earlier write durable too, so applies can be written
  unsynced as long as the Raft log entries they came from stay until a later synced
  write (the log compaction that removes them is itself synced).

All writes happen on one thread at a time (the server's apply path). MVCC revisions are
immutable once written, so readers need no snapshot; a consistent copy of everything
comes from `checkpoint`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Final

from rocksdict import (
    AccessType,
    Checkpoint,
    ColumnFamily,
    DBCompressionType,
    Options,
    Rdict,
    RdictIter,
    WriteBatch,
    WriteOptions,
)

# Column families and what they hold.
META: Final = "meta"  # consistent index, scheduled/finished compaction, cluster and member IDs
KEY: Final = "key"  # MVCC revisions -> mvccpb.KeyValue bytes
LEASE: Final = "lease"  # lease ID -> lease record
AUTH: Final = "auth"  # auth enabled flag, revision
AUTH_USERS: Final = "authUsers"
AUTH_ROLES: Final = "authRoles"
MEMBERS: Final = "members"  # member ID -> member record; removed members
ALARM: Final = "alarm"
RAFT_LOG: Final = "raftLog"  # index (8 bytes BE) -> encoded entry
RAFT_STATE: Final = "raftState"  # hard state, snapshot metadata, conf state

COLUMN_FAMILIES: Final = (
    META,
    KEY,
    LEASE,
    AUTH,
    AUTH_USERS,
    AUTH_ROLES,
    MEMBERS,
    ALARM,
    RAFT_LOG,
    RAFT_STATE,
)
# Column families that make up the state machine (what a snapshot carries); the Raft
# log and hard state are per-member and never part of a snapshot.
STATE_MACHINE_FAMILIES: Final = tuple(cf for cf in COLUMN_FAMILIES if cf not in (RAFT_LOG, RAFT_STATE))


def _options() -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    opt.set_compression_type(DBCompressionType.lz4())
    # The server keeps its own durable log discipline; RocksDB's WAL must survive a
    # kill -9 without the "tolerate corrupted tail" losses of the default in old versions.
    return opt


class Batch:
    """A set of writes across column families, applied atomically by Backend.write."""

    __slots__ = ("_handles", "_wb", "count")

    def __init__(self, handles: dict[str, ColumnFamily]) -> None:
        self._wb = WriteBatch(raw_mode=True)
        self._handles = handles
        self.count = 0

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self._wb.put(key, value, self._handles[cf])
        self.count += 1

    def delete(self, cf: str, key: bytes) -> None:
        self._wb.delete(key, self._handles[cf])
        self.count += 1

    def delete_range(self, cf: str, begin: bytes, end: bytes) -> None:
        """Delete every key in [begin, end)."""
        self._wb.delete_range(begin, end, self._handles[cf])
        self.count += 1

    def __len__(self) -> int:
        return self.count


def _scan(it: RdictIter, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    """Walk a RocksDB iterator over [start, end).

    Bounds are checked here rather than with ReadOptions: rocksdict's ReadOptions
    encodes bounds for its non-raw key format, which does not match raw keys.
    """
    if reverse:
        if end is None:
            it.seek_to_last()
        else:
            it.seek_for_prev(end)
            if it.valid() and it.key() >= end:
                it.prev()
        while it.valid():
            k = it.key()
            if k < start:
                return
            yield k, it.value()
            it.prev()
    else:
        it.seek(start)
        while it.valid():
            k = it.key()
            if end is not None and k >= end:
                return
            yield k, it.value()
            it.next()


class Backend:
    """One member's RocksDB database, opened at `path` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        families = {cf: _options() for cf in COLUMN_FAMILIES}
        self._db = Rdict(self.path, _options(), column_families=families)
        self._init_handles()

    def _init_handles(self) -> None:
        self._cfs: dict[str, Rdict] = {cf: self._db.get_column_family(cf) for cf in COLUMN_FAMILIES}
        self._handles = {cf: self._db.get_column_family_handle(cf) for cf in COLUMN_FAMILIES}
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()
        self._nosync.sync = False
        self._write_lock = threading.Lock()
        self._closed = False

    # -- reads (current state) --------------------------------------------------------

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._cfs[cf].get(key)

    def items(
        self, cf: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterate [start, end) in key order (or reverse order, from just below `end`)."""
        return _scan(self._cfs[cf].iter(), start, end, reverse)

    def items_with_prefix(self, cf: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Iterate the keys that start with `prefix`, in key order.

        Not `items(prefix, prefix + b"\\xff")`: that bound drops keys whose next byte is 0xff.
        """
        for k, v in _scan(self._cfs[cf].iter(), prefix, None, False):
            if not k.startswith(prefix):
                return
            yield k, v

    def checkpoint(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent point-in-time copy of the whole database to `dest` (hard links, fast).

        rocksdict's snapshot iterators do not honour the snapshot, so point-in-time
        copies (Maintenance.Snapshot, Raft snapshots for followers) come from a checkpoint,
        opened afterwards with `Backend.open_read_only`.
        """
        with self._write_lock:
            Checkpoint(self._db).create_checkpoint(os.fspath(dest))

    @classmethod
    def open_read_only(cls, path: str | os.PathLike[str]) -> Backend:
        """Open a checkpoint (or a stopped member's database) for reading only."""
        self = cls.__new__(cls)
        self.path = os.fspath(path)
        families = {cf: _options() for cf in COLUMN_FAMILIES}
        self._db = Rdict(self.path, _options(), column_families=families, access_type=AccessType.read_only())
        self._init_handles()
        return self

    # -- writes -------------------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self._handles)

    def clear_family(self, batch: Batch, cf: str) -> None:
        """Add to `batch` the deletion of every key now in `cf`, however long or high its bytes."""
        it = self._cfs[cf].iter()
        it.seek_to_last()
        if it.valid():
            batch.delete_range(cf, b"", it.key() + b"\x00")

    def write(self, batch: Batch, *, sync: bool) -> None:
        """Apply a batch atomically; with sync=True it (and everything before it) is on disk on return."""
        if batch.count == 0 and not sync:
            return
        with self._write_lock:
            if batch.count == 0:
                # An empty synced write still flushes the WAL of earlier unsynced writes.
                self._db.flush_wal(True)
                return
            self._db.write(batch._wb, self._sync if sync else self._nosync)

    def sync_wal(self) -> None:
        """Make every write so far durable (fsync the write-ahead log).

        Unlike a synced `write`, rocksdict releases the GIL while this waits for the disk,
        so the server calls it from a thread and keeps serving meanwhile.
        """
        self._db.flush_wal(True)

    # -- maintenance ----------------------------------------------------------------------

    def size(self) -> int:
        """Bytes the database takes on disk (etcd's dbSize)."""
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:
                    pass  # a file compacted away while we walked
        return total

    def size_in_use(self) -> int:
        """Estimated bytes of live data (etcd's dbSizeInUse)."""
        total = 0
        for cf in COLUMN_FAMILIES:
            rd = self._cfs[cf]
            for prop in ("rocksdb.estimate-live-data-size", "rocksdb.cur-size-all-mem-tables"):
                try:
                    total += rd.property_int_value(prop) or 0
                except Exception:  # noqa: BLE001, S110  # property missing in this RocksDB build
                    pass
        return total

    def defragment(self) -> None:
        """Rewrite every column family's files, dropping deleted data (etcd's Defragment).

        RocksDB compacts alongside concurrent writes, so unlike etcd's bbolt rewrite this
        does not block the apply path; run it off the event loop.
        """
        for cf in COLUMN_FAMILIES:
            self._cfs[cf].flush(True)
            self._cfs[cf].compact_range(None, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            # Every family Rdict and handle keeps RocksDB open (and its LOCK held).
            for rd in self._cfs.values():
                rd.close()
            self._cfs.clear()
            self._handles.clear()
            self._db.close()
            del self._db
