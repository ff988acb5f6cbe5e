"""Everything a run's history must satisfy, checked without I/O: `check(history) -> Report`.

Steps:
1. The members' event logs (a watch from revision 1 after the run) are identical, and the log is
   self-consistent: revisions contiguous, versions/create revisions follow from the previous event.
2. Attribution: every log revision is matched to the one operation that wrote it (puts carry values
   unique to their operation; deletes are matched by revision, or to the only possible unknown
   operation). Anomalies: a value no operation wrote, a value applied twice, one revision holding
   several operations, an acknowledged revision that disagrees with the log, a partially applied
   transaction. An acknowledged write missing from the log is a LOST write.
3. Patching (as etcd's robustness suite does): an operation with unknown outcome whose write is in
   the log gets that revision and branch, and a return time no later than the first operation that
   returned a revision >= it; one whose write cannot be in the log took no effect and is dropped.
   The log only narrows the search: if it lied, the client-observed history stops linearizing.
4. Linearizability of all key-value operations (linearizability.py) plus the cross-key
   revision order; lease rules (no put with a lease after its revoke; "lease not found" only after a
   revoke was sent).
5. Watches (watchcheck.py) against the log and the acknowledged writes.
6. Final state: each member's content at the final revision equals the log replayed, and all members
   report the same HashKV at the same revision (collected by the runner into history.meta).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from . import linearizability as lin
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
    Event,
    History,
    Operation,
)
from .watchcheck import check_watchers


@dataclass
class Report:
    operations: Counter = field(default_factory=Counter)  # ok / failed / indeterminate
    by_label: dict[str, Counter] = field(default_factory=dict)
    indeterminate_applied: int = 0
    indeterminate_dropped: int = 0
    indeterminate_open: int = 0
    lost_writes: int = 0
    anomalies: dict[str, list[str]] = field(default_factory=dict)
    lin_partitions: int = 0
    lin_steps: int = 0
    lin_seconds: float = 0.0
    lin_undecided: int = 0
    largest_partition: int = 0
    watch_sessions: int = 0
    watch_events: int = 0
    log_events: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the checker's own CPU time: comparable on a loaded machine

    def add(self, kind: str, msg: str, limit: int = 20) -> None:
        lst = self.anomalies.setdefault(kind, [])
        if len(lst) < limit:
            lst.append(msg)
        else:
            self._overflow[kind] = self._overflow.get(kind, 0) + 1

    def __post_init__(self) -> None:
        self._overflow: dict[str, int] = {}

    def anomaly_count(self) -> int:
        return sum(len(v) for v in self.anomalies.values()) + sum(self._overflow.values())

    @property
    def ok(self) -> bool:
        return self.anomaly_count() == 0 and self.lost_writes == 0 and self.lin_undecided == 0

    def format(self) -> str:
        o = self.operations
        lines = [
            (
                f"operations        {sum(o.values())}: ok {o['ok']}, failed {o['failed']}, "
                f"indeterminate {o['indeterminate']} (applied {self.indeterminate_applied}, "
                f"not applied {self.indeterminate_dropped}, undetermined {self.indeterminate_open})"
            ),
        ]
        for label in sorted(self.by_label):
            c = self.by_label[label]
            lines.append(
                f"  {label:<16}{c['ok']:>7} ok {c['failed']:>6} failed {c['indeterminate']:>6} indeterminate"
            )
        lines += [
            f"log events        {self.log_events}",
            f"watch             {self.watch_sessions} sessions, {self.watch_events} events",
            (
                f"linearizability   {self.lin_partitions} partitions (largest {self.largest_partition} ops), "
                f"{self.lin_steps} search steps, {self.lin_seconds:.2f} s, undecided {self.lin_undecided}"
            ),
            f"check took        {self.seconds:.2f} s ({self.cpu_seconds:.2f} s CPU)",
            f"lost writes       {self.lost_writes}",
            f"anomalies         {self.anomaly_count()}",
        ]
        for kind, msgs in sorted(self.anomalies.items()):
            extra = self._overflow.get(kind, 0)
            lines.append(f"  {kind}: {len(msgs) + extra}")
            lines += [f"    - {m}" for m in msgs[:10]]
        return "\n".join(lines)


def _group_by_revision(log: list[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = {}
    for e in log:
        out.setdefault(e.revision, []).append(e)
    return out


def _check_log(history: History, rep: Report) -> list[Event]:
    logs = history.logs
    if not logs:
        rep.add("log", "no event log was collected")
        return []
    names = list(logs)
    base = logs[names[0]]
    for m in names[1:]:
        other = logs[m]
        if other != base:
            n = next((i for i, (a, b) in enumerate(zip(base, other)) if a != b), min(len(base), len(other)))
            rep.add(
                "log",
                f"members {names[0]} and {m} disagree at log position {n}: "
                f"{base[n] if n < len(base) else None} vs {other[n] if n < len(other) else None}",
            )
    by_rev = _group_by_revision(base)
    if by_rev:
        first, last = min(by_rev), max(by_rev)
        missing = [r for r in range(first, last + 1) if r not in by_rev]
        if missing:
            rep.add(
                "log",
                f"{len(missing)} revisions without events between {first} and {last}, first {missing[:5]}",
            )
        if history.final_revision and last != history.final_revision:
            rep.add(
                "log",
                f"log ends at revision {last} but the cluster reports revision {history.final_revision}",
            )
        if any(a.revision > b.revision for a, b in itertools.pairwise(base)):
            rep.add("log", "log events are not in revision order")
    state: dict[bytes, KV] = {}
    for e in base:
        kv, cur = e.kv, state.get(e.kv.key)
        if e.type == PUT:
            want_version = cur.version + 1 if cur else 1
            want_create = cur.create if cur else kv.mod
            if kv.version != want_version or kv.create != want_create:
                rep.add("log", f"event {e}: expected version {want_version} create {want_create}")
            state[kv.key] = kv
        else:
            if cur is None:
                rep.add("log", f"delete of absent key {kv.key!r} at revision {kv.mod}")
            state.pop(kv.key, None)
    return base


class _Attribution:
    """Matches log revisions to operations; see the module docstring."""

    def __init__(self, ops: list[Operation], log: list[Event], rep: Report) -> None:
        self.rep = rep
        self.ops = {o.id: o for o in ops}
        self.rev_of: dict[int, int] = {}  # op id -> revision it wrote
        self.lost_puts = 0
        self.unattributed_deletes: dict[bytes, list[int]] = defaultdict(list)  # key -> revisions
        owner: dict[tuple[bytes, bytes], int] = {}
        dup_values: set[tuple[bytes, bytes]] = set()
        for o in ops:
            if o.kind != TXN:
                continue
            for kv in o.writes_values():
                if kv in owner and owner[kv] != o.id:
                    dup_values.add(kv)
                owner[kv] = o.id
        if dup_values:
            rep.add("history", f"{len(dup_values)} values written by several operations (generator bug)")
        by_header: dict[int, list[Operation]] = defaultdict(list)
        unknown_deleters: list[Operation] = []  # unknown-outcome operations that may delete keys
        self.acked_revokes = [o for o in ops if o.kind == LEASE_REVOKE and o.status == OK]
        for o in ops:
            if o.status == OK and o.revision:
                by_header[o.revision].append(o)
            if o.status == UNKNOWN and (o.kind == LEASE_REVOKE or _delete_keys(o)):
                unknown_deleters.append(o)
        self.by_rev = _group_by_revision(log)
        self._ret_revs, self._ret_suffix = _tightened_returns(
            [(o.revision, o.ret) for o in ops if o.status == OK and o.revision]
        )
        # the highest revision returned before each time: nothing invoked later applies at or below it
        done = sorted((o.ret, o.revision) for o in ops if o.status == OK and o.revision)
        self._done_times = [t for t, _ in done]
        self._done_max = list(itertools.accumulate((r for _, r in done), max))
        # replaying the log tells which keys each lease holds at every revision, so a revoke is
        # matched only where exactly its keys were deleted
        attached: dict[int, set[bytes]] = defaultdict(set)
        key_lease: dict[bytes, int] = {}
        for rev in sorted(self.by_rev):
            evs = self.by_rev[rev]
            self._match(rev, evs, owner, by_header, unknown_deleters, attached)
            for e in evs:
                old = key_lease.pop(e.kv.key, 0)
                if old:
                    attached[old].discard(e.kv.key)
                if e.type == PUT and e.kv.lease:
                    key_lease[e.kv.key] = e.kv.lease
                    attached[e.kv.lease].add(e.kv.key)

    def _match(
        self,
        rev: int,
        evs: list[Event],
        owner: dict[tuple[bytes, bytes], int],
        by_header: dict[int, list[Operation]],
        unknown_deleters: list[Operation],
        attached: dict[int, set[bytes]],
    ) -> None:
        rep = self.rep
        owners = set()
        for e in evs:
            if e.type != PUT:
                continue
            oid = owner.get((e.kv.key, e.kv.value))
            if oid is None:
                rep.add("phantom write", f"revision {rev}: {e.kv.key!r}={e.kv.value!r} not written by any op")
            else:
                owners.add(oid)
        if len(owners) > 1:
            rep.add("atomicity", f"revision {rev} holds writes of operations {sorted(owners)}")
            return
        if owners:
            self._attribute(owners.pop(), rev, evs)
            return
        # delete-only revision: the acknowledged delete answered with this revision, or the one
        # operation that could have deleted exactly these keys; several candidates stay open
        keys = {e.kv.key for e in evs}
        definite = [o for o in by_header.get(rev, ()) if self._deleted_something(o)]
        if len(definite) > 1:
            rep.add("atomicity", f"revision {rev} claimed by deletes {[o.id for o in definite]}")
            return
        if definite:
            self._attribute(definite[0].id, rev, evs)
            return

        def fits(o: Operation) -> bool:
            if o.kind == LEASE_REVOKE:
                return attached.get(o.lease) == keys
            return keys <= _delete_keys(o)

        latest = self._latest_invoke(rev)

        def possible(o: Operation) -> bool:  # not matched yet, and its time window admits `rev`
            return (
                o.id not in self.rev_of and o.invoke <= latest and self._floor_at(o.invoke) < rev and fits(o)
            )

        cands = [o for o in by_header.get(rev, ()) if o.kind == LEASE_REVOKE and fits(o)]
        cands += [o for o in unknown_deleters if possible(o)]
        if not cands:
            # an acknowledged revoke that deleted exactly these keys but answered another revision:
            # attributing it reports the wrong header revision rather than a phantom delete
            cands = [o for o in self.acked_revokes if possible(o)]
        if len(cands) == 1:
            self._attribute(cands[0].id, rev, evs)
        elif not cands:
            rep.add("phantom write", f"revision {rev}: deletes {sorted(keys)} by no operation")
        else:
            for k in keys:
                self.unattributed_deletes[k].append(rev)

    def _floor_at(self, t: int) -> int:
        i = bisect.bisect_left(self._done_times, t)
        return self._done_max[i - 1] if i else 0

    def _latest_invoke(self, rev: int) -> int:
        """An operation applied at `rev` was invoked before the first return of a revision >= rev."""
        i = bisect.bisect_left(self._ret_revs, rev)
        return self._ret_suffix[i]

    @staticmethod
    def _deleted_something(o: Operation) -> bool:
        if o.kind != TXN:
            return False
        return any(
            r.kind == DELETE and isinstance(res, int) and res > 0 for r, res in zip(o.branch(), o.results)
        )

    def _attribute(self, oid: int, rev: int, evs: list[Event]) -> None:
        o = self.ops[oid]
        if oid in self.rev_of and self.rev_of[oid] != rev:
            self.rep.add(
                "duplicate apply", f"op {oid} ({o.label}) applied at revisions {self.rev_of[oid]} and {rev}"
            )
            return
        self.rev_of[oid] = rev
        if o.status == OK and o.revision != rev:
            self.rep.add(
                "revision", f"op {oid} ({o.label}) answered revision {o.revision}, the log has it at {rev}"
            )
        if o.kind != TXN:
            return
        # the branch that ran must be complete in this revision (atomicity: nothing half-applied)
        puts = {(e.kv.key, e.kv.value): e.kv for e in evs if e.type == PUT}
        if o.status == OK:
            ran = [o.branch()]
        else:  # unknown outcome: the branch whose values are here
            ran = [
                b
                for b in (o.success, o.failure)
                if any(r.kind == PUT and (r.key, r.value) in puts for r in b)
            ]
        for b in ran:
            missing = [r.key for r in b if r.kind == PUT and (r.key, r.value) not in puts]
            if missing:
                self.rep.add(
                    "atomicity", f"op {oid} ({o.label}) is only partly in revision {rev}: no put of {missing}"
                )
                if o.status == OK:
                    self.lost_puts += len(missing)  # acknowledged, so each missing put is a lost write
            for r in b:
                kv = puts.get((r.key, r.value)) if r.kind == PUT else None
                if kv is not None and kv.lease != r.lease:
                    self.rep.add(
                        "revision", f"revision {rev}: {r.key!r} has lease {kv.lease}, op {oid} sent {r.lease}"
                    )

    def branch_of(self, o: Operation) -> bool | None:
        """For an unknown transaction found in the log: which branch wrote it."""
        evs = self.by_rev.get(self.rev_of[o.id], [])
        puts = {(e.kv.key, e.kv.value) for e in evs if e.type == PUT}
        if any(r.kind == PUT and (r.key, r.value) in puts for r in o.success):
            return True
        if any(r.kind == PUT and (r.key, r.value) in puts for r in o.failure):
            return False
        if any(r.kind == DELETE for r in o.success) and not any(r.kind == DELETE for r in o.failure):
            return True
        return None


def _delete_keys(o: Operation) -> set[bytes]:
    return {r.key for r in (*o.success, *o.failure) if r.kind == DELETE} if o.kind == TXN else set()


def _wrote(o: Operation) -> bool:
    """An acknowledged operation that must have produced events."""
    if o.status != OK or o.kind != TXN:
        return False
    for r, res in zip(o.branch(), o.results):
        if r.kind == PUT or (r.kind == DELETE and isinstance(res, int) and res > 0):
            return True
    return False


def _tightened_returns(items: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Sorted revisions and suffix minimum of return times, for 'first return with revision >= R'."""
    items.sort()
    revs = [r for r, _ in items]
    suffix = [INF] * (len(items) + 1)
    for i in range(len(items) - 1, -1, -1):
        suffix[i] = min(items[i][1], suffix[i + 1])
    return revs, suffix


