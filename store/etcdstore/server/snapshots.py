"""Raft snapshots: taking them (and compacting the log), and installing a leader's.

A follower installs a leader's snapshot in three durable steps, so a crash at any point
resumes correctly: (1) the received file is fsynced and a marker naming it is written,
(2) Raft's log is replaced by the snapshot, (3) the state machine is loaded from the file
and the marker cleared. A restart that finds the marker redoes (3) first.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from typing import Any

import grpc

from etcdstore import errors
from etcdstore.lease.lessor import Lessor
from etcdstore.logs import get_logger
from etcdstore.membership import Membership
from etcdstore.mvcc.kvstore import KVStore
from etcdstore.raft.records import Message
from etcdstore.server.alarms import Alarms
from etcdstore.snapshot import format as snapfmt
from etcdstore.storage import backend as bk
from etcdstore.storage.backend import Backend

log = get_logger("etcdstore.server")


class SnapshotMixin:
    """Part of EtcdServer (see server.py); methods use its state."""

    # A follower installs a leader's snapshot in three durable steps, so a crash at any point
    # resumes correctly: (1) the received file is fsynced and a marker naming it is written,
    # (2) Raft's log is replaced by the snapshot, (3) the state machine is loaded from the file
    # and the marker cleared. A restart that finds the marker redoes (3) first.
    _INSTALL_MARKER = b"installingSnapshot"

    def mark_snapshot_install(self, snap: Any) -> None:
        path = self._received_snapshots.get(snap.metadata.index)
        if path is None:
            raise RuntimeError(f"no snapshot data received for index {snap.metadata.index}")
        batch = self.backend.batch()
        batch.put(bk.RAFT_STATE, self._INSTALL_MARKER, json.dumps({"path": path}).encode())
        self.backend.write(batch, sync=True)

    def install_snapshot(self, snap: Any) -> None:
        path = self._received_snapshots.pop(snap.metadata.index)
        for stale in self._received_snapshots.values():
            _unlink(stale)
        self._received_snapshots.clear()
        self._load_state_machine(path)
        self._snapshot_index = snap.metadata.index
        log.info(
            "installed snapshot from leader", index=self.applied_index, revision=self.kv.current_revision
        )

    def _resume_snapshot_install(self) -> None:
        raw = self.backend.get(bk.RAFT_STATE, self._INSTALL_MARKER)
        if raw is None:
            return
        path = json.loads(raw)["path"]
        log.warning("resuming an interrupted snapshot install", path=path)
        self._load_state_machine(path)

    def _load_state_machine(self, path: str) -> None:
        snapfmt.load_into(path, self.backend)
        self.lessor = Lessor(self.backend, min_ttl=self.lessor.min_ttl)
        self.kv = KVStore(self.backend, lessor=self.lessor)
        self.alarms = Alarms(self.backend)
        self.membership = Membership.load(self.backend)
        if hasattr(self, "watchable"):
            self.watchable.restore(self.kv)
        self.applied_index = self.kv.consistent_index
        self.applied_term = self.kv.consistent_term
        if hasattr(self, "_applied"):  # not yet during __init__ (resuming an install)
            self._applied.advance(self.applied_index)
        self.auth.reload()
        batch = self.backend.batch()
        batch.delete(bk.RAFT_STATE, self._INSTALL_MARKER)
        self.backend.write(batch, sync=True)
        _unlink(path)
        if self.transport is not None:
            self.transport.update_members(self.membership)

    async def receive_snapshot(self, msg: Message, path: str) -> None:
        """The transport stored a snapshot file from the leader: hand its message to Raft."""
        await asyncio.get_running_loop().run_in_executor(None, snapfmt.verify, path)
        self._received_snapshots[msg.snapshot.metadata.index] = path
        self.step(msg)

    async def snapshot_for_follower(self) -> tuple[str, Any]:
        """A snapshot file of the current state and the Raft metadata describing exactly it."""
        from etcdstore.raft.records import SnapshotMetadata

        # make_snapshot_file checkpoints synchronously first, so these values match its content.
        meta = SnapshotMetadata(self.applied_index, self.applied_term, self.raft_storage.conf_state)
        path = await make_snapshot_file(self)
        return path, meta

    def maybe_snapshot(self) -> None:
        if self.applied_index - self._snapshot_index < self.cfg.snapshot_count:
            return
        index = self.applied_index
        if index <= self.raft_storage.snapshot().metadata.index:
            self._snapshot_index = self.raft_storage.snapshot().metadata.index
            return
        self.raft_storage.create_snapshot(index, self.applied_term)
        compact_to = index - self.cfg.snapshot_catchup_entries
        if compact_to > self.raft_storage.first_index():
            self.raft_storage.compact(compact_to)
        self._snapshot_index = index
        log.info("raft snapshot taken", index=index, compacted_to=max(compact_to, 0))


async def make_snapshot_file(s: Any) -> str:
    """A point-in-time snapshot file of the state machine (checkpoint -> snapshot format)."""
    loop = asyncio.get_running_loop()
    work = tempfile.mkdtemp(prefix="snapshot-", dir=s.member_dir)
    checkpoint = os.path.join(work, "checkpoint")
    out = os.path.join(work, "snapshot.db")
    # The checkpoint is taken on the loop thread: no apply batch can land half-way through it.
    s.backend.checkpoint(checkpoint)

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
    final = tempfile.mktemp(prefix="snapshot-", suffix=".db", dir=s.member_dir)
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
