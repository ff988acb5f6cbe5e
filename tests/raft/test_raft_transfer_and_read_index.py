"""Leadership transfer and ReadIndex (safe mode)."""

import pytest
from etcdstore.raft.errors import ProposalDropped, ReadIndexDropped
from etcdstore.raft.records import Entry, ReadState, Role
from raft_helpers import MT, Cluster, make_leader, msg, new_raft, persist, read_messages


# -- leadership transfer -----------------------------------------------------------------------------
def test_transfer_to_up_to_date_follower():
    c = Cluster([1, 2, 3], check_quorum=True, pre_vote=True)
    c.elect(1)
    term = c.nodes[1].term
    c.nodes[1].transfer_leadership(2)
    c.stabilize()
    assert c.nodes[2].role == Role.LEADER and c.nodes[2].term == term + 1
    assert c.nodes[1].role == Role.FOLLOWER and c.nodes[1].leader_id == 2
    # No pre-vote round and the voters' lease was overridden.
    assert c.count(MT.PRE_VOTE, frm=2) == 0 and c.count(MT.VOTE, frm=2) == 2


def test_transfer_to_lagging_follower_catches_it_up_first():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    for k in range(5):
        c.propose(1, b"v%d" % k)
    c.heal()
    c.delivered.clear()
    c.nodes[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped, match="transfer"):
        c.nodes[1].propose(b"during transfer")
    c.stabilize()
    assert c.nodes[3].role == Role.LEADER
    kinds = [m.type for m in c.delivered if m.frm == 1 and m.to == 3]
    assert kinds.index(MT.TIMEOUT_NOW) > kinds.index(MT.APP)  # appends first, then the hand-over
    assert c.data(3)[-1] == b"v4"


def test_transfer_aborts_after_an_election_timeout():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.nodes[1].transfer_leadership(3)
    c.stabilize()
    assert c.nodes[1].raft.lead_transferee == 3
    c.tick(c.nodes[1].raft.election_timeout, only=[1, 2])
    assert c.nodes[1].raft.lead_transferee == 0 and c.nodes[1].role == Role.LEADER
    c.propose(1, b"accepted again")
    assert c.data(2)[-1] == b"accepted again"


@pytest.mark.parametrize("target", [1, 4, 9])
def test_transfer_to_self_learner_or_stranger_is_ignored(target):
    c = Cluster([1, 2, 3], learners=[4])
    c.elect(1)
    c.nodes[1].transfer_leadership(target)
    c.stabilize()
    assert c.nodes[1].role == Role.LEADER and c.nodes[1].raft.lead_transferee == 0


def test_transfer_requested_on_a_follower_is_forwarded():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.nodes[2].transfer_leadership(3)
    c.stabilize()
    assert c.nodes[3].role == Role.LEADER


def test_second_transfer_replaces_the_first():
    r = new_raft(1, [1, 2, 3])
    make_leader(r)
    r.propose_local([b"x"])
    persist(r)
    read_messages(r)
    r.step(msg(MT.TRANSFER_LEADER, frm=2))
    assert r.lead_transferee == 2
    r.step(msg(MT.TRANSFER_LEADER, frm=3))
    assert r.lead_transferee == 3


def test_timeout_now_is_ignored_by_a_learner_and_by_a_candidate():
    r = new_raft(3, [1, 2], learners=[3])
    r.step(msg(MT.TIMEOUT_NOW, frm=1, to=3, term=0))
    assert r.role == Role.FOLLOWER and read_messages(r) == []
    c = new_raft(1, [1, 2, 3])
    c.step(msg(MT.HUP, frm=1))
    term = c.term
    c.step(msg(MT.TIMEOUT_NOW, frm=2, to=1, term=term))
    assert c.term == term


# -- ReadIndex ------------------------------------------------------------------------------------------
def test_read_index_on_leader_confirms_with_a_heartbeat_quorum():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    commit = c.nodes[1].commit_index
    c.delivered.clear()
    c.nodes[1].read_index(b"req-1")
    c.stabilize()
    assert c.reads[1] == [ReadState(commit, b"req-1")]
    beats = [m for m in c.delivered if m.type == MT.HEARTBEAT and m.context == b"req-1"]
    assert {m.to for m in beats} == {2, 3}


def test_read_index_waits_for_a_heartbeat_quorum():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(1)
    c.nodes[1].read_index(b"cut off")
    c.stabilize()
    assert c.reads[1] == []  # a deposed-but-unaware leader must not answer
    c.heal()
    c.tick(1, only=[1])  # the next heartbeat carries the pending context
    assert [rs.request_ctx for rs in c.reads[1]] == [b"cut off"]


def test_read_index_on_follower_is_forwarded_and_answered():
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    c.nodes[3].read_index(b"from 3")
    c.stabilize()
    assert c.reads[3] == [ReadState(c.nodes[1].commit_index, b"from 3")]
    assert c.count(MT.READ_INDEX, frm=3, to=1) == 1 and c.count(MT.READ_INDEX_RESP, frm=1, to=3) == 1


def test_new_leader_delays_reads_until_it_commits_in_its_term():
    r = new_raft(1, [1, 2, 3])
    r.become_candidate()
    r.become_leader()  # its no-op is not committed yet
    read_messages(r)
    r.step(msg(MT.READ_INDEX, entries=[Entry(data=b"early")]))
    assert r.read_states == [] and [m for m in read_messages(r) if m.type == MT.HEARTBEAT] == []
    persist(r)
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=1))  # no-op committed
    beats = [m for m in read_messages(r) if m.type == MT.HEARTBEAT]
    assert {m.context for m in beats} == {b"early"}
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, to=1, term=r.term, context=b"early"))
    assert r.read_states == [ReadState(1, b"early")]


def test_read_index_single_voter_answers_immediately():
    c = Cluster([1], learners=[2])
    c.elect(1)
    c.nodes[1].read_index(b"solo")
    c.stabilize()
    assert c.reads[1] == [ReadState(c.nodes[1].commit_index, b"solo")]


def test_read_index_without_leader_raises():
    c = Cluster([1, 2, 3])
    with pytest.raises(ReadIndexDropped):
        c.nodes[2].read_index(b"nobody")


def test_read_index_answers_every_request_queued_before_the_confirmed_one():
    r = new_raft(1, [1, 2, 3])
    make_leader(r)
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=1))
    read_messages(r)
    for ctx in (b"a", b"b", b"c"):
        r.step(msg(MT.READ_INDEX, entries=[Entry(data=ctx)]))
    r.step(msg(MT.HEARTBEAT_RESP, frm=3, to=1, term=r.term, context=b"b"))
    assert [rs.request_ctx for rs in r.read_states] == [b"a", b"b"]
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, to=1, term=r.term, context=b"c"))
    assert [rs.request_ctx for rs in r.read_states] == [b"a", b"b", b"c"]
