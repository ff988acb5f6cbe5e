"""v3lockpb.Lock (Lock, Unlock) and the server-side concurrency recipes election.py shares.

etcd serves Lock and Election through a client connected to itself, running its clientv3
`concurrency` recipes (Mutex, Election, waitDeletes). We run the same steps in-process on the
member's internals: writes are Txns proposed through Raft, reads are linearizable (ReadIndex,
then the local store), and a waiter sleeps on a watcher of the watchable store until the key
ahead of it is deleted — never polling.

Lock(name, lease): the waiter's key is name + "/" + the lease ID in hex, created with the lease
(a Txn, only if absent). The holder is the key of the prefix with the lowest create revision;
a waiter waits, one key at a time, until every key with a lower create revision is gone
(unlocked, or its lease expired or was revoked). If waiting fails (the client cancelled, its
deadline passed, the watch was lost) the waiter's key is deleted, as etcd's Mutex does.

Error codes: etcd's in-process client turns every error of its table into a plain Go error,
which gRPC sends as Unknown with the same message; the per-request checks of etcd's
interceptor (no leader, learner) keep their codes. `recipe_unary` does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from etcdstore import errors
from etcdstore.api.common import gate, log
from etcdstore.mvcc.watchable import WatchStream
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.mvccpb import kv_pb2
from etcdstore.proto.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from etcdstore.txn import kv_apply
from etcdstore.txn.requests import Kind

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

# A lock or campaign with lease 0 gets a lease of its own with this TTL (etcd's default session TTL).
SESSION_TTL = 60
# etcd's quota estimates for a lease grant and for one put.
_LEASE_COST = 64
_KV_OVERHEAD = 256
_MAX_LEASE_ID = (1 << 63) - 1

# etcd's waitDelete error when its watch ends without an answer (here: the member is stopping).
LOST_WATCHER = errors.EtcdError(grpc.StatusCode.UNKNOWN, "lost watcher waiting for delete")

# Errors outside etcd's client error table keep their gRPC code through the in-process client.
_KEEPS_CODE = frozenset({errors.WATCH_CANCELED, errors.REQUEST_CANCELED})

_DELETE = kv_pb2.Event.DELETE
_CREATE = rpc_pb2.RangeRequest.CREATE
_ASCEND = rpc_pb2.RangeRequest.ASCEND
_DESCEND = rpc_pb2.RangeRequest.DESCEND


def as_client_error(e: errors.EtcdError) -> errors.EtcdError:
    """The status etcd's Lock/Election handlers send for an error of their in-process client."""
    if e in _KEEPS_CODE or e.code == grpc.StatusCode.UNKNOWN:
        return e
    return errors.EtcdError(grpc.StatusCode.UNKNOWN, e.message)


def recipe_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """gate() with etcd's codes, then the handler with its errors sent as etcd's recipes send them."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            gate(self.s, context)
        except errors.EtcdError as e:
            await context.abort(e.code, e.message)
        try:
            return await fn(self, request, context)
        except errors.EtcdError as e:
            e = as_client_error(e)
            await context.abort(e.code, e.message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as e:  # noqa: BLE001 - a bug must not take the member down or leak internals
            log.error("unexpected error serving request", method=fn.__name__, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"etcdserver: internal error ({type(e).__name__})")

    return wrapper


# ---- keys ------------------------------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def lease_key(prefix: bytes, lease: int) -> bytes:
    """prefix + the lease ID as Go's %x prints an int64 (a negative ID keeps its sign)."""
    return prefix + format(lease, "x").encode()


# ---- building blocks (each what one call of etcd's in-process client does) -------------------------------


async def session_lease(s: ServerAPI, lease: int) -> int:
    """The lease of etcd's server-side session: the one given, or (for 0) a new lease of SESSION_TTL.

    etcd orphans that session at once, so nothing keeps the new lease alive: it expires after
    SESSION_TTL unless the client refreshes it."""
    if lease != 0:
        return lease
    s.quota.check(_LEASE_COST)
    req = rpc_pb2.LeaseGrantRequest(TTL=SESSION_TTL, ID=s.new_request_id() & _MAX_LEASE_ID)
    resp = await s.propose(Kind.LEASE_GRANT, req.SerializeToString())
    return int(resp.ID)


async def linearizable_range(s: ServerAPI, context: Any, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
    """A default (linearizable) Get: ReadIndex, then the local store."""
    s.auth.authorize_range(context, req)
    await s.read_index()
    resp = s.local_range(req)
    s.fill_header(resp.header)
    return resp


def top_by_create(prefix: bytes, order: int, max_create_revision: int = 0) -> rpc_pb2.RangeRequest:
    """clientv3's WithFirstCreate/WithLastCreate on a prefix: the key created first (last)."""
    return rpc_pb2.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        sort_target=_CREATE,
        sort_order=order,
        limit=1,
        max_create_revision=max_create_revision,
    )


def first_created(prefix: bytes) -> rpc_pb2.RangeRequest:
    return top_by_create(prefix, _ASCEND)


def put_op(key: bytes, value: bytes, lease: int) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def get_op(req: rpc_pb2.RangeRequest) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=req)


