"""Single-step membership changes, applied when the host applies the committed entry."""

import pytest
from etcdstore.raft import codec
from etcdstore.raft.errors import ProposalDropped
from etcdstore.raft.records import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Role
from raft_helpers import MT, Cluster, make_leader, msg, new_raft, persist, read_messages, storage_with

ADD, ADD_LEARNER, REMOVE, UPDATE = (
    ConfChangeType.ADD_NODE,
    ConfChangeType.ADD_LEARNER_NODE,
    ConfChangeType.REMOVE_NODE,
    ConfChangeType.UPDATE_NODE,
)


def cc_entry(t, node, index, term=1):
    return Entry(term, index, EntryType.CONF_CHANGE, codec.encode_conf_change(ConfChange(t, node)))


def test_add_voter_catches_up_and_changes_the_quorum():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"before")
    c.conf_change(1, ConfChange(ADD, 4))
    c.add_node(4)
    c.tick(3)
    assert c.data(4) == [b"before"]
    assert c.conf[4] == ConfState([1, 2, 3, 4])
    assert c.nodes[1].raft.trk.quorum() == 3
    c.isolate(2)
    c.isolate(3)
    c.propose(1, b"needs three")  # leader + 4 is not a majority of four
    assert b"needs three" not in c.data(1)
    c.heal()
    c.tick(2)
    assert c.data(1)[-1] == b"needs three"


def test_learner_receives_the_log_but_never_counts():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.conf_change(1, ConfChange(ADD_LEARNER, 4))
    c.add_node(4)
    c.propose(1, b"x")
    c.tick(2)
    assert c.data(4) == [b"x"] and c.nodes[4].is_learner
    c.isolate(2)
    c.isolate(3)
    c.propose(1, b"y")
    assert b"y" not in c.data(1) and c.nodes[1].raft.trk.quorum() == 2


def test_promote_learner():
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    c.conf_change(1, ConfChange(ADD, 3))
    assert c.conf[1] == ConfState([1, 2, 3]) and not c.nodes[3].is_learner
    c.isolate(2)
    c.propose(1, b"with 3")  # now 1 and 3 are a majority
    assert c.data(1)[-1] == b"with 3"


def test_remove_voter_shrinks_the_quorum():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.conf_change(1, ConfChange(REMOVE, 3))
    assert c.conf[1] == ConfState([1, 2]) and 3 not in c.nodes[1].raft.trk.progress
    c.crash(3)
    c.propose(1, b"two of two")
    assert c.data(2)[-1] == b"two of two"


def test_removing_a_silent_voter_lets_pending_entries_commit():
    r = new_raft(1, [1, 2])
    make_leader(r)
    ack = lambda idx: r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=idx))
    r.step(
        msg(
            MT.PROP,
            frm=1,
            entries=[Entry(type=EntryType.CONF_CHANGE, data=codec.encode_conf_change(ConfChange(REMOVE, 2)))],
        )
    )
    r.propose_local([b"after"])
    persist(r)
    ack(2)  # 2 acks the conf change (index 2), then goes silent
    assert r.log.committed == 2
    r.log.applied_to(2)
    r.apply_conf_change(ConfChange(REMOVE, 2))
    assert r.log.committed == 3  # the leader alone is the majority now


def test_leader_removing_itself_hands_over_and_steps_down():
    c = Cluster([1, 2, 3], check_quorum=True, pre_vote=True)
    c.elect(1)
    c.propose(1, b"x")
    c.nodes[1].propose_conf_change(ConfChange(REMOVE, 1))
    with pytest.raises(ProposalDropped, match="being removed"):
        c.nodes[1].propose(b"during removal")
    c.stabilize()
    assert c.nodes[1].role == Role.FOLLOWER and c.nodes[1].raft.trk.voters == {2, 3}
    new = c.leader()
    assert new is not None and new.id in (2, 3)  # via MsgTimeoutNow: no election timeout waited
    assert c.count(MT.TIMEOUT_NOW, frm=1) == 1
    c.crash(1)
    c.propose(new.id, b"y")
    assert c.data(2)[-1] == b"y" and c.data(3)[-1] == b"y"


def test_two_voters_remove_the_follower():
    c = Cluster([1, 2])
    c.elect(1)
    c.conf_change(1, ConfChange(REMOVE, 2))
    c.crash(2)
    c.propose(1, b"alone")
    assert c.data(1)[-1] == b"alone"


def test_two_voters_remove_the_leader():
    c = Cluster([1, 2])
    c.elect(1)
    c.conf_change(1, ConfChange(REMOVE, 1))
    assert c.nodes[2].role == Role.LEADER
    c.crash(1)
    c.propose(2, b"alone")
    assert c.data(2)[-1] == b"alone"


def test_two_voters_remove_the_leader_when_commit_notice_is_lost():
    c = Cluster([1, 2], check_quorum=True, pre_vote=True)
    c.elect(1)
    cc_index = c.nodes[1].raft.log.last_index() + 1
    # Node 2 acknowledges the removal but never hears that it committed, nor the hand-over.
    c.filter = lambda m: not (m.frm == 1 and (m.commit >= cc_index or m.type == MT.TIMEOUT_NOW))
    c.conf_change(1, ConfChange(REMOVE, 1))
    assert c.nodes[1].role == Role.FOLLOWER and c.nodes[1].raft.trk.voters == {2}
    assert c.nodes[2].raft.trk.voters == {1, 2} and c.nodes[2].commit_index < cc_index
    c.heal()
    c.tick(40)
    assert c.nodes[2].role == Role.LEADER
    c.crash(1)
    c.propose(2, b"alone")
    assert c.data(2)[-1] == b"alone" and c.conf[2] == ConfState([2])