def check(history: History, *, budget: int = 2_000_000) -> Report:
    t0 = time.perf_counter()
    c0 = time.process_time()
    rep = Report()
    ops = history.operations
    for o in ops:
        status = {OK: "ok", FAIL: "failed", UNKNOWN: "indeterminate"}[o.status]
        rep.operations[status] += 1
        rep.by_label.setdefault(o.label or o.kind, Counter())[status] += 1

    log = _check_log(history, rep)
    rep.log_events = len(log)
    att = _Attribution(ops, log, rep)

    # lost acknowledged writes
    rep.lost_writes += att.lost_puts
    for o in ops:
        if _wrote(o) and o.id not in att.rev_of:
            rep.lost_writes += 1
            rep.add(
                "lost write", f"op {o.id} ({o.label}) acknowledged at revision {o.revision} is not in the log"
            )

    # patch indeterminate operations
    lease_keys: dict[int, set[bytes]] = defaultdict(set)
    for o in ops:
        for r in (*o.success, *o.failure):
            if r.kind == PUT and r.lease:
                lease_keys[r.lease].add(r.key)
    revs, suffix = _tightened_returns([(o.revision, o.ret) for o in ops if o.status == OK and o.revision])
    patched: list[Operation] = []
    for o in ops:
        if o.status != UNKNOWN:
            patched.append(o)
            continue
        if o.id in att.rev_of:
            rev = att.rev_of[o.id]
            ret = suffix[bisect.bisect_left(revs, rev)]
            branch = att.branch_of(o) if o.kind == TXN else True
            patched.append(dataclasses.replace(o, revision=rev, ret=max(ret, o.invoke), succeeded=branch))
            rep.indeterminate_applied += 1
            continue
        can_delete = o.kind == LEASE_REVOKE or bool(_delete_keys(o))
        keys = lease_keys.get(o.lease, set()) if o.kind == LEASE_REVOKE else _delete_keys(o)
        if o.kind == TXN and all(r.kind == GET for r in (*o.success, *o.failure)):
            rep.indeterminate_dropped += 1  # a read that never answered: no effect, nothing observed
        elif can_delete and any(att.unattributed_deletes.get(k) for k in keys):
            patched.append(o)  # may be one of the deletes the log could not attribute
            rep.indeterminate_open += 1
        elif o.kind in (TXN, LEASE_REVOKE):
            rep.indeterminate_dropped += 1  # its write is not in the log: it took no effect
        else:
            patched.append(o)

    # leases
    revoked_at: dict[int, list[Operation]] = defaultdict(list)
    for o in ops:
        if o.kind == LEASE_REVOKE and o.status in (OK, UNKNOWN):
            revoked_at[o.lease].append(o)
    for o in patched:
        if o.kind != TXN:
            continue
        for r in o.branch() if o.status == OK else ():
            if r.kind == PUT and r.lease:
                for rv in revoked_at.get(r.lease, ()):
                    if rv.status == OK and o.revision >= rv.revision:
                        rep.add(
                            "lease",
                            f"op {o.id} put with lease {r.lease:x} at revision {o.revision}, "
                            f"after its revoke at {rv.revision}",
                        )
    granted = {o.lease: o for o in ops if o.kind == LEASE_GRANT and o.status == OK}
    for o in ops:
        if o.status == FAIL and "lease not found" in o.error:
            lease = next((r.lease for r in o.success if r.lease), 0)
            g = granted.get(lease)
            if (
                g is not None
                and g.ret < o.invoke
                and not any(rv.invoke < o.ret for rv in revoked_at.get(lease, ()))
            ):
                rep.add("lease", f"op {o.id}: lease {lease:x} not found, but no revoke of it was sent before")

    # linearizability + revision order
    universe = {e.kv.key for e in log}
    res = lin.check_operations(patched, universe=universe, budget=budget)
    rep.lin_partitions = len(res.partitions)
    rep.lin_steps = res.steps
    rep.lin_seconds = res.seconds
    rep.lin_undecided = len(res.undecided)
    rep.largest_partition = max((p.operations for p in res.partitions), default=0)
    for p in res.anomalies:
        rep.add("linearizability", f"keys {[k.decode('latin-1') for k in p.keys]}: {p.detail}")
    for p in res.undecided:
        rep.add("undecided", f"keys {[k.decode('latin-1') for k in p.keys]}: {p.detail}")
    items = []
    for o in patched:
        if o.kind in (TXN, LEASE_REVOKE) and o.revision and o.status in (OK, UNKNOWN):
            items.append(lin.RevisionItem(o.id, o.invoke, o.ret, o.revision, o.id in att.rev_of))
    for msg in lin.revision_order_violations(items):
        rep.add("revision order", msg)

    # watches
    acked = []
    for o in ops:
        if _wrote(o):
            for r, res in zip(o.branch(), o.results):
                if r.kind == PUT or (r.kind == DELETE and isinstance(res, int) and res > 0):
                    acked.append((r.key, o.revision))
    wres = check_watchers(
        history.watchers, log, acked, compaction_expected=bool(history.meta.get("compactions"))
    )
    rep.watch_sessions, rep.watch_events = wres.sessions, wres.events
    for msg in wres.anomalies:
        rep.add("watch", msg)

    _check_final(history, log, att, ops, rep)
    rep.seconds = time.perf_counter() - t0
    rep.cpu_seconds = time.process_time() - c0
    return rep


