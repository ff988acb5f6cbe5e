"""Log replication: commit rules, conflicts, flow control, batching, backtracking, limits."""

import pytest
from etcdstore.raft.errors import ProposalDropped
from etcdstore.raft.progress import ProgressState
from etcdstore.raft.rawnode import RawNode
from etcdstore.raft.records import NONE, Entry, HardState, Role
from raft_helpers import (
    MT,
    Cluster,
    config,
    ents,
    make_leader,
    msg,
    new_raft,
    persist,
    read_messages,
    storage_with,
)


def appends(msgs, to=None):
    return [m for m in msgs if m.type == MT.APP and (to is None or m.to == to)]


def ack(r, frm, index):
    r.step(msg(MT.APP_RESP, frm=frm, to=r.id, term=r.term, index=index))


@pytest.mark.parametrize(
    "size,acks,committed",
    [
        (1, [], True),
        (3, [], False),
        (3, [2], True),
        (3, [2, 3], True),
        (5, [2], False),
        (5, [2, 3], True),
        (5, [2, 3, 4, 5], True),
    ],
)
def test_leader_commits_on_majority_of_acks(size, acks, committed):
    r = new_raft(1, range(1, size + 1))
    make_leader(r)
    r.propose_local([b"x"])
    persist(r)
    for a in acks:
        ack(r, a, 2)
    assert (r.log.committed == 2) is committed


def test_leader_counts_itself_only_after_its_entries_are_durable():
    r = new_raft(1, [1, 2, 3])
    make_leader(r)
    r.propose_local([b"x"])
    ack(r, 2, 2)  # one follower has it; the leader's own copy is not durable yet
    assert r.log.committed == 1
    persist(r)  # the host reports the write done (RawNode.advance)
    assert r.log.committed == 2
    # ...and the new commit index goes out right away (3 is still being probed: paused).
    assert {m.to for m in appends(read_messages(r)) if m.commit == 2} == {2}


def test_leader_commits_previous_term_entries_only_through_a_current_term_entry():
    # Raft paper figure 8: an entry of an older term on a majority is not committed by
    # counting; it is committed when an entry of the leader's own term is.
    st = storage_with(ents(1, 2), [1, 2, 3], HardState(2, 0, 1))
    r = new_raft(1, [1, 2, 3], storage=st)
    r.become_candidate()  # term 3
    r.become_leader()  # appends its no-op at index 3
    ack(r, 2, 2)  # index 2 (term 2) is now on a majority
    assert r.log.committed == 1
    persist(r)
    ack(r, 2, 3)
    assert r.log.committed == 3  # the no-op committed, and index 2 with it


def test_follower_appends_and_truncates_conflicting_suffix():
    st = storage_with(ents(1, 1, 2, 2, 2), [1, 2])  # indexes 1..5
    r = new_raft(2, [1, 2], storage=st)
    r.step(msg(MT.APP, frm=1, to=2, term=3, index=2, log_term=1, entries=ents(3, 3, start=3), commit=4))
    [resp] = read_messages(r)
    assert (resp.type, resp.reject, resp.index) == (MT.APP_RESP, False, 4)
    assert [r.log.term(i) for i in range(1, r.log.last_index() + 1)] == [1, 1, 3, 3]
    assert r.log.committed == 4
    assert [e.index for e in r.log.unstable_entries()] == [3, 4]


def test_follower_rejects_mismatched_append_with_term_hint():
    st = storage_with(ents(1, 1, 2, 2, 2, 2), [1, 2])
    r = new_raft(2, [1, 2], storage=st)
    r.become_follower(5, 1)
    r.step(msg(MT.APP, frm=1, to=2, term=5, index=6, log_term=4, entries=ents(5, start=7)))
    [resp] = read_messages(r)
    # The hint is our last index whose term is <= the leader's term at index 6, with its term.
    assert (resp.reject, resp.index, resp.reject_hint, resp.log_term) == (True, 6, 6, 2)
    r.step(msg(MT.APP, frm=1, to=2, term=5, index=6, log_term=1))
    [resp] = read_messages(r)
    assert (resp.reject, resp.reject_hint, resp.log_term) == (True, 2, 1)


def test_append_below_commit_is_acked_with_commit_index():
    r = new_raft(2, [1, 2], storage=storage_with(ents(1, 1, 1), [1, 2], HardState(1, 0, 3)))
    r.step(msg(MT.APP, frm=1, to=2, term=1, index=1, log_term=1, entries=ents(1, start=2)))
    [resp] = read_messages(r)
    assert (resp.reject, resp.index) == (False, 3)


