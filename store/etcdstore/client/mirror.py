"""Mirroring a key prefix (clientv3/mirror's Syncer): all keys at one revision, then every change.

    syncer = Syncer(client, prefix="app/")
    async for page in syncer.sync_base():       # RangeResponses of up to 1000 keys, all read at
        for kv in page.kvs: ...                 # syncer.revision (fixed by the first page)
    async with await syncer.sync_updates() as w:  # events after that revision, none missed
        async for resp in w: ...

mirror(src, dst, prefix) copies a prefix from one cluster to another that way (the core of
`etcdctl make-mirror`): the base first, then every update, until cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from etcdstore.client.requests import Bytes, Op, prefix_end, to_bytes
from etcdstore.client.watch import Watcher
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.mvccpb import kv_pb2

if TYPE_CHECKING:
    from etcdstore.client.client import Client

BATCH_LIMIT = 1000  # keys per page, as clientv3/mirror
TXN_OPS = 128  # writes per txn in mirror() (etcd's default --max-txn-ops)


class Syncer:
    """`prefix` b"" mirrors the whole keyspace; `revision` 0 means "now" (fixed by sync_base)."""

    def __init__(self, client: Client, prefix: Bytes = b"", revision: int = 0) -> None:
        self.client = client
        self.prefix = to_bytes(prefix)
        self.revision = revision

    async def sync_base(self, batch_limit: int = BATCH_LIMIT) -> AsyncIterator[rpc_pb2.RangeResponse]:
        """Every key under the prefix as of `revision`, in key order, page by page."""
        key = self.prefix or b"\0"
        end = prefix_end(self.prefix) if self.prefix else b"\0"
        while True:
            resp = await self.client.get(key, range_end=end, limit=batch_limit, revision=self.revision)
            if self.revision == 0:
                self.revision = resp.header.revision
            yield resp
            if not resp.more or not resp.kvs:
                return
            key = resp.kvs[-1].key + b"\0"

    async def sync_updates(self, **watch_options: object) -> Watcher:
        """A watch of the prefix from the revision after `revision` (sync_base first, or give a
        revision): no change after the base is missed."""
        if self.revision == 0:
            raise ValueError("sync_updates needs a revision: run sync_base first or give one")
        if self.prefix:
            return await self.client.watch(
                self.prefix, prefix=True, start_revision=self.revision + 1, **watch_options
            )
        return await self.client.watch(
            b"\0", from_key=True, start_revision=self.revision + 1, **watch_options
        )


async def mirror(
    src: Client,
    dst: Client,
    prefix: Bytes = b"",
    *,
    dest_prefix: Bytes | None = None,
    on_synced: Callable[[int], object] | None = None,
) -> None:
    """Copy `prefix` from `src` to `dst` (keys renamed to `dest_prefix` if given), then apply
    every later change, until cancelled. `on_synced(revision)` is called once the base is
    copied (with the source revision it reflects). Leases are not mirrored (as etcdctl)."""
    pfx = to_bytes(prefix)
    dpfx = pfx if dest_prefix is None else to_bytes(dest_prefix)

    def rename(key: bytes) -> bytes:
        return dpfx + key[len(pfx) :]

    syncer = Syncer(src, pfx)
    async for page in syncer.sync_base():
        puts = [Op.put(rename(kv.key), kv.value) for kv in page.kvs]
        for i in range(0, len(puts), TXN_OPS):  # etcd's --max-txn-ops defaults to 128
            await dst.txn([], puts[i : i + TXN_OPS])
    if on_synced is not None:
        on_synced(syncer.revision)
    async with await syncer.sync_updates() as w:
        async for resp in w:
            ops = [
                Op.put(rename(ev.kv.key), ev.kv.value)
                if ev.type == kv_pb2.Event.PUT
                else Op.delete(rename(ev.kv.key))
                for ev in resp.events
            ]
            # A txn may not touch a key twice: apply one revision's events in order, in batches.
            batch: list[rpc_pb2.RequestOp] = []
            seen: set[bytes] = set()
            for op in ops:
                k = op.request_put.key or op.request_delete_range.key
                if k in seen or len(batch) == TXN_OPS:
                    await dst.txn([], batch)
                    batch, seen = [], set()
                batch.append(op)
                seen.add(k)
            if batch:
                await dst.txn([], batch)
