"""v2 watches (`?wait=true`) over the v3 watchable store.

Each v2 watcher is a v3 watcher (with prev_kv) on the whole v2 key range, starting at the
requested waitIndex, so history (until compacted) and live events come through the same
path. The v3 events of one revision are turned into one v2 event once (cached by revision,
shared by all watchers): the act key written in the same revision names the action and the
node; a revision that deletes v2 nodes without an act key is a lease expiry ("expire").
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from etcdstore.api.v2 import errors as v2e
from etcdstore.api.v2.errors import V2Error
from etcdstore.api.v2.nodes import (
    ACT_KEY,
    PREFIX,
    PREFIX_END,
    decode,
    depth_of,
    event_node,
    extern,
    is_node_key,
    path_of_key,
)
from etcdstore.api.v2.stats import StoreStats
from etcdstore.proto.mvccpb import kv_pb2

_PUT = kv_pb2.Event.PUT
_DELETE = kv_pb2.Event.DELETE
_CACHE_REVISIONS = 1024
_CACHE_BYTES = 16 << 20  # converted events hold values: bound the memory too
_DELETES = ("delete", "compareAndDelete", "expire")


class V2Event:
    """One v2 event: its JSON document and what watchers match it on."""

    __slots__ = ("deletes_dir", "doc", "key", "refresh")

    def __init__(self, doc: dict[str, Any], key: str, refresh: bool, deletes_dir: bool) -> None:
        self.doc = doc
        self.key = key
        self.refresh = refresh
        self.deletes_dir = deletes_dir

    def matches(self, key: str, recursive: bool) -> bool:
        """etcd's watcher rules: the watched key itself; below it if recursive (hidden
        names below the watched key excepted); a watched key inside a deleted directory."""
        if self.refresh:
            return False  # refreshes only move a TTL; etcd notifies no one
        ek = self.key
        if ek == key:
            return True
        if recursive:
            prefix = key if key == "/" else key + "/"
            if ek.startswith(prefix) and "/_" not in "/" + ek[len(prefix) :]:
                return True
        if self.deletes_dir:
            return ek == "/" or key.startswith(ek + "/")
        return False


class Watcher:
    def __init__(self, server: Any, stats: StoreStats) -> None:
        self.s = server
        self.stats = stats
        self._cache: OrderedDict[int, tuple[V2Event | None, int]] = OrderedDict()
        self._cache_bytes = 0

    def start(self, since: int) -> tuple[int, int]:
        """(store index now, the revision to watch from); raises Event index cleared."""
        index = self.s.kv.current_revision
        if since == 0:
            since = index + 1
        compacted = self.s.kv.compact_revision
        if since < compacted:
            raise V2Error(
                v2e.EVENT_INDEX_CLEARED,
                f"the requested history has been cleared [{compacted}/{since}]",
                index,
            )
        return index, since

    async def events(self, key: str, recursive: bool, since: int) -> AsyncIterator[dict[str, Any]]:
        """The matching v2 events from revision `since` on (the caller stops iterating)."""
        ws = self.s.watchable.new_stream()
        self.stats.watchers += 1
        try:
            ws.watch(0, PREFIX, PREFIX_END, since, prev_kv=True)
            while True:
                resp = await ws.recv()
                if resp is None or getattr(resp, "canceled", False):
                    return
                evs = resp.events
                i = 0
                while i < len(evs):
                    rev = evs[i].kv.mod_revision
                    j = i + 1
                    while j < len(evs) and evs[j].kv.mod_revision == rev:
                        j += 1
                    ev = self._event(rev, evs[i:j])
                    i = j
                    if ev is not None and ev.matches(key, recursive):
                        yield ev.doc
        finally:
            self.stats.watchers -= 1
            ws.close()

    def _event(self, rev: int, evs: list[kv_pb2.Event]) -> V2Event | None:
        """The v2 event of a revision, converted once for all watchers (a bounded cache)."""
        cache = self._cache
        hit = cache.get(rev)
        if hit is not None:
            return hit[0]
        ev = self._convert(rev, evs)
        size = 256 + sum(len(e.kv.value) + len(e.prev_kv.value) for e in evs)
        cache[rev] = (ev, size)
        self._cache_bytes += size
        while cache and (len(cache) > _CACHE_REVISIONS or self._cache_bytes > _CACHE_BYTES):
            _, (_, old) = cache.popitem(last=False)
            self._cache_bytes -= old
        return ev

    def _convert(self, rev: int, evs: list[kv_pb2.Event]) -> V2Event | None:
        act = None
        by_path: dict[str, kv_pb2.Event] = {}
        for e in evs:
            k = e.kv.key
            if k == ACT_KEY:
                if e.type == _PUT:
                    act = json.loads(e.kv.value)
            elif is_node_key(k):
                by_path[path_of_key(k)] = e
        if act is None:
            return self._expire(rev, by_path)
        action, path, t = act["a"], act["p"], act["t"]
        e = by_path.get(path)
        if e is None:
            return None
        prev = decode(e.prev_kv) if e.HasField("prev_kv") else None
        doc: dict[str, Any] = {"action": action}
        if action in _DELETES:
            is_dir = prev.dir if prev is not None else False
            doc["node"] = event_node(path, prev.created if prev else 0, rev, is_dir)
            if prev is not None:
                doc["prevNode"] = extern(prev, t)
            return V2Event(doc, path, False, is_dir)
        doc["node"] = extern(decode(e.kv), t, modified=rev)
        if prev is not None and action != "create":
            doc["prevNode"] = extern(prev, t)
        return V2Event(doc, path, bool(act.get("r")), False)

    def _expire(self, rev: int, by_path: dict[str, kv_pb2.Event]) -> V2Event | None:
        deleted = [(depth_of(p), p) for p, e in by_path.items() if e.type == _DELETE]
        if not deleted:
            return None  # not a v2 write (a v3 client writing into the v2 range)
        path = min(deleted)[1]
        e = by_path[path]
        if not e.HasField("prev_kv"):
            return None
        prev = decode(e.prev_kv)
        self.stats.inc("expireCount")
        doc = {
            "action": "expire",
            "node": event_node(path, prev.created, rev, prev.dir),
            "prevNode": extern(prev, time.time_ns()),
        }
        return V2Event(doc, path, False, prev.dir)
