"""MemoryStorage, size-limited slicing, and the RaftLog (unstable tail + storage)."""

import pytest
from etcdstore.raft.errors import CompactedError, RaftError, SnapshotOutOfDate, UnavailableError
from etcdstore.raft.log import RaftLog
from etcdstore.raft.records import ConfState, Entry, Snapshot, SnapshotMetadata
from etcdstore.raft.storage import MemoryStorage, slice_within
from raft_helpers import ents, storage_with


def sized(n: int, size: int, term: int = 1) -> list[Entry]:
    return [Entry(term, k + 1, data=b"x" * size) for k in range(n)]


# -- MemoryStorage ------------------------------------------------------------------------------------
def test_memory_storage_append_truncates_conflicting_suffix():
    st = MemoryStorage()
    st.append(ents(1, 1, 2, 2))
    assert (st.first_index(), st.last_index()) == (1, 4)
    st.append([Entry(3, 3), Entry(3, 4), Entry(3, 5)])
    assert [st.term(i) for i in range(6)] == [0, 1, 1, 3, 3, 3]
    with pytest.raises(UnavailableError, match="missing log entry"):
        st.append([Entry(3, 9)])


def test_memory_storage_bounds_errors():
    st = storage_with(ents(1, 1, 1, 2, 2), [1])
    st.create_snapshot(2, ConfState([1]), b"s")
    st.compact(2)
    assert (st.first_index(), st.last_index()) == (3, 5)
    assert st.term(2) == 1  # the entry just before the first is still known
    with pytest.raises(CompactedError):
        st.term(1)
    with pytest.raises(UnavailableError):
        st.term(6)
    with pytest.raises(CompactedError):
        st.entries(2, 4)
    with pytest.raises(UnavailableError):
        st.entries(3, 7)
    assert [e.index for e in st.entries(3, 6)] == [3, 4, 5]
    # appending entries that are partly compacted keeps only the new part
    st.append([Entry(1, 1), Entry(1, 2), Entry(1, 3), Entry(3, 4)])
    assert [st.term(i) for i in range(2, 5)] == [1, 1, 3]


def test_memory_storage_snapshots():
    st = storage_with(ents(1, 1, 2), [1, 2])
    snap = st.create_snapshot(3, ConfState([1, 2]), b"data")
    assert snap.metadata.index == 3 and snap.metadata.term == 2
    with pytest.raises(SnapshotOutOfDate):
        st.create_snapshot(2, ConfState([1, 2]), b"old")
    with pytest.raises(ValueError, match="beyond the snapshot"):
        storage_with(ents(1, 1), [1]).compact(2)
    newer = Snapshot(SnapshotMetadata(10, 4, ConfState([1, 2, 3])), b"new")
    st.apply_snapshot(newer)
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 4)
    assert st.initial_state()[1] == ConfState([1, 2, 3])
    with pytest.raises(SnapshotOutOfDate):
        st.apply_snapshot(Snapshot(SnapshotMetadata(10, 4, ConfState([1])), b""))


def test_storage_preconfigured_membership():
    st = MemoryStorage(ConfState([1, 2, 3], [4]))
    hs, cs = st.initial_state()
    assert hs.is_empty() and cs == ConfState([1, 2, 3], [4])
    assert (st.first_index(), st.last_index()) == (1, 0)


# -- size limits ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "limit,expected",
    [
        (None, 300),
        (0, 1),
        (9, 1),
        (10, 1),
        (19, 1),
        (20, 2),
        (999, 99),
        (1000, 100),
        (2999, 299),
        (10**9, 300),
    ],
)
def test_slice_within_limits_payload_bytes(limit, expected):
    src = sized(300, 10)
    assert len(slice_within(src, 0, 300, limit)) == expected


class CountingList(list):
    """Counts how many elements slicing touched (the work `slice_within` does)."""

    touched = 0

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if isinstance(key, slice):
            CountingList.touched += len(out)
        return out


def test_slice_within_work_is_proportional_to_the_result_not_the_range():
    src = CountingList(sized(100_000, 10))
    CountingList.touched = 0
    out = slice_within(src, 0, len(src), 1000)
    assert len(out) == 100
    assert CountingList.touched < 600, CountingList.touched  # not ~100_000


# -- RaftLog -----------------------------------------------------------------------------------------
def new_log(stored: list[Entry], committed: int = 0) -> RaftLog:
    log = RaftLog(storage_with(stored, [1]), None)
    log.committed = committed
    return log


@pytest.mark.parametrize(
    "incoming,conflict",
    [
        ([], 0),
        (ents(1, 2, 3), 0),  # all present
        (ents(2, 3, start=2), 0),
        (ents(3, start=3), 0),
        (ents(1, 2, 3, 4, 4), 4),  # runs past our end
        (ents(3, 4, 4, start=3), 4),
        (ents(4, 4, start=1), 1),  # conflict at the first
        (ents(1, 4, 4, start=1), 2),
        (ents(3, 4, 4, 4, start=3), 4),
        (ents(4, 4, start=6), 6),  # beyond our end
    ],
)
def test_find_conflict(incoming, conflict):
    log = new_log(ents(1, 2, 3))
    if not incoming:
        return
    assert log.find_conflict(incoming) == conflict


