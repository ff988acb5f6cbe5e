"""Watch through the proxy: identical watches share one upstream watch (etcd 3.4's grpcproxy
watch.go, watch_broadcast(s).go, watch_ranges.go, watcher.go; same rules, asyncio instead of
goroutines).

* A client's watcher joins a *broadcast* of the same key range whose upstream watch has not yet
  moved past the watcher's start: a broadcast that has not answered yet takes watchers with the
  same start revision rules as etcd (`nextrev` not greater than the watcher's, and a revision-0
  watcher only while the broadcast still waits for its first answer); one that has answered takes
  a watcher starting at or after its next revision, and tells it "created" itself.
  Otherwise a new broadcast opens its own upstream watch (with prev_kv and progress_notify, so it
  can serve any watcher's options) from the watcher's start revision.
* After every answer a broadcast with fewer than 5 watchers that has caught up with another
  broadcast of the same range (its next revision at or past the other's) hands its watchers over
  and closes its upstream watch. So N watchers of one key end up on one upstream watch.
* Each watcher filters what it gets: events below its own next revision, its filters (NOPUT,
  NODELETE), prev_kv unless asked, progress notifications unless asked.
* Watch ids are the proxy's own, counted from 0 per client stream (a requested id is ignored, as
  etcd's proxy does); a create is checked first with a one-key serializable count range under the
  client's token, so a client without read permission gets a canceled create.

Upstream, all watches of one auth token share one Watch stream (as clientv3 does); if it breaks,
the stream is reopened on the next endpoint and every watch resumes from its next revision.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any

import grpc

from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.mvccpb import kv_pb2
from etcdstore.proxy.leader import LeaderMonitor, wants_leader
from etcdstore.proxy.namespace import Namespace
from etcdstore.proxy.rpc import stream_handler
from etcdstore.proxy.upstream import Upstream, client_token

_WATCH = "/etcdserverpb.Watch/Watch"
_RANGE = "/etcdserverpb.KV/Range"
MAX_COALESCE_RECEIVERS = 5
_QUEUE = 1024
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE


def _is_progress(r: rpc_pb2.WatchResponse) -> bool:
    return (
        not r.events
        and not r.canceled
        and not r.created
        and r.compact_revision == 0
        and r.header.revision != 0
    )


# -- upstream: watches multiplexed on one stream per token ----------------------------------------


class UpWatch:
    """One watch on the cluster."""

    __slots__ = ("closed", "created_once", "end", "id", "key", "next_rev", "on_response", "sent_on")

    def __init__(
        self, key: bytes, end: bytes, start_rev: int, on_response: Callable[[rpc_pb2.WatchResponse], None]
    ):
        self.key = key
        self.end = end
        self.next_rev = start_rev
        self.on_response = on_response
        self.id: int | None = None
        self.closed = False
        self.created_once = False
        self.sent_on: Any = None  # the upstream call its create was sent on


class _UpStream:
    """The watches of one token on one upstream Watch stream, reopened elsewhere when it breaks."""

    def __init__(self, owner: UpstreamWatches, token: str | None) -> None:
        self.owner = owner
        self.up = owner.up
        self.token = token
        self.live: set[UpWatch] = set()
        self.by_id: dict[int, UpWatch] = {}
        self.pending: collections.deque[UpWatch] = collections.deque()
        self.call: Any = None
        self.write_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    def add(self, w: UpWatch) -> None:
        self.live.add(w)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        elif self.call is not None:
            asyncio.get_running_loop().create_task(self._create(self.call, w))

    def cancel(self, w: UpWatch) -> None:
        w.closed = True
        self.live.discard(w)
        if w.id is not None and self.call is not None:
            req = rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=w.id))
            asyncio.get_running_loop().create_task(self._write(self.call, req))
        if not self.live and self.call is not None:
            self.call.cancel()  # the last watch of this stream is gone: close it, as clientv3 does

    async def _write(self, call: Any, req: rpc_pb2.WatchRequest) -> None:
        async with self.write_lock:
            if call is self.call:
                with contextlib.suppress(Exception):
                    await call.write(req.SerializeToString())

    async def _create(self, call: Any, w: UpWatch) -> None:
        req = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=w.key, range_end=w.end, start_revision=w.next_rev, progress_notify=True, prev_kv=True
            )
        )
        async with self.write_lock:
            if call is not self.call or w.closed or w.sent_on is call:
                return
            w.sent_on = call
            self.pending.append(w)  # etcd answers creates in the order sent
            with contextlib.suppress(Exception):
                await call.write(req.SerializeToString())

    async def _run(self) -> None:
        pause = 0.05
        while self.live:
            call, ep = self.up.open_stream(_WATCH, token=self.token)
            self.call = call
            self.by_id.clear()
            self.pending.clear()
            self.owner.streams_opened += 1
            try:
                for w in list(self.live):
                    await self._create(call, w)
                while self.live:
                    try:
                        data = await call.read()
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise
                        break  # our own call.cancel(): the last watch went away
                    if data is grpc.aio.EOF:
                        break
                    pause = 0.05
                    self._dispatch(rpc_pb2.WatchResponse.FromString(data))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED and not self.live:
                    break
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self.up.moved_off(ep)
            except asyncio.CancelledError:
                call.cancel()
                raise
            finally:
                self.call = None
                call.cancel()
            if self.live:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _dispatch(self, resp: rpc_pb2.WatchResponse) -> None:
        if resp.created:
            if not self.pending:
                return
            w = self.pending.popleft()
            w.id = resp.watch_id
            if w.closed:
                if not resp.canceled and self.call is not None:
                    req = rpc_pb2.WatchRequest(
                        cancel_request=rpc_pb2.WatchCancelRequest(watch_id=resp.watch_id)
                    )
                    asyncio.get_running_loop().create_task(self._write(self.call, req))
                return
            if resp.canceled:
                self.live.discard(w)
                w.closed = True
                w.on_response(resp)
                return
            self.by_id[resp.watch_id] = w
            if w.next_rev == 0:
                w.next_rev = resp.header.revision + 1
            if w.created_once:
                return  # a resumed watch: its client already saw "created"
            w.created_once = True
            w.on_response(resp)
            return
        found = self.by_id.get(resp.watch_id)
        if found is None:
            return
        w = found
        if resp.canceled:
            del self.by_id[resp.watch_id]
            if w.closed:
                return
            self.live.discard(w)
            w.closed = True
            w.on_response(resp)
            return
        if w.closed:
            return
        if resp.events:
            w.next_rev = resp.events[-1].kv.mod_revision + 1
        elif _is_progress(resp):
            w.next_rev = max(w.next_rev, resp.header.revision + 1)
        w.on_response(resp)


class UpstreamWatches:
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.streams: dict[str | None, _UpStream] = {}
        self.streams_opened = 0

    def watch(
        self,
        token: str | None,
        key: bytes,
        end: bytes,
        start_rev: int,
        on_response: Callable[[rpc_pb2.WatchResponse], None],
    ) -> UpWatch:
        s = self.streams.get(token)
        if s is None:
            s = self.streams[token] = _UpStream(self, token)
        w = UpWatch(key, end, start_rev, on_response)
        s.add(w)
        return w

    def cancel(self, token: str | None, w: UpWatch) -> None:
        s = self.streams.get(token)
        if s is not None:
            s.cancel(w)
        w.closed = True

    @property
    def count(self) -> int:
        return sum(len(s.live) for s in self.streams.values())

    def close(self) -> None:
        for s in list(self.streams.values()):
            for w in list(s.live):
                s.cancel(w)
            if s.task is not None:
                s.task.cancel()
        self.streams.clear()


# -- the proxy's watchers and broadcasts ----------------------------------------------------------


class Watcher:
    """A client's watch as the proxy serves it."""

    __slots__ = (
        "end",
        "id",
        "key",
        "last_header",
        "next_rev",
        "nodelete",
        "noput",
        "prev_kv",
        "progress",
        "stream",
        "token",
    )

    def __init__(self, stream: ClientStream, wid: int, cr: rpc_pb2.WatchCreateRequest) -> None:
        self.key = cr.key
        self.end = cr.range_end
        self.id = wid
        self.stream = stream
        self.next_rev = cr.start_revision
        self.progress = cr.progress_notify
        self.prev_kv = cr.prev_kv
        self.noput = _NOPUT in cr.filters
        self.nodelete = _NODELETE in cr.filters
        self.last_header = rpc_pb2.ResponseHeader()
        self.token = stream.token

    def send(self, wr: rpc_pb2.WatchResponse) -> None:
        progress = _is_progress(wr)
        if progress and not self.progress:
            return
        if self.next_rev > wr.header.revision and len(wr.events) > 0:
            return
        if self.next_rev == 0:
            self.next_rev = wr.header.revision + 1
        events = []
        last_rev = 0
        for ev in wr.events:
            if ev.kv.mod_revision < self.next_rev:
                continue
            last_rev = ev.kv.mod_revision
            if (ev.type == kv_pb2.Event.PUT and self.noput) or (
                ev.type == kv_pb2.Event.DELETE and self.nodelete
            ):
                continue
            if not self.prev_kv and ev.HasField("prev_kv"):
                ev = kv_pb2.Event(type=ev.type, kv=ev.kv)
            events.append(ev)
        if last_rev >= self.next_rev:
            self.next_rev = last_rev + 1
        if not progress and not wr.created and not events and wr.compact_revision == 0:
            return
        self.last_header = wr.header
        self.post(
            rpc_pb2.WatchResponse(
                header=wr.header,
                created=wr.created,
                compact_revision=wr.compact_revision,
                canceled=wr.canceled,
                watch_id=self.id,
                events=events,
            )
        )

    def post(self, resp: rpc_pb2.WatchResponse) -> bool:
        return self.stream.post(resp)