def test_vote_rejection_carries_the_commit_index_a_stale_candidate_needs():
    # Node 1 was removed from {1, 2}: it knows the change (index 4) committed and has an
    # extra entry 5 node 2 lacks, so it must refuse 2's vote; 2 still sees {1, 2}. The
    # rejection tells 2 that index 4 is committed; 2 applies it and wins alone.
    log1 = [
        cc_entry(ADD, 1, 1),
        cc_entry(ADD, 2, 2),
        Entry(2, 3),
        cc_entry(REMOVE, 1, 4, term=2),
        Entry(2, 5),
    ]
    r1 = new_raft(1, [2], storage=storage_with(log1, [2], HardState(2, 1, 4)))
    r1.log.applied_to(4)
    r2 = new_raft(2, [1, 2], storage=storage_with(log1[:4], [1, 2], HardState(2, 1, 3)))
    r2.log.applied_to(3)
    r2.step(msg(MT.HUP, frm=2))
    [vote] = [m for m in read_messages(r2) if m.to == 1]
    r1.step(vote)
    [resp] = read_messages(r1)
    assert resp.reject and (resp.commit, resp.log_term) == (4, 2)
    r2.step(resp)
    assert r2.log.committed == 4
    r2.log.applied_to(4)
    r2.apply_conf_change(ConfChange(REMOVE, 1))
    r2.become_follower(r2.term, 0)
    r2.step(msg(MT.HUP, frm=2))
    assert r2.role == Role.LEADER


def test_only_one_conf_change_pending_at_a_time():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped, match="not applied yet"):
        c.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 5))
    c.stabilize()
    c.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 5))
    c.stabilize()
    assert c.conf[1] == ConfState([1, 2, 3], [4, 5])


def test_forwarded_conf_change_is_blanked_when_one_is_pending():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 4))
    c.nodes[2].propose_conf_change(ConfChange(ADD_LEARNER, 5))  # forwarded; leader must refuse it
    c.stabilize()
    assert c.conf[2] == ConfState([1, 2, 3], [4])
    log = c.nodes[1].raft.log
    kinds = [e.type for e in log.slice(1, log.last_index() + 1, None)]
    assert kinds.count(EntryType.CONF_CHANGE) == 4  # 3 bootstrap + the accepted one


def test_last_voter_cannot_be_removed_or_demoted():
    c = Cluster([1], learners=[2])
    c.elect(1)
    for cc in (ConfChange(REMOVE, 1), ConfChange(ADD_LEARNER, 1)):
        with pytest.raises(ProposalDropped, match="without voters"):
            c.nodes[1].propose_conf_change(cc)
    with pytest.raises(ProposalDropped, match="reserved"):
        c.nodes[1].propose_conf_change(ConfChange(ADD, 0))


def test_no_campaign_with_committed_but_unapplied_conf_change():
    log = [cc_entry(ADD, 1, 1), cc_entry(ADD, 2, 2)]
    r = new_raft(1, [1, 2], storage=storage_with(log, [1, 2], HardState(1, 0, 2)))
    r.log.applied_to(1)
    r.step(msg(MT.HUP, frm=1))
    assert r.role == Role.FOLLOWER and read_messages(r) == []
    r.log.applied_to(2)
    r.step(msg(MT.HUP, frm=1))
    assert r.role == Role.CANDIDATE


def test_removed_node_stops_campaigning_once_it_applies_its_removal():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.conf_change(1, ConfChange(REMOVE, 3))
    assert not c.nodes[3].raft.promotable()
    c.isolate(3)
    c.tick(100, only=[3])
    assert c.count(MT.VOTE, frm=3) == 0 and c.nodes[3].role == Role.FOLLOWER


def test_demote_voter_and_leader_demoting_itself_steps_down():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.conf_change(1, ConfChange(ADD_LEARNER, 3))
    assert c.conf[1] == ConfState([1, 2], [3]) and c.nodes[3].is_learner
    c.conf_change(1, ConfChange(ADD, 3))
    c.conf_change(1, ConfChange(ADD_LEARNER, 1))
    assert c.nodes[1].role == Role.FOLLOWER and c.nodes[1].is_learner
    assert c.leader() is not None and c.leader().id in (2, 3)


def test_readd_a_removed_node_and_update_is_a_noop():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.conf_change(1, ConfChange(REMOVE, 3))
    c.propose(1, b"while away")
    c.conf_change(1, ConfChange(ADD, 3))
    c.tick(3)
    assert c.data(3)[-1] == b"while away" and c.conf[3] == ConfState([1, 2, 3])
    c.conf_change(1, ConfChange(UPDATE, 2, b"new peer urls"))
    assert c.conf[1] == ConfState([1, 2, 3])


def test_bootstrap_membership_arrives_as_committed_conf_changes():
    c = Cluster([1, 2, 3], learners=[4])
    for i in (1, 2, 3, 4):
        assert c.conf[i] == ConfState([1, 2, 3], [4])
        assert c.nodes[i].commit_index == 4
