"""Client-side concurrency recipes on plain KV, Lease and Watch, as clientv3/concurrency has them:
Session (a kept-alive lease), Mutex and Election. They work with any etcd v3 server, and
interoperate with Go programs using clientv3/concurrency on the same prefixes (same key layout:
"<prefix>/<lease id in hex>", ordered by create revision).

    async with Session(client, ttl=10) as s:
        async with Mutex(s, "/locks/job"):          # lock(), unlock(), try_lock()
            ...
        e = Election(s, "/elections/web")
        await e.campaign(b"node-1")                  # blocks until elected
        await e.proclaim(b"node-1 v2"); await e.resign()
        async for kv in Election(s, "/elections/web").observe(): ...

(The server-side v3lock / v3election services are Client.lock() / Client.campaign().)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Self

import grpc

from etcdstore.client.lease import LeaseKeeper
from etcdstore.client.requests import Bytes, Compare, Op, SortOrder, SortTarget, to_bytes
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.mvccpb import kv_pb2

if TYPE_CHECKING:
    from etcdstore.client.client import Client

DEFAULT_SESSION_TTL = 60  # clientv3/concurrency's defaultSessionTTL

# clientv3/concurrency's errors, with its texts.
LOCKED = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "mutex: Locked by another session")
SESSION_EXPIRED = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "mutex: session is expired")
ELECTION_NOT_LEADER = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "election: not leader")
ELECTION_NO_LEADER = EtcdError(grpc.StatusCode.NOT_FOUND, "election: no leader")


class Session:
    """A lease kept alive in the background (clientv3/concurrency.Session). `ttl` in seconds;
    `lease` reuses an existing lease instead of granting one. close() (or leaving `async with`)
    stops the keepalive and revokes the lease, releasing every lock and leadership held with it;
    orphan() stops the keepalive only. `done` is set when the lease is lost or closed."""

    def __init__(self, client: Client, *, ttl: int = DEFAULT_SESSION_TTL, lease: int = 0) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        self.client = client
        self.ttl = ttl
        self._lease = lease
        self._keeper: LeaseKeeper | None = None
        self.done = asyncio.Event()

    @property
    def lease(self) -> int:
        if not self._lease:
            raise RuntimeError("session not started: use `async with Session(...)` or await start()")
        return self._lease

    async def start(self) -> Self:
        if self._keeper is None:
            if not self._lease:
                self._lease = (await self.client.lease_grant(self.ttl)).ID
            self._keeper = await self.client.lease_keepalive(self._lease, on_lost=lambda _k: self.done.set())
        return self

    async def orphan(self) -> None:
        """Stop refreshing the lease; it expires on its own after its TTL."""
        if self._keeper is not None:
            await self._keeper.close()
        self.done.set()

    async def close(self) -> None:
        """Stop refreshing and revoke the lease (an already expired lease is fine)."""
        await self.orphan()
        if self._lease:
            with contextlib.suppress(EtcdError):
                await self.client.with_options(timeout=self.ttl).lease_revoke(self._lease)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _wait_delete(client: Client, key: bytes, revision: int) -> None:
    """Until `key` is deleted at a revision after `revision`."""
    async with await client.watch(key, start_revision=revision + 1) as w:
        async for resp in w:
            if resp.canceled:
                raise EtcdError(grpc.StatusCode.CANCELLED, resp.cancel_reason or "watch canceled")
            for ev in resp.events:
                if ev.type == kv_pb2.Event.DELETE:
                    return


async def _wait_deletes(client: Client, prefix: bytes, max_create_revision: int) -> rpc_pb2.ResponseHeader:
    """Until every key under `prefix` created at or before `max_create_revision` is gone, newest
    first (each waiter watches only its predecessor: no thundering herd)."""
    while True:
        resp = await client.get(
            prefix,
            prefix=True,
            sort_order=SortOrder.DESCEND,
            sort_target=SortTarget.CREATE,
            limit=1,
            max_create_revision=max_create_revision,
        )
        if not resp.kvs:
            return resp.header
        await _wait_delete(client, resp.kvs[0].key, resp.header.revision)


class Mutex:
    """A distributed lock under `prefix` held by a session's lease (clientv3/concurrency.Mutex).
    Waiters queue in create-revision order; `key` and `header.revision` (a fencing token) are
    set while held. Use `async with Mutex(session, "/locks/x"):` or lock()/unlock()."""

    def __init__(self, session: Session, prefix: Bytes) -> None:
        self.session = session
        self.prefix = to_bytes(prefix) + b"/"
        self.key = b""
        self.revision = -1
        self.header: rpc_pb2.ResponseHeader | None = None

    def _my_key(self) -> bytes:
        return self.prefix + f"{self.session.lease:x}".encode()

    async def _try_acquire(self) -> tuple[rpc_pb2.TxnResponse, bool]:
        c = self.session.client
        key = self._my_key()
        owner = Op.get(
            self.prefix, prefix=True, sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE, limit=1
        )
        resp = await c.txn(
            [Compare.create_revision(key) == 0],
            [Op.put(key, b"", lease=self.session.lease), owner],
            [Op.get(key), owner],
        )
        self.key = key
        self.revision = (
            resp.header.revision
            if resp.succeeded
            else resp.responses[0].response_range.kvs[0].create_revision
        )
        owner_kvs = resp.responses[1].response_range.kvs
        held = not owner_kvs or owner_kvs[0].create_revision == self.revision
        return resp, held

    async def try_lock(self) -> None:
        """Take the lock if it is free, else raise LOCKED at once (clientv3's TryLock)."""
        resp, held = await self._try_acquire()
        if held:
            self.header = resp.header
            return
        await self.session.client.delete(self.key)
        self.key, self.revision = b"", -1
        raise LOCKED()

    async def lock(self) -> None:
        """Wait until this session holds the lock. Cancelling the wait withdraws from the queue."""
        c = self.session.client
        resp, held = await self._try_acquire()
        if held:
            self.header = resp.header
            return
        try:
            header = await _wait_deletes(c, self.prefix, self.revision - 1)
            # The session may have expired while waiting: then the key is gone, and so is the lock.
            got = await c.get(self.key)
            if not got.kvs:
                raise SESSION_EXPIRED()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.unlock())
            raise
        self.header = header

    async def unlock(self) -> None:
        if self.key:
            await self.session.client.delete(self.key)
        self.key, self.revision, self.header = b"", -1, None

    def is_owner(self) -> rpc_pb2.Compare:
        """A txn condition that holds only while this mutex is held (clientv3's IsOwner)."""
        return Compare.create_revision(self.key) == self.revision

    async def __aenter__(self) -> Self:
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unlock()