class Broadcast:
    """One upstream watch serving several watchers of the same range."""

    def __init__(self, group: Broadcasts, w: Watcher) -> None:
        self.group = group
        self.next_rev = w.next_rev
        self.receivers: set[Watcher] = {w}
        self.responses = 0
        self.dead = False
        proxy = group.proxy
        key, end = w.key, w.end
        if proxy.ns is not None:
            key, end = proxy.ns.interval(key, end)
        self.token = w.token
        self.upwatch = proxy.upstream.watch(self.token, key, end, self.next_rev, self.bcast)

    def bcast(self, wr: rpc_pb2.WatchResponse) -> None:
        ns = self.group.proxy.ns
        if ns is not None:
            for ev in wr.events:
                ev.kv.key = ev.kv.key[ns.n :]
                if ev.HasField("prev_kv"):
                    ev.prev_kv.key = ev.kv.key
        if self.responses > 0 or self.next_rev == 0:
            self.next_rev = wr.header.revision + 1
        self.responses += 1
        for r in list(self.receivers):
            r.send(wr)
        if self.receivers:
            self.group.proxy.events_coalescing += len(self.receivers) - 1
        if wr.canceled:
            self.dead = True  # the cluster ended this watch: no one new may join it
        self.group.coalesce(self)

    def add(self, w: Watcher) -> bool:
        if self.dead:
            return False
        if self.next_rev > w.next_rev or (self.next_rev == 0 and w.next_rev != 0):
            return False
        if self.responses == 0:
            self.receivers.add(w)
            return True
        if not w.post(
            rpc_pb2.WatchResponse(
                header=rpc_pb2.ResponseHeader(revision=w.next_rev), watch_id=w.id, created=True
            )
        ):
            return False
        self.receivers.add(w)
        return True

    def stop(self) -> None:
        self.group.proxy.upstream.cancel(self.token, self.upwatch)


