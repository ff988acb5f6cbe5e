"""Raft snapshots: taking them (and compacting the log), and installing a leader's.

A follower installs a leader's snapshot in three durable steps, so a crash at any point
resumes correctly: (1) the received file is fsynced and a marker naming it is written,
(2) Raft's log is replaced by the snapshot, (3) the state machine is loaded from the file
and the marker cleared. A restart that finds the marker redoes (3) first (`resume_install`,
called by bootstrap before anything reads the stores).

Loading the file into the backend is this module's; reopening the stores on it and catching up
whatever depends on them is the caller's `restore` callback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import grpc

from etcdstore import errors
from etcdstore.logs import get_logger
from etcdstore.raft.records import Message, SnapshotMetadata
from etcdstore.snapshot import format as snapfmt
from etcdstore.storage import backend as bk
from etcdstore.storage.backend import Backend
from etcdstore.storage.raftlog import RaftLogStorage

log = get_logger("etcdstore.server")

_INSTALL_MARKER = b"installingSnapshot"


def resume_install(backend: Backend, restore: Callable[[], None]) -> None:
    """Finish a snapshot install a crash interrupted (step 3), if the marker says there was one."""
    raw = backend.get(bk.RAFT_STATE, _INSTALL_MARKER)
    if raw is None:
        return
    path = json.loads(raw)["path"]
    log.warning("resuming an interrupted snapshot install", path=path)
    _load(backend, path, restore)


def _load(backend: Backend, path: str, restore: Callable[[], None]) -> None:
    """Step 3: the snapshot file into the backend, the stores reopened on it, the marker cleared."""
    snapfmt.load_into(path, backend)
    restore()
    batch = backend.batch()
    batch.delete(bk.RAFT_STATE, _INSTALL_MARKER)
    backend.write(batch, sync=True)
    _unlink(path)


class Snapshots:
    """One member's Raft snapshots: the files received from a leader until Raft installs them,
    the install itself, files for followers, and snapshots of its own log (then compacted)."""

    def __init__(
        self,
        backend: Backend,
        raft_storage: RaftLogStorage,
        member_dir: str,
        *,
        snapshot_count: int,
        catchup_entries: int,
        restore: Callable[[], None],
    ) -> None:
        self._backend = backend
        self._storage = raft_storage
        self._member_dir = member_dir
        self._count = snapshot_count  # entries applied between two snapshots (--snapshot-count)
        self._catchup = catchup_entries  # entries kept behind a snapshot for slow followers
        self._restore = restore  # reopen the stores on the loaded backend, and what depends on them
        self._received: dict[int, str] = {}  # snapshot index -> file, until Raft installs it
        self._index = raft_storage.snapshot().metadata.index  # the last snapshot taken or installed

    # -- a leader's snapshot, on a follower -----------------------------------------------------------

    async def receive(self, msg: Message, path: str) -> None:
        """The transport stored the file of the leader's snapshot message: check it, keep it for Raft."""
        await asyncio.get_running_loop().run_in_executor(None, snapfmt.verify, path)
        assert msg.snapshot is not None  # the transport hands over snapshot messages only
        self._received[msg.snapshot.metadata.index] = path

    def mark_install(self, snap: Any) -> None:
        """Step 1: the marker naming the file, durable before Raft's log is replaced."""
        path = self._received.get(snap.metadata.index)
        if path is None:
            raise RuntimeError(f"no snapshot data received for index {snap.metadata.index}")
        batch = self._backend.batch()
        batch.put(bk.RAFT_STATE, _INSTALL_MARKER, json.dumps({"path": path}).encode())
        self._backend.write(batch, sync=True)

    def install(self, snap: Any) -> None:
        """Step 3, once Raft's log holds the snapshot."""
        path = self._received.pop(snap.metadata.index)
        for stale in self._received.values():
            _unlink(stale)
        self._received.clear()
        _load(self._backend, path, self._restore)
        self._index = snap.metadata.index

    # -- this member's snapshots -----------------------------------------------------------------------

    async def for_follower(self, applied_index: int, applied_term: int) -> tuple[str, SnapshotMetadata]:
        """A snapshot file of the current state and the Raft metadata describing exactly it
        (`applied_index`/`applied_term` read by the caller in the same turn: the file's
        checkpoint is taken synchronously before the first await, so they match its content)."""
        meta = SnapshotMetadata(applied_index, applied_term, self._storage.conf_state)
        path = await make_snapshot_file(self._member_dir, self._backend)
        return path, meta

    def maybe_snapshot(self, applied_index: int, applied_term: int) -> None:
        """Take a Raft snapshot every --snapshot-count applied entries, and compact the log behind it."""
        if applied_index - self._index < self._count:
            return
        storage = self._storage
        index = applied_index
        if index <= storage.snapshot().metadata.index:
            self._index = storage.snapshot().metadata.index
            return
        storage.create_snapshot(index, applied_term)
        compact_to = index - self._catchup
        if compact_to > storage.first_index():
            storage.compact(compact_to)
        self._index = index
        log.info("raft snapshot taken", index=index, compacted_to=max(compact_to, 0))


async def make_snapshot_file(member_dir: str, backend: Backend) -> str:
    """A point-in-time snapshot file of the state machine (checkpoint -> snapshot format)."""
    loop = asyncio.get_running_loop()
    work = tempfile.mkdtemp(prefix="snapshot-", dir=member_dir)
    checkpoint = os.path.join(work, "checkpoint")
    out = os.path.join(work, "snapshot.db")
    # The checkpoint is taken on the loop thread: no apply batch can land half-way through it.
    backend.checkpoint(checkpoint)

    def build() -> None:
        cp = Backend.open_read_only(checkpoint)
        try:
            snapfmt.create_file(cp, out)
        finally:
            cp.close()

    try:
        await loop.run_in_executor(None, build)
    except Exception as e:
        log.error("snapshot failed", exc_info=e)
        _remove_tree(work)
        raise errors.EtcdError(grpc.StatusCode.INTERNAL, f"etcdserver: snapshot failed: {e}") from None
    final = tempfile.mktemp(prefix="snapshot-", suffix=".db", dir=member_dir)
    os.replace(out, final)
    _remove_tree(work)
    return final


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
