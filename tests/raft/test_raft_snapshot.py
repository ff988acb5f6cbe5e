"""Snapshots: sending when entries are compacted, installing, reporting, stale snapshots."""

from etcdstore.raft.progress import ProgressState
from etcdstore.raft.records import ConfState, HardState, Role, Snapshot, SnapshotMetadata
from etcdstore.raft.storage import MemoryStorage
from raft_helpers import MT, Cluster, ents, make_leader, msg, new_raft, read_messages, storage_with


def compacted_leader(last: int = 11, snap_at: int = 10):
    st = storage_with(ents(*([1] * last)), [1, 2], HardState(1, 0, last))
    st.create_snapshot(snap_at, ConfState([1, 2]), b"image")
    st.compact(snap_at)
    r = new_raft(1, [1, 2], storage=st)
    r.log.applied_to(last)
    make_leader(r)
    return r


def test_leader_sends_snapshot_when_follower_needs_compacted_entries():
    r = compacted_leader()
    pr = r.trk.progress[2]
    pr.recent_active = True
    # The follower's log is empty: it rejects the probe and the leader falls back past the
    # compaction point.
    r.step(
        msg(
            MT.APP_RESP,
            frm=2,
            to=1,
            term=r.term,
            index=r.log.last_index() - 1 or 1,
            reject=True,
            reject_hint=0,
            log_term=0,
        )
    )
    snaps = [m for m in read_messages(r) if m.type == MT.SNAP]
    assert len(snaps) == 1 and snaps[0].snapshot.metadata.index == 10
    assert snaps[0].snapshot.data == b"image"
    assert pr.state == ProgressState.SNAPSHOT and pr.pending_snapshot == 10 and pr.is_paused()
    # Nothing more is sent while the snapshot is in flight.
    r.propose_local([b"x"])
    assert [m for m in read_messages(r) if m.to == 2 and m.type in (MT.APP, MT.SNAP)] == []


def test_snapshot_not_sent_to_inactive_follower():
    r = compacted_leader()
    r.trk.progress[2].recent_active = False
    r.trk.progress[2].next = 3
    r.send_append(2)
    assert read_messages(r) == []


def test_report_snapshot_success_and_failure():
    r = compacted_leader()
    pr = r.trk.progress[2]
    pr.recent_active = True
    pr.next = 3
    r.send_append(2)
    read_messages(r)
    r.step(msg(MT.SNAP_STATUS, frm=2, reject=False))
    assert pr.state == ProgressState.PROBE and pr.next == 11 and pr.probe_sent  # waits for the answer
    pr.become_snapshot(10)
    r.step(msg(MT.SNAP_STATUS, frm=2, reject=True))
    assert pr.state == ProgressState.PROBE and pr.pending_snapshot == 0 and pr.next == pr.match + 1


def test_follower_ack_after_snapshot_resumes_replication():
    r = compacted_leader()
    pr = r.trk.progress[2]
    pr.become_snapshot(10)
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=10))
    assert pr.state == ProgressState.REPLICATE and pr.match == 10


def test_follower_installs_snapshot():
    r = new_raft(2, [1, 2], storage=storage_with(ents(1, 1, 1), [1, 2]))
    snap = Snapshot(SnapshotMetadata(20, 3, ConfState([1, 2, 3], [4])), b"image")
    r.step(msg(MT.SNAP, frm=1, to=2, term=3, snapshot=snap))
    [resp] = read_messages(r)
    assert (resp.type, resp.index, resp.reject) == (MT.APP_RESP, 20, False)
    assert r.log.committed == 20 and r.log.last_index() == 20 and r.log.term(20) == 3
    assert r.log.unstable.snapshot is snap
    assert r.trk.voters == {1, 2, 3} and r.trk.learners == {4}


def test_stale_or_already_known_snapshots_are_not_installed():
    r = new_raft(2, [1, 2], storage=storage_with(ents(1, 1, 2, 2), [1, 2], HardState(2, 0, 2)))
    r.become_follower(2, 1)
    old = Snapshot(SnapshotMetadata(2, 1, ConfState([1, 2])), b"")
    r.step(msg(MT.SNAP, frm=1, to=2, term=2, snapshot=old))
    [resp] = read_messages(r)
    assert resp.index == 2 and r.log.unstable.snapshot is None  # index <= commit: ignored
    # A snapshot of an entry we already have only fast-forwards the commit index.
    known = Snapshot(SnapshotMetadata(4, 2, ConfState([1, 2])), b"")
    r.step(msg(MT.SNAP, frm=1, to=2, term=2, snapshot=known))
    read_messages(r)
    assert r.log.committed == 4 and r.log.unstable.snapshot is None and r.log.last_index() == 4


def test_snapshot_without_the_recipient_in_its_membership_is_ignored():
    r = new_raft(5, [1, 2], storage=MemoryStorage())
    snap = Snapshot(SnapshotMetadata(9, 2, ConfState([1, 2])), b"")
    r.step(msg(MT.SNAP, frm=1, to=5, term=2, snapshot=snap))
    [resp] = read_messages(r)
    assert resp.index == 0 and r.log.last_index() == 0


def test_lagging_follower_catches_up_through_snapshot_end_to_end():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.crash(3)
    for k in range(20):
        c.propose(1, b"v%d" % k)
    for i in (1, 2):
        c.snapshot_and_compact(i)
    c.restart(3)
    c.tick(5)
    assert c.nodes[3].raft.log.committed == c.nodes[1].commit_index
    assert c.count(MT.SNAP, frm=1, to=3) == 1
    st3 = c.storages[3]
    assert st3.snapshot().data.startswith(b"snap@") and st3.first_index() > 1
    c.propose(1, b"after")
    assert c.data(3)[-1] == b"after"
    assert c.nodes[1].status().progress[3].state == ProgressState.REPLICATE


def test_ready_hands_out_snapshot_then_newer_committed_entries():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.crash(3)
    for k in range(5):
        c.propose(1, b"v%d" % k)
    c.snapshot_and_compact(1)
    c.propose(1, b"tail")
    c.restart(3)
    seen = []
    orig = c.handle_ready

    def spy(i, rd):
        if i == 3 and (rd.snapshot is not None or rd.committed_entries):
            seen.append(
                (rd.snapshot.metadata.index if rd.snapshot else None, [e.index for e in rd.committed_entries])
            )
        orig(i, rd)

    c.handle_ready = spy
    c.tick(3)
    snaps = [s for s, _ in seen if s is not None]
    assert len(snaps) == 1
    at = next(k for k, (s, _) in enumerate(seen) if s is not None)
    assert seen[at][1] == [] or seen[at][1][0] == snaps[0] + 1
    applied_after = [i for _, idxs in seen[at:] for i in idxs]
    assert applied_after[0] == snaps[0] + 1  # entries resume right after the snapshot
    assert c.data(3)[-1] == b"tail"
    assert c.nodes[3].role == Role.FOLLOWER
