"""The watchable store: replay, filters, prev_kv, compaction, slow watchers catching up while
writes continue, progress notifications, and the watch API's errors."""

from __future__ import annotations

import asyncio
import random

import pytest
from etcdstore.mvcc.watchable import (
    FILTER_NODELETE,
    FILTER_NOPUT,
    PROGRESS_WATCH_ID,
    WatchableStore,
    WatchError,
    WatchResponse,
    WatchStream,
)
from etcdstore.proto.mvccpb import kv_pb2
from mvcc_support import Node

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


@pytest.fixture
def wnode(tmp_path):
    n = Node(tmp_path / "db", watchable=True)
    yield n
    n.close()


def use(n: Node, **kw) -> WatchableStore:
    """Replace the node's watchable store by one with these settings."""
    assert n.watchable is not None
    n.watchable.close()
    n.watchable = WatchableStore(n.kv, **kw)
    return n.watchable


async def collect(stream: WatchStream, *, idle: float = 0.2) -> list[WatchResponse]:
    """Everything the stream delivers until it stays quiet for `idle` seconds."""
    out = []
    while True:
        try:
            r = await asyncio.wait_for(stream.recv(), idle)
        except TimeoutError:
            return out
        if r is None:
            return out
        out.append(r)


def events_of(resps: list[WatchResponse], watch_id: int) -> list[kv_pb2.Event]:
    return [e for r in resps if r.watch_id == watch_id for e in r.events]


def summary(evs: list[kv_pb2.Event]) -> list[tuple]:
    return [(e.type, e.kv.key, e.kv.mod_revision, e.kv.value, e.prev_kv.value) for e in evs]


async def test_historical_replay_then_live(wnode: Node):
    wnode.put(b"a", b"1")  # 2
    wnode.put(b"b", b"1")  # 3
    wnode.put(b"a", b"2")  # 4
    wnode.delete(b"a")  # 5
    s = wnode.watchable.new_stream()
    assert s.watch(0, b"a", None, 3, prev_kv=True) == 0
    assert s.watch(0, b"a", b"c", 2) == 1
    assert s.watch(0, b"b", b"\x00", 0) == 2  # from now on
    wnode.put(b"b", b"2")  # 6
    resps = await collect(s)
    assert summary(events_of(resps, 0)) == [(PUT, b"a", 4, b"2", b"1"), (DELETE, b"a", 5, b"", b"2")]
    assert summary(events_of(resps, 1)) == [
        (PUT, b"a", 2, b"1", b""), (PUT, b"b", 3, b"1", b""), (PUT, b"a", 4, b"2", b""),
        (DELETE, b"a", 5, b"", b""), (PUT, b"b", 6, b"2", b""),
    ]  # fmt: skip
    assert not any(e.HasField("prev_kv") for e in events_of(resps, 1))
    assert summary(events_of(resps, 2)) == [(PUT, b"b", 6, b"2", b"")]
    assert all(r.revision >= max(e.kv.mod_revision for e in r.events) for r in resps)
    assert {r.revision for r in resps if r.watch_id == 2} == {6}


async def test_filters_and_prev_kv_live(wnode: Node):
    s = wnode.watchable.new_stream()
    wnode.put(b"k", b"0")
    s.watch(10, b"k", None, 0, filters=[FILTER_NOPUT], prev_kv=True)
    s.watch(11, b"k", None, 0, filters=[FILTER_NODELETE])
    s.watch(12, b"k", None, 0, filters=[FILTER_NOPUT, FILTER_NODELETE])
    s.watch(13, b"k", None, 0, prev_kv=True)
    wnode.put(b"k", b"1")
    wnode.delete(b"k")
    wnode.put(b"k", b"2")
    resps = await collect(s)
    assert summary(events_of(resps, 10)) == [(DELETE, b"k", 4, b"", b"1")]
    assert summary(events_of(resps, 11)) == [(PUT, b"k", 3, b"1", b""), (PUT, b"k", 5, b"2", b"")]
    assert events_of(resps, 12) == []
    assert not any(r.watch_id == 12 for r in resps)  # all filtered: nothing is sent
    assert summary(events_of(resps, 13)) == [
        (PUT, b"k", 3, b"1", b"0"), (DELETE, b"k", 4, b"", b"1"), (PUT, b"k", 5, b"2", b""),
    ]  # fmt: skip


async def test_prev_kv_filled_when_events_were_made_without_it(wnode: Node):
    ws = wnode.watchable
    s = ws.new_stream()
    s.watch(0, b"a", b"z", 0)
    assert wnode.kv.prev_kv_in_events is False  # nobody wants prev_kv: no extra reads
    wnode.put(b"p", b"1")
    # a batch applied (events made without prev_kv) before a prev_kv watcher appears
    b = wnode.backend.batch()
    t = wnode.kv.write(b)
    t.put(b"p", b"2")
    events = t.end()
    wnode.backend.write(b, sync=False)
    wnode.kv.batch_written()
    assert not events[0].HasField("prev_kv")
    s.watch(5, b"p", None, 0, prev_kv=True)
    ws.notify(events, wnode.kv.current_revision)
    resps = await collect(s)
    assert summary(events_of(resps, 5)) == [(PUT, b"p", 3, b"2", b"1")]
    assert summary(events_of(resps, 0)) == [(PUT, b"p", 2, b"1", b""), (PUT, b"p", 3, b"2", b"")]
    assert wnode.kv.prev_kv_in_events is True
    s.cancel(5)
    assert wnode.kv.prev_kv_in_events is False