class Broadcasts:
    """The broadcasts of one key range."""

    def __init__(self, proxy: WatchProxy) -> None:
        self.proxy = proxy
        self.bcasts: list[Broadcast] = []
        self.of: dict[Watcher, Broadcast] = {}

    def add(self, w: Watcher) -> None:
        for wb in self.bcasts:
            if wb.add(w):
                self.of[w] = wb
                return
        wb = Broadcast(self, w)
        self.of[w] = wb
        self.bcasts.append(wb)

    def delete(self, w: Watcher) -> int:
        wb = self.of.pop(w, None)
        if wb is not None:
            wb.receivers.discard(w)
            if not wb.receivers:
                self.bcasts.remove(wb)
                wb.stop()
        return len(self.bcasts)

    def coalesce(self, wb: Broadcast) -> None:
        if len(wb.receivers) >= MAX_COALESCE_RECEIVERS or wb not in self.bcasts:
            return
        for other in list(self.bcasts):
            if other is wb or other.dead:
                continue
            if wb.next_rev >= other.next_rev and other.responses > 0:
                for w in wb.receivers:
                    other.receivers.add(w)
                    self.of[w] = other
                wb.receivers = set()
            if not wb.receivers:
                self.bcasts.remove(wb)
                wb.stop()
                break

    def stop(self) -> None:
        for wb in self.bcasts:
            wb.stop()
        self.bcasts.clear()


