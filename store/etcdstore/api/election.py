"""v3electionpb.Election: Campaign, Proclaim, Leader, Observe, Resign (etcd's concurrency.Election).

A candidate's key is name + "/" + its lease ID in hex, holding its proposal; the leader is the
key of the prefix with the lowest create revision. Campaign waits (on watchers, see lock.py)
until every older candidate is gone. A LeaderKey (name, key, rev = create revision, lease)
identifies one term of leadership: Proclaim and Resign act only while the key still has that
create revision. Observe streams the leader's value and every change of it, then the next
leader, in order.

Errors follow etcd's handlers: "election: not leader" / "election: no leader" and
`"leader" field must be provided` are plain errors (gRPC Unknown); see lock.py for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from etcdstore import errors
from etcdstore.api.common import gate
from etcdstore.api.lock import (
    Background,
    create_revision_is,
    first_created,
    get_op,
    lease_key,
    linearizable_range,
    prefix_end,
    propose_txn,
    put_op,
    recipe_unary,
    session_lease,
    wait_deletes,
    watching,
)
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.mvccpb import kv_pb2
from etcdstore.proto.v3electionpb import v3election_pb2, v3election_pb2_grpc

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

_U = grpc.StatusCode.UNKNOWN
ELECTION_NOT_LEADER = errors.EtcdError(_U, "election: not leader")
ELECTION_NO_LEADER = errors.EtcdError(_U, "election: no leader")
MISSING_LEADER_KEY = errors.EtcdError(_U, '"leader" field must be provided')

_PUT = kv_pb2.Event.PUT
_DELETE = kv_pb2.Event.DELETE


async def proclaim(
    s: ServerAPI, context: grpc.aio.ServicerContext, key: bytes, rev: int, lease: int, value: bytes
) -> rpc_pb2.TxnResponse:
    """Put the new value if `key` still has create revision `rev` (still leader), else ELECTION_NOT_LEADER."""
    txn = rpc_pb2.TxnRequest(compare=[create_revision_is(key, rev)], success=[put_op(key, value, lease)])
    resp = await propose_txn(s, context, txn)
    if not resp.succeeded:
        raise ELECTION_NOT_LEADER()
    return resp


async def resign(
    s: ServerAPI, context: grpc.aio.ServicerContext, key: bytes, rev: int
) -> rpc_pb2.TxnResponse:
    """Delete `key` if it still has create revision `rev` (a later term of the key is left alone)."""
    delete = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
    txn = rpc_pb2.TxnRequest(compare=[create_revision_is(key, rev)], success=[delete])
    return await propose_txn(s, context, txn)


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server
        self._cleanup = Background()

    @recipe_unary
    async def Campaign(
        self, request: v3election_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.CampaignResponse:
        s = self.s
        lease = await session_lease(s, request.lease)
        prefix = request.name + b"/"
        key = lease_key(prefix, lease)
        txn = rpc_pb2.TxnRequest(
            compare=[create_revision_is(key, 0)],
            success=[put_op(key, request.value, lease)],
            failure=[get_op(rpc_pb2.RangeRequest(key=key))],
        )
        resp = await propose_txn(s, context, txn)
        rev = resp.header.revision
        if not resp.succeeded:
            # Already a candidate with this lease (e.g. a client retrying): keep the key and its
            # place in the queue, bring its value up to date.
            kv = resp.responses[0].response_range.kvs[0]
            rev = kv.create_revision
            if kv.value != request.value:
                try:
                    await proclaim(s, context, key, rev, lease, request.value)
                except errors.EtcdError:
                    with contextlib.suppress(errors.EtcdError):
                        await resign(s, context, key, rev)
                    raise
        try:
            await wait_deletes(s, context, prefix, rev - 1)
        except asyncio.CancelledError:
            # The client gave up (cancel or deadline): withdraw the candidacy, as etcd does.
            # Other failures leave the key in place, also as etcd does.
            self._cleanup.run("resign", resign(s, context, key, rev))
            raise
        # etcd answers with the header of the campaign's first write, not of the wait.
        return v3election_pb2.CampaignResponse(
            header=resp.header,
            leader=v3election_pb2.LeaderKey(name=request.name, key=key, rev=rev, lease=lease),
        )

    @recipe_unary
    async def Proclaim(
        self, request: v3election_pb2.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ProclaimResponse:
        if not request.HasField("leader"):
            raise MISSING_LEADER_KEY()
        s = self.s
        leader = request.leader
        lease = await session_lease(s, leader.lease)
        resp = await proclaim(s, context, leader.key, leader.rev, lease, request.value)
        return v3election_pb2.ProclaimResponse(header=resp.header)

    @recipe_unary
    async def Resign(
        self, request: v3election_pb2.ResignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ResignResponse:
        if not request.HasField("leader"):
            raise MISSING_LEADER_KEY()
        s = self.s
        # etcd builds a session here too: a LeaderKey with lease 0 gets a (unused) new lease.
        await session_lease(s, request.leader.lease)
        resp = await resign(s, context, request.leader.key, request.leader.rev)
        return v3election_pb2.ResignResponse(header=resp.header)

    @recipe_unary
    async def Leader(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.LeaderResponse:
        resp = await linearizable_range(self.s, context, first_created(request.name + b"/"))
        if not resp.kvs:
            raise ELECTION_NO_LEADER()
        return v3election_pb2.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def Observe(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        s = self.s
        try:
            gate(s, context)
        except errors.EtcdError as e:
            await context.abort(e.code, e.message)
        # etcd's Observe ends the stream without an error when a read or a watch fails.
        try:
            async for resp in self._observe(request.name + b"/", context):
                yield resp
        except errors.EtcdError:
            return

    async def _observe(
        self, prefix: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        """etcd's Election.observe: the current leader (or the first candidate to appear), then
        its key's changes until it is deleted; then again for whoever leads next."""
        s = self.s
        first = first_created(prefix)
        end = prefix_end(prefix)
        while True:
            resp = await linearizable_range(s, context, first)
            if resp.kvs:
                header, kv = resp.header, resp.kvs[0]
            else:
                # Nobody campaigns: the first put under the prefix is the leader. The prefix is
                # empty at the read's revision, so watching from the next one misses nothing.
                header = kv = None
                with watching(s, context, prefix, end, resp.header.revision + 1) as ws:
                    while kv is None:
                        wr = await ws.recv()
                        if wr is None or wr.canceled:
                            return
                        for ev in wr.events:
                            if ev.type == _PUT:
                                kv = ev.kv
                                header = s.header(kv.mod_revision)  # etcd: the put's own revision
                                break
            assert header is not None and kv is not None
            yield v3election_pb2.LeaderResponse(header=header, kv=kv)
            with watching(s, context, kv.key, None, header.revision + 1) as ws:
                deleted = False
                while not deleted:
                    wr = await ws.recv()
                    if wr is None or wr.canceled:
                        return
                    for ev in wr.events:
                        if ev.type == _DELETE:
                            deleted = True
                            break
                        yield v3election_pb2.LeaderResponse(header=s.header(wr.revision), kv=ev.kv)
