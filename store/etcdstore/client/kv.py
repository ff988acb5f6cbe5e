"""KV and Watch methods."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from etcdstore.client.methods import method
from etcdstore.client.requests import (
    Bytes,
    SortOrder,
    SortTarget,
    WatchFilter,
    delete_request,
    put_request,
    range_end_for,
    range_request,
    to_bytes,
    txn_is_read_only,
    txn_request,
)
from etcdstore.client.rpc_errors import REFRESH_TOKEN_ERRORS
from etcdstore.client.transport import Transport
from etcdstore.client.watch import Watcher, WatchStream
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

_RANGE = method("KV.Range")
_PUT = method("KV.Put")
_DELETE = method("KV.DeleteRange")
_TXN = method("KV.Txn")
_COMPACT = method("KV.Compact")


class KVMixin(Transport):
    async def get(
        self,
        key: Bytes,
        *,
        range_end: Bytes | None = None,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> rpc_pb2.RangeResponse:
        """Range: one key, [key, range_end), every key with this prefix, or every key >= key."""
        req = range_request(
            key,
            range_end=range_end,
            prefix=prefix,
            from_key=from_key,
            limit=limit,
            revision=revision,
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        return await self._call(_RANGE, req, idempotent=True)

    async def put(
        self,
        key: Bytes,
        value: Bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> rpc_pb2.PutResponse:
        req = put_request(
            key, value, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value, ignore_lease=ignore_lease
        )
        return await self._call(_PUT, req, idempotent=False)

    async def delete(
        self,
        key: Bytes,
        *,
        range_end: Bytes | None = None,
        prefix: bool = False,
        from_key: bool = False,
        prev_kv: bool = False,
    ) -> rpc_pb2.DeleteRangeResponse:
        req = delete_request(key, range_end=range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv)
        return await self._call(_DELETE, req, idempotent=False)

    async def txn(
        self,
        compare: Iterable[rpc_pb2.Compare] = (),
        success: Iterable[rpc_pb2.RequestOp] = (),
        failure: Iterable[rpc_pb2.RequestOp] = (),
    ) -> rpc_pb2.TxnResponse:
        """If every `compare` holds, run `success`, else `failure` (build them with Compare / Op)."""
        req = txn_request(compare, success, failure)
        return await self._call(_TXN, req, idempotent=txn_is_read_only(req))

    async def compact(self, revision: int, physical: bool = False) -> rpc_pb2.CompactionResponse:
        """Discard history before `revision`; physical=True waits until the backend has done it."""
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        return await self._call(_COMPACT, req, idempotent=False)

    # -- watch -------------------------------------------------------------------------------

    async def watch(
        self,
        key: Bytes,
        *,
        range_end: Bytes | None = None,
        prefix: bool = False,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter] = (),
        progress_notify: bool = False,
        fragment: bool = False,
        watch_id: int = 0,
    ) -> Watcher:
        """Start watching once etcd confirms it (events from `start_revision`, else from now on)."""
        k = to_bytes(key)
        req = rpc_pb2.WatchCreateRequest(
            key=k,
            range_end=range_end_for(k, range_end, prefix, from_key),
            start_revision=start_revision,
            progress_notify=progress_notify,
            filters=[int(f) for f in filters],
            prev_kv=prev_kv,
            watch_id=watch_id,
            fragment=fragment,
        )
        await self._ensure_token()
        sh = self._shared
        refreshed = False
        moves = len(self._candidates()) - 1
        while True:
            stream = self._watch_stream()
            gen = sh.token_gen
            try:
                return await stream.create(req, self._timeout)
            except EtcdError as e:
                if e in REFRESH_TOKEN_ERRORS and sh.user is not None and not refreshed:
                    refreshed = True
                    await self._refresh_token(gen)  # the next stream carries the new token
                    continue
                if e.code == grpc.StatusCode.UNAVAILABLE:
                    # Creates are answered in-stream, so UNAVAILABLE means the stream itself failed
                    # (the reader may not have noticed yet): fail it for everyone, try elsewhere.
                    stream.close(e)
                    if moves > 0:
                        moves -= 1
                        self._moved_off(stream.endpoint)
                        continue
                raise

    def _watch_stream(self) -> WatchStream:
        """The shared stream for this view (pinned endpoint, leader requirement, auth token)."""
        sh = self._shared
        key = (self._pinned.target if self._pinned else None, self._require_leader, sh.token_gen)
        stream = sh.watch_streams.get(key)
        if stream is None or stream.closed:

            def forget(s: WatchStream, key: object = key) -> None:
                if sh.watch_streams.get(key) is s:
                    del sh.watch_streams[key]

            stream = WatchStream(self._connection(), self._metadata(), forget)
            sh.watch_streams[key] = stream
        return stream
