"""Concurrent clients and watchers that record everything they see (history.py) via etcdstore.client.

Clients (several per member, each with its member's endpoint first and the others behind it) run
a random mix of: linearizable get, list of the prefix, put, delete, compare-and-swap transactions
(compare on the last mod_revision or value the client saw, then put; the failure branch reads the
key back), two-key transactions (compare one key, put both), and lease cycles (grant with a long
TTL, put a key with it, revoke it). Every value is unique to its operation so the checker can find
it in the event log. Each operation is recorded with invoke and return times (monotonic_ns) and
either its results and header revision, or its error: a definite failure (nothing was sent, or
the server refused it) or an unknown outcome (timeout, connection lost) for writes.

Watchers watch the whole prefix; when a stream breaks they resume on the next member from the
last revision they delivered + 1, each stream recorded as one session.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from etcdstore import errors
from etcdstore.client import Client, Op, prefix_end
from etcdstore.client import Compare as CCompare
from etcdstore.errors import EtcdError

from .history import (
    DELETE,
    FAIL,
    GET,
    INF,
    KV,
    LEASE_GRANT,
    LEASE_REVOKE,
    OK,
    PUT,
    TXN,
    UNKNOWN,
    Compare,
    Event,
    Operation,
    Request,
    Watcher,
    WatchResponse,
    WatchSession,
)

PREFIX = b"/rb/"
LEASE_TTL = 3600  # never expires during a run: only explicit revokes delete leased keys

# errors after which the request certainly had no effect
_UNSENT = "failed to connect to all addresses"
_DEFINITE = {errors.LEASE_NOT_FOUND, errors.TOO_MANY_REQUESTS, errors.NO_SPACE, errors.REQUEST_TOO_LARGE}

DEFAULT_MIX = {
    "get": 30,
    "list": 4,
    "put": 20,
    "delete": 5,
    "cas": 20,
    "txn2": 8,
    "lease": 6,
}


@dataclass
class TrafficConfig:
    clients_per_member: int = 2
    keys: int = 12
    rate: float = 150.0  # target operations per second, all clients together
    timeout: float = 1.0  # per request
    watchers_per_member: int = 1
    serializable_reads: bool = False  # negative control only: stale reads the checker must catch
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))


def kv_of(pb: Any) -> KV:
    return KV(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)


def event_of(pb: Any) -> Event:
    return Event(DELETE if pb.type == 1 else PUT, kv_of(pb.kv))


def _compare_pb(c: Compare) -> Any:
    target = {
        "value": CCompare.value,
        "mod": CCompare.mod_revision,
        "create": CCompare.create_revision,
        "version": CCompare.version,
        "lease": CCompare.lease,
    }[c.target](c.key)
    return {"=": target.__eq__, "!=": target.__ne__, "<": target.__lt__, ">": target.__gt__}[c.op](c.operand)


def _request_pb(r: Request) -> Any:
    if r.kind == GET:
        return Op.get(r.key, range_end=r.range_end) if r.range_end else Op.get(r.key)
    if r.kind == PUT:
        return Op.put(r.key, r.value, lease=r.lease)
    return Op.delete(r.key)


def _result_of(pb: Any) -> Any:
    which = pb.WhichOneof("response")
    if which == "response_range":
        return tuple(kv_of(kv) for kv in pb.response_range.kvs)
    if which == "response_delete_range":
        return pb.response_delete_range.deleted
    return None


async def execute(client: Client, o: Operation, *, serializable: bool = False) -> None:
    """Send `o` and fill in its outcome (return time, status, results, revision).
    serializable=True sends reads as serializable (local, possibly stale): only for the checker's
    negative control, which must then find anomalies."""
    writes = o.kind != TXN or any(r.kind != GET for r in (*o.success, *o.failure))
    o.invoke = time.monotonic_ns()
    try:
        if o.kind == LEASE_GRANT:
            resp = await client.lease_grant(LEASE_TTL)
            o.lease, o.results = resp.ID, ()
        elif o.kind == LEASE_REVOKE:
            resp = await client.lease_revoke(o.lease)
        elif o.label in ("get", "list"):
            r = o.success[0]
            resp = await client.get(r.key, range_end=r.range_end or None, serializable=serializable)
            o.results = (tuple(kv_of(kv) for kv in resp.kvs),)
        elif o.label in ("put", "lease_put"):
            r = o.success[0]
            resp = await client.put(r.key, r.value, lease=r.lease)
            o.results = (None,)
        elif o.label == "delete":
            resp = await client.delete(o.success[0].key)
            o.results = (resp.deleted,)
        else:
            resp = await client.txn(
                [_compare_pb(c) for c in o.compares],
                [_request_pb(r) for r in o.success],
                [_request_pb(r) for r in o.failure],
            )
            o.succeeded = resp.succeeded
            o.results = tuple(_result_of(x) for x in resp.responses)
        o.ret = time.monotonic_ns()
        o.status = OK
        o.revision = resp.header.revision
        if o.succeeded is None and o.kind == TXN:
            o.succeeded = True
    except EtcdError as e:
        now = time.monotonic_ns()
        o.error = e.message
        if not writes or e.message.startswith(_UNSENT) or e in _DEFINITE:
            o.status, o.ret = FAIL, now
        else:
            o.status, o.ret = UNKNOWN, INF
        o.results, o.succeeded = (), None


class Traffic:
    def __init__(self, endpoints: list[str], config: TrafficConfig, seed: int) -> None:
        self.endpoints = endpoints
        self.config = config
        self.seed = seed
        self.operations: list[Operation] = []
        self.watchers: list[Watcher] = []
        self.keys = [PREFIX + b"k%02d" % i for i in range(config.keys)]
        self._ids = 0
        self._stop = asyncio.Event()
        self._watch_target: int | None = None
        self._delivered: dict[int, int] = {}  # watcher id -> highest revision it delivered
        self._clients: list[Client] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_tasks: list[asyncio.Task[None]] = []

    def _new(self, client: int, kind: str, label: str) -> Operation:
        o = Operation(self._ids, client, kind, 0, label=label)
        self._ids += 1
        self.operations.append(o)
        return o

    # -- running -----------------------------------------------------------------------------

    async def start(self) -> None:
        n = len(self.endpoints)
        wid = 0
        for i in range(n):
            for _ in range(self.config.watchers_per_member):
                w = Watcher(wid)
                self.watchers.append(w)
                # half the watchers replay from revision 1, half start "now"
                self._watch_tasks.append(asyncio.create_task(self._watch(w, i, 1 if wid % 2 == 0 else 0)))
                wid += 1
        for i in range(n):
            eps = self.endpoints[i:] + self.endpoints[:i]
            for _ in range(self.config.clients_per_member):
                c = Client(eps, timeout=self.config.timeout)
                self._clients.append(c)
                cid = len(self._clients) - 1
                self._tasks.append(asyncio.create_task(self._client(cid, c)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in self._clients:
            await c.close()

    async def final_reads(self, endpoints: list[str]) -> None:
        """One linearizable read of the whole prefix through every member, after healing."""
        for i, ep in enumerate(endpoints):
            c = Client([ep], timeout=10.0)
            try:
                o = self._new(-1 - i, TXN, "list")
                o.success = (Request(GET, PREFIX, prefix_end(PREFIX)),)
                await execute(c, o)
            finally:
                await c.close()

    async def finish_watchers(self, final_revision: int, timeout: float = 30.0) -> list[int]:
        """Let every watcher deliver up to `final_revision`, then stop them; returns stragglers."""
        self._watch_target = final_revision
        deadline = time.monotonic() + timeout
        while (
            time.monotonic() < deadline
            and min(self._delivered.values(), default=final_revision) < final_revision
        ):
            await asyncio.sleep(0.1)
        for t in self._watch_tasks:
            t.cancel()
        await asyncio.gather(*self._watch_tasks, return_exceptions=True)
        return [w.id for w in self.watchers if self._delivered.get(w.id, 0) < final_revision]

    # -- clients -----------------------------------------------------------------------------

    async def _client(self, cid: int, c: Client) -> None:
        rnd = random.Random(self.seed * 1000 + cid)
        total_clients = len(self.endpoints) * self.config.clients_per_member
        interval = total_clients / self.config.rate
        kinds, weights = zip(*self.config.mix.items())
        seen: dict[bytes, KV | None] = {}
        lease: tuple[int, bytes | None] | None = None  # (lease id, key put with it)
        seq = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            kind = rnd.choices(kinds, weights)[0]
            seq += 1
            value = b"c%d-%d" % (cid, seq)
            k = rnd.choice(self.keys)
            if kind == "lease":
                o, lease = self._lease_step(cid, lease, k, value)
            elif kind == "get":
                o = self._new(cid, TXN, "get")
                o.success = (Request(GET, k),)
            elif kind == "list":
                o = self._new(cid, TXN, "list")
                o.success = (Request(GET, PREFIX, prefix_end(PREFIX)),)
            elif kind == "put":
                o = self._new(cid, TXN, "put")
                o.success = (Request(PUT, k, value=value),)
            elif kind == "delete":
                o = self._new(cid, TXN, "delete")
                o.success = (Request(DELETE, k),)
            elif kind == "cas":
                o = self._new(cid, TXN, "cas")
                last = seen.get(k)
                if rnd.random() < 0.5 or last is None:
                    o.compares = (Compare(k, "mod", "=", last.mod if last else 0),)
                else:
                    o.compares = (Compare(k, "value", "=", last.value),)
                o.success = (Request(PUT, k, value=value),)
                o.failure = (Request(GET, k),)
            else:  # txn2
                k2 = rnd.choice([x for x in self.keys if x != k])
                last = seen.get(k)
                o = self._new(cid, TXN, "txn2")
                o.compares = (Compare(k, "mod", "=", last.mod if last else 0),)
                o.success = (Request(PUT, k, value=value), Request(PUT, k2, value=value + b"/2"))
                o.failure = (Request(GET, k), Request(GET, k2))
            await execute(c, o, serializable=self.config.serializable_reads)
            if o.kind == LEASE_GRANT and o.status == OK:
                lease = (o.lease, None)
            self._learn(o, seen)
            if o.status != OK:
                await asyncio.sleep(0.05 + rnd.random() * 0.1)
            pause = interval * (0.5 + rnd.random()) - (time.monotonic() - t0)
            if pause > 0:
                await asyncio.sleep(pause)

    def _lease_step(
        self, cid: int, lease: tuple[int, bytes | None] | None, k: bytes, value: bytes
    ) -> tuple[Operation, tuple[int, bytes | None] | None]:
        if lease is None:
            return self._new(cid, LEASE_GRANT, "lease_grant"), None
        lid, key = lease
        if key is None:
            o = self._new(cid, TXN, "lease_put")
            o.success = (Request(PUT, k, value=value, lease=lid),)
            return o, (lid, k)
        o = self._new(cid, LEASE_REVOKE, "lease_revoke")
        o.lease = lid
        return o, None

    @staticmethod
    def _learn(o: Operation, seen: dict[bytes, KV | None]) -> None:
        if o.status != OK or o.kind != TXN:
            return
        for r, res in zip(o.branch(), o.results):
            if r.kind == GET and not r.range_end:
                seen[r.key] = res[0] if res else None
            elif r.kind == PUT:
                seen[r.key] = KV(r.key, r.value, 0, o.revision, 0, r.lease)
            elif r.kind == DELETE:
                seen[r.key] = None

    # -- watchers ----------------------------------------------------------------------------

    async def _watch(self, w: Watcher, first: int, start: int) -> None:
        client = Client(self.endpoints, timeout=2.0)
        n = 0
        delivered = start - 1 if start else 0
        self._delivered[w.id] = delivered
        try:
            while True:
                ep = self.endpoints[(first + n) % len(self.endpoints)]
                n += 1
                begin = delivered + 1 if (start or delivered) else 0
                try:
                    watcher = await client.at(ep).watch(PREFIX, prefix=True, start_revision=begin)
                except EtcdError:
                    await asyncio.sleep(0.2)
                    continue
                s = WatchSession(ep, PREFIX, prefix_end(PREFIX), begin)
                w.sessions.append(s)
                cr = watcher.created_response
                s.responses.append(
                    WatchResponse(time.monotonic_ns(), cr.header.revision if cr else 0, created=True)
                )
                if begin == 0 and cr is not None:
                    delivered = max(delivered, cr.header.revision)
                    self._delivered[w.id] = delivered
                try:
                    async for resp in watcher:
                        evs = tuple(event_of(e) for e in resp.events)
                        s.responses.append(
                            WatchResponse(
                                time.monotonic_ns(),
                                resp.header.revision,
                                evs,
                                canceled=resp.canceled,
                                compact_revision=resp.compact_revision,
                                progress=not evs and not resp.canceled,
                            )
                        )
                        if evs:
                            delivered = max(delivered, evs[-1].revision)
                            self._delivered[w.id] = delivered
                        if resp.canceled:
                            s.end = f"canceled: {resp.cancel_reason}"
                            break
                    else:
                        s.end = s.end or "ended"
                except EtcdError as e:
                    s.end = e.message or str(e.code)
                await asyncio.sleep(0.1)
        finally:
            await client.close()


async def _read_log(c: Client, final_revision: int) -> list[Event]:
    events: list[Event] = []
    w = await c.watch(PREFIX, prefix=True, start_revision=1)
    async for resp in w:
        events.extend(event_of(e) for e in resp.events)
        if events and events[-1].revision >= final_revision:
            await w.cancel()
            break
    return events


async def collect_logs(
    endpoints: dict[str, str], final_revision: int, timeout: float = 60.0
) -> dict[str, list[Event]]:
    """Each member's complete event log: a watch from revision 1 up to the final revision."""
    out: dict[str, list[Event]] = {}
    for name, ep in endpoints.items():
        c = Client([ep], timeout=10.0)
        try:
            out[name] = (
                await asyncio.wait_for(_read_log(c, final_revision), timeout) if final_revision > 1 else []
            )
        finally:
            await c.close()
    return out


async def final_state(endpoints: dict[str, str], revision: int) -> dict[str, list[KV]]:
    out = {}
    for name, ep in endpoints.items():
        c = Client([ep], timeout=10.0)
        try:
            r = await c.get(PREFIX, prefix=True, revision=revision, serializable=True)
            out[name] = [kv_of(kv) for kv in r.kvs]
        finally:
            await c.close()
    return out
