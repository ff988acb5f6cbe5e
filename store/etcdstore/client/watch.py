"""Watchers multiplexed over one gRPC Watch stream per client view, as clientv3 does.

etcd answers create requests on a stream in the order they were sent, so pending creates are
matched first-in first-out; after that, responses are routed by watch_id. A progress response
(watch_id -1) goes to every watcher of the stream. When the stream breaks (member down, server
restart) every watcher on it raises the error once its buffered responses are read: there is
no silent resubscription, so a consumer always sees a gap as an error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Self

import grpc

from etcdstore.client.channels import Connection
from etcdstore.client.methods import method
from etcdstore.client.rpc_errors import (
    CLIENT_CLOSED,
    WATCH_STREAM_CLOSED,
    error_from_reason,
    finished_call_error,
    fresh,
    to_etcd_error,
)
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

_WATCH = method("Watch.Watch")
_PROGRESS = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
_NO_ID = -1


class Watcher:
    """One watch: `async for resp in watcher` yields WatchResponse messages (events, progress
    notifications, and a final server-side cancellation such as a compacted start revision,
    which carries `compact_revision`). Iteration ends after cancel(); it raises EtcdError when
    the stream fails. Use as `async with await client.watch(...) as w:` to cancel on exit."""

    __slots__ = (
        "_buf",
        "_cancel_requested",
        "_created",
        "_done",
        "_error",
        "_fragment",
        "_released",
        "_stream",
        "_waiter",
        "created_response",
        "id",
        "request",
    )

    def __init__(self, stream: WatchStream, request: rpc_pb2.WatchCreateRequest) -> None:
        self._stream = stream
        self.request = request
        self.id: int | None = None  # the server's watch_id, known once created
        self.created_response: rpc_pb2.WatchResponse | None = None  # header.revision = creation revision
        self._buf: deque[rpc_pb2.WatchResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: EtcdError | None = None
        self._cancel_requested = False
        self._created: asyncio.Future[rpc_pb2.WatchResponse] = asyncio.get_running_loop().create_future()
        self._fragment: rpc_pb2.WatchResponse | None = None
        # Done once the stream forgot this watcher (server confirmed the cancel, or stream gone).
        self._released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- consumer side -----------------------------------------------------------------------

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> rpc_pb2.WatchResponse:
        while True:
            if self._buf:
                return self._buf.popleft()
            if self._done:
                if self._error is not None:
                    raise fresh(self._error)
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def cancel(self, timeout: float = 5.0) -> None:
        """Stop watching: iteration ends (once the buffer is read) and etcd is told; returns when
        etcd confirmed (or `timeout` passed, or the stream is gone)."""
        if not self._done:
            self._cancel_requested = True
            self._finish(None)
            if self.id is not None:
                await self._stream.send_cancel(self.id)
        if self.id is not None and not self._released.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._released), timeout)
            except TimeoutError:
                pass

    async def request_progress(self) -> None:
        """Ask for a progress notification (header.revision, no events) on this watcher's stream;
        etcd sends it to every watcher of the stream."""
        await self._stream.send(_PROGRESS)

    @property
    def done(self) -> bool:
        return self._done

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    # -- stream side -------------------------------------------------------------------------

    def _push(self, resp: rpc_pb2.WatchResponse) -> None:
        if self._done:
            return
        if resp.fragment:  # etcd split one large response; hand it over whole
            if self._fragment is None:
                self._fragment = resp
            else:
                self._fragment.events.extend(resp.events)
            return
        if self._fragment is not None:
            merged, self._fragment = self._fragment, None
            merged.events.extend(resp.events)
            merged.fragment = False
            merged.header.CopyFrom(resp.header)
            resp = merged
        self._buf.append(resp)
        self._wake()

    def _finish(self, error: EtcdError | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if not self._created.done():
            self._created.set_exception(fresh(error) if error else fresh(CLIENT_CLOSED))
            self._created.exception()  # retrieved: nobody may be awaiting it any more
        self._wake()

    def _release(self) -> None:
        if not self._released.done():
            self._released.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


class WatchStream:
    """One bidirectional Watch call and the watchers multiplexed on it."""

    def __init__(
        self,
        conn: Connection,
        metadata: tuple[tuple[str, str], ...] | None,
        on_close: Callable[[WatchStream], None],
    ) -> None:
        self.endpoint = conn.endpoint
        self._call: Any = conn.callable(_WATCH)(metadata=metadata)
        self._pending: deque[Watcher] = deque()
        self._watchers: dict[int, Watcher] = {}
        self._write_lock = asyncio.Lock()
        self._on_close = on_close
        self.error: EtcdError | None = None
        self.closed = False
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def create(self, request: rpc_pb2.WatchCreateRequest, timeout: float | None) -> Watcher:
        """Send a create request and wait for etcd's `created` answer."""
        watcher = Watcher(self, request)
        self._pending.append(watcher)
        try:
            await self.send(rpc_pb2.WatchRequest(create_request=request))
            watcher.created_response = await asyncio.wait_for(asyncio.shield(watcher._created), timeout)
        except TimeoutError:
            await watcher.cancel()
            raise EtcdError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except BaseException:
            # Cancelled or failed while waiting: make sure a late `created` is canceled at once.
            await asyncio.shield(watcher.cancel())
            raise
        return watcher

    async def send(self, request: rpc_pb2.WatchRequest) -> None:
        if self.closed:
            raise fresh(self.error or CLIENT_CLOSED)
        async with self._write_lock:  # grpc.aio allows one write at a time per call
            try:
                await self._call.write(request)
            except asyncio.InvalidStateError:  # already ended; the reader fails the watchers
                raise await finished_call_error(self._call) from None
            except grpc.aio.AioRpcError as e:
                raise to_etcd_error(e) from None

    async def send_cancel(self, watch_id: int) -> None:
        if self.closed:
            return
        req = rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))
        try:
            await self.send(req)
        except EtcdError:
            pass  # stream already gone: nothing left to cancel

    async def _read_loop(self) -> None:
        error: EtcdError | None = WATCH_STREAM_CLOSED
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    break
                self._dispatch(resp)
                if self.closed:
                    return
        except grpc.aio.AioRpcError as e:
            error = to_etcd_error(e)
        except asyncio.CancelledError:
            error = None  # close(): our own doing, watchers end quietly
            raise
        finally:
            self._fail(error)

    def _dispatch(self, resp: rpc_pb2.WatchResponse) -> None:
        wid = resp.watch_id
        if resp.created:
            if not self._pending:
                return
            w = self._pending.popleft()
            if resp.canceled:  # refused: bad range, duplicate id, permission, auth token
                w._finish(error_from_reason(resp.cancel_reason, grpc.StatusCode.FAILED_PRECONDITION))
                self._close_if_idle()
                return
            w.id = wid
            self._watchers[wid] = w
            if not w._created.done():
                w._created.set_result(resp)
            if w._cancel_requested:
                asyncio.get_running_loop().create_task(self.send_cancel(wid))
            return
        if wid == _NO_ID:
            for w in self._watchers.values():
                w._push(resp)
            return
        w = self._watchers.get(wid)
        if w is None:
            return
        if resp.canceled:
            del self._watchers[wid]
            if not w._cancel_requested:
                w._push(resp)  # server-side cancel (compaction): the caller needs compact_revision
            w._finish(None)
            w._release()
            self._close_if_idle()
            return
        w._push(resp)

    def _close_if_idle(self) -> None:
        if not self._watchers and not self._pending:
            self.close()  # do not keep a stream open for nobody

    def _fail(self, error: EtcdError | None) -> None:
        if self.closed:
            return
        self.error = error
        self.closed = True
        self._on_close(self)
        for w in list(self._pending) + list(self._watchers.values()):
            w._finish(error)
            w._release()
        self._pending.clear()
        self._watchers.clear()
        self._call.cancel()

    def close(self, error: EtcdError | None = None) -> None:
        """Tear the stream down; its open watchers end, raising `error` if one is given."""
        if self.closed:
            return
        self._fail(error)
        if self._reader is not asyncio.current_task():
            self._reader.cancel()
