"""Leases through the proxy (etcd 3.4's grpcproxy/lease.go).

Keepalives are coalesced: however many clients keep a lease alive through the proxy, the
proxy keeps it alive upstream once, on one LeaseKeepAlive stream for all leases, every TTL/3
(as clientv3's lessor does for etcd's proxy). A client's keepalive request is answered with the
next upstream answer for its lease (at once for a lease no one kept alive yet, otherwise within
TTL/3); several requests before that answer get one answer each. A lease no client has asked for
during one TTL is no longer kept alive. When the cluster says a lease is gone (TTL <= 0), the
clients still waiting get its TimeToLive answer (TTL -1).

Grant, Revoke, TimeToLive (keys stripped of --namespace) and Leases are forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc

from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proxy.leader import LeaderMonitor, wants_leader
from etcdstore.proxy.namespace import Namespace
from etcdstore.proxy.rpc import forward, stream_handler, unary_handler
from etcdstore.proxy.upstream import Upstream, client_token

_LEASE = "/etcdserverpb.Lease/"
_SEND_EVERY = 0.5
_FIRST_DEADLINE = 10.0

Subscriber = Callable[[rpc_pb2.LeaseKeepAliveResponse | None], None]


class _Kept:
    __slots__ = ("deadline", "next_at", "subscribers")

    def __init__(self, now: float) -> None:
        self.subscribers: set[Subscriber] = set()
        self.next_at = now
        self.deadline = now + _FIRST_DEADLINE


class KeepAlives:
    """The proxy's upstream keepalives: one stream, one refresh per lease per TTL/3."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.leases: dict[int, _Kept] = {}
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.sent = 0  # keepalive requests sent upstream (tests and docs read it)

    def subscribe(self, lease_id: int, fn: Subscriber) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        kept = self.leases.get(lease_id)
        if kept is None:
            kept = self.leases[lease_id] = _Kept(loop.time())
            self.wake.set()
        kept.subscribers.add(fn)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run())

        def unsubscribe() -> None:
            k = self.leases.get(lease_id)
            if k is not None:
                k.subscribers.discard(fn)
                if not k.subscribers:
                    del self.leases[lease_id]

        return unsubscribe

    def _gone(self, lease_id: int) -> None:
        kept = self.leases.pop(lease_id, None)
        if kept is not None:
            for fn in list(kept.subscribers):
                fn(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pause = 0.05
        while self.leases:
            call, ep = self.up.open_stream(_LEASE + "LeaseKeepAlive")
            reader = loop.create_task(self._read(call))
            try:
                while self.leases and not reader.done():
                    now = loop.time()
                    for lid, kept in list(self.leases.items()):
                        if now > kept.deadline:
                            self._gone(lid)  # no answer in time: clientv3 gives the lease up too
                        elif kept.next_at <= now:
                            kept.next_at = now + _SEND_EVERY
                            self.sent += 1
                            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lid).SerializeToString())
                    self.wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), _SEND_EVERY)
                if reader.done() and (failed := reader.exception()) is not None:
                    raise failed
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self.up.moved_off(ep)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            except asyncio.InvalidStateError:
                await asyncio.sleep(pause)
            finally:
                reader.cancel()
                call.cancel()
            if self.leases:
                await asyncio.sleep(pause)  # the stream ended: reopen, not in a hot loop
                pause = min(pause * 2, 1.0)

    async def _read(self, call: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await call.read()
            if data is grpc.aio.EOF:
                return
            resp = rpc_pb2.LeaseKeepAliveResponse.FromString(data)
            kept = self.leases.get(resp.ID)
            if kept is None:
                continue
            if resp.TTL <= 0:
                self._gone(resp.ID)
                continue
            now = loop.time()
            kept.next_at = now + resp.TTL / 3.0
            kept.deadline = now + resp.TTL
            for fn in list(kept.subscribers):
                fn(resp)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.leases.clear()


class _ClientKeepAlive:
    """One client's LeaseKeepAlive stream."""

    def __init__(self, proxy: LeaseProxy, context: Any) -> None:
        self.proxy = proxy
        self.context = context
        self.needed: dict[int, int] = {}
        self.loops: dict[int, asyncio.Task[None]] = {}
        self.out: asyncio.Queue[rpc_pb2.LeaseKeepAliveResponse | None] = asyncio.Queue()

    async def recv_loop(self, requests: Any) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(grpc.aio.AioRpcError, ValueError, OSError):
            async for req in requests:
                self.needed[req.ID] = self.needed.get(req.ID, 0) + 1
                if req.ID not in self.loops:
                    self.loops[req.ID] = loop.create_task(self._keep(req.ID))
        self.out.put_nowait(None)

    def _reply(self, lease_id: int, resp: rpc_pb2.LeaseKeepAliveResponse) -> None:
        for _ in range(self.needed.get(lease_id, 0)):
            self.out.put_nowait(resp)
        self.needed[lease_id] = 0

    async def _keep(self, lease_id: int) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[rpc_pb2.LeaseKeepAliveResponse | None] = asyncio.Queue()
        unsubscribe = self.proxy.keepalives.subscribe(lease_id, inbox.put_nowait)
        ticker: float | None = None
        try:
            while True:
                timeout = None if ticker is None else max(ticker - loop.time(), 0.0)
                try:
                    resp = await asyncio.wait_for(inbox.get(), timeout)
                except TimeoutError:
                    if self.needed.get(lease_id, 0) > 0:
                        ticker = None
                        continue
                    return  # not asked for during a whole TTL: stop keeping it alive
                if resp is None:  # the lease is gone
                    if self.needed.get(lease_id, 0) == 0:
                        return
                    req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id)
                    try:
                        data = await self.proxy.up.unary(
                            _LEASE + "LeaseTimeToLive",
                            req.SerializeToString(),
                            token=client_token(self.context),
                            timeout=5.0,
                            idempotent=True,
                        )
                    except grpc.aio.AioRpcError:
                        self.out.put_nowait(None)  # etcd's proxy ends the stream then
                        return
                    ttl = rpc_pb2.LeaseTimeToLiveResponse.FromString(data)
                    self._reply(
                        lease_id, rpc_pb2.LeaseKeepAliveResponse(header=ttl.header, ID=ttl.ID, TTL=ttl.TTL)
                    )
                    return
                if self.needed.get(lease_id, 0) == 0:
                    continue
                ticker = loop.time() + resp.TTL
                self._reply(
                    lease_id, rpc_pb2.LeaseKeepAliveResponse(header=resp.header, ID=resp.ID, TTL=resp.TTL)
                )
        finally:
            unsubscribe()
            if self.loops.get(lease_id) is asyncio.current_task():
                del self.loops[lease_id]
                self.needed.pop(lease_id, None)

    def close(self) -> None:
        for t in list(self.loops.values()):
            t.cancel()


