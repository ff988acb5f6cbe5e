"""Watches on the MVCC store (etcd's watchable store), on the server's asyncio loop.

A watcher is in one of three groups, as in etcd:

* synced: caught up; `notify(events, revision)` (called by the server after each applied
  batch is written) hands it its events at once, into its stream's bounded buffer;
* victim: its stream's buffer was full; it keeps the one response that did not fit and
  gets nothing else until that response is delivered (so a slow reader never slows the
  writers or other watchers, and holds at most one response in memory);
* unsynced: behind; a background task reads its history from the KEY column family in
  bounded chunks (yielding between chunks) until it is caught up, then it is synced.

Each watcher's events arrive in revision order, each exactly once, across these moves.
A watcher whose next revision has been compacted gets one response with
compact_revision set and canceled=True, and is done.

Responses go into the stream's buffer; the gRPC layer consumes them (`recv`, `drain`)
and turns them into WatchResponses (headers, fragmenting). Event messages in responses
are shared between watchers: read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import Final

from etcdstore.mvcc import revision as rv
from etcdstore.mvcc.kvstore import KEY, KVStore, key_of_value
from etcdstore.proto.mvccpb import kv_pb2

PROGRESS_WATCH_ID: Final = -1  # a progress response for the whole stream (etcd's InvalidWatchID)
AUTO_WATCH_ID: Final = 0  # watch(0, ...) lets the stream pick the ID

# etcd's WatchCreateRequest.FilterType values.
FILTER_NOPUT: Final = 0
FILTER_NODELETE: Final = 1

ERR_EMPTY_RANGE: Final = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID: Final = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_NOT_EXIST: Final = "mvcc: watcher does not exist"

DEFAULT_PROGRESS_INTERVAL: Final = 600.0  # etcd's 10 minutes

_PUT: Final = kv_pb2.Event.PUT
_DELETE: Final = kv_pb2.Event.DELETE
_Event = kv_pb2.Event

_SYNCED, _UNSYNCED, _VICTIM, _DONE = 0, 1, 2, 3


class WatchError(Exception):
    """A watch request etcd refuses; the message is etcd's cancel_reason text."""


class WatchResponse:
    """What one watcher (or the stream, for watch_id -1) is told.

    revision: the store revision the response reflects (the gRPC header revision);
    compact_revision/canceled: set when the watcher was canceled by compaction.
    """

    __slots__ = ("canceled", "compact_revision", "events", "revision", "watch_id")

    def __init__(
        self,
        watch_id: int,
        events: list[kv_pb2.Event],
        revision: int,
        compact_revision: int = 0,
        canceled: bool = False,
    ) -> None:
        self.watch_id = watch_id
        self.events = events
        self.revision = revision
        self.compact_revision = compact_revision
        self.canceled = canceled

    def __repr__(self) -> str:
        return (
            f"WatchResponse(id={self.watch_id}, rev={self.revision}, events={len(self.events)}, "
            f"compact={self.compact_revision}, canceled={self.canceled})"
        )


class _Watcher:
    __slots__ = (
        "end",
        "id",
        "key",
        "min_rev",
        "no_delete",
        "no_put",
        "pending",
        "prev_kv",
        "progress_notify",
        "sent_events",
        "state",
        "stream",
    )

    def __init__(
        self,
        watch_id: int,
        stream: WatchStream,
        key: bytes,
        end: bytes | None,
        prev_kv: bool,
        no_put: bool,
        no_delete: bool,
        progress_notify: bool,
    ) -> None:
        self.id = watch_id
        self.stream = stream
        self.key = key
        self.end = end  # None: the single key; b"": no upper bound; else exclusive end
        self.min_rev = 0  # the next revision this watcher has not seen
        self.prev_kv = prev_kv
        self.no_put = no_put
        self.no_delete = no_delete
        self.progress_notify = progress_notify
        self.state = _SYNCED
        self.pending: WatchResponse | None = None  # a victim's undelivered response
        self.sent_events = False  # events sent since the last progress tick


