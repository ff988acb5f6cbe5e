"""The linearizability, log and watch checkers on known-good and known-bad histories."""

from __future__ import annotations

import copy
import dataclasses
import random
import time

import pytest

from . import checker, simulate
from . import linearizability as lin
from .history import (
    DELETE,
    GET,
    INF,
    KV,
    OK,
    PUT,
    TXN,
    UNKNOWN,
    Compare,
    Event,
    History,
    Operation,
    Request,
)

_ids = iter(range(1_000_000))


def get(key, invoke, ret, rev, kv=None, client=0):
    return Operation(
        next(_ids),
        client,
        TXN,
        invoke,
        ret,
        OK,
        label="get",
        success=(Request(GET, key),),
        revision=rev,
        succeeded=True,
        results=((kv,) if kv else (),),
    )


def put(key, value, invoke, ret, rev, client=0, status=OK):
    o = Operation(
        next(_ids),
        client,
        TXN,
        invoke,
        ret,
        status,
        label="put",
        success=(Request(PUT, key, value=value),),
        revision=rev,
        succeeded=True,
        results=(None,),
    )
    if status == UNKNOWN:
        o.ret, o.revision, o.succeeded, o.results = INF, 0, None, ()
    return o


def delete(key, invoke, ret, rev, deleted, client=0):
    return Operation(
        next(_ids),
        client,
        TXN,
        invoke,
        ret,
        OK,
        label="delete",
        success=(Request(DELETE, key),),
        revision=rev,
        succeeded=True,
        results=(deleted,),
    )


def cas_mod(key, expect_mod, value, invoke, ret, rev, succeeded, seen=None):
    return Operation(
        next(_ids),
        0,
        TXN,
        invoke,
        ret,
        OK,
        label="cas",
        compares=(Compare(key, "mod", "=", expect_mod),),
        success=(Request(PUT, key, value=value),),
        failure=(Request(GET, key),),
        revision=rev,
        succeeded=succeeded,
        results=((None,) if succeeded else ((seen,) if seen else (),)),
    )


def kv(key, value, mod, create=None, version=1):
    return KV(key, value, create or mod, mod, version, 0)


def linearizable(ops) -> bool:
    res = lin.check_operations(ops)
    assert not res.undecided
    items = [
        lin.RevisionItem(o.id, o.invoke, o.ret, o.revision, o.label in ("put", "cas", "txn2"))
        for o in ops
        if o.revision
    ]
    return res.ok and not lin.revision_order_violations(items)


# -- hand-written histories ------------------------------------------------------------------------


def test_sequential_put_then_get():
    assert linearizable([put(b"a", b"1", 0, 10, 2), get(b"a", 20, 30, 2, kv(b"a", b"1", 2))])


def test_concurrent_read_may_see_either_value():
    for seen in (None, kv(b"a", b"1", 2)):
        rev = 2 if seen else 1
        assert linearizable([put(b"a", b"1", 0, 30, 2), get(b"a", 10, 20, rev, seen)])


def test_stale_read_is_caught():
    ops = [
        put(b"a", b"1", 0, 10, 2),
        put(b"a", b"2", 20, 30, 3),
        get(b"a", 40, 50, 3, kv(b"a", b"1", 2)),  # must see "2"
    ]
    assert not linearizable(ops)


def test_lost_write_is_caught():
    ops = [put(b"a", b"1", 0, 10, 2), get(b"a", 20, 30, 2, None)]
    assert not linearizable(ops)


def test_write_visible_before_its_invocation_is_caught():
    ops = [get(b"a", 0, 10, 2, kv(b"a", b"1", 2)), put(b"a", b"1", 20, 30, 2)]
    assert not linearizable(ops)


def test_revision_going_back_on_one_key_is_caught():
    ops = [put(b"a", b"1", 0, 10, 5), get(b"a", 20, 30, 4, kv(b"a", b"1", 5))]
    assert not linearizable(ops)


def test_revision_going_back_across_keys_is_caught():
    # each key alone is fine; only the global revision clock shows the read is from the past
    ops = [put(b"a", b"1", 0, 10, 5), get(b"b", 20, 30, 4, None)]
    assert lin.check_operations(ops).ok
    assert not linearizable(ops)