class LeaseProxy:
    def __init__(
        self, up: Upstream, namespace: Namespace | None, leader: LeaderMonitor | None = None
    ) -> None:
        self.up = up
        self.ns = namespace
        self.leader = leader
        self.keepalives = KeepAlives(up)

    def handlers(self) -> dict[str, Any]:
        return {
            "LeaseGrant": unary_handler(self._unary("LeaseGrant")),
            "LeaseRevoke": unary_handler(self._unary("LeaseRevoke")),
            "LeaseLeases": unary_handler(self._unary("LeaseLeases", idempotent=True)),
            "LeaseTimeToLive": unary_handler(
                self.LeaseTimeToLive, rpc_pb2.LeaseTimeToLiveRequest, rpc_pb2.LeaseTimeToLiveResponse
            ),
            "LeaseKeepAlive": stream_handler(
                self.LeaseKeepAlive, rpc_pb2.LeaseKeepAliveRequest, rpc_pb2.LeaseKeepAliveResponse
            ),
        }

    def _unary(self, name: str, idempotent: bool = False) -> Callable[..., Any]:
        path = _LEASE + name

        async def call(request: bytes, context: Any) -> bytes:
            return await forward(self.up, path, request, context, idempotent=idempotent)

        return call

    async def LeaseTimeToLive(self, req: rpc_pb2.LeaseTimeToLiveRequest, context: Any) -> Any:
        data = await forward(
            self.up, _LEASE + "LeaseTimeToLive", req.SerializeToString(), context, idempotent=True
        )
        resp = rpc_pb2.LeaseTimeToLiveResponse.FromString(data)
        if self.ns is not None and resp.keys:
            keys = self.ns.lease_keys(resp.keys)
            del resp.keys[:]
            resp.keys.extend(keys)
        return resp

    async def LeaseKeepAlive(self, requests: Any, context: Any) -> Any:
        leader = self.leader if self.leader is not None and wants_leader(context) else None
        if leader is not None and leader.lost.is_set():
            await context.abort(errors.NO_LEADER.code, errors.NO_LEADER.message)
        s = _ClientKeepAlive(self, context)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(s.recv_loop(requests))
        no_leader: list[bool] = []

        async def end_on_lost_leader() -> None:
            assert leader is not None
            await leader.lost.wait()
            no_leader.append(True)
            s.out.put_nowait(None)

        watch_leader = loop.create_task(end_on_lost_leader()) if leader is not None else None
        try:
            while True:
                resp = await s.out.get()
                if resp is None:
                    break
                yield resp
            if no_leader:
                context.set_code(errors.NO_LEADER.code)
                context.set_details(errors.NO_LEADER.message)
            else:
                context.set_code(grpc.StatusCode.CANCELLED)
                context.set_details("context canceled")
        finally:
            reader.cancel()
            if watch_leader is not None:
                watch_leader.cancel()
            s.close()

    def close(self) -> None:
        self.keepalives.close()
