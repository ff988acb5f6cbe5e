"""etcdserverpb.Watch: many watchers multiplexed on one bidirectional stream.

Requests are read by a task of their own; every response (control ones included) goes out
through the watch stream's single FIFO buffer, so a watcher's "created" response always
precedes its events and a cancel confirmation follows them, as in etcd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from etcdstore import errors, metrics
from etcdstore.api.common import _CODE_NAMES, abort_with, gate, log, metadata_value
from etcdstore.mvcc.watchable import PROGRESS_WATCH_ID, WatchError, WatchResponse, WatchStream
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

_INVALID_WATCH_ID = -1

# etcd's maxNoLeaderCnt (etcdserver/api/v3rpc/interceptor.go): a stream opened with `hasleader: true`
# metadata is cancelled with "etcdserver: no leader" once its member has seen no leader for this many
# consecutive election timeouts. kube-apiserver opens every watch this way (clientv3.WithRequireLeader),
# so that a member cut off from the cluster drops its watchers and they resume on another member
# instead of silently receiving nothing.
MAX_NO_LEADER_COUNT = 3


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server

    async def Watch(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        # Counted in grpc_server_* as grpc-go's prometheus interceptor counts etcd's bidi stream.
        started, handling, handled = metrics.rpc_metrics("etcdserverpb.Watch", "Watch", "bidi_stream")
        started.inc()
        t = time.perf_counter()
        code = "OK"
        try:
            async for resp in self._watch(request_iterator, context):
                yield resp
        except errors.EtcdError as e:
            code = e.code.name
            await abort_with(context, e)
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        finally:
            if handling is not None:
                handling.observe(time.perf_counter() - t)
            handled(_CODE_NAMES.get(code, code)).inc()

    async def _watch(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        s = self.s
        gate(s, context)
        ws = s.watchable.new_stream()
        session = _Session(s, ws, context)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(session.read(request_iterator))
        monitor = None
        if metadata_value(context, "hasleader") == "true":
            monitor = loop.create_task(_close_without_leader(s, ws, session))
        try:
            while True:
                resp = await ws.recv()
                if resp is None:
                    break
                if isinstance(resp, rpc_pb2.WatchResponse):
                    yield resp  # a control response made by the reader
                    continue
                for out in session.convert(resp):
                    yield out
        finally:
            reader.cancel()
            if monitor is not None:
                monitor.cancel()
            ws.close()
        if session.no_leader:
            raise errors.EtcdError(errors.NO_LEADER.code, errors.NO_LEADER.message)


async def _close_without_leader(s: ServerAPI, ws: WatchStream, session: _Session) -> None:
    """etcd's monitorLeader: close the stream after MAX_NO_LEADER_COUNT election timeouts in a row
    without a leader (the Watch handler then ends the call with "etcdserver: no leader")."""
    interval = s.cfg.election_timeout_ms / 1000.0
    missed = 0
    while not ws.closed:
        await asyncio.sleep(interval)
        missed = missed + 1 if s.leader_id == 0 else 0
        if missed >= MAX_NO_LEADER_COUNT:
            session.no_leader = True
            ws.close()
            return


class _Session:
    """Per-stream state: which watchers want fragments, and the request reader."""

    def __init__(self, s: ServerAPI, ws: WatchStream, context: grpc.aio.ServicerContext) -> None:
        self.s = s
        self.ws = ws
        self.context = context
        self.fragment: set[int] = set()
        self._progress_pending = False
        self.no_leader = False  # closed by _close_without_leader

    def header(self, revision: int) -> rpc_pb2.ResponseHeader:
        return self.s.header(revision)

    def control(self, resp: rpc_pb2.WatchResponse) -> None:
        self.ws.put_control(resp)  # in order with the events already buffered

    async def read(self, requests: AsyncIterator[rpc_pb2.WatchRequest]) -> None:
        try:
            async for req in requests:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    self.create(req.create_request)
                elif which == "cancel_request":
                    self.cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    self.progress()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the client went away
        except Exception as e:  # noqa: BLE001 - logged; the stream ends
            log.warn("watch stream reader failed", exc_info=e)
            self.ws.close()
        # A client that only half-closes keeps receiving events, as etcd does; the stream ends
        # when the call does (the Watch handler closes the watch stream then).

    def create(self, creq: rpc_pb2.WatchCreateRequest) -> None:
        rev = self.ws.revision
        try:
            self.s.auth.authorize_watch(self.context, creq.key, creq.range_end)
        except errors.EtcdError as e:
            # etcd answers a refused watch with created+canceled and the reason.
            self.control(
                rpc_pb2.WatchResponse(
                    header=self.header(rev),
                    watch_id=_INVALID_WATCH_ID,
                    created=True,
                    canceled=True,
                    cancel_reason=e.message,
                )
            )
            return
        try:
            wid = self.ws.watch(
                creq.watch_id,
                creq.key,
                creq.range_end,
                creq.start_revision,
                prev_kv=creq.prev_kv,
                filters=list(creq.filters),
                progress_notify=creq.progress_notify,
            )
        except WatchError as e:
            self.control(
                rpc_pb2.WatchResponse(
                    header=self.header(rev),
                    watch_id=_INVALID_WATCH_ID,
                    created=True,
                    canceled=True,
                    cancel_reason=str(e),
                )
            )
            return
        if creq.fragment:
            self.fragment.add(wid)
        self.control(rpc_pb2.WatchResponse(header=self.header(rev), watch_id=wid, created=True))

    def cancel(self, watch_id: int) -> None:
        try:
            self.ws.cancel(watch_id)
        except WatchError:
            return  # etcd sends nothing for an unknown watch ID
        self.fragment.discard(watch_id)
        self.control(
            rpc_pb2.WatchResponse(header=self.header(self.ws.revision), watch_id=watch_id, canceled=True)
        )

    def progress(self) -> None:
        if self.ws.request_progress() or self._progress_pending:
            return
        # Some watcher is still catching up: answer once all are synced, so the progress
        # revision never runs ahead of events not yet delivered.
        self._progress_pending = True
        asyncio.get_running_loop().create_task(self._progress_when_synced())

    async def _progress_when_synced(self) -> None:
        try:
            while not self.ws.closed and not self.ws.request_progress():
                await asyncio.sleep(0.05)
        finally:
            self._progress_pending = False

    def convert(self, resp: WatchResponse) -> list[rpc_pb2.WatchResponse]:
        # etcd's compaction cancel carries no revision in its header.
        revision = 0 if resp.compact_revision else resp.revision
        out = rpc_pb2.WatchResponse(
            header=self.header(revision),
            watch_id=resp.watch_id,
            compact_revision=resp.compact_revision,
            canceled=resp.canceled,
        )
        if resp.events:
            out.events.extend(resp.events)
        if resp.watch_id == PROGRESS_WATCH_ID or resp.watch_id not in self.fragment or len(resp.events) < 2:
            return [out]
        limit = self.s.cfg.max_request_bytes
        if out.ByteSize() < limit:
            return [out]
        return _fragments(out, limit)


def _fragments(wr: rpc_pb2.WatchResponse, limit: int) -> list[rpc_pb2.WatchResponse]:
    """Split a large response into pieces under `limit` bytes (each at least one event),
    all but the last marked fragment=true (etcd's sendFragments)."""
    pieces: list[rpc_pb2.WatchResponse] = []
    base_size = rpc_pb2.WatchResponse(header=wr.header, watch_id=wr.watch_id).ByteSize()
    cur: list = []
    size = base_size
    for ev in wr.events:
        ev_size = ev.ByteSize() + 6
        if cur and size + ev_size >= limit:
            pieces.append(cur)
            cur, size = [], base_size
        cur.append(ev)
        size += ev_size
    pieces.append(cur)
    out = []
    for i, evs in enumerate(pieces):
        piece = rpc_pb2.WatchResponse(header=wr.header, watch_id=wr.watch_id, fragment=i < len(pieces) - 1)
        piece.events.extend(evs)
        out.append(piece)
    return out
