"""Linearizability of a key-value history: Wing & Gong / Lowe search, as porcupine implements it.

The search: sort call and return events by time into a linked list; repeatedly try to linearize
the earliest pending call whose model step succeeds (lifting it and its return out of the list);
reaching a return event whose call is still pending means the current prefix is wrong, so pop the
last linearized call and try the next candidate. (linearized set as a bitset, model state) pairs
already explored are cached, which is what keeps the search from being exponential in practice.
Operations with unknown outcome return at +infinity: they may be linearized anywhere after their
invocation, or "at the end", which is the same as never having taken effect.

P-compositionality: the history is split into partitions that are checked independently.

* Single-key operations: one partition per key (classic locality of linearizability).
* Revisions make etcd's keys share one clock, so a per-key check alone could accept a history
  whose revisions contradict real time across keys. The model forces each key's linearization
  into revision order, and `revision_order_violations` checks the cross-key part: if A returned
  before B was invoked, B's revision is >= A's (> if B is a write). With every revision known,
  per-key orders + that check compose into one global linearization: sort everything by revision.
* Multi-key operations (transactions over several keys, range reads, lease revokes) are split
  into one share per key only when the global revision order alone decides them: the operation's
  revision and branch are known, and - if the compares failed - all its compares are on one key
  (a failed multi-key compare is a disjunction no single key can check). A range read becomes a
  read of every key in its range (absent where the result has none). Operations that cannot be
  split (unknown outcome and revision, or a failed multi-key compare) merge their keys into one
  partition (union-find) and are checked whole there; the model handles groups of keys.

Precision given up, documented: operations with an unknown revision are only checked per key,
not against the cross-key revision order; and a lease revoke is always split per key, so for a
revoke whose outcome and revision stayed unknown the atomicity of its deletes across keys is not
checked (merging every key a lease ever held would make one huge partition for little gain).
Splitting only ever admits more histories: no false alarms, possibly a missed anomaly.
"""

from __future__ import annotations

import bisect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from . import model
from .history import DELETE, GET, INF, KV, LEASE_REVOKE, OK, PUT, TXN, UNKNOWN, Operation
from .model import NO_OBS, Step


@dataclass
class PartitionResult:
    keys: list[bytes]
    operations: int
    ok: bool | None  # None: gave up (step budget exhausted)
    steps: int
    detail: str = ""


@dataclass
class LinearizabilityResult:
    partitions: list[PartitionResult] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    @property
    def anomalies(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.ok is False]

    @property
    def undecided(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.ok is None]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[bytes, bytes] = {}

    def find(self, x: bytes) -> bytes:
        p = self.parent.setdefault(x, x)
        while p != x:
            gp = self.parent[p]
            self.parent[x] = gp
            x, p = p, gp
        return x

    def union(self, a: bytes, b: bytes) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    return key == start if not end else (start <= key and (end == b"\0" or key < end))


class _Compiler:
    """Turns Operations into per-partition Steps."""

    def __init__(self, ops: list[Operation], universe: set[bytes]) -> None:
        self.universe = sorted(universe)
        self._found: dict[tuple[int, int], dict[bytes, KV]] = {}  # range results by key, per request
        self.lease_keys: dict[int, set[bytes]] = {}
        for o in ops:
            for r in (*o.success, *o.failure):
                if r.kind == PUT and r.lease:
                    self.lease_keys.setdefault(r.lease, set()).add(r.key)

    def keys_of(self, o: Operation) -> list[bytes]:
        ks: set[bytes] = set()
        if o.kind == LEASE_REVOKE:
            return sorted(self.lease_keys.get(o.lease, ()))
        for c in o.compares:
            ks.add(c.key)
        for r in (*o.success, *o.failure):
            if r.kind == GET and r.range_end:
                u = self.universe
                lo = bisect.bisect_left(u, r.key)
                hi = len(u) if r.range_end == b"\0" else bisect.bisect_left(u, r.range_end)
                ks.update(u[lo:hi])
            else:
                ks.add(r.key)
        return sorted(ks)

    @staticmethod
    def splittable(o: Operation) -> bool:
        if o.kind == LEASE_REVOKE:
            return True  # see the module docstring: unknown revokes lose cross-key atomicity only
        if o.revision == 0:
            return False
        if o.succeeded is None:
            return False
        return bool(o.succeeded) or len({c.key for c in o.compares}) <= 1

    def step(self, o: Operation, keys: list[bytes], index: dict[bytes, int]) -> Step:
        """The share of `o` on a partition's `keys` (`index`: key -> position in `keys`)."""
        observed = o.status == OK
        cmps = tuple((index[c.key], c.target, c.op, c.operand) for c in o.compares if c.key in index)
        if o.kind == LEASE_REVOKE:
            succ = tuple(
                (model.REVOKE, index[k], o.lease, None) for k in keys if k in self.lease_keys.get(o.lease, ())
            )
            return Step(o.id, o.invoke, o.ret, True, o.revision, (), succ, ())
        succ = self._branch(o, o.success, index, o.results if observed and o.succeeded is not False else None)
        fail = self._branch(o, o.failure, index, o.results if observed and o.succeeded is False else None)
        outcome = o.succeeded if (observed or o.revision) else None
        return Step(o.id, o.invoke, o.ret, outcome, o.revision, cmps, succ, fail)

    def _branch(self, o: Operation, reqs: tuple, index: dict[bytes, int], results: tuple | None) -> tuple:
        out: list[tuple[int, int, Any, Any]] = []
        for n, r in enumerate(reqs):
            res = results[n] if results is not None and n < len(results) else NO_OBS
            if r.kind == GET:
                if r.range_end:
                    found = self._found.get((o.id, n))
                    if found is None:
                        found = self._found[(o.id, n)] = {} if res is NO_OBS else {kv.key: kv for kv in res}
                    for k, ki in index.items():
                        if _in_range(k, r.key, r.range_end):
                            out.append((model.GET, ki, NO_OBS if res is NO_OBS else found.get(k), None))
                elif r.key in index:
                    obs = res if res is NO_OBS else (res[0] if res else None)
                    out.append((model.GET, index[r.key], obs, None))
            elif r.key in index:
                if r.kind == PUT:
                    out.append((model.PUT, index[r.key], r.value, r.lease))
                elif r.kind == DELETE:
                    out.append((model.DEL, index[r.key], -1 if res is NO_OBS else int(res), None))
        out.sort(key=lambda t: t[1])  # requests on different keys commute; keep each key's own order
        return tuple(out)