def test_duplicated_apply_shows_as_version_jump():
    ops = [put(b"a", b"1", 0, 10, 2), get(b"a", 20, 30, 3, kv(b"a", b"1", 3, create=2, version=2))]
    assert not linearizable(ops)


def test_delete_count_must_match_presence():
    assert linearizable([put(b"a", b"1", 0, 10, 2), delete(b"a", 20, 30, 3, 1), get(b"a", 40, 50, 3)])
    assert not linearizable([put(b"a", b"1", 0, 10, 2), delete(b"a", 20, 30, 2, 0)])


def test_compare_and_swap_on_mod_revision():
    good = [
        put(b"a", b"1", 0, 10, 2),
        cas_mod(b"a", 2, b"2", 20, 30, 3, True),
        get(b"a", 40, 50, 3, kv(b"a", b"2", 3, 2, 2)),
    ]
    assert linearizable(good)
    # a CAS that succeeds against a revision the key no longer has
    bad = [put(b"a", b"1", 0, 10, 2), put(b"a", b"x", 12, 15, 3), cas_mod(b"a", 2, b"2", 20, 30, 4, True)]
    assert not linearizable(bad)
    # and one that fails although the compare held
    bad2 = [put(b"a", b"1", 0, 10, 2), cas_mod(b"a", 2, b"2", 20, 30, 2, False, kv(b"a", b"1", 2))]
    assert not linearizable(bad2)


def test_indeterminate_put_may_or_may_not_take_effect():
    lost = put(b"a", b"1", 0, 0, 0, status=UNKNOWN)
    assert linearizable([lost, get(b"a", 20, 30, 1, None)])
    lost = put(b"a", b"1", 0, 0, 0, status=UNKNOWN)
    assert linearizable([lost, get(b"a", 20, 30, 2, kv(b"a", b"1", 2))])
    # ... even long after the client gave up, but once seen it stays
    lost = put(b"a", b"1", 0, 0, 0, status=UNKNOWN)
    assert linearizable([lost, get(b"a", 20, 30, 1, None), get(b"a", 40, 50, 2, kv(b"a", b"1", 2))])
    lost = put(b"a", b"1", 0, 0, 0, status=UNKNOWN)
    seen_then_gone = [lost, get(b"a", 20, 30, 2, kv(b"a", b"1", 2)), get(b"a", 40, 50, 2, None)]
    assert not linearizable(seen_then_gone)


def test_multi_key_transaction_is_atomic():
    txn = Operation(
        next(_ids),
        0,
        TXN,
        0,
        10,
        OK,
        label="txn2",
        success=(Request(PUT, b"a", value=b"1"), Request(PUT, b"b", value=b"1b")),
        revision=2,
        succeeded=True,
        results=(None, None),
    )
    good = [txn, get(b"a", 20, 30, 2, kv(b"a", b"1", 2)), get(b"b", 20, 30, 2, kv(b"b", b"1b", 2))]
    assert linearizable(good)
    txn2 = dataclasses.replace(txn, id=next(_ids), invoke=0, ret=50)
    # a reader sees the new "a", then a later reader sees the old "b": not atomic
    torn = [txn2, get(b"a", 10, 20, 2, kv(b"a", b"1", 2)), get(b"b", 30, 40, 2, None)]
    assert not linearizable(torn)


def test_unsplittable_transactions_merge_their_keys():
    unknown = Operation(
        next(_ids),
        0,
        TXN,
        0,
        INF,
        UNKNOWN,
        label="txn2",
        compares=(Compare(b"a", "mod", "=", 0), Compare(b"b", "mod", "=", 0)),
        success=(Request(PUT, b"a", value=b"1"), Request(PUT, b"b", value=b"1b")),
    )
    parts = lin.partition([unknown, get(b"c", 0, 1, 1)])
    assert sorted(len(k) for k, _ in parts) == [1, 2]
    # with a known revision and a successful branch it is split per key
    known = dataclasses.replace(unknown, status=OK, ret=5, revision=2, succeeded=True, results=(None, None))
    assert sorted(len(k) for k, _ in lin.partition([known])) == [1, 1]


