"""Watch against a real etcd 3.4 member: live events, history, cancellation, stream failures."""

from __future__ import annotations

import asyncio

import pytest
from etcdstore import errors
from etcdstore.client import Client, WatchFilter
from etcdstore.errors import EtcdError
from etcdstore.proto.mvccpb import kv_pb2

pytestmark = pytest.mark.etcd

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


async def collect(watcher, n: int, timeout: float = 10.0) -> list:
    """The next n events (across responses)."""
    events: list = []

    async def run() -> None:
        async for resp in watcher:
            events.extend(resp.events)
            if len(events) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return events


async def test_events_arrive_while_writes_happen(client: Client) -> None:
    w = await client.watch("w/", prefix=True, prev_kv=True)
    assert w.id is not None and w.created_response.created

    async def writer() -> list[int]:
        revs = []
        for i in range(50):
            revs.append((await client.put(f"w/{i % 5}", str(i))).header.revision)
        revs.append((await client.delete("w/0")).header.revision)
        await client.put("other", "x")  # outside the prefix: not delivered
        return revs

    write_task = asyncio.create_task(writer())
    events = await collect(w, 51)
    revs = await write_task
    assert [e.kv.mod_revision for e in events] == revs
    assert [e.type for e in events] == [PUT] * 50 + [DELETE]
    assert events[7].kv.value == b"7" and events[7].prev_kv.value == b"2"
    assert events[0].kv.create_revision == events[0].kv.mod_revision and not events[0].HasField("prev_kv")
    assert events[-1].kv.key == b"w/0" and events[-1].prev_kv.value == b"45"
    await w.cancel()
    assert [r async for r in w] == []


async def test_history_filters_and_single_key(client: Client) -> None:
    start = (await client.put("h", "1")).header.revision
    await client.put("h2", "x")
    await client.delete("h")
    await client.put("h", "2")
    w = await client.watch("h", start_revision=start)
    assert [(e.type, e.kv.value) for e in await collect(w, 3)] == [(PUT, b"1"), (DELETE, b""), (PUT, b"2")]
    nodelete = await client.watch("h", start_revision=start, filters=[WatchFilter.NODELETE])
    noput = await client.watch("h", start_revision=start, filters=[WatchFilter.NOPUT])
    assert [e.type for e in await collect(nodelete, 2)] == [PUT, PUT]
    assert [e.type for e in await collect(noput, 1)] == [DELETE]
    # All three watchers share one gRPC stream.
    assert len(client._shared.watch_streams) == 1
    for x in (w, nodelete, noput):
        await x.cancel()
    assert client._shared.watch_streams == {}  # the idle stream was closed


async def test_range_and_from_key(client: Client) -> None:
    w = await client.watch("b", range_end="d")
    fk = await client.watch("c", from_key=True)
    for k in ["a", "b", "c", "d", "z"]:
        await client.put(k, k)
    assert [e.kv.key for e in await collect(w, 2)] == [b"b", b"c"]
    assert [e.kv.key for e in await collect(fk, 3)] == [b"c", b"d", b"z"]


async def test_compacted_start_revision_cancels_with_compact_revision(client: Client) -> None:
    first = (await client.put("c", "1")).header.revision
    last = (await client.put("c", "2")).header.revision
    await client.compact(last)
    w = await client.watch("c", start_revision=first)
    responses = [r async for r in w]  # ends by itself after the cancellation
    assert len(responses) == 1
    assert responses[0].canceled and responses[0].compact_revision == last
    assert w.done


async def test_progress_request_and_notify(client: Client) -> None:
    rev = (await client.put("p", "1")).header.revision
    w = await client.watch("p-other")
    await w.request_progress()
    resp = await asyncio.wait_for(w.__anext__(), 5)
    assert not resp.events and resp.header.revision == rev and resp.watch_id == -1
    await w.cancel()