def _has_kv_effect_or_observation(o: Operation) -> bool:
    if o.kind == LEASE_REVOKE:
        return True
    if o.kind != TXN:
        return False
    if o.status == OK:
        return True
    # an unknown-outcome pure read observed nothing and changed nothing
    return any(r.kind != GET for r in (*o.success, *o.failure))


def partition(
    ops: list[Operation], universe: set[bytes] | None = None
) -> list[tuple[list[bytes], list[Step]]]:
    """Split a (patched) history into independently checkable partitions of keys and steps."""
    ops = [o for o in ops if o.status in (OK, UNKNOWN) and _has_kv_effect_or_observation(o)]
    if universe is None:
        universe = set()
    universe = set(universe)
    for o in ops:
        for c in o.compares:
            universe.add(c.key)
        for r in (*o.success, *o.failure):
            if not r.range_end:
                universe.add(r.key)
            elif o.status == OK:
                for res in o.results:
                    if isinstance(res, tuple):
                        universe.update(kv.key for kv in res if isinstance(kv, KV))
    comp = _Compiler(ops, universe)
    uf = _UnionFind()
    op_keys: list[list[bytes]] = []
    for o in ops:
        ks = comp.keys_of(o)
        op_keys.append(ks)
        for k in ks:
            uf.find(k)
        if len(ks) > 1 and not comp.splittable(o):
            for k in ks[1:]:
                uf.union(ks[0], k)
    groups: dict[bytes, list[bytes]] = {}
    for k in sorted(uf.parent):
        groups.setdefault(uf.find(k), []).append(k)
    steps: dict[bytes, list[Step]] = {root: [] for root in groups}
    index = {root: {k: i for i, k in enumerate(gk)} for root, gk in groups.items()}
    root_of = {k: uf.find(k) for k in uf.parent}
    for o, ks in zip(ops, op_keys):
        for root in dict.fromkeys(root_of[k] for k in ks):  # its share on each group it touches
            steps[root].append(comp.step(o, groups[root], index[root]))
    return [(groups[r], steps[r]) for r in groups if steps[r]]