class ClientStream:
    """One client's Watch stream."""

    def __init__(self, proxy: WatchProxy, context: Any) -> None:
        self.proxy = proxy
        self.context = context
        self.token = client_token(context)
        self.watchers: dict[int, Watcher] = {}
        self.next_id = 0
        self.queue: asyncio.Queue[rpc_pb2.WatchResponse | None] = asyncio.Queue(_QUEUE)
        self.closed = False
        self.no_leader = False

    def post(self, resp: rpc_pb2.WatchResponse) -> bool:
        if self.closed:
            return False
        try:
            self.queue.put_nowait(resp)
        except asyncio.QueueFull:  # a client this slow is cut off (etcd's proxy: after 50 ms)
            self.end()
            return False
        return True

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
            # drop everything queued so the end marker is seen even on a full queue
            if self.queue.full():
                while not self.queue.empty():
                    self.queue.get_nowait()
                self.queue.put_nowait(None)

    async def recv_loop(self, requests: Any) -> None:
        try:
            async for req in requests:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    await self._create(req.create_request)
                elif which == "cancel_request":
                    self._delete(req.cancel_request.watch_id)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001, S110 - a broken request stream ends the call like a closed one
            pass
        self.end()

    async def _create(self, cr: rpc_pb2.WatchCreateRequest) -> None:
        err = await self._check_permission(cr.key, cr.range_end)
        if err is not None:
            self.post(
                rpc_pb2.WatchResponse(
                    header=rpc_pb2.ResponseHeader(),
                    watch_id=-1,
                    created=True,
                    canceled=True,
                    cancel_reason=err,
                )
            )
            return
        w = Watcher(self, self.next_id, cr)
        if w.end and not (w.end > w.key or w.end == b"\0"):
            self.post(rpc_pb2.WatchResponse(watch_id=-1, created=True, canceled=True))
            return
        self.next_id += 1
        self.watchers[w.id] = w
        self.proxy.add(w)

    async def _check_permission(self, key: bytes, end: bytes) -> str | None:
        if not key:
            key = end = b"\0"
        req = rpc_pb2.RangeRequest(key=key, range_end=end, serializable=True, count_only=True, limit=1)
        ns = self.proxy.ns
        if ns is not None:
            req.key, req.range_end = ns.interval(req.key, req.range_end)
        try:
            await self.proxy.up.unary(
                _RANGE, req.SerializeToString(), token=self.token, timeout=10.0, idempotent=True
            )
        except grpc.aio.AioRpcError as e:
            return e.details() or ""
        return None

    def _delete(self, wid: int) -> None:
        w = self.watchers.pop(wid, None)
        if w is None:
            return
        self.proxy.delete(w)
        self.post(rpc_pb2.WatchResponse(header=w.last_header, watch_id=wid, canceled=True))

    def close(self) -> None:
        self.closed = True
        for w in self.watchers.values():
            self.proxy.delete(w)
        self.watchers.clear()


async def _end_on_lost_leader(leader: LeaderMonitor, stream: ClientStream) -> None:
    """A `hasleader` client stream ends with "etcdserver: no leader" once the cluster has none."""
    await leader.lost.wait()
    stream.no_leader = True
    stream.end()


class WatchProxy:
    def __init__(
        self, up: Upstream, namespace: Namespace | None, leader: LeaderMonitor | None = None
    ) -> None:
        self.up = up
        self.ns = namespace
        self.leader = leader
        self.upstream = UpstreamWatches(up)
        self.ranges: dict[tuple[bytes, bytes], Broadcasts] = {}
        self.events_coalescing = 0

    def handlers(self) -> dict[str, Any]:
        return {"Watch": stream_handler(self.Watch, rpc_pb2.WatchRequest, rpc_pb2.WatchResponse)}

    def add(self, w: Watcher) -> None:
        key = (w.key, w.end)
        wbs = self.ranges.get(key)
        if wbs is None:
            wbs = self.ranges[key] = Broadcasts(self)
        wbs.add(w)

    def delete(self, w: Watcher) -> None:
        key = (w.key, w.end)
        wbs = self.ranges.get(key)
        if wbs is not None and wbs.delete(w) == 0:
            wbs.stop()
            del self.ranges[key]

    @property
    def watchers_coalescing(self) -> int:
        return sum(max(len(b.receivers) - 1, 0) for wbs in self.ranges.values() for b in wbs.bcasts)

    @property
    def client_watchers(self) -> int:
        return sum(len(b.receivers) for wbs in self.ranges.values() for b in wbs.bcasts)

    async def Watch(self, requests: Any, context: Any) -> Any:
        leader = self.leader if self.leader is not None and wants_leader(context) else None
        if leader is not None and leader.lost.is_set():
            await context.abort(errors.NO_LEADER.code, errors.NO_LEADER.message)
        stream = ClientStream(self, context)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(stream.recv_loop(requests))
        watch_leader = loop.create_task(_end_on_lost_leader(leader, stream)) if leader is not None else None
        try:
            while True:
                resp = await stream.queue.get()
                if resp is None:
                    break
                yield resp
            if stream.no_leader:
                context.set_code(errors.NO_LEADER.code)
                context.set_details(errors.NO_LEADER.message)
            else:  # the client closed its side (or was too slow): etcd's proxy ends with "context canceled"
                context.set_code(grpc.StatusCode.CANCELLED)
                context.set_details("context canceled")
        finally:
            reader.cancel()
            if watch_leader is not None:
                watch_leader.cancel()
            stream.close()

    def close(self) -> None:
        for wbs in self.ranges.values():
            wbs.stop()
        self.ranges.clear()
        self.upstream.close()