@pytest.mark.etcd_args("--experimental-watch-progress-notify-interval", "200ms")
async def test_progress_notify_interval(client: Client) -> None:
    rev = (await client.put("pn", "1")).header.revision
    w = await client.watch("pn-quiet", progress_notify=True)
    resp = await asyncio.wait_for(w.__anext__(), 5)
    assert not resp.events and resp.header.revision == rev and resp.watch_id == w.id


@pytest.mark.etcd_args("--max-request-bytes", "4096")
async def test_fragments_are_merged(client: Client) -> None:
    for i in range(20):
        await client.put(f"f/{i:02}", b"x" * 1000)
    w = await client.watch("f/", prefix=True, fragment=True, prev_kv=True)
    plain = await client.watch("f/", prefix=True, prev_kv=True)
    # One revision with 20 deletes, each carrying a 1 KB prev_kv: over max-request-bytes.
    await client.delete("f/", prefix=True)
    merged = await asyncio.wait_for(w.__anext__(), 5)
    assert len(merged.events) == 20 and not merged.fragment
    assert [e.prev_kv.key for e in merged.events] == [f"f/{i:02}".encode() for i in range(20)]
    assert len((await asyncio.wait_for(plain.__anext__(), 5)).events) == 20


async def test_duplicate_watch_id_is_refused(client: Client) -> None:
    w = await client.watch("x", watch_id=7)
    assert w.id == 7
    with pytest.raises(EtcdError) as e:
        await client.watch("y", watch_id=7)
    assert "duplicate watch ID" in e.value.message
    await client.put("x", "1")
    assert len(await collect(w, 1)) == 1  # the stream is still fine


async def test_stream_broken_by_restart_raises(etcd, client: Client) -> None:
    w = await client.watch("r")
    await client.put("r", "1")
    etcd.members[0].kill()
    got = []
    with pytest.raises(EtcdError) as e:
        async for resp in w:
            got.extend(resp.events)
    assert e.value.code.name == "UNAVAILABLE"
    assert [ev.kv.value for ev in got] == [b"1"]  # buffered events first, then the error
    with pytest.raises(EtcdError):  # and it keeps raising
        await w.__anext__()
    etcd.members[0].restart()
    w2 = await client.watch("r", start_revision=1)
    assert [e.kv.value for e in await collect(w2, 1)] == [b"1"]


async def test_client_close_ends_watchers_quietly(etcd) -> None:
    c = Client(etcd.endpoints)
    w = await c.watch("q")
    task = asyncio.create_task(collect(w, 1))
    await asyncio.sleep(0.1)
    await c.close()
    await asyncio.wait_for(task, 5)  # iteration ended without an error
    assert w.done


async def test_watch_revision_is_future_ok_and_errors_map(client: Client) -> None:
    # A start revision in the future is allowed: events arrive when the store gets there.
    rev = (await client.put("fut", "0")).header.revision
    w = await client.watch("fut", start_revision=rev + 2)
    await client.put("fut", "1")
    await client.put("fut", "2")
    assert [e.kv.value for e in await collect(w, 1)] == [b"2"]
    assert errors.WATCH_CANCELED.code.name == "CANCELLED"


async def test_many_watchers_each_see_every_event_once_in_order(client: Client) -> None:
    watchers = [await client.watch("m/", prefix=True) for _ in range(40)]
    assert len(client._shared.watch_streams) == 1  # all on one gRPC stream

    async def writer(i: int) -> list[int]:
        return [(await client.put(f"m/{i}/{j}", str(j))).header.revision for j in range(40)]

    collectors = [asyncio.create_task(collect(w, 400, timeout=30)) for w in watchers]
    revs = sorted(r for rs in await asyncio.gather(*(writer(i) for i in range(10))) for r in rs)
    for task in collectors:
        assert [e.kv.mod_revision for e in await task] == revs  # complete, ordered, no duplicates
    await asyncio.gather(*(w.cancel() for w in watchers))
    assert client._shared.watch_streams == {}
