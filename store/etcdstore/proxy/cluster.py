"""Cluster through the proxy, and the proxy registering itself (etcd 3.4's grpcproxy/cluster.go
and register.go).

MemberList does not reach the cluster while an advertise address is set (etcd's default is
"127.0.0.1:23790"): the proxy answers with the proxies registered under --resolver-prefix, or
with itself (name: the host name, client URL: the advertise address). With
`--advertise-client-url ''` it forwards. Member add/remove/update are forwarded; MemberPromote
is "not implemented", as in etcd 3.4's proxy.

Registration (--resolver-prefix P --resolver-ttl T): a lease of T seconds, kept alive, and under
it the key `P/<advertise address>` with the value etcd's endpoints manager writes
(`{"Op":0,"Addr":ADDR,"Metadata":"{\\"name\\":\\"HOST\\"}"}`), in the proxy's namespace. When the
lease is lost the proxy registers again (at most once a second); on shutdown it revokes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import grpc

from etcdstore.logs import get_logger
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proxy.lease import KeepAlives
from etcdstore.proxy.namespace import Namespace
from etcdstore.proxy.rpc import forward, unary_handler
from etcdstore.proxy.upstream import Upstream

log = get_logger("etcdstore.proxy")
_CLUSTER = "/etcdserverpb.Cluster/"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def registration_value(addr: str, hostname: str | None = None) -> bytes:
    meta = _json({"name": hostname or socket.gethostname()})
    return _json({"Op": 0, "Addr": addr, "Metadata": meta}).encode()


class ClusterProxy:
    def __init__(self, up: Upstream, namespace: Namespace | None, advertise: str, prefix: str) -> None:
        self.up = up
        self.ns = namespace
        self.advertise = advertise
        self.prefix = prefix

    def handlers(self) -> dict[str, Any]:
        return {
            "MemberAdd": unary_handler(self._forward("MemberAdd")),
            "MemberRemove": unary_handler(self._forward("MemberRemove")),
            "MemberUpdate": unary_handler(self._forward("MemberUpdate")),
            "MemberList": unary_handler(self.MemberList),
            "MemberPromote": unary_handler(self.MemberPromote),
        }

    def _forward(self, name: str) -> Any:
        path = _CLUSTER + name

        async def call(request: bytes, context: Any) -> bytes:
            return await forward(self.up, path, request, context)

        return call

    async def MemberPromote(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.UNKNOWN, "not implemented")
        return b""

    async def MemberList(self, request: bytes, context: Any) -> bytes:
        if not self.advertise:
            return await forward(self.up, _CLUSTER + "MemberList", request, context, idempotent=True)
        members: list[rpc_pb2.Member] = []
        if self.prefix:
            members = await self._registered(context)
        if not members:
            members = [rpc_pb2.Member(name=socket.gethostname(), clientURLs=[self.advertise])]
        return rpc_pb2.MemberListResponse(members=members).SerializeToString()

    async def _registered(self, context: Any) -> list[rpc_pb2.Member]:
        key = self.prefix.encode()
        end = _prefix_end(key)
        if self.ns is not None:
            key, end = self.ns.interval(key, end)
        req = rpc_pb2.RangeRequest(key=key, range_end=end, serializable=True)
        data = await forward(
            self.up, "/etcdserverpb.KV/Range", req.SerializeToString(), context, idempotent=True
        )
        found: dict[str, rpc_pb2.Member] = {}
        for kv in rpc_pb2.RangeResponse.FromString(data).kvs:
            try:
                upd = json.loads(kv.value)
                addr = upd["Addr"]
                meta = upd.get("Metadata")
                name = json.loads(meta).get("name", "") if isinstance(meta, str) else ""
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            found[addr] = rpc_pb2.Member(name=name, clientURLs=[addr])
        return [found[a] for a in sorted(found)]


def _prefix_end(key: bytes) -> bytes:
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class Registration:
    """Keeps `prefix/addr` registered under a lease while the proxy runs."""

    def __init__(
        self,
        up: Upstream,
        keepalives: KeepAlives,
        namespace: Namespace | None,
        prefix: str,
        addr: str,
        ttl: int,
    ) -> None:
        self.up = up
        self.keepalives = keepalives
        self.ns = namespace
        self.key = f"{prefix}/{addr}".encode()
        if namespace is not None:
            self.key = namespace.prefix + self.key
        self.value = registration_value(addr)
        self.ttl = ttl
        self.lease_id = 0
        self.registered = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._session()
            except grpc.aio.AioRpcError as e:
                log.warning("failed to create a session", error=e.details())
            self.registered.clear()
            # at most one registration attempt a second (etcd: registerRetryRate)
            await asyncio.sleep(max(0.0, 1.0 - (loop.time() - started)))

    async def _session(self) -> None:
        grant = rpc_pb2.LeaseGrantResponse.FromString(
            await self.up.unary(
                "/etcdserverpb.Lease/LeaseGrant",
                rpc_pb2.LeaseGrantRequest(TTL=self.ttl).SerializeToString(),
                timeout=5.0,
            )
        )
        self.lease_id = grant.ID
        lost = asyncio.Event()
        unsubscribe = self.keepalives.subscribe(grant.ID, lambda r: lost.set() if r is None else None)
        try:
            txn = rpc_pb2.TxnRequest(
                success=[
                    rpc_pb2.RequestOp(
                        request_put=rpc_pb2.PutRequest(key=self.key, value=self.value, lease=grant.ID)
                    )
                ]
            )
            await self.up.unary("/etcdserverpb.KV/Txn", txn.SerializeToString(), timeout=5.0)
            log.info("registered proxy", address=self.key.decode(errors="replace"), ttl=self.ttl)
            self.registered.set()
            await lost.wait()
            log.warning(
                "session expired; possible network partition or server restart; creating a new session"
            )
        finally:
            unsubscribe()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.lease_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.up.unary(
                    "/etcdserverpb.Lease/LeaseRevoke",
                    rpc_pb2.LeaseRevokeRequest(ID=self.lease_id).SerializeToString(),
                    timeout=2.0,
                )
