"""Watch streams against the store's event log.

For every session of every watcher we know the revision range it is responsible for:

    from  start_revision (or, for a "from now" watch, the creation header revision + 1)
    to    the highest revision it delivered an event of. (Progress notifications would say more,
          but etcd 3.4 answers a progress request with the member's current revision even while
          the watcher is still catching up, so they prove nothing. The runner instead waits until
          every watcher has delivered the final revision: all writes of a run are in the watched
          prefix, so a complete watcher must reach it.)

Within that range the session must deliver exactly the log's events on its key range, in revision
order, each once, with identical key-values. Across a watcher's sessions (it resumes after a broken
stream from the last revision it saw + 1) revisions never go back and nothing is skipped.
Separately, every acknowledged write inside a session's range must be in it exactly once: that
check does not trust the log, so a write the log lost but a watcher saw is still caught.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from .history import Event, Watcher, WatchSession


@dataclass
class WatchResult:
    watchers: int = 0
    sessions: int = 0
    events: int = 0
    anomalies: list[str] = field(default_factory=list)


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    return key >= start and (end == b"\0" or key < end)


def _session_range(s: WatchSession) -> tuple[int, int] | None:
    """(first, last) revision the session is accountable for, or None if it never started."""
    if s.start_revision > 0:
        start = s.start_revision
    else:
        created = next((r for r in s.responses if r.created), None)
        if created is None:
            return None
        start = created.header_revision + 1
    end = start - 1
    for r in s.responses:
        if r.events:
            end = max(end, r.events[-1].revision)
    return start, end


def check_watchers(
    watchers: list[Watcher],
    log: list[Event],
    acked_writes: list[tuple[bytes, int]] | None = None,
    *,
    compaction_expected: bool = False,
    limit: int = 50,
) -> WatchResult:
    res = WatchResult(watchers=len(watchers))
    out = res.anomalies
    revs = [e.revision for e in log]
    acked = sorted(acked_writes or [], key=lambda kr: kr[1])
    acked_revs = [r for _, r in acked]

    def note(msg: str) -> None:
        if len(out) < limit:
            out.append(msg)

    for w in watchers:
        last_event = 0  # highest event revision delivered over all sessions so far
        covered = 0  # highest revision proven delivered
        for n, s in enumerate(w.sessions):
            res.sessions += 1
            where = f"watcher {w.id} session {n} ({s.endpoint})"
            events = [e for r in s.responses for e in r.events]
            res.events += len(events)
            for r in s.responses:
                if r.compact_revision and not compaction_expected:
                    note(f"{where}: canceled as compacted at {r.compact_revision} but nothing was compacted")
            rng = _session_range(s)
            if rng is None:
                if events:
                    note(f"{where}: events before the watch was created")
                continue
            start, end = rng
            if covered and start > covered + 1:
                note(f"{where}: resumed at revision {start} after only {covered} was delivered (gap)")
            # order, duplicates, going back
            prev = 0
            seen: Counter[tuple[int, bytes]] = Counter()
            for e in events:
                rev = e.revision
                if rev < prev:
                    note(f"{where}: event at revision {rev} after revision {prev} (out of order)")
                if rev <= last_event:
                    note(
                        f"{where}: event at revision {rev} but revision {last_event} was already delivered "
                        f"(went back across reconnect)"
                    )
                if rev < start:
                    note(f"{where}: event at revision {rev} before the start revision {start}")
                if not _in_range(e.kv.key, s.key, s.range_end):
                    note(f"{where}: event for key {e.kv.key!r} outside the watched range")
                seen[(rev, e.kv.key)] += 1
                if seen[(rev, e.kv.key)] == 2:
                    note(f"{where}: duplicate event for {e.kv.key!r} at revision {rev}")
                prev = max(prev, rev)
            top = 0
            for r in s.responses:
                if r.events:
                    top = max(top, r.events[-1].revision)
                elif r.progress and r.header_revision < top:
                    note(
                        f"{where}: progress notification at revision {r.header_revision} after an event at "
                        f"{top} (went back)"
                    )
            # exact match with the log in [start, end]
            lo, hi = bisect.bisect_left(revs, start), bisect.bisect_right(revs, end)
            expected = [e for e in log[lo:hi] if _in_range(e.kv.key, s.key, s.range_end)]
            got = [e for e in events if start <= e.revision <= end]
            if got != expected:
                exp_c, got_c = Counter(expected), Counter(got)
                missing = sorted(exp_c - got_c, key=lambda e: e.revision)
                extra = sorted(got_c - exp_c, key=lambda e: e.revision)
                if missing:
                    note(
                        f"{where}: {len(missing)} log events missing in [{start}, {end}], first {missing[0]}"
                    )
                if extra:
                    note(f"{where}: {len(extra)} events not in the log, first {extra[0]}")
                if not missing and not extra:
                    note(f"{where}: events in a different order than the log in [{start}, {end}]")
            # acknowledged writes, independently of the log
            got_keys = Counter((e.kv.key, e.revision) for e in got)
            for i in range(bisect.bisect_left(acked_revs, start), bisect.bisect_right(acked_revs, end)):
                k, rev = acked[i]
                if _in_range(k, s.key, s.range_end) and got_keys[(k, rev)] != 1:
                    note(
                        f"{where}: acknowledged write of {k!r} at revision {rev} delivered "
                        f"{got_keys[(k, rev)]} times"
                    )
            if events:
                last_event = max(last_event, max(e.revision for e in events))
            covered = max(covered, end)
    return res