async def test_future_start_revision(wnode: Node):
    s = wnode.watchable.new_stream()
    s.watch(0, b"f", None, 4)
    for i in range(5):
        wnode.put(b"f", b"%d" % i)  # revisions 2..6
    resps = await collect(s)
    assert [e.kv.mod_revision for e in events_of(resps, 0)] == [4, 5, 6]


async def test_watch_api_errors(wnode: Node):
    s = wnode.watchable.new_stream()
    assert s.watch(0, b"a", None, 0) == 0
    assert s.watch(3, b"a", None, 0) == 3
    assert s.watch(0, b"a", None, 0) == 1
    with pytest.raises(WatchError, match="duplicate watch ID"):
        s.watch(3, b"b", None, 0)
    with pytest.raises(WatchError, match="watcher range is empty"):
        s.watch(0, b"b", b"a", 0)
    with pytest.raises(WatchError, match="watcher range is empty"):
        s.watch(0, b"b", b"b", 0)
    assert s.watch(0, b"", b"\x00", 0) == 2  # all keys
    s.cancel(3)
    with pytest.raises(WatchError, match="does not exist"):
        s.cancel(3)
    assert s.watch(3, b"a", None, 0) == 3
    s.close()
    assert await s.recv() is None
    with pytest.raises(WatchError):
        s.watch(0, b"a", None, 0)


async def test_compacted_start_revision_cancels_once(wnode: Node):
    for i in range(10):
        wnode.put(b"c", b"%d" % i)  # 2..11
    wnode.compact(6)
    s = wnode.watchable.new_stream()
    s.watch(0, b"c", None, 5)
    s.watch(0, b"c", None, 6)  # at the compaction revision: still fine
    resps = await collect(s)
    canceled = [r for r in resps if r.watch_id == 0]
    assert len(canceled) == 1 and canceled[0].canceled and canceled[0].compact_revision == 6
    assert canceled[0].events == []
    assert [e.kv.mod_revision for e in events_of(resps, 1)] == [6, 7, 8, 9, 10, 11]
    assert s.request_progress()  # a canceled watcher does not hold progress back
    s.cancel(0)  # still known to the stream until canceled, as in etcd


async def test_delete_at_the_compaction_revision_is_still_delivered(wnode: Node):
    wnode.put(b"d", b"1")  # 2
    wnode.put(b"e", b"1")  # 3
    wnode.delete(b"d")  # 4
    wnode.put(b"e", b"2")  # 5
    wnode.compact(4)
    s = wnode.watchable.new_stream()
    s.watch(0, b"d", b"f", 4)
    resps = await collect(s)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events_of(resps, 0)] == [
        (DELETE, b"d", 4), (PUT, b"e", 5),
    ]  # fmt: skip


async def test_progress_requests_and_periodic_notify(wnode: Node):
    ws = use(wnode, progress_interval=0.1, buffer_size=2, catchup_chunk=5)
    for i in range(40):
        wnode.put(b"p%d" % (i % 4), b"x")
    s = ws.new_stream()
    s.watch(0, b"p", b"q", 2)  # behind: unsynced
    assert not s.request_progress()
    resps = await collect(s)
    assert [e.kv.mod_revision for e in events_of(resps, 0)] == list(range(2, 42))
    assert s.request_progress()
    r = await s.recv()
    assert (r.watch_id, r.revision, r.events) == (PROGRESS_WATCH_ID, 41, [])
    # periodic notify only for progress_notify watchers that got no events since the last tick
    s2 = ws.new_stream()
    s2.watch(7, b"n", None, 0, progress_notify=True)
    s2.watch(8, b"m", None, 0)
    await asyncio.sleep(0.35)
    got = s2.drain()
    assert len(got) >= 2 and {(r.watch_id, r.revision, len(r.events)) for r in got} == {(7, 41, 0)}
    busy = ws.new_stream()
    busy.watch(9, b"b", None, 0, progress_notify=True)
    for _ in range(8):
        wnode.put(b"b", b"1")
        await asyncio.sleep(0.04)
    got = await collect(busy, idle=0.05)
    assert all(r.events for r in got)  # events were flowing: no empty progress responses


