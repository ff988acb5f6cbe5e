"""etcdserverpb.Maintenance: Status, Hash, HashKV, Defragment, Snapshot, Alarm, MoveLeader."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from etcdstore import errors
from etcdstore.api.common import abort_with, gate, log, unary
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.snapshot import etcdformat
from etcdstore.storage.backend import Backend
from etcdstore.txn.requests import Kind

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

SNAPSHOT_CHUNK = 32 * 1024  # etcd streams 32 KiB per message


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server

    @unary
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        gate(self.s, context, learner_ok=True)
        return self.s.status()

    @unary
    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "Hash")
        return rpc_pb2.HashResponse(header=s.header(), hash=s.kv.hash())

    @unary
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "HashKV")
        h, compact_rev, hash_rev = await s.kv.hash_kv_async(request.revision)
        return rpc_pb2.HashKVResponse(
            header=s.header(), hash=h, compact_revision=compact_rev, hash_revision=hash_rev
        )

    @unary
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "Defragment")
        await asyncio.get_running_loop().run_in_executor(None, s.backend.defragment)
        return rpc_pb2.DefragmentResponse()  # etcd 3.4 fills no header here

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """etcd's snapshot: the state machine as etcd 3.4's bbolt database, then its sha256.

        A RocksDB checkpoint taken on the loop thread (no apply batch can land half-way through
        it) is the consistent view; the bbolt file is built from it on disk in a worker thread
        and streamed in 32 KiB chunks, so memory stays flat whatever the database's size.
        """
        s = self.s
        loop = asyncio.get_running_loop()
        try:
            gate(s, context)
            s.auth.authorize_admin(context, "Snapshot")
            work = tempfile.mkdtemp(prefix="snapshot-", dir=s.member_dir)
        except errors.EtcdError as e:
            await abort_with(context, e)
            return
        try:
            checkpoint = os.path.join(work, "checkpoint")
            path = os.path.join(work, "snapshot.db")
            s.backend.checkpoint(checkpoint)

            def build() -> None:
                cp = Backend.open_read_only(checkpoint)
                try:
                    etcdformat.create_db_file(cp, path)
                finally:
                    cp.close()
                _remove_tree(checkpoint)

            try:
                await loop.run_in_executor(None, build)
            except Exception as e:  # noqa: BLE001 - any failure ends the stream with INTERNAL
                log.error("snapshot failed", exc_info=e)
                await abort_with(
                    context, errors.EtcdError(grpc.StatusCode.INTERNAL, f"etcdserver: snapshot failed: {e}")
                )
                return
            total = os.path.getsize(path)
            sent = 0
            sha = hashlib.sha256()
            with open(path, "rb") as f:  # noqa: ASYNC230 - a local file; the reads go to a thread

                def read_block() -> bytes:
                    block = f.read(32 * SNAPSHOT_CHUNK)
                    sha.update(block)
                    return block

                while total - sent > 0:
                    block = await loop.run_in_executor(None, read_block)
                    if not block:
                        raise errors.EtcdError(grpc.StatusCode.INTERNAL, "etcdserver: snapshot file shrank")
                    for i in range(0, len(block), SNAPSHOT_CHUNK):
                        blob = block[i : i + SNAPSHOT_CHUNK]
                        sent += len(blob)
                        # etcd 3.4 sends neither a header nor the 3.6 version field with the chunks.
                        yield rpc_pb2.SnapshotResponse(remaining_bytes=total - sent, blob=blob)
            # As etcd: the sha256 of the database last, for `snapshot restore` to check.
            yield rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=sha.digest())
        finally:
            _remove_tree(work)

    @unary
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "Alarm")
        resp = await s.propose(Kind.ALARM, request.SerializeToString())
        if request.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            s.quota.alarm_deactivated()
        resp.ClearField("header")  # etcd 3.4's alarm replies carry no header
        return resp

    @unary
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        s = self.s
        gate(s, context)
        s.auth.authorize_admin(context, "MoveLeader")
        await s.move_leader(request.targetID)
        return rpc_pb2.MoveLeaderResponse(header=s.header())

    @unary
    async def Downgrade(
        self, request: rpc_pb2.DowngradeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DowngradeResponse:
        # etcd 3.4 has no downgrade support either.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "etcdserver: downgrade is not supported")


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