def _check_final(
    history: History, log: list[Event], att: _Attribution, ops: list[Operation], rep: Report
) -> None:
    final: dict[bytes, KV] = {}
    for e in log:
        if e.type == PUT:
            final[e.kv.key] = e.kv
        else:
            final.pop(e.kv.key, None)
    for member, kvs in history.final_state.items():
        got = {kv.key: kv for kv in kvs}
        if got != final:
            diff = sorted(set(got.items()) ^ set(final.items()))
            rep.add(
                "final state",
                f"member {member} at revision {history.final_revision} differs from the "
                f"replayed log in {len(diff)} entries, first {diff[:2]}",
            )
            # an acknowledged write that is the key's latest in the log but absent from this member: lost
            acked_revs = {att.rev_of[o.id] for o in ops if _wrote(o) and o.id in att.rev_of}
            for k, kv in final.items():
                if got.get(k) != kv and kv.mod in acked_revs:
                    rep.lost_writes += 1
    hashes = history.hash_kv
    if hashes and len({(h["revision"], h["hash"]) for h in hashes.values()}) != 1:
        rep.add("hash", f"members disagree on HashKV: {hashes}")


def main(argv: list[str] | None = None) -> int:
    """Re-check a saved history: python -m robustness.checker history.json"""
    args = argv if argv is not None else sys.argv[1:]
    h = History.load(args[0])
    rep = check(h)
    print(rep.format())
    return 0 if rep.ok else 1


def report_json(rep: Report) -> dict[str, Any]:
    d = {f.name: getattr(rep, f.name) for f in dataclasses.fields(rep)}
    return json.loads(json.dumps(d, default=str))


if __name__ == "__main__":
    sys.exit(main())