def create_revision_is(key: bytes, rev: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        key=key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL, create_revision=rev
    )


async def propose_txn(s: ServerAPI, context: Any, txn: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
    """A Txn as the KV service takes it: checks, quota, authorization, then Raft."""
    kv_apply.check_txn(txn, s.cfg.max_txn_ops)
    cost = max(_puts_cost(txn.success), _puts_cost(txn.failure))
    if cost:
        s.quota.check(cost)
    user, rev = s.auth.authorize_txn(context, txn)
    return await s.propose(Kind.TXN, txn.SerializeToString(), user=user, auth_revision=rev)


def _puts_cost(ops: Any) -> int:
    return sum(
        _KV_OVERHEAD + len(op.request_put.key) + len(op.request_put.value)
        for op in ops
        if op.HasField("request_put")
    )


async def propose_delete(s: ServerAPI, context: Any, key: bytes) -> rpc_pb2.DeleteRangeResponse:
    req = rpc_pb2.DeleteRangeRequest(key=key)
    kv_apply.check_delete_range(req)
    user, rev = s.auth.authorize_delete(context, req)
    return await s.propose(Kind.DELETE_RANGE, req.SerializeToString(), user=user, auth_revision=rev)


@contextlib.contextmanager
def watching(
    s: ServerAPI, context: Any, key: bytes, end: bytes | None, start_rev: int
) -> Iterator[WatchStream]:
    """One watcher on a stream of its own (so nothing of an earlier watcher is left in its buffer)."""
    s.auth.authorize_watch(context, key, end or b"")
    ws = s.watchable.new_stream()
    try:
        ws.watch(0, key, end, start_rev)
        yield ws
    finally:
        ws.close()


async def wait_delete(s: ServerAPI, context: Any, key: bytes, rev: int) -> None:
    """Until `key`, which exists at revision `rev`, is deleted (etcd's waitDelete).

    etcd watches from `rev` itself; any event of the key at `rev` is the put that made it
    exist, so starting at rev + 1 waits for the same deletions and the watcher starts synced
    (no history read)."""
    with watching(s, context, key, None, rev + 1) as ws:
        while True:
            resp = await ws.recv()
            if resp is None:
                raise LOST_WATCHER()
            if resp.compact_revision:
                raise errors.COMPACTED()
            for ev in resp.events:
                if ev.type == _DELETE:
                    return


async def wait_deletes(
    s: ServerAPI, context: Any, prefix: bytes, max_create_rev: int
) -> rpc_pb2.ResponseHeader:
    """Until no key under `prefix` has a create revision <= max_create_rev (etcd's waitDeletes):
    wait for the newest such key to go, then look again. Returns the header of the last read."""
    req = top_by_create(prefix, _DESCEND, max_create_rev)
    while True:
        resp = await linearizable_range(s, context, req)
        if not resp.kvs:
            return resp.header
        # No await between the read and creating the watcher: no deletion can slip in between.
        await wait_delete(s, context, resp.kvs[0].key, resp.header.revision)


class Background:
    """Clean-up proposals that must outlive a cancelled request (etcd runs them on its client's
    own context). Keeps the tasks referenced until they finish."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, what: str, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(what, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(what: str, coro: Any) -> None:
        try:
            await coro
        except errors.EtcdError as e:
            log.info("clean-up after a failed wait did not complete", what=what, error=e.message)
        except Exception as e:  # noqa: BLE001 - logged; the caller's error stands
            log.error("clean-up after a failed wait failed", what=what, exc_info=e)


# ---- the service ---------------------------------------------------------------------------------------


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server
        self._cleanup = Background()

    @recipe_unary
    async def Lock(
        self, request: v3lock_pb2.LockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.LockResponse:
        s = self.s
        lease = await session_lease(s, request.lease)
        prefix = request.name + b"/"
        key = lease_key(prefix, lease)
        owner = get_op(first_created(prefix))
        # Join the queue (or find our key from an earlier Lock with the same lease) and learn the
        # holder, in one round trip.
        txn = rpc_pb2.TxnRequest(
            compare=[create_revision_is(key, 0)],
            success=[put_op(key, b"", lease), owner],
            failure=[get_op(rpc_pb2.RangeRequest(key=key)), owner],
        )
        resp = await propose_txn(s, context, txn)
        if resp.succeeded:
            my_rev = resp.header.revision
        else:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        holder = resp.responses[1].response_range.kvs
        if not holder or holder[0].create_revision == my_rev:
            return v3lock_pb2.LockResponse(header=resp.header, key=key)
        try:
            header = await wait_deletes(s, context, prefix, my_rev - 1)
        except BaseException:
            # Cancelled, deadline passed or the wait broke: leave the queue (etcd's Mutex unlocks).
            self._cleanup.run("unlock", propose_delete(s, context, key))
            raise
        return v3lock_pb2.LockResponse(header=header, key=key)

    @recipe_unary
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.UnlockResponse:
        resp = await propose_delete(self.s, context, request.key)
        return v3lock_pb2.UnlockResponse(header=resp.header)