def test_find_conflict_long_run_is_binary_search(monkeypatch):
    n = 100_000
    log = new_log([Entry(1 if k < n // 2 else 2, k + 1) for k in range(n)])
    theirs = [Entry(1 if k < 7 * n // 10 else 3, k + 1) for k in range(n)]
    calls = 0
    real = RaftLog.match_term

    def counting(self, i, t):
        nonlocal calls
        calls += 1
        return real(self, i, t)

    monkeypatch.setattr(RaftLog, "match_term", counting)
    assert log.find_conflict(theirs) == n // 2 + 1
    assert calls <= 20, calls  # ~log2(n), not n


@pytest.mark.parametrize(
    "index,term,want",
    [(8, 5, 8), (8, 4, 6), (8, 3, 5), (8, 2, 3), (8, 1, 1), (5, 3, 5), (3, 1, 1), (0, 0, 0), (100, 4, 6)],
)
def test_find_conflict_by_term(index, term, want):
    log = new_log(ents(1, 2, 2, 3, 3, 4, 5, 5))  # terms at 1..8
    assert log.find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_stops_at_compaction():
    st = storage_with(ents(1, 2, 2, 3, 3, 4, 5, 5), [1])
    st.create_snapshot(4, ConfState([1]), b"")
    st.compact(4)
    log = RaftLog(st, None)
    assert log.find_conflict_by_term(8, 1) == 4  # cannot look below the snapshot
    assert log.find_conflict_by_term(8, 4) == 6


@pytest.mark.parametrize(
    "prev_index,prev_term,incoming,commit,want_last,want_log_terms,want_commit",
    [
        (3, 2, [], 3, 3, [1, 2, 2], 3),  # heartbeat-like append
        (3, 1, [], 3, None, [1, 2, 2], 0),  # prev term mismatch
        (4, 2, [], 3, None, [1, 2, 2], 0),  # prev beyond our log
        (3, 2, ents(3, start=4), 4, 4, [1, 2, 2, 3], 4),
        (1, 1, ents(3, 3, start=2), 9, 3, [1, 3, 3], 3),  # truncation; commit capped at last new
        (2, 2, ents(2, start=3), 1, 3, [1, 2, 2], 1),  # duplicate: nothing changes
    ],
)
def test_maybe_append(prev_index, prev_term, incoming, commit, want_last, want_log_terms, want_commit):
    log = new_log(ents(1, 2, 2))
    assert log.maybe_append(prev_index, prev_term, commit, incoming) == want_last
    assert [log.term(i) for i in range(1, log.last_index() + 1)] == want_log_terms
    assert log.committed == want_commit


def test_append_below_commit_is_refused():
    log = new_log(ents(1, 1, 1), committed=2)
    with pytest.raises(RaftError, match="committed"):
        log.maybe_append(0, 0, 3, ents(2, 2))


def test_unstable_stable_to_ignores_replaced_entries():
    log = new_log(ents(1))
    log.append(ents(1, 1, start=2))
    log.append([Entry(2, 3)])  # replaces index 3 before it was persisted
    assert not log.stable_to(3, 1)  # the persisted (3, term 1) is not in our log any more
    assert log.stable_to(2, 1)
    assert log.unstable.offset == 3 and [e.term for e in log.unstable_entries()] == [2]


def test_slice_spans_storage_and_unstable_with_limit():
    log = RaftLog(storage_with(sized(5, 10), [1]), None)
    log.append([Entry(1, 6 + k, data=b"y" * 10) for k in range(5)])
    assert [e.index for e in log.slice(3, 9, None)] == [3, 4, 5, 6, 7, 8]
    assert [e.index for e in log.slice(3, 9, 35)] == [3, 4, 5]
    assert [e.index for e in log.slice(3, 9, 45)] == [3, 4, 5, 6]
    assert [e.index for e in log.slice(7, 9, 0)] == [7]
    with pytest.raises(CompactedError):
        log.storage.create_snapshot(2, ConfState([1]), b"")
        log.storage.compact(2)
        log.slice(2, 4, None)


def test_next_entries_respects_applied_and_size():
    log = RaftLog(storage_with(sized(10, 10), [1]), 25)
    log.committed = 8
    log.applied_to(2)
    assert [e.index for e in log.next_entries()] == [3, 4]
    log.applied_to(4)
    assert log.has_next_entries()
    log.max_next_ents_size = None
    assert [e.index for e in log.next_entries()] == [5, 6, 7, 8]
    log.applied_to(8)
    assert not log.has_next_entries() and log.next_entries() == []
    with pytest.raises(RaftError):
        log.applied_to(9)


def test_term_and_bounds_do_not_scan_the_log(monkeypatch):
    n = 100_000
    st = storage_with([Entry(1 + k // 1000, k + 1) for k in range(n)], [1])
    big = RaftLog(st, None)
    big.append([Entry(200, n + 1)])
    touched = 0
    real_term = MemoryStorage.term

    def counting(self, i):
        nonlocal touched
        touched += 1
        return real_term(self, i)

    monkeypatch.setattr(MemoryStorage, "term", counting)
    assert big.term(1) == 1 and big.term(n) == 100 and big.term(n + 1) == 200
    assert big.term(0) == 0 and big.term(n + 2) == 0
    assert touched == 3  # one storage lookup per stored index asked (0 is the dummy), nothing else
    assert big.find_conflict_by_term(n + 1, 50) == 50_000
    assert touched < 3 + 40


def test_append_with_a_gap_is_refused():
    log = new_log(ents(1, 1))
    with pytest.raises(RaftError, match="gap"):
        log.append([Entry(1, 5)])