async def test_slow_watcher_catches_up_without_slowing_others(wnode: Node):
    ws = use(wnode, buffer_size=4, catchup_chunk=50)
    slow = ws.new_stream()
    fast = ws.new_stream()
    slow.watch(0, b"k", b"l", 0, prev_kv=True)
    fast.watch(0, b"k", b"l", 0)
    n = 3000
    rnd = random.Random(5)
    fast_seen: list[int] = []
    for i in range(n):
        k = b"k%03d" % rnd.randrange(300)
        if rnd.random() < 0.1:
            wnode.delete(k)
        else:
            wnode.put(k, b"%d" % i)
        if i % 10 == 0:
            fast_seen += [e.kv.mod_revision for r in fast.drain() for e in r.events]
            await asyncio.sleep(0)
    fast_seen += [e.kv.mod_revision for r in await collect(fast, idle=0.1) for e in r.events]
    cur = wnode.kv.current_revision
    assert ws.stats()["victims"] + ws.stats()["unsynced"] >= 1  # the slow one fell behind
    assert fast_seen == list(range(2, cur + 1))
    got = await collect(slow, idle=0.3)
    evs = events_of(got, 0)
    assert [e.kv.mod_revision for e in evs] == list(range(2, cur + 1))  # in order, no gaps, no dups
    # events from history carry the same data as live ones would
    for e in evs:
        want = wnode.kv.get_kv(e.kv.key, e.kv.mod_revision)
        if e.type == PUT:
            assert e.kv == want
        prev = wnode.kv.get_kv(e.kv.key, e.kv.mod_revision - 1)
        if e.type == DELETE or e.kv.create_revision != e.kv.mod_revision:
            assert e.prev_kv == prev
        else:
            assert not e.HasField("prev_kv")
    assert ws.stats()["synced"] == 2


async def test_catch_up_while_writes_continue(wnode: Node):
    ws = use(wnode, buffer_size=8, catchup_chunk=100)
    for i in range(2000):
        wnode.put(b"w%d" % (i % 50), b"%d" % i)
    s = ws.new_stream()
    s.watch(0, b"w", b"x", 1)  # replay everything, while the writer keeps going
    seen: list[int] = []
    done = asyncio.Event()

    async def writer():
        for i in range(1500):
            wnode.batch(*[lambda t, i=i, j=j: t.put(b"w%d" % ((i + j) % 50), b"n") for j in range(2)])
            if i % 5 == 0:
                await asyncio.sleep(0)
        done.set()

    async def reader():
        while True:
            try:
                r = await asyncio.wait_for(s.recv(), 0.5)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            seen.extend(e.kv.mod_revision for e in r.events)
            if random.random() < 0.05:
                await asyncio.sleep(0.001)  # a reader slower than the writer now and then

    await asyncio.gather(writer(), reader())
    cur = wnode.kv.current_revision
    assert cur == 2001 + 2 * 1500  # two txns (revisions) per batch
    assert seen == list(range(2, cur + 1))


async def test_compaction_racing_a_slow_watcher(wnode: Node):
    ws = use(wnode, buffer_size=2, catchup_chunk=20)
    s = ws.new_stream()
    s.watch(0, b"r", b"s", 0)
    for i in range(500):
        wnode.put(b"r%d" % (i % 7), b"%d" % i)
    first = [await s.recv() for _ in range(2)]  # it read a little, then stalls
    cur = wnode.kv.current_revision
    wnode.compact(cur - 100)
    for i in range(50):
        wnode.put(b"r0", b"more")
    resps = first + await collect(s)
    revs = [e.kv.mod_revision for r in resps for e in r.events]
    assert revs == list(range(2, 2 + len(revs)))  # a prefix of the history: nothing skipped
    last = resps[-1]
    # canceled because its next revision was compacted away: never a silent gap
    assert last.canceled and last.compact_revision == cur - 100 and not last.events
    assert revs[-1] + 1 < cur - 100
    assert sum(r.canceled for r in resps) == 1


async def test_victim_events_survive_compaction(wnode: Node):
    """A victim keeps its undelivered response in memory: compaction cannot take it away, and
    a watcher that is caught up by then is not canceled."""
    ws = use(wnode, buffer_size=1)
    s = ws.new_stream()
    s.watch(0, b"v", None, 0)
    wnode.put(b"v", b"1")  # 2: buffered
    wnode.put(b"v", b"2")  # 3: buffer full -> victim holding revision 3
    assert ws.stats()["victims"] == 1
    wnode.compact(3)
    resps = await collect(s)
    assert [e.kv.mod_revision for e in events_of(resps, 0)] == [2, 3]
    assert not any(r.canceled for r in resps)
    wnode.put(b"v", b"3")
    assert [e.kv.mod_revision for e in events_of(await collect(s), 0)] == [4]


async def test_restore_moves_synced_watchers_to_catch_up(tmp_path):
    a = Node(tmp_path / "a", watchable=True)
    s = a.watchable.new_stream()
    s.watch(0, b"x", None, 0)
    a.put(b"x", b"1")
    assert [e.kv.mod_revision for e in events_of(await collect(s), 0)] == [2]
    # the member's state is replaced (a follower installing a snapshot with more history)
    b = Node(tmp_path / "b")
    for i in range(5):
        b.put(b"x", b"%d" % i)
    a.watchable.restore(b.kv)
    got = await collect(s)
    assert [e.kv.mod_revision for e in events_of(got, 0)] == [3, 4, 5, 6]
    a.close()
    b.close()