@pytest.mark.parametrize(
    "follower_terms",
    [
        # Raft paper figure 7 followers (leader log: 1 1 1 4 4 5 5 6 6 6)
        [1, 1, 1, 4, 4, 5, 5, 6, 6],
        [1, 1, 1, 4],
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        [1, 1, 1, 4, 4, 4, 4],
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
        [],
    ],
)
def test_new_leader_brings_every_follower_log_in_line(follower_terms):
    leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    c = Cluster([1, 2, 3])
    # Rewrite the nodes' storage to the figure's logs, then restart them.
    logs = {1: leader_terms, 2: follower_terms, 3: leader_terms}
    for i, terms in logs.items():
        st = storage_with(ents(*terms), [1, 2, 3], HardState(8, 0, 0))
        c.storages[i] = st
        c.restart(i)
    c.nodes[1].campaign()
    c.stabilize()
    assert c.nodes[1].role == Role.LEADER
    c.propose(1, b"after")
    want = [c.nodes[1].raft.log.term(i) for i in range(1, c.nodes[1].raft.log.last_index() + 1)]
    for i in (2, 3):
        log = c.nodes[i].raft.log
        assert [log.term(k) for k in range(1, log.last_index() + 1)] == want
    assert c.data(2)[-1] == b"after"


def test_fast_backtracking_skips_whole_terms():
    # The follower has 300 entries of a term the leader never had; the leader must find
    # the divergence point in a handful of round trips, not 300.
    leader_terms = [1] * 10 + [3] * 5
    follower_terms = [1] * 10 + [2] * 300
    c = Cluster([1, 2, 3])
    for i, terms in {1: leader_terms, 2: follower_terms, 3: leader_terms}.items():
        c.storages[i] = storage_with(ents(*terms), [1, 2, 3], HardState(3, 0, 10))
        c.restart(i)
    c.delivered.clear()
    c.nodes[1].campaign()
    c.stabilize()
    assert c.nodes[1].role == Role.LEADER
    rejects = [m for m in c.delivered if m.type == MT.APP_RESP and m.reject and m.frm == 2]
    assert 1 <= len(rejects) <= 3
    assert c.nodes[2].raft.log.last_index() == c.nodes[1].raft.log.last_index() == 16


def test_probe_then_replicate_and_back_to_probe_on_reject_or_unreachable():
    r = new_raft(1, [1, 2, 3], max_inflight_msgs=10)
    make_leader(r)
    pr = r.trk.progress[2]
    assert pr.state == ProgressState.PROBE
    r.propose_local([b"a"])
    r.propose_local([b"b"])
    out = appends(read_messages(r), to=2)
    assert len(out) == 1  # probing: one append in flight, then paused
    assert pr.probe_sent and pr.is_paused()
    ack(r, 2, 3)
    assert pr.state == ProgressState.REPLICATE and pr.match == 3
    read_messages(r)
    r.propose_local([b"c"])
    r.propose_local([b"d"])
    assert len(appends(read_messages(r), to=2)) == 2  # replicating: streamed optimistically
    assert pr.next == 6
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=4, reject=True, reject_hint=3, log_term=r.term))
    assert pr.state == ProgressState.PROBE and pr.next == 4
    ack(r, 2, 5)
    assert pr.state == ProgressState.REPLICATE
    r.step(msg(MT.UNREACHABLE, frm=2))
    assert pr.state == ProgressState.PROBE


def test_stale_rejection_is_ignored():
    r = new_raft(1, [1, 2])
    make_leader(r)
    r.propose_local([b"a"])
    ack(r, 2, 2)
    pr = r.trk.progress[2]
    read_messages(r)
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=1, reject=True, reject_hint=0))
    assert (pr.state, pr.match, pr.next) == (ProgressState.REPLICATE, 2, 3)
    assert appends(read_messages(r)) == []


def test_inflight_limit_and_heartbeat_frees_a_slot():
    r = new_raft(1, [1, 2], max_inflight_msgs=3)
    make_leader(r)
    ack(r, 2, 1)
    read_messages(r)
    for k in range(6):
        r.propose_local([b"p%d" % k])  # indexes 2..7, one append each while there is room
    assert [m.entries[0].index for m in appends(read_messages(r), to=2)] == [2, 3, 4]
    pr = r.trk.progress[2]
    assert pr.inflights.full() and pr.is_paused()
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, to=1, term=r.term))
    # One slot freed: the next append carries everything pending.
    [m] = appends(read_messages(r), to=2)
    assert [e.index for e in m.entries] == [5, 6, 7]
    ack(r, 2, 7)
    assert pr.inflights.count() == 0 and pr.match == 7