class Election:
    """Leader election under `prefix` (clientv3/concurrency.Election): candidates queue by
    create revision; the oldest key is the leader and its value the leader's proclamation."""

    def __init__(self, session: Session, prefix: Bytes) -> None:
        self.session = session
        self.prefix = to_bytes(prefix) + b"/"
        self.leader_key = b""
        self.leader_revision = -1
        self.header: rpc_pb2.ResponseHeader | None = None

    async def campaign(self, value: Bytes) -> None:
        """Wait until elected. Cancelling the wait resigns (withdraws the candidacy)."""
        c = self.session.client
        key = self.prefix + f"{self.session.lease:x}".encode()
        value = to_bytes(value)
        resp = await c.txn(
            [Compare.create_revision(key) == 0],
            [Op.put(key, value, lease=self.session.lease)],
            [Op.get(key)],
        )
        self.leader_key = key
        self.leader_revision = resp.header.revision
        self.header = resp.header
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            self.leader_revision = kv.create_revision
            if kv.value != value:
                try:
                    await self.proclaim(value)
                except BaseException:
                    await self.resign()
                    raise
        try:
            self.header = await _wait_deletes(c, self.prefix, self.leader_revision - 1)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.resign())
            raise

    async def proclaim(self, value: Bytes) -> None:
        """Publish a new value as leader; raises ELECTION_NOT_LEADER if no longer leader."""
        if not self.leader_key:
            raise ELECTION_NOT_LEADER()
        resp = await self.session.client.txn(
            [Compare.create_revision(self.leader_key) == self.leader_revision],
            [Op.put(self.leader_key, to_bytes(value), lease=self.session.lease)],
        )
        if not resp.succeeded:
            self.leader_key = b""
            raise ELECTION_NOT_LEADER()
        self.header = resp.header

    async def resign(self) -> None:
        """Give up leadership (or the candidacy); a no-op when not a candidate."""
        if not self.leader_key:
            return
        resp = await self.session.client.txn(
            [Compare.create_revision(self.leader_key) == self.leader_revision], [Op.delete(self.leader_key)]
        )
        self.header = resp.header
        self.leader_key, self.leader_revision = b"", -1

    async def leader(self) -> kv_pb2.KeyValue:
        """The current leader's key-value; raises ELECTION_NO_LEADER when there is none."""
        resp = await self.session.client.get(
            self.prefix, prefix=True, sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE, limit=1
        )
        if not resp.kvs:
            raise ELECTION_NO_LEADER()
        return resp.kvs[0]

    async def observe(self) -> AsyncIterator[kv_pb2.KeyValue]:
        """The leader's key-value now (waiting for one), then on every proclamation and change of
        leader, until the iteration is closed."""
        c = self.session.client
        first: dict[str, Any] = {
            "prefix": True,
            "sort_order": SortOrder.ASCEND,
            "sort_target": SortTarget.CREATE,
            "limit": 1,
        }
        while True:
            resp = await c.get(self.prefix, **first)
            rev = resp.header.revision
            if resp.kvs:
                kv = resp.kvs[0]
            else:
                kv = None
                async with await c.watch(self.prefix, prefix=True, start_revision=rev + 1) as w:
                    async for wr in w:
                        puts = [ev.kv for ev in wr.events if ev.type == kv_pb2.Event.PUT]
                        if puts:
                            kv = puts[0]
                            break
                assert kv is not None
            yield kv
            async with await c.watch(kv.key, start_revision=kv.mod_revision + 1) as w:
                gone = False
                async for wr in w:
                    for ev in wr.events:
                        if ev.type == kv_pb2.Event.DELETE:
                            gone = True
                            break
                        yield ev.kv
                    if gone:
                        break

    def __repr__(self) -> str:
        return f"Election({self.prefix!r}, leader_key={self.leader_key!r})"


__all__ = [
    "ELECTION_NOT_LEADER",
    "ELECTION_NO_LEADER",
    "LOCKED",
    "SESSION_EXPIRED",
    "Election",
    "Mutex",
    "Session",
]
