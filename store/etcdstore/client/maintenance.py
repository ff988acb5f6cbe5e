"""Maintenance methods. Most are per member: call them on `client.at(endpoint)`."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from enum import IntEnum
from pathlib import Path

from etcdstore.client.methods import method
from etcdstore.client.requests import AlarmType
from etcdstore.client.transport import Transport
from etcdstore.proto.etcdserverpb import rpc_pb2

_ALARM = method("Maintenance.Alarm")
_STATUS = method("Maintenance.Status")
_DEFRAG = method("Maintenance.Defragment")
_HASH = method("Maintenance.Hash")
_HASHKV = method("Maintenance.HashKV")
_SNAPSHOT = method("Maintenance.Snapshot")
_MOVE_LEADER = method("Maintenance.MoveLeader")
_DOWNGRADE = method("Maintenance.Downgrade")


class DowngradeAction(IntEnum):
    VALIDATE = 0
    ENABLE = 1
    CANCEL = 2


class MaintenanceMixin(Transport):
    async def status(self) -> rpc_pb2.StatusResponse:
        return await self._call(_STATUS, rpc_pb2.StatusRequest(), idempotent=True)

    async def hash_kv(self, revision: int = 0) -> rpc_pb2.HashKVResponse:
        """Hash of the MVCC keyspace up to `revision` (0: the newest); equal on members with equal data."""
        return await self._call(_HASHKV, rpc_pb2.HashKVRequest(revision=revision), idempotent=True)

    async def hash(self) -> rpc_pb2.HashResponse:
        """Hash of the whole backend database (differs between members; for debugging)."""
        return await self._call(_HASH, rpc_pb2.HashRequest(), idempotent=True)

    async def alarm_list(self) -> rpc_pb2.AlarmResponse:
        req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET)
        return await self._call(_ALARM, req, idempotent=True)

    async def alarm_disarm(
        self, member_id: int = 0, alarm: AlarmType = AlarmType.NONE
    ) -> rpc_pb2.AlarmResponse:
        """Deactivate `alarm` on `member_id` (etcd: 0/NONE match nothing; pass the pair from alarm_list)."""
        req = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=member_id, alarm=int(alarm)
        )
        return await self._call(_ALARM, req, idempotent=False)

    async def alarm_activate(self, member_id: int, alarm: AlarmType) -> rpc_pb2.AlarmResponse:
        """Raise an alarm by hand (fault injection; etcd raises NOSPACE itself when over quota)."""
        req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=member_id, alarm=int(alarm))
        return await self._call(_ALARM, req, idempotent=False)

    async def defragment(self) -> rpc_pb2.DefragmentResponse:
        return await self._call(_DEFRAG, rpc_pb2.DefragmentRequest(), idempotent=False)

    async def move_leader(self, target_id: int) -> rpc_pb2.MoveLeaderResponse:
        """Hand leadership to member `target_id`; must be sent to the current leader."""
        return await self._call(_MOVE_LEADER, rpc_pb2.MoveLeaderRequest(targetID=target_id), idempotent=False)

    async def downgrade(self, action: DowngradeAction, version: str = "") -> rpc_pb2.DowngradeResponse:
        """etcd 3.5+ only (3.4 answers UNIMPLEMENTED)."""
        req = rpc_pb2.DowngradeRequest(action=int(action), version=version)
        return await self._call(_DOWNGRADE, req, idempotent=False)

    async def snapshot(self) -> AsyncIterator[bytes]:
        """The member's database as a stream of byte chunks (etcd appends a sha256 of the rest)."""
        async for resp in self._server_stream(_SNAPSHOT, rpc_pb2.SnapshotRequest()):
            if resp.blob:
                yield resp.blob

    async def snapshot_save(self, path: str | os.PathLike[str]) -> tuple[int, str]:
        """Write a snapshot to `path` atomically (temp file, fsync, rename, fsync of the directory).
        Returns (size in bytes, sha256 hex digest of the file)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.part.{os.getpid()}")
        digest = hashlib.sha256()
        size = 0
        loop = asyncio.get_running_loop()
        try:
            with open(tmp, "wb") as f:  # noqa: ASYNC230 - local disk writes of one chunk at a time
                async for chunk in self.snapshot():
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                f.flush()
                await loop.run_in_executor(None, os.fsync, f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        await loop.run_in_executor(None, _fsync_dir, target.parent)
        return size, digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
