"""A client view confined to a key prefix (clientv3/namespace: NewKV, NewWatcher, NewLease).

    app = Namespace(client, "app1/")
    await app.put("k", "v")               # stores "app1/k"
    (await app.get("k")).kvs[0].key       # b"k"
    await app.get("", from_key=True)      # every key under "app1/", none outside it
    async with await app.watch("k", prefix=True) as w: ...   # events with "app1/" removed

Keys, range ends, txn compares and operations (nested txns too) get the prefix; keys in
responses (kvs, prev_kv, events, lease_time_to_live keys) come back without it. A range end of
"\\0" (from_key, or an empty key with prefix=True) means "to the end of the namespace", as in
clientv3. Other methods (status, member_*, lease_grant, ...) go to the client as is, and so do
the server-side lock()/campaign() services, whose names are not prefixed (clientv3/namespace
does not wrap them either): use recipes.Mutex / recipes.Election with a prefixed name instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

import grpc

from etcdstore.client.requests import (
    Bytes,
    delete_request,
    prefix_end,
    put_request,
    range_request,
    to_bytes,
    txn_request,
)
from etcdstore.client.watch import Watcher
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

if TYPE_CHECKING:
    from etcdstore.client.client import Client

EMPTY_KEY = EtcdError(grpc.StatusCode.INVALID_ARGUMENT, "etcdclient: key is not provided")


class Namespace:
    """KV, Watch and Lease methods of `client` under `prefix` (see the module docstring)."""

    def __init__(self, client: Client, prefix: Bytes) -> None:
        self.client = client
        self.prefix = to_bytes(prefix)
        if not self.prefix:
            raise ValueError("an empty prefix is no namespace")

    # -- request rewriting -------------------------------------------------------------------

    def _interval(self, key: bytes, end: bytes) -> tuple[bytes, bytes]:
        pkey = self.prefix + key
        if not end:
            return pkey, b""
        if end == b"\0":
            return pkey, prefix_end(self.prefix)
        return pkey, self.prefix + end

    def _range(self, req: Any) -> None:
        req.key, req.range_end = self._interval(req.key, req.range_end)

    def _op(self, op: rpc_pb2.RequestOp) -> rpc_pb2.RequestOp:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            self._range(op.request_range)
        elif kind == "request_delete_range":
            self._range(op.request_delete_range)
        elif kind == "request_put":
            if not op.request_put.key:
                raise EtcdError(EMPTY_KEY.code, EMPTY_KEY.message)
            op.request_put.key = self.prefix + op.request_put.key
        elif kind == "request_txn":
            self._txn(op.request_txn)
        return op

    def _txn(self, txn: rpc_pb2.TxnRequest) -> None:
        for c in txn.compare:
            c.key, c.range_end = self._interval(c.key, c.range_end)
        for op in (*txn.success, *txn.failure):
            self._op(op)

    # -- response rewriting ------------------------------------------------------------------

    def _strip(self, key: bytes) -> bytes:
        return key.removeprefix(self.prefix)

    def _kvs(self, kvs: Iterable[Any]) -> None:
        for kv in kvs:
            kv.key = self._strip(kv.key)

    def _resp_op(self, r: rpc_pb2.ResponseOp) -> None:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            self._kvs(r.response_range.kvs)
        elif kind == "response_put" and r.response_put.HasField("prev_kv"):
            self._kvs([r.response_put.prev_kv])
        elif kind == "response_delete_range":
            self._kvs(r.response_delete_range.prev_kvs)
        elif kind == "response_txn":
            for sub in r.response_txn.responses:
                self._resp_op(sub)

    # -- KV ----------------------------------------------------------------------------------

    def _split(self, key: Bytes, options: dict[str, Any]) -> tuple[bytes, bytes | None, dict[str, Any]]:
        """(prefixed key, prefixed range end or None, the other options) for get/watch."""
        rest = dict(options)
        req = range_request(
            key,
            range_end=rest.pop("range_end", None),
            prefix=rest.pop("prefix", False),
            from_key=rest.pop("from_key", False),
        )
        k, end = self._interval(req.key, req.range_end)
        return k, end or None, rest

    async def get(self, key: Bytes, **options: Any) -> rpc_pb2.RangeResponse:
        """Client.get inside the namespace (same options)."""
        k, end, rest = self._split(key, options)
        resp = await self.client.get(k, range_end=end, **rest)
        self._kvs(resp.kvs)
        return resp

    async def put(self, key: Bytes, value: Bytes, **options: Any) -> rpc_pb2.PutResponse:
        req = put_request(key, value, **options)
        if not req.key:
            raise EtcdError(EMPTY_KEY.code, EMPTY_KEY.message)
        resp = await self.client.put(self.prefix + req.key, req.value, **options)
        if resp.HasField("prev_kv"):
            self._kvs([resp.prev_kv])
        return resp

    async def delete(self, key: Bytes, **options: Any) -> rpc_pb2.DeleteRangeResponse:
        req = delete_request(key, **options)
        key2, end = self._interval(req.key, req.range_end)
        resp = await self.client.delete(key2, range_end=end or None, prev_kv=req.prev_kv)
        self._kvs(resp.prev_kvs)
        return resp

    async def txn(
        self,
        compare: Iterable[rpc_pb2.Compare] = (),
        success: Iterable[rpc_pb2.RequestOp] = (),
        failure: Iterable[rpc_pb2.RequestOp] = (),
    ) -> rpc_pb2.TxnResponse:
        req = txn_request(compare, success, failure)  # copies: the caller's messages stay as given
        req = rpc_pb2.TxnRequest.FromString(req.SerializeToString())
        self._txn(req)
        resp = await self.client.txn(req.compare, req.success, req.failure)
        for r in resp.responses:
            self._resp_op(r)
        return resp

    async def compact(self, revision: int, physical: bool = False) -> rpc_pb2.CompactionResponse:
        return await self.client.compact(revision, physical)

    # -- Watch -------------------------------------------------------------------------------

    async def watch(self, key: Bytes, **options: Any) -> NamespacedWatcher:
        """Client.watch inside the namespace; events' keys come without the prefix."""
        k, end, rest = self._split(key, options)
        w = await self.client.watch(k, range_end=end, **rest)
        return NamespacedWatcher(w, self)

    # -- Lease -------------------------------------------------------------------------------

    async def lease_time_to_live(self, id: int, keys: bool = False) -> rpc_pb2.LeaseTimeToLiveResponse:
        """Keys attached to the lease inside the namespace only, without the prefix."""
        resp = await self.client.lease_time_to_live(id, keys)
        inside = [k[len(self.prefix) :] for k in resp.keys if k.startswith(self.prefix)]
        del resp.keys[:]
        resp.keys.extend(inside)
        return resp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class NamespacedWatcher:
    """A Watcher whose responses have the namespace prefix removed from keys."""

    def __init__(self, watcher: Watcher, ns: Namespace) -> None:
        self.watcher = watcher
        self._ns = ns

    def __aiter__(self) -> NamespacedWatcher:
        return self

    async def __anext__(self) -> rpc_pb2.WatchResponse:
        resp = await self.watcher.__anext__()
        for ev in resp.events:
            ev.kv.key = self._ns._strip(ev.kv.key)
            if ev.HasField("prev_kv"):
                ev.prev_kv.key = self._ns._strip(ev.prev_kv.key)
        return resp

    async def cancel(self) -> None:
        await self.watcher.cancel()

    async def request_progress(self) -> None:
        await self.watcher.request_progress()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()
