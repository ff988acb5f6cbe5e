"""Does the cluster have a leader? (etcd 3.4's grpcproxy/leader.go)

The proxy keeps one upstream watch of `__lostleader` (in its namespace) at revision 2^63-3 on a
stream opened with `hasleader: true`: the member ends such a stream when it has had no leader for
a while. A created answer means "leader"; the stream ending means "lost", and it is opened again
(at most 10 times a second). Client Watch and LeaseKeepAlive streams that carry `hasleader: true`
are refused while the leader is lost and ended with "etcdserver: no leader" when it is lost, as
etcd's proxy does. (etcd's proxy holds two such watches, one for its watch and one for its lease
proxy; this proxy shares one.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proxy.namespace import Namespace
from etcdstore.proxy.upstream import Upstream

LOST_LEADER_KEY = b"__lostleader"
_REV = 2**63 - 1 - 2
_WATCH = "/etcdserverpb.Watch/Watch"


def wants_leader(context: Any) -> bool:
    return any(k == "hasleader" and v == "true" for k, v in context.invocation_metadata() or ())


class LeaderMonitor:
    def __init__(self, up: Upstream, namespace: Namespace | None) -> None:
        self.up = up
        self.key = (namespace.prefix if namespace is not None else b"") + LOST_LEADER_KEY
        self.lost = asyncio.Event()
        self.lost.set()  # until the first watch is created, as etcd's proxy starts (closed leaderc)
        self.have = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _lose(self) -> None:
        self.have.clear()
        self.lost.set()

    def _got(self) -> None:
        self.lost.clear()
        self.have.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            call, ep = self.up.open_stream(_WATCH, require_leader=True)
            try:
                req = rpc_pb2.WatchRequest(
                    create_request=rpc_pb2.WatchCreateRequest(key=self.key, start_revision=_REV)
                )
                await call.write(req.SerializeToString())
                data = await call.read()
                if data is not grpc.aio.EOF and rpc_pb2.WatchResponse.FromString(data).created:
                    self._got()
                    while (await call.read()) is not grpc.aio.EOF:
                        pass
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and "no leader" not in (e.details() or ""):
                    self.up.moved_off(ep)
            except asyncio.InvalidStateError:
                pass
            finally:
                call.cancel()
            self._lose()
            await asyncio.sleep(max(0.0, 0.1 - (loop.time() - started)))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