# -- whole-run checks on simulated histories -------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_simulated_histories_pass(seed):
    h = simulate.generate(seed, ops=300, p_unknown=0.08)
    rep = checker.check(h)
    assert rep.ok, rep.format()


def _ok_gets(h: History):
    return [o for o in h.operations if o.status == OK and o.label == "get" and o.results and o.results[0]]


def _op_of_revision(h: History):
    return {
        o.revision: o for o in h.operations if o.status == OK and o.label in ("put", "cas", "txn2", "delete")
    }


def _mutants(seed: int):
    """(name, expected anomaly kinds, mutated history)"""
    rnd = random.Random(seed)
    base = simulate.generate(seed, ops=300, p_unknown=0.05)
    writers = _op_of_revision(base)
    # stale read: a get returns an older version of the key, although the newer one was acked before
    h = copy.deepcopy(base)
    for o in rnd.sample(_ok_gets(h), len(_ok_gets(h))):
        cur = o.results[0][0]
        older = [e.kv for e in h.log() if e.kv.key == cur.key and e.type == PUT and e.revision < cur.mod]
        w = writers.get(cur.mod)
        if older and w is not None and w.ret < o.invoke:
            o.results = ((older[-1],),)
            yield "stale read", {"linearizability"}, h
            break
    # future read: a get returns a value whose put was invoked after the get returned
    h = copy.deepcopy(base)
    later = [
        (o, w)
        for o in _ok_gets(h)
        for w in h.operations
        if w.label == "put" and w.status == OK and w.invoke > o.ret and w.success[0].key == o.success[0].key
    ]
    if later:
        o, w = rnd.choice(later)
        ev = next(e for e in h.log() if e.revision == w.revision)
        o.results = ((ev.kv,),)
        yield "write visible before invoke", {"linearizability", "revision order"}, h
    # lost write: an acknowledged put disappears from the store's log
    h = copy.deepcopy(base)
    puts = [o for o in h.operations if o.label == "put" and o.status == OK]
    victim = rnd.choice(puts)
    for m in h.logs:
        h.logs[m] = [e for e in h.logs[m] if not (e.type == PUT and e.kv.value == victim.success[0].value)]
    yield "lost write", {"lost write"}, h
    # revision going back: a read answered with a revision older than one already returned
    h = copy.deepcopy(base)
    gets = _ok_gets(h)
    o = rnd.choice(gets[len(gets) // 2 :])
    prior = max((p.revision for p in h.operations if p.status == OK and p.ret < o.invoke), default=0)
    if prior > 2:
        o.revision = prior - 1
        yield "revision going back", {"linearizability", "revision order"}, h
    # duplicated apply: an acknowledged put applied a second time at a new revision
    h = copy.deepcopy(base)
    victim = rnd.choice(puts)
    ev = next(e for e in h.log() if e.type == PUT and e.kv.value == victim.success[0].value)
    dup = Event(PUT, ev.kv._replace(mod=h.final_revision + 1))
    for m in h.logs:
        h.logs[m] = h.logs[m] + [dup]
    h.final_revision += 1
    yield "duplicated apply", {"duplicate apply"}, h
    # watch: an event dropped, and one delivered twice
    h = copy.deepcopy(base)
    s = h.watchers[0].sessions[0]
    idx = [i for i, r in enumerate(s.responses) if r.events]
    if idx:
        i = rnd.choice(idx)
        del s.responses[i]
        yield "watch gap", {"watch"}, h
        h = copy.deepcopy(base)
        s = h.watchers[0].sessions[0]
        s.responses.insert(i + 1, copy.deepcopy(s.responses[i]))
        yield "watch duplicate", {"watch"}, h
    # a two-key transaction applied only halfway
    h = copy.deepcopy(base)
    txns = [o for o in h.operations if o.label == "txn2" and o.status == OK and o.succeeded]
    if txns:
        victim = rnd.choice(txns)
        second = victim.success[1]
        for m in h.logs:
            h.logs[m] = [e for e in h.logs[m] if not (e.type == PUT and e.kv.value == second.value)]
        yield "half-applied transaction", {"atomicity", "lost write"}, h
    # a revoke that deleted keys answers a later header revision than its deletes have
    h = copy.deepcopy(base)
    deleted_by = checker._Attribution(h.operations, h.log(), checker.Report()).rev_of
    revokes = [o for o in h.operations if o.label == "lease_revoke" and o.status == OK and o.id in deleted_by]
    if revokes:
        rnd.choice(revokes).revision += 1
        yield "revoke header revision", {"revision"}, h
    # members disagree on the log
    h = copy.deepcopy(base)
    h.logs["m2"] = h.logs["m2"][:-1]
    yield "log divergence", {"log"}, h


@pytest.mark.parametrize("seed", range(15))
def test_mutated_histories_fail(seed):
    seen = 0
    for name, kinds, h in _mutants(seed):
        rep = checker.check(h)
        assert not rep.ok, f"{name}: not detected"
        assert kinds & set(rep.anomalies), f"{name}: reported as {sorted(rep.anomalies)}"
        seen += 1
    assert seen >= 6


def test_history_round_trips_through_json(tmp_path):
    h = simulate.generate(3, ops=200, p_unknown=0.1)
    h.save(str(tmp_path / "h.json"))
    h2 = History.load(str(tmp_path / "h.json"))
    assert h2.operations == h.operations and h2.logs == h.logs and h2.watchers == h.watchers
    assert checker.check(h2).ok


def test_checker_is_fast_on_a_large_history():
    h = simulate.generate(7, ops=30_000, keys=50, clients=40, p_unknown=0.02)
    t0 = time.perf_counter()
    rep = checker.check(h)
    took = time.perf_counter() - t0
    assert rep.ok, rep.format()
    assert rep.operations.total() == 30_000 and rep.lin_partitions >= 25  # unknown revokes may merge keys
    assert took < 30, f"{took:.1f} s"


# -- watch checker on hand-made streams -----------------------------------------------------------


def _events(n: int) -> list[Event]:
    return [Event(PUT, KV(b"k", b"v%d" % r, 2, r, r - 1, 0)) for r in range(2, n + 2)]


def _session(start: int, events: list[Event], endpoint: str = "m1"):
    from .history import WatchResponse, WatchSession

    s = WatchSession(endpoint, b"k", b"", start, [WatchResponse(0, start, (), created=True)])
    s.responses += [WatchResponse(1, e.revision, (e,)) for e in events]
    return s


def _watch_anomalies(sessions, log, acked=None):
    from .history import Watcher
    from .watchcheck import check_watchers

    return check_watchers([Watcher(0, sessions)], log, acked).anomalies


def test_watch_resumed_stream_is_clean():
    log = _events(10)
    assert _watch_anomalies([_session(2, log[:4]), _session(6, log[4:], "m2")], log, [(b"k", 5)]) == []


def test_watch_going_back_across_reconnect_is_caught():
    log = _events(10)
    # the second member replays revision 5 although the first already delivered it
    out = _watch_anomalies([_session(2, log[:4]), _session(6, log[3:], "m2")], log)
    assert any("went back" in m for m in out)


def test_watch_gap_across_reconnect_and_missing_acked_write_are_caught():
    log = _events(10)
    out = _watch_anomalies([_session(2, log[:4]), _session(8, log[6:], "m2")], log)
    assert any("gap" in m for m in out)
    # inside one stream: an event skipped, which was an acknowledged write
    out = _watch_anomalies([_session(2, log[:3] + log[4:])], log, [(b"k", 5)])
    assert any("missing" in m for m in out) and any("acknowledged write" in m for m in out)


def test_watch_out_of_order_and_altered_events_are_caught():
    log = _events(6)
    swapped = [log[0], log[2], log[1], *log[3:]]
    assert any("out of order" in m for m in _watch_anomalies([_session(2, swapped)], log))
    altered = [*log[:2], Event(PUT, log[2].kv._replace(value=b"other")), *log[3:]]
    assert any("not in the log" in m for m in _watch_anomalies([_session(2, altered)], log))