class WatchStream:
    """One client watch stream: its watchers and its bounded buffer of responses."""

    __slots__ = ("_buf", "_cap", "_closed", "_next_id", "_victims", "_waiter", "_watchers", "_ws")

    def __init__(self, ws: WatchableStore, capacity: int) -> None:
        self._ws = ws
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0
        self._buf: deque[WatchResponse] = deque()
        self._cap = capacity
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._victims = 0  # watchers of this stream waiting for room in the buffer

    @property
    def revision(self) -> int:
        """The revision the watchable store has notified up to (header of created responses)."""
        return self._ws.revision

    # -- requests --------------------------------------------------------------------------

    def watch(
        self,
        watch_id: int,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        *,
        prev_kv: bool = False,
        filters: Iterable[int] = (),
        progress_notify: bool = False,
    ) -> int:
        """Create a watcher on [key, end) as given in a WatchCreateRequest (key b"" is
        b"\\0"; end None/b"" is the single key, b"\\0" every key >= key); start_rev 0 means
        after the current revision. Returns the watch ID; raises WatchError."""
        if self._closed:
            raise WatchError(ERR_EMPTY_RANGE)  # etcd answers a closed stream this way
        if not key:
            key = b"\x00"
        if not end:
            iend = None
        elif end == b"\x00":
            iend = b""
        else:
            if key >= end:
                raise WatchError(ERR_EMPTY_RANGE)
            iend = end
        if watch_id == AUTO_WATCH_ID:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self._watchers:
            raise WatchError(ERR_DUPLICATE_ID)
        fs = set(filters)
        w = _Watcher(
            watch_id, self, key, iend, prev_kv, FILTER_NOPUT in fs, FILTER_NODELETE in fs, progress_notify
        )
        self._watchers[watch_id] = w
        self._ws._add(w, start_rev)
        return watch_id

    def cancel(self, watch_id: int) -> None:
        """Remove a watcher (also one already canceled by compaction); WatchError if unknown."""
        if self._closed:
            raise WatchError(ERR_NOT_EXIST)
        w = self._watchers.pop(watch_id, None)
        if w is None:
            raise WatchError(ERR_NOT_EXIST)
        self._ws._remove(w)

    def request_progress(self) -> bool:
        """Queue a progress response (watch_id -1, current revision) if every watcher of the
        stream is synced, as etcd does; otherwise nothing (the client asks again later)."""
        for w in self._watchers.values():
            if w.state != _SYNCED and w.state != _DONE:
                return False
        self._put(WatchResponse(PROGRESS_WATCH_ID, [], self._ws.revision))
        return True

    def close(self) -> None:
        if self._closed:
            return
        for w in self._watchers.values():
            self._ws._remove(w)
        self._watchers.clear()
        self._closed = True
        self._ws._streams.discard(self)
        self._wake()

    # -- the response channel ---------------------------------------------------------------

    async def recv(self) -> WatchResponse | None:
        """The next response; None once the stream is closed and drained."""
        buf = self._buf
        while not buf:
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        resp = buf.popleft()
        if self._victims:
            self._ws._kick()
        return resp

    def drain(self) -> list[WatchResponse]:
        """Every buffered response, without waiting."""
        out = list(self._buf)
        self._buf.clear()
        if out and self._victims:
            self._ws._kick()
        return out

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchResponse:
        resp = await self.recv()
        if resp is None:
            raise StopAsyncIteration
        return resp

    def put_control(self, resp: object) -> None:
        """Queue a response of the API layer's own (created, canceled ...) in order with the
        events already buffered; never refused, as etcd's control channel."""
        self._put(resp)  # type: ignore[arg-type]  # the API's own rpc_pb2 response, passed on as is

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def closed(self) -> bool:
        return self._closed

    def _offer(self, resp: WatchResponse) -> bool:
        """Buffer a response if there is room."""
        if len(self._buf) >= self._cap:
            return False
        self._buf.append(resp)
        self._wake()
        return True

    def _put(self, resp: WatchResponse) -> None:
        """Buffer a small control response (progress, compaction) even when full: it must
        follow the events before it and never be lost."""
        self._buf.append(resp)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class WatchableStore:
    """Watch streams over a KVStore; see the module docstring."""

    def __init__(
        self,
        store: KVStore,
        *,
        buffer_size: int = 128,
        max_watchers_per_sync: int = 512,
        catchup_chunk: int = 1000,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    ) -> None:
        self._store = store
        self._rev = store.current_revision
        self._buffer_size = buffer_size
        self._max_per_sync = max_watchers_per_sync
        self._chunk = catchup_chunk
        self.progress_interval = progress_interval
        self._streams: set[WatchStream] = set()
        # synced watchers, by key (single-key watchers) and as a set (range watchers)
        self._key_watchers: dict[bytes, set[_Watcher]] = {}
        self._range_watchers: set[_Watcher] = set()
        self._unsynced: dict[_Watcher, None] = {}  # insertion-ordered: fair catch-up
        self._victims: dict[_Watcher, None] = {}
        self._prev_kv_watchers = 0
        store.prev_kv_in_events = False
        self._kick_event: asyncio.Event | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._progress_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def revision(self) -> int:
        """The last revision notified (everything up to it is on disk and delivered or queued)."""
        return self._rev

    @property
    def store(self) -> KVStore:
        return self._store

    def new_stream(self) -> WatchStream:
        s = WatchStream(self, self._buffer_size)
        self._streams.add(s)
        return s

    def stats(self) -> dict[str, int]:
        synced = len(self._range_watchers) + sum(len(s) for s in self._key_watchers.values())
        return {
            "streams": len(self._streams),
            "synced": synced,
            "unsynced": len(self._unsynced),
            "victims": len(self._victims),
        }

    # -- the server's side ----------------------------------------------------------------

    def notify(self, events: list[kv_pb2.Event], revision: int) -> None:
        """Deliver the events of a written batch (revision order) to synced watchers."""
        self._rev = revision
        key_watchers = self._key_watchers
        range_watchers = self._range_watchers
        if not key_watchers and not range_watchers:
            return
        matched: dict[_Watcher, list[int]] = {}
        for i, ev in enumerate(events):
            key = ev.kv.key
            if key_watchers:
                ws = key_watchers.get(key)
                if ws:
                    for w in ws:
                        lst = matched.get(w)
                        if lst is None:
                            matched[w] = [i]
                        else:
                            lst.append(i)
            for w in range_watchers:
                if w.key <= key and (not w.end or key < w.end):
                    lst = matched.get(w)
                    if lst is None:
                        matched[w] = [i]
                    else:
                        lst.append(i)
        if not matched:
            return
        plain: dict[int, kv_pb2.Event] = {}
        for w, idxs in matched.items():
            evs = self._select(w, events, idxs, plain)
            if not evs:
                continue
            resp = WatchResponse(w.id, evs, revision)
            w.sent_events = True
            if not w.stream._offer(resp):
                # Slow reader: keep this response aside; catch up from history afterwards.
                self._unlink_synced(w)
                w.min_rev = revision + 1
                self._make_victim(w, resp)

    def restore(self, store: KVStore) -> None:
        """The store was replaced (a Raft snapshot was applied): every synced watcher catches
        up from the new store's history (or is canceled if that is compacted)."""
        seen = self._rev  # synced watchers have been given everything up to here
        self._store = store
        self._rev = store.current_revision
        store.prev_kv_in_events = self._prev_kv_watchers > 0
        for w in list(self._synced()):
            self._unlink_synced(w)
            w.state = _UNSYNCED
            w.min_rev = max(w.min_rev, seen + 1)
            self._unsynced[w] = None
        self._kick()

    def close(self) -> None:
        self._closed = True
        for s in list(self._streams):
            s.close()
        for task in (self._sync_task, self._progress_task):
            if task is not None and not task.done():
                task.cancel()
        self._sync_task = self._progress_task = None

    async def aclose(self) -> None:
        tasks = [t for t in (self._sync_task, self._progress_task) if t is not None]
        self.close()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # -- watcher bookkeeping ----------------------------------------------------------------

    def _synced(self) -> Iterable[_Watcher]:
        yield from self._range_watchers
        for ws in self._key_watchers.values():
            yield from ws

    def _add(self, w: _Watcher, start_rev: int) -> None:
        cur = self._rev
        if start_rev == 0:
            start_rev = cur + 1  # etcd's API layer: "from now on"
        if w.prev_kv:
            self._prev_kv_watchers += 1
            self._store.prev_kv_in_events = True
        if start_rev > cur:
            w.min_rev = start_rev
            self._link_synced(w)
        else:
            w.min_rev = start_rev
            w.state = _UNSYNCED
            self._unsynced[w] = None
            self._kick()
        if w.progress_notify:
            self._start_progress()

    def _remove(self, w: _Watcher) -> None:
        state = w.state
        if state == _SYNCED:
            self._unlink_synced(w)
        elif state == _UNSYNCED:
            del self._unsynced[w]
        elif state == _VICTIM:
            del self._victims[w]
            w.stream._victims -= 1
            w.pending = None
        if state != _DONE and w.prev_kv:
            self._prev_kv_watchers -= 1
            if not self._prev_kv_watchers:
                self._store.prev_kv_in_events = False
        w.state = _DONE

    def _link_synced(self, w: _Watcher) -> None:
        w.state = _SYNCED
        if w.end is None:
            ws = self._key_watchers.get(w.key)
            if ws is None:
                self._key_watchers[w.key] = {w}
            else:
                ws.add(w)
        else:
            self._range_watchers.add(w)

    def _unlink_synced(self, w: _Watcher) -> None:
        if w.end is None:
            ws = self._key_watchers[w.key]
            ws.discard(w)
            if not ws:
                del self._key_watchers[w.key]
        else:
            self._range_watchers.discard(w)

    def _make_victim(self, w: _Watcher, resp: WatchResponse) -> None:
        w.state = _VICTIM
        w.pending = resp
        self._victims[w] = None
        w.stream._victims += 1
        self._kick()

    def _compacted(self, w: _Watcher, compact_rev: int) -> None:
        """Cancel a watcher whose history is gone; it stays known to its stream until canceled."""
        w.stream._put(WatchResponse(w.id, [], self._rev, compact_revision=compact_rev, canceled=True))
        self._remove(w)

    # -- event selection ----------------------------------------------------------------------

    def _select(
        self, w: _Watcher, events: list[kv_pb2.Event], idxs: list[int], plain: dict[int, kv_pb2.Event]
    ) -> list[kv_pb2.Event]:
        """The events (by index) this watcher gets: at or after its min_rev, through its
        filters, with prev_kv only if it asked for it."""
        out = []
        min_rev = w.min_rev
        for i in idxs:
            ev = events[i]
            if ev.kv.mod_revision < min_rev:
                continue
            if ev.type == _PUT:
                if w.no_put:
                    continue
            elif w.no_delete:
                continue
            if w.prev_kv:
                if not ev.HasField("prev_kv"):
                    self._fill_prev(ev)
                out.append(ev)
            elif ev.HasField("prev_kv"):
                p = plain.get(i)
                if p is None:
                    p = plain[i] = _Event(type=ev.type, kv=ev.kv)
                out.append(p)
            else:
                out.append(ev)
        return out

    def _fill_prev(self, ev: kv_pb2.Event) -> None:
        """prev_kv for an event made while no watcher wanted it (etcd reads at mod_revision-1)."""
        kv = ev.kv
        if ev.type == _PUT and kv.create_revision == kv.mod_revision:
            return  # a create has no previous value
        prev = self._store.get_kv(kv.key, kv.mod_revision - 1)
        if prev is not None:
            ev.prev_kv.CopyFrom(prev)

    # -- background catch-up ------------------------------------------------------------------

    def _kick(self) -> None:
        if self._closed:
            return
        if self._kick_event is None:
            self._kick_event = asyncio.Event()
        self._kick_event.set()
        if self._sync_task is None or self._sync_task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (synchronous use): call sync_once() to make progress
            self._sync_task = loop.create_task(self._sync_loop(), name="watch-sync")

    async def _sync_loop(self) -> None:
        kick = self._kick_event
        assert kick is not None
        while not self._closed:
            kick.clear()
            progressed = self.sync_once()
            if not self._unsynced and not self._victims:
                await kick.wait()
            elif progressed:
                await asyncio.sleep(0)  # yield between chunks: writes and readers go first
            else:
                # Everyone left is blocked on a full buffer: wait for a reader (or retry).
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(kick.wait(), 0.1)

    def sync_once(self) -> bool:
        """One round of background work: retry victims, then one chunk of catch-up.
        Returns whether anything moved."""
        moved = self._move_victims() if self._victims else False
        if self._unsynced:
            moved = self._sync_chunk() or moved
        return moved

    def _move_victims(self) -> bool:
        moved = False
        for w in list(self._victims):
            pending = w.pending
            assert pending is not None  # a victim always holds the response it could not deliver
            if not w.stream._offer(pending):
                continue
            moved = True
            del self._victims[w]
            w.stream._victims -= 1
            w.pending = None
            if w.min_rev <= self._rev:
                w.state = _UNSYNCED
                self._unsynced[w] = None
            else:
                self._link_synced(w)
        return moved

    def _sync_chunk(self) -> bool:
        """Read one bounded chunk of history for (up to max_watchers_per_sync) unsynced
        watchers, as etcd's syncWatchers does."""
        cur = self._rev
        compact = self._store.compact_revision
        group: list[_Watcher] = []
        moved = False
        for w in list(self._unsynced):
            if len(group) >= self._max_per_sync:
                break
            if w.min_rev < compact:
                self._compacted(w, compact)
                moved = True
            elif w.min_rev > cur:
                del self._unsynced[w]  # nothing to read yet (e.g. after a restore)
                self._link_synced(w)
                moved = True
            else:
                group.append(w)
        if not group:
            return moved
        min_rev = max(1, min(w.min_rev for w in group))
        entries: list[tuple[bytes, bytes]] = []
        last_main = 0
        more = False
        limit = self._chunk
        for k, v in self._store.backend.items(KEY, rv.main_bytes(min_rev), rv.main_bytes(cur + 1)):
            main = rv.from_bytes(k) >> rv.SUB_BITS
            if len(entries) >= limit and main != last_main:
                more = True  # stop at a revision boundary: a revision is never split
                break
            entries.append((k, v))
            last_main = main
        upto = last_main if more else cur
        events, matched = self._events_for(group, entries)
        plain: dict[int, kv_pb2.Event] = {}
        for w in group:
            if w.min_rev > upto:
                continue  # this chunk ended before its history starts
            idxs = matched.get(w)
            evs = self._select(w, events, idxs, plain) if idxs else []
            w.min_rev = upto + 1
            moved = True
            del self._unsynced[w]
            if evs:
                w.sent_events = True
                resp = WatchResponse(w.id, evs, cur)
                if not w.stream._offer(resp):
                    self._make_victim(w, resp)
                    continue
            if more:
                self._unsynced[w] = None  # back of the queue; more to read
            else:
                self._link_synced(w)
        return moved

    def _events_for(
        self, group: list[_Watcher], entries: list[tuple[bytes, bytes]]
    ) -> tuple[list[kv_pb2.Event], dict[_Watcher, list[int]]]:
        """Events for the entries some watcher of the group watches, and which watcher
        watches which of them (by index)."""
        by_key: dict[bytes, list[_Watcher]] = {}
        ranges = []
        for w in group:
            if w.end is None:
                by_key.setdefault(w.key, []).append(w)
            else:
                ranges.append(w)
        want_prev = any(w.prev_kv for w in group)
        events: list[kv_pb2.Event] = []
        matched: dict[_Watcher, list[int]] = {}
        store = self._store
        for k, v in entries:
            key = key_of_value(v)
            ws = by_key.get(key)
            hits = list(ws) if ws else []
            for w in ranges:
                if w.key <= key and (not w.end or key < w.end):
                    hits.append(w)
            if not hits:
                continue
            ev = _Event()
            kv = ev.kv
            kv.ParseFromString(v)
            main = rv.from_bytes(k) >> rv.SUB_BITS
            if rv.is_tombstone(k):
                ev.type = _DELETE
                kv.mod_revision = main  # tombstones are stored without it
            if want_prev and not (ev.type == _PUT and kv.create_revision == main):
                prev = store.get_kv(key, main - 1)
                if prev is not None:
                    ev.prev_kv.CopyFrom(prev)
            i = len(events)
            events.append(ev)
            for w in hits:
                lst = matched.get(w)
                if lst is None:
                    matched[w] = [i]
                else:
                    lst.append(i)
        return events, matched

    # -- progress notifications ---------------------------------------------------------------

    def _start_progress(self) -> None:
        if self._progress_task is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._progress_task = loop.create_task(self._progress_loop(), name="watch-progress")

    async def _progress_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.progress_interval)
            self.progress_tick()

    def progress_tick(self) -> None:
        """etcd's periodic progress notify: each synced progress_notify watcher that got no
        events since the last tick gets an empty response with the current revision."""
        rev = self._rev
        for s in list(self._streams):
            for w in s._watchers.values():
                if not w.progress_notify:
                    continue
                if not w.sent_events and w.state == _SYNCED:
                    s._offer(WatchResponse(w.id, [], rev))  # dropped if full: events are flowing
                w.sent_events = False
