"""The proxy's cache of range answers (etcd 3.4's grpcproxy/cache, same rules).

* Every range answered through the proxy is stored under its request with `serializable` set;
  a later serializable range with the same request is answered from here. Linearizable ranges
  always go to the cluster (and refresh the entry).
* Writes through the proxy (put, delete, txn ops and compares) drop every cached answer of a
  current-revision range that overlaps the written keys. Ranges at a fixed revision never change,
  so they are not tracked for invalidation.
* A compaction through the proxy makes cached ranges below it answer "compacted".
* At most `max_entries` answers, least recently used dropped first (etcd: 2048).

Writes that do not pass through this proxy are not seen: a serializable range may return an
answer older than the cluster's state, as with etcd's proxy.
"""

from __future__ import annotations

from collections import OrderedDict

from etcdstore import errors
from etcdstore.errors import EtcdError
from etcdstore.proto.etcdserverpb import rpc_pb2

DEFAULT_MAX_ENTRIES = 2048


def _overlaps(a_key: bytes, a_end: bytes, b_key: bytes, b_end: bytes) -> bool:
    """Do key intervals [key, end) overlap? An empty end is the single key; b"\\0" the key space's end."""

    def bounds(k: bytes, e: bytes) -> tuple[bytes, bytes | None]:
        if not e:
            return k, k + b"\0"
        if e == b"\0":
            return k, None
        return k, e

    a0, a1 = bounds(a_key, a_end)
    b0, b1 = bounds(b_key, b_end)
    return (a1 is None or b0 < a1) and (b1 is None or a0 < b1)


class RangeCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lru: OrderedDict[bytes, rpc_pb2.RangeResponse] = OrderedDict()
        # interval (key, range_end) -> cache keys of current-revision answers over it
        self._ranges: dict[tuple[bytes, bytes], set[bytes]] = {}
        self.compacted_rev = -1
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(req: rpc_pb2.RangeRequest) -> bytes:
        if req.serializable:
            return req.SerializeToString(deterministic=True)
        r = rpc_pb2.RangeRequest()
        r.CopyFrom(req)
        r.serializable = True
        return r.SerializeToString(deterministic=True)

    def add(self, req: rpc_pb2.RangeRequest, resp: rpc_pb2.RangeResponse) -> None:
        k = self.key(req)
        if req.revision > self.compacted_rev:
            self._lru[k] = resp
            self._lru.move_to_end(k)
            while len(self._lru) > self.max_entries:
                self._lru.popitem(last=False)
        if req.revision != 0:
            return
        self._ranges.setdefault((req.key, req.range_end), set()).add(k)

    def get(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse | None:
        """The cached answer, or None; raises COMPACTED for a revision below a compaction seen."""
        k = self.key(req)
        if 0 < req.revision < self.compacted_rev:
            self._lru.pop(k, None)
            raise EtcdError(errors.COMPACTED.code, errors.COMPACTED.message)
        resp = self._lru.get(k)
        if resp is not None:
            self._lru.move_to_end(k)
        return resp

    def invalidate(self, key: bytes, range_end: bytes = b"") -> None:
        for ivl in [ivl for ivl in self._ranges if _overlaps(ivl[0], ivl[1], key, range_end)]:
            for k in self._ranges.pop(ivl):
                self._lru.pop(k, None)

    def compact(self, revision: int) -> None:
        self.compacted_rev = max(self.compacted_rev, revision)

    def __len__(self) -> int:
        return len(self._lru)