def test_appends_are_batched_up_to_max_size_per_msg():
    r = new_raft(1, [1, 2], max_size_per_msg=250)
    make_leader(r)
    ack(r, 2, 1)
    read_messages(r)
    r.propose_local([bytes(100)] * 10)
    out = appends(read_messages(r), to=2)
    assert [len(m.entries) for m in out] == [2, 2, 2, 2, 2]
    r2 = new_raft(1, [1, 2], max_size_per_msg=None)
    make_leader(r2)
    ack(r2, 2, 1)
    read_messages(r2)
    r2.propose_local([bytes(100)] * 10)
    assert [len(m.entries) for m in appends(read_messages(r2), to=2)] == [10]


def test_committed_entries_per_ready_are_capped():
    c = Cluster([1], max_committed_size_per_ready=250)
    c.elect(1)
    node = c.nodes[1]
    node.propose_batch([bytes(100)] * 10)
    sizes = []
    while node.has_ready():
        rd = node.ready()
        c.storages[1].append(rd.entries)
        if rd.hard_state:
            c.storages[1].set_hard_state(rd.hard_state)
        if rd.committed_entries:
            sizes.append(len(rd.committed_entries))
        node.advance(rd)
    assert sum(sizes) == 10 and max(sizes) == 2


def test_uncommitted_size_limit_drops_proposals_until_commit():
    c = Cluster([1, 2, 3], max_uncommitted_entries_size=300)
    leader = c.elect(1)
    c.isolate(1)  # nothing commits while cut off
    leader.propose(bytes(1000))  # an empty tail accepts anything, even oversized
    with pytest.raises(ProposalDropped, match="uncommitted"):
        leader.propose(bytes(10))
    c.heal()
    c.tick(3)
    leader.propose(bytes(200))
    leader.propose(bytes(50))
    c.stabilize()
    assert c.data(2)[-2:] == [bytes(200), bytes(50)]


def test_proposal_forwarding():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(2, b"via follower")
    assert c.data(1)[-1] == b"via follower" and c.data(3)[-1] == b"via follower"
    c2 = Cluster([1, 2, 3], disable_proposal_forwarding=True)
    c2.elect(1)
    with pytest.raises(ProposalDropped, match="forwarding disabled"):
        c2.nodes[2].propose(b"x")
    c3 = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped, match="no leader"):
        c3.nodes[2].propose(b"x")


def test_candidate_drops_proposals():
    r = new_raft(1, [1, 2, 3])
    r.step(msg(MT.HUP, frm=1))
    err = r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
    assert isinstance(err, ProposalDropped)


def test_heartbeat_commit_is_capped_by_follower_match():
    r = new_raft(1, [1, 2, 3])
    make_leader(r)
    r.propose_local([b"a", b"b"])
    persist(r)
    ack(r, 2, 3)
    assert r.log.committed == 3
    read_messages(r)
    r.step(msg(MT.BEAT, frm=1))
    beats = {m.to: m.commit for m in read_messages(r) if m.type == MT.HEARTBEAT}
    assert beats == {2: 3, 3: 0}


def test_followers_do_not_respond_before_persisting():
    # The host contract: a Ready's messages go out after its entries are durable; the
    # RawNode only hands out the follower's ack in the Ready that carries the entries.
    c = Cluster([1, 2])
    c.elect(1)
    c.nodes[1].propose(b"x")
    rd1 = c.nodes[1].ready()
    assert rd1.can_send_early  # a leader in its durable term may send before persisting
    app = next(m for m in rd1.messages if m.type == MT.APP)
    c.nodes[2].step(app)
    rd2 = c.nodes[2].ready()
    assert [e.data for e in rd2.entries] == [b"x"] and rd2.must_sync
    assert [m.type for m in rd2.messages] == [MT.APP_RESP]
    assert not rd2.can_send_early


def test_status_reports_progress_on_leader():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    st = c.nodes[1].status()
    assert st.role == Role.LEADER and st.leader == 1 and st.commit == st.last_index == 5
    assert {i: (p.match, p.state) for i, p in st.progress.items()} == {
        1: (5, ProgressState.REPLICATE),
        2: (5, ProgressState.REPLICATE),
        3: (5, ProgressState.REPLICATE),
    }
    assert c.nodes[2].status().progress == {} and c.nodes[2].status().leader == 1
    assert c.nodes[3].leader_id == 1 and c.nodes[3].raft.lead != NONE


def test_restart_keeps_term_vote_commit_and_does_not_reapply():
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(5):
        c.propose(1, b"v%d" % k)
    st = c.storages[2]
    st.create_snapshot(c.nodes[2].applied_index, c.conf[2], b"")
    hs = st.hard_state
    n = RawNode(config(2, applied=st.snapshot().metadata.index), st)
    assert (n.term, n.raft.vote, n.commit_index) == (hs.term, hs.vote, hs.commit)
    assert n.raft.trk.voters == {1, 2, 3}
    assert not n.raft.log.has_next_entries()  # everything up to the snapshot was applied
