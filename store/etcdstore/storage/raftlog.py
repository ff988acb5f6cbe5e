"""The durable Raft log, hard state and snapshot metadata, in the member's RocksDB.

Layout (column families of the one backend):
    raftLog:   8-byte big-endian index -> encoded entry
    raftState: b"hardState" -> encoded HardState
               b"snapshot"  -> encoded SnapshotMetadata (index, term, conf state)
               b"confState" -> encoded ConfState as of the applied index

Raft reads through the `Storage` protocol; the retained log (since the last compaction) is
mirrored in memory, as etcd keeps it in its MemoryStorage, so `term()` and `entries()` never
touch the disk. Writes go to RocksDB first (synced) and then to the mirror.

Why a separate conf state: the server restarts Raft at the applied index (the consistent
index stored with the MVCC data), so Raft must start from the membership as of that index,
not as of the last snapshot. The apply loop stores it in the same batch as the conf change.

The snapshot itself carries no data: the state machine is the backend. When a follower
needs a snapshot, the transport streams a checkpoint of the backend with it.
"""

from __future__ import annotations

import struct

from etcdstore.raft import codec
from etcdstore.raft.records import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from etcdstore.raft.storage import MemoryStorage
from etcdstore.storage import backend as bk

_INDEX = struct.Struct(">Q")
HARD_STATE = b"hardState"
SNAPSHOT = b"snapshot"
CONF_STATE = b"confState"


class RaftLogStorage:
    """Raft's `Storage` over RocksDB with an in-memory mirror of the retained log."""

    def __init__(self, backend: bk.Backend) -> None:
        self._backend = backend
        self._mem = MemoryStorage()
        raw = backend.get(bk.RAFT_STATE, SNAPSHOT)
        if raw is not None:
            meta = codec.decode_snapshot_metadata(raw)
            self._mem.apply_snapshot(Snapshot(meta))
        raw = backend.get(bk.RAFT_STATE, CONF_STATE)
        self._conf_state = (
            codec.decode_conf_state(raw) if raw is not None else self._mem.snapshot().metadata.conf_state
        )
        raw = backend.get(bk.RAFT_STATE, HARD_STATE)
        if raw is not None:
            self._mem.set_hard_state(codec.decode_hard_state(raw))
        first = self._mem.first_index()
        entries = [codec.decode_entry(v) for _, v in backend.items(bk.RAFT_LOG, _INDEX.pack(first))]
        if entries:
            self._mem.append(entries)

    # -- Storage protocol (read by Raft) -------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._mem.hard_state, self._conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self._mem.entries(lo, hi, max_size)

    def term(self, i: int) -> int:
        return self._mem.term(i)

    def first_index(self) -> int:
        return self._mem.first_index()

    def last_index(self) -> int:
        return self._mem.last_index()

    def snapshot(self) -> Snapshot:
        return self._mem.snapshot()

    # -- host-side writes ----------------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._mem.hard_state

    @property
    def conf_state(self) -> ConfState:
        return self._conf_state

    def save(
        self, entries: list[Entry], hard_state: HardState | None, snapshot: Snapshot | None, sync: bool = True
    ) -> None:
        """Persist what a Ready hands out (snapshot first, then entries, then hard state)."""
        batch = self._backend.batch()
        if snapshot is not None and not snapshot.is_empty():
            meta = snapshot.metadata
            # Installing a leader's snapshot replaces the whole log.
            batch.delete_range(bk.RAFT_LOG, _INDEX.pack(0), b"\xff" * 9)
            batch.put(bk.RAFT_STATE, SNAPSHOT, codec.encode_snapshot_metadata(meta))
            batch.put(bk.RAFT_STATE, CONF_STATE, codec.encode_conf_state(meta.conf_state))
        if entries:
            last_new = entries[-1].index
            old_last = self._mem.last_index()
            if last_new < old_last:
                # A new leader overwrote our uncommitted tail: drop the conflicting suffix.
                batch.delete_range(bk.RAFT_LOG, _INDEX.pack(last_new + 1), _INDEX.pack(old_last + 1))
            put = batch.put
            enc = codec.encode_entry
            for e in entries:
                put(bk.RAFT_LOG, _INDEX.pack(e.index), enc(e))
        if hard_state is not None:
            batch.put(bk.RAFT_STATE, HARD_STATE, codec.encode_hard_state(hard_state))
        self._backend.write(batch, sync=sync)
        if snapshot is not None and not snapshot.is_empty():
            self._mem.apply_snapshot(snapshot)
            self._conf_state = snapshot.metadata.conf_state
        if entries:
            self._mem.append(entries)
        if hard_state is not None:
            self._mem.set_hard_state(hard_state)

    def set_conf_state(self, batch: bk.Batch, conf_state: ConfState) -> None:
        """Record the membership as of the entry being applied (in the apply batch)."""
        self._conf_state = conf_state
        batch.put(bk.RAFT_STATE, CONF_STATE, codec.encode_conf_state(conf_state))

    def create_snapshot(self, index: int, term: int) -> Snapshot:
        """Mark the state machine at applied `index` as a snapshot (its data is the backend)."""
        meta = SnapshotMetadata(index, term, self._conf_state)
        batch = self._backend.batch()
        batch.put(bk.RAFT_STATE, SNAPSHOT, codec.encode_snapshot_metadata(meta))
        self._backend.write(batch, sync=True)
        return self._mem.create_snapshot(index, self._conf_state, b"")

    def compact(self, index: int) -> None:
        """Drop log entries up to and including `index` (covered by the snapshot).

        The deletion is written synced: applies are written unsynced, and this synced write
        makes them durable before the entries that could replay them disappear.
        """
        first = self._mem.first_index()
        if index < first:
            return
        batch = self._backend.batch()
        batch.delete_range(bk.RAFT_LOG, _INDEX.pack(0), _INDEX.pack(index + 1))
        self._backend.write(batch, sync=True)
        self._mem.compact(index)
