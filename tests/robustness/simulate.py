"""Histories with a known linearization, for testing the checkers.

`SimStore` is a sequential, in-memory rendering of etcd's key-value semantics (revisions, versions,
compares, leases). `generate()` runs random concurrent clients against it: each operation gets an
invocation time, a linearization point and a return time (so histories overlap at random), the
store applies operations in linearization-point order, and the result is what a correct cluster
could have answered. Some operations are made indeterminate: their response is dropped and they
either took effect at their point or never did. The store's event log and a few watchers come out
too. Mutating such a history (see the tests) must make the checkers fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .history import (
    DELETE,
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
    History,
    Operation,
    Request,
    Watcher,
    WatchResponse,
    WatchSession,
)


def _cmp(a, op: str, b) -> bool:
    return {"=": a == b, "!=": a != b, "<": a < b, ">": a > b}[op]


class SimStore:
    def __init__(self) -> None:
        self.rev = 1
        self.kvs: dict[bytes, KV] = {}
        self.log: list[Event] = []
        self.lease_keys: dict[int, set[bytes]] = {}
        self.leases: set[int] = set()

    def _compare(self, c: Compare) -> bool:
        kv = self.kvs.get(c.key)
        if c.target == "value":
            return kv is not None and _cmp(kv.value, c.op, c.operand)
        field = {"mod": 3, "create": 2, "version": 4, "lease": 5}[c.target]
        return _cmp(kv[field] if kv else 0, c.op, c.operand)

    def txn(self, cmps: tuple[Compare, ...], succ: tuple[Request, ...], fail: tuple[Request, ...]):
        ok = all(self._compare(c) for c in cmps)
        reqs = succ if ok else fail
        results: list = []
        changed: list[Event] = []
        new_rev = self.rev + 1
        for r in reqs:
            if r.kind == GET:
                if r.range_end:
                    results.append(
                        tuple(kv for k, kv in sorted(self.kvs.items()) if r.key <= k < r.range_end)
                    )
                else:
                    kv = self.kvs.get(r.key)
                    results.append((kv,) if kv else ())
            elif r.kind == PUT:
                if r.lease and r.lease not in self.leases:
                    raise LookupError("lease not found")
                old = self.kvs.get(r.key)
                if old and old.lease and old.lease != r.lease:
                    self.lease_keys[old.lease].discard(r.key)
                kv = KV(
                    r.key,
                    r.value,
                    old.create if old else new_rev,
                    new_rev,
                    old.version + 1 if old else 1,
                    r.lease,
                )
                self.kvs[r.key] = kv
                if r.lease:
                    self.lease_keys.setdefault(r.lease, set()).add(r.key)
                changed.append(Event(PUT, kv))
                results.append(None)
            else:
                old = self.kvs.pop(r.key, None)
                if old:
                    if old.lease:
                        self.lease_keys[old.lease].discard(r.key)
                    changed.append(Event(DELETE, KV(r.key, b"", 0, new_rev, 0, 0)))
                results.append(1 if old else 0)
        if changed:
            self.rev = new_rev
            self.log.extend(changed)
        return ok, tuple(results), self.rev

    def grant(self, lease: int) -> None:
        self.leases.add(lease)

    def revoke(self, lease: int) -> int:
        self.leases.discard(lease)
        keys = sorted(self.lease_keys.pop(lease, ()))
        if keys:
            self.rev += 1
            for k in keys:
                del self.kvs[k]
                self.log.append(Event(DELETE, KV(k, b"", 0, self.rev, 0, 0)))
        return self.rev


@dataclass
class _Pending:
    op: Operation
    point: int  # linearization time; -1: never takes effect
    lost: bool  # response dropped (indeterminate)


def generate(
    seed: int,
    *,
    clients: int = 8,
    keys: int = 5,
    ops: int = 500,
    p_unknown: float = 0.03,
    multi_key: bool = True,
    watchers: int = 2,
) -> History:
    rnd = random.Random(seed)
    keyset = [b"k%03d" % i for i in range(keys)]
    store = SimStore()
    last_seen: dict[tuple[int, bytes], KV | None] = {}
    pending: list[_Pending] = []
    clock = [rnd.randrange(0, 50) for _ in range(clients)]
    client_leases: dict[int, int] = {}
    for n in range(ops):
        c = rnd.randrange(clients)
        invoke = clock[c] + rnd.randrange(1, 30)
        point = invoke + rnd.randrange(0, 40)
        ret = point + rnd.randrange(0, 40)
        k = rnd.choice(keyset)
        val = b"v%d" % n
        x = rnd.random()
        o = Operation(n, c, TXN, invoke)
        if c in client_leases and x < 0.06:
            o.kind, o.label, o.lease = LEASE_REVOKE, "lease_revoke", client_leases.pop(c)
        elif x < 0.06:
            lease = 0x1000 + n
            o.kind, o.label, o.lease = LEASE_GRANT, "lease_grant", lease
            client_leases[c] = lease
        elif x < 0.35:
            o.label, o.success = "get", (Request(GET, k),)
        elif x < 0.40:
            o.label, o.success = "list", (Request(GET, b"k", b"l"),)
        elif x < 0.62:
            lease = client_leases.get(c, 0) if rnd.random() < 0.3 else 0
            o.label, o.success = "put", (Request(PUT, k, value=val, lease=lease),)
        elif x < 0.70:
            o.label, o.success = "delete", (Request(DELETE, k),)
        elif x < 0.90 or not multi_key:
            seen = last_seen.get((c, k))
            if rnd.random() < 0.5:
                cmp = Compare(k, "mod", "=", seen.mod if seen else 0)
            else:
                cmp = Compare(k, "value", "=", seen.value if seen else b"")
            o.label, o.compares = "cas", (cmp,)
            o.success, o.failure = (Request(PUT, k, value=val),), (Request(GET, k),)
        else:
            k2 = rnd.choice([x for x in keyset if x != k])
            seen = last_seen.get((c, k))
            o.label, o.compares = "txn2", (Compare(k, "mod", "=", seen.mod if seen else 0),)
            o.success = (Request(PUT, k, value=val), Request(PUT, k2, value=val + b"b"))
            o.failure = (Request(GET, k), Request(GET, k2))
        lost = rnd.random() < p_unknown
        applied = not lost or rnd.random() < 0.5
        if lost and applied:
            point = invoke + rnd.randrange(0, 400)  # may land long after the client gave up
        pending.append(_Pending(o, point if applied else -1, lost))
        o.ret = ret
        clock[c] = ret if not lost else invoke + 100
    # apply in linearization order
    for p in sorted((p for p in pending if p.point >= 0), key=lambda p: (p.point, p.op.id)):
        o = p.op
        if o.kind == LEASE_GRANT:
            store.grant(o.lease)
            o.revision = store.rev
        elif o.kind == LEASE_REVOKE:
            o.revision = store.revoke(o.lease)
        else:
            try:
                o.succeeded, o.results, o.revision = store.txn(o.compares, o.success, o.failure)
            except LookupError:
                o.status, o.error, o.revision = "fail", "etcdserver: requested lease not found", 0
                continue
            for r, res in zip(o.branch(), o.results):
                if r.kind == GET and not r.range_end:
                    last_seen[(o.client, r.key)] = res[0] if res else None
        if o.status != "fail":
            o.status = OK
    for p in pending:
        o = p.op
        if p.lost or p.point < 0:
            o.status, o.ret, o.revision, o.succeeded, o.results = UNKNOWN, INF, 0, None, ()
            o.error = "context deadline exceeded"
    h = History(operations=[p.op for p in pending], final_revision=store.rev)
    h.logs = {"m1": list(store.log), "m2": list(store.log)}
    h.final_state = {"m1": sorted(store.kvs.values())}
    for w in range(watchers):
        start = rnd.choice([1, max(1, store.rev // 3)])
        events = [e for e in store.log if e.revision >= start]
        cut = rnd.randrange(0, len(events) + 1)
        while 0 < cut < len(events) and events[cut - 1].revision == events[cut].revision:
            cut += 1  # a session ends between revisions: etcd sends one revision's events together
        first, second = events[:cut], events[cut:]
        s1 = WatchSession("m1", b"k", b"l", start, [WatchResponse(0, start, (), created=True)])
        s1.responses += [WatchResponse(1, e.revision, (e,)) for e in first]
        s1.end = "stream broken" if second else ""
        watcher = Watcher(w, [s1])
        if second:
            resume = first[-1].revision + 1 if first else start
            s2 = WatchSession("m2", b"k", b"l", resume, [WatchResponse(2, resume, (), created=True)])
            s2.responses += [WatchResponse(3, e.revision, (e,)) for e in second]
            watcher.sessions.append(s2)
        watcher.sessions[-1].responses.append(WatchResponse(4, store.rev, (), progress=True))
        h.watchers.append(watcher)
    return h