def check_partition(
    keys: list[bytes], steps: list[Step], initial: model.State | None = None, budget: int = 2_000_000
) -> PartitionResult:
    """Porcupine's checkSingle over one partition."""
    n = len(steps)
    if initial is None:
        initial = tuple(model.absent() for _ in keys)
    # nodes 0..n-1 are calls, n..2n-1 returns; HEAD = 2n, TAIL = 2n+1
    events = sorted(
        [(s.invoke, 0, i) for i, s in enumerate(steps)] + [(s.ret, 1, n + i) for i, s in enumerate(steps)]
    )
    HEAD, TAIL = 2 * n, 2 * n + 1
    nxt = [0] * (2 * n + 2)
    prv = [0] * (2 * n + 2)
    order = [HEAD] + [e[2] for e in events] + [TAIL]
    for a, b in itertools.pairwise(order):
        nxt[a] = b
        prv[b] = a
    step_fn = model.step
    state = initial
    bits = 0
    cache: set[tuple[int, model.State]] = set()
    stack: list[tuple[list[int], int, int, model.State, list, int]] = []
    count = 0
    deepest = -1
    stuck = ""

    def lift(c: int) -> None:
        r = c + n
        p, q = prv[c], nxt[c]
        nxt[p] = q
        prv[q] = p
        p, q = prv[r], nxt[r]
        nxt[p] = q
        prv[q] = p

    def unlift(c: int) -> None:
        r = c + n
        p, q = prv[r], nxt[r]
        nxt[p] = r
        prv[q] = r
        p, q = prv[c], nxt[c]
        nxt[p] = c
        prv[q] = c

    # Porcupine scans the pending calls in invocation order. The candidates are the same here (every
    # call before the earliest pending return) but they are tried in revision order, which is the
    # order a correct etcd history linearizes in, so the search rarely has to backtrack.
    prio = [(s.revision or INF, s.ret >= INF, i) for i, s in enumerate(steps)]

    def candidates() -> list[int]:
        out = []
        e = nxt[HEAD]
        while e < n:  # returns (and TAIL) are >= n
            out.append(e)
            e = nxt[e]
        if len(out) > 1:
            out.sort(key=prio.__getitem__)
        return out

    cands = candidates()
    i = 0
    while nxt[HEAD] != TAIL:
        moved = False
        while i < len(cands):
            e = cands[i]
            i += 1
            count += 1
            if count > budget:
                return PartitionResult(keys, n, None, count, f"gave up after {budget} steps")
            succs = step_fn(state, steps[e])
            if succs:
                nb = bits | (1 << e)
                for j, s in enumerate(succs):
                    ck = (nb, s)
                    if ck not in cache:
                        cache.add(ck)
                        stack.append((cands, i, e, state, succs, j + 1))
                        state, bits = s, nb
                        lift(e)
                        moved = True
                        break
                if moved:
                    break
        if moved:
            cands = candidates()
            i = 0
            continue
        # nothing can be linearized next: backtrack
        if len(stack) > deepest:
            deepest = len(stack)
            due = nxt[HEAD]
            while due < n:
                due = nxt[due]
            blame = f"op {steps[due - n].op_id}" if n <= due < 2 * n else "an operation"
            stuck = (
                f"{blame} cannot be linearized after {deepest} of {n} operations; "
                f"state then: {model.describe(state, keys)}"
            )
        if not stack:
            return PartitionResult(keys, n, False, count, stuck)
        cands, i, e, prev_state, succs, j = stack.pop()
        unlift(e)
        bits ^= 1 << e
        nb = bits | (1 << e)
        state = prev_state
        for jj in range(j, len(succs)):  # the same operation, another possible outcome
            ck = (nb, succs[jj])
            if ck not in cache:
                cache.add(ck)
                stack.append((cands, i, e, prev_state, succs, jj + 1))
                state, bits = succs[jj], nb
                lift(e)
                cands = candidates()
                i = 0
                break
    return PartitionResult(keys, n, True, count)


def check_operations(
    ops: list[Operation],
    *,
    universe: set[bytes] | None = None,
    initial: dict[bytes, KV] | None = None,
    budget: int = 2_000_000,
) -> LinearizabilityResult:
    """Check a history's key-value operations; `initial` is the store's content before the first one."""
    t0 = time.perf_counter()
    res = LinearizabilityResult()
    initial = initial or {}
    for keys, steps in partition(ops, universe):
        init = tuple(model.from_kv(initial.get(k)) for k in keys)
        pr = check_partition(keys, steps, init, budget)
        res.partitions.append(pr)
        res.steps += pr.steps
    res.seconds = time.perf_counter() - t0
    return res


@dataclass
class RevisionItem:
    op_id: int
    invoke: int
    ret: int
    revision: int
    write: bool


def revision_order_violations(items: list[RevisionItem], limit: int = 20) -> list[str]:
    """Cross-key real-time check of revisions: A returned before B was invoked => rev(B) >= rev(A),
    strictly if B is a write. One sweep over invoke/return events."""
    events: list[tuple[int, int, int]] = []
    for i, it in enumerate(items):
        events.append((it.invoke, 0, i))
        if it.ret < INF:
            events.append((it.ret, 1, i))
    events.sort()  # at equal times invocations come first: those operations overlap
    best_rev, best_op = 0, -1
    out: list[str] = []
    for _, kind, i in events:
        it = items[i]
        if kind == 1:
            if it.revision > best_rev:
                best_rev, best_op = it.revision, it.op_id
        elif it.revision < best_rev or (it.write and it.revision == best_rev):
            what = "write" if it.write else "read"
            out.append(
                f"op {it.op_id} ({what} at revision {it.revision}) was invoked after "
                f"op {best_op} had returned revision {best_rev}"
            )
            if len(out) >= limit:
                break
    return out
