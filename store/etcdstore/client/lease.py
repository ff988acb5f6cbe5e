"""Keeping a lease alive in the background over one LeaseKeepAlive stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import grpc

from etcdstore import errors
from etcdstore.client.methods import method
from etcdstore.client.rpc_errors import KEEPALIVE_STREAM_CLOSED, finished_call_error, fresh, to_etcd_error
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

if TYPE_CHECKING:
    from etcdstore.client.transport import Transport

KEEPALIVE = method("Lease.LeaseKeepAlive")
_RETRY_DELAY = 0.25  # between attempts to reopen a broken stream while the lease may still live


async def keepalive_exchange(
    call: Any, lease_id: int, timeout: float | None
) -> rpc_pb2.LeaseKeepAliveResponse:
    """Send one keepalive on an open stream and read its answer; TTL <= 0 means the lease is gone."""
    try:
        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
    except asyncio.InvalidStateError:  # the stream already ended: report its status
        raise await finished_call_error(call) from None
    resp = await asyncio.wait_for(call.read(), timeout)
    if resp is grpc.aio.EOF:
        raise fresh(KEEPALIVE_STREAM_CLOSED)
    if resp.TTL <= 0:
        raise fresh(errors.LEASE_NOT_FOUND)
    return resp


class LeaseKeeper:
    """Refreshes lease `id` every TTL/3 until close(). If the stream breaks it reopens one (on the
    next endpoint when the client is not pinned) for as long as the lease can still be alive;
    once the lease is known gone (TTL 0 from the server) or its last granted TTL has run out,
    it is lost: `lost` is set, `error` says why, `on_lost(keeper)` is called once.

    close() only stops refreshing; the lease then expires on its own (use Client.lease_revoke
    to end it at once)."""

    def __init__(
        self, transport: Transport, lease_id: int, on_lost: Callable[[LeaseKeeper], Any] | None
    ) -> None:
        self._transport = transport
        self.id = lease_id
        self.ttl = 0  # as last granted by the server, in seconds
        self.last_response: rpc_pb2.LeaseKeepAliveResponse | None = None
        self.lost = asyncio.Event()
        self.error: EtcdError | None = None
        self._on_lost = on_lost
        self._expires_at = 0.0  # loop time by which the lease expires without another refresh
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def _start(self) -> None:
        """First refresh in the foreground, so lease_keepalive() raises if the lease is missing."""
        t = self._transport
        attempts = len(t._candidates())
        for attempt in range(attempts):
            try:
                await self._refresh()
                break
            except EtcdError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                    raise
                t._moved_off(t._connection().endpoint)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _open(self) -> Any:
        t = self._transport
        return t._connection().callable(KEEPALIVE)(metadata=t._metadata())

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        if self._call is None:
            self._call = self._open()
        sent_at = loop.time()
        # A keepalive answer that takes longer than the lease's own remaining life is worthless.
        timeout = max(self._expires_at - sent_at, 1.0) if self.ttl else self._transport._timeout
        try:
            resp = await keepalive_exchange(self._call, self.id, timeout)
        except grpc.aio.AioRpcError as e:
            self._drop_call()
            raise to_etcd_error(e) from None
        except (TimeoutError, EtcdError):
            self._drop_call()
            raise
        self.last_response = resp
        self.ttl = resp.TTL
        self._expires_at = sent_at + resp.TTL

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                await asyncio.sleep(max(self.ttl / 3.0, 0.5) if self.error is None else _RETRY_DELAY)
                try:
                    await self._refresh()
                    self.error = None
                except EtcdError as e:
                    self.error = e
                    if e == errors.LEASE_NOT_FOUND:
                        break
                    self._transport._moved_off(self._transport._connection().endpoint)
                except TimeoutError:
                    self.error = EtcdError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
                except grpc.RpcError as e:  # e.g. a usage error from a half-closed call
                    self._drop_call()
                    self.error = to_etcd_error(e)
                if self.error is not None and loop.time() >= self._expires_at:
                    break
        finally:
            self._drop_call()
        if not self._closed:
            self._mark_lost()

    def _mark_lost(self) -> None:
        if self.lost.is_set():
            return
        if self.error is None or self.error != errors.LEASE_NOT_FOUND:
            # Could not refresh in time: from here on the server may have expired it.
            self.error = fresh(errors.LEASE_NOT_FOUND) if self.error is None else self.error
        self.lost.set()
        self._transport._shared.keepers.discard(self)
        if self._on_lost is not None:
            self._on_lost(self)

    async def wait_lost(self) -> EtcdError | None:
        """Until the lease is lost; returns why."""
        await self.lost.wait()
        return self.error

    @property
    def alive(self) -> bool:
        """Kept alive right now (not lost, not closed, last granted TTL not run out)."""
        return not self._closed and not self.lost.is_set()

    async def close(self) -> None:
        """Stop refreshing (the lease itself stays until its TTL runs out)."""
        if self._closed:
            return
        self._closed = True
        self._transport._shared.keepers.discard(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop_call()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
