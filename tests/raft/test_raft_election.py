"""Leader election: terms, vote granting, randomized timeouts, PreVote, CheckQuorum, lease."""

import random

import pytest
from etcdstore.raft.records import NONE, HardState, Role
from raft_helpers import MT, Cluster, ents, make_leader, msg, new_raft, persist, read_messages, storage_with


def test_starts_as_follower_with_no_leader():
    r = new_raft(1, [1, 2, 3])
    assert (r.role, r.term, r.lead, r.vote) == (Role.FOLLOWER, 0, NONE, NONE)


@pytest.mark.parametrize("role", ["follower", "candidate", "pre_candidate", "leader"])
@pytest.mark.parametrize("mtype", [MT.APP, MT.HEARTBEAT, MT.VOTE_RESP, MT.APP_RESP])
def test_higher_term_message_makes_any_role_a_follower_of_that_term(role, mtype):
    r = new_raft(1, [1, 2, 3], pre_vote=True)
    if role == "candidate":
        r.become_candidate()
    elif role == "pre_candidate":
        r.become_pre_candidate()
    elif role == "leader":
        make_leader(r)
    higher = r.term + 5
    r.step(msg(mtype, frm=2, to=1, term=higher))
    assert (r.role, r.term) == (Role.FOLLOWER, higher)
    # A leader's own messages name it; anything else leaves the leader unknown.
    want_lead = 2 if mtype in (MT.APP, MT.HEARTBEAT) else NONE
    assert r.lead == want_lead
    assert r.vote == NONE


def test_lower_term_messages_are_ignored_or_answered_with_our_term():
    r = new_raft(1, [1, 2, 3])
    r.become_follower(5, 2)
    r.step(msg(MT.VOTE, frm=3, to=1, term=4, index=10, log_term=4))
    assert read_messages(r) == [] and r.vote == NONE and r.term == 5
    # A stale leader's append gets our term back so it steps down.
    r.step(msg(MT.APP, frm=3, to=1, term=4))
    [out] = read_messages(r)
    assert (out.type, out.to, out.term) == (MT.APP_RESP, 3, 5)
    # A stale pre-vote is rejected explicitly, at our term.
    r.step(msg(MT.PRE_VOTE, frm=3, to=1, term=4, index=10, log_term=4))
    [out] = read_messages(r)
    assert (out.type, out.reject, out.term) == (MT.PRE_VOTE_RESP, True, 5)


def test_follower_starts_election_after_timeout():
    r = new_raft(1, [1, 2, 3], storage=storage_with(ents(1, 1), [1, 2, 3], HardState(1, 0, 2)))
    for _ in range(2 * r.election_timeout):
        r.tick()
        if r.role == Role.CANDIDATE:
            break
    assert r.role == Role.CANDIDATE and r.term == 2 and r.vote == 1
    votes = sorted(read_messages(r), key=lambda m: m.to)
    assert [(m.type, m.to, m.term, m.index, m.log_term) for m in votes] == [
        (MT.VOTE, 2, 2, 2, 1),
        (MT.VOTE, 3, 2, 2, 1),
    ]


def test_randomized_election_timeout_range_and_spread():
    r = new_raft(1, [1, 2, 3], election_tick=10, rng=random.Random(3))
    seen = set()
    for _ in range(300):
        r.become_follower(r.term + 1, NONE)
        assert 10 <= r.randomized_election_timeout < 20
        seen.add(r.randomized_election_timeout)
    assert len(seen) == 10
    # Same seed, same sequence: runs are reproducible.
    a = new_raft(1, [1, 2], rng=random.Random(9))
    b = new_raft(1, [1, 2], rng=random.Random(9))
    seq = []
    for node in (a, b):
        s = []
        for _ in range(20):
            node.become_follower(node.term + 1, NONE)
            s.append(node.randomized_election_timeout)
        seq.append(s)
    assert seq[0] == seq[1]


@pytest.mark.parametrize(
    "size,votes,want",
    [
        (1, {}, Role.LEADER),
        (3, {2: True, 3: True}, Role.LEADER),
        (3, {2: True}, Role.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, Role.LEADER),
        (5, {2: True, 3: True}, Role.LEADER),
        (3, {2: False, 3: False}, Role.FOLLOWER),
        (5, {2: False, 3: False, 4: False}, Role.FOLLOWER),
        (3, {}, Role.CANDIDATE),
        (5, {2: True}, Role.CANDIDATE),
        (5, {2: False, 3: False}, Role.CANDIDATE),
    ],
)
def test_election_outcome_by_votes(size, votes, want):
    r = new_raft(1, range(1, size + 1))
    r.step(msg(MT.HUP, frm=1))
    for frm, granted in votes.items():
        r.step(msg(MT.VOTE_RESP, frm=frm, to=1, term=r.term, reject=not granted))
    assert r.role == want
    assert r.term == 1


@pytest.mark.parametrize(
    "vote,frm,want_reject",
    [(NONE, 2, False), (NONE, 3, False), (2, 2, False), (3, 3, False), (2, 3, True), (3, 2, True)],
)
def test_one_vote_per_term(vote, frm, want_reject):
    r = new_raft(1, [1, 2, 3])
    r.term, r.vote = 1, vote
    r.step(msg(MT.VOTE, frm=frm, to=1, term=1))
    [out] = read_messages(r)
    assert (out.type, out.to, out.reject) == (MT.VOTE_RESP, frm, want_reject)
    if not want_reject:
        assert r.vote == frm


@pytest.mark.parametrize(
    "cand_term,cand_index,grant",
    [
        (3, 3, True),  # same last term, same length
        (3, 4, True),  # same last term, longer
        (3, 2, False),  # same last term, shorter
        (4, 1, True),  # higher last term wins whatever the length
        (2, 9, False),  # lower last term loses whatever the length
    ],
)
def test_vote_requires_up_to_date_log(cand_term, cand_index, grant):
    r = new_raft(1, [1, 2], storage=storage_with(ents(1, 2, 3), [1, 2], HardState(3, 0, 0)))
    r.step(msg(MT.VOTE, frm=2, to=1, term=5, index=cand_index, log_term=cand_term))
    [out] = read_messages(r)
    assert out.reject is (not grant)
    assert r.term == 5  # the higher term is adopted either way
    assert r.vote == (2 if grant else NONE)


def test_candidate_falls_back_to_follower_on_append_from_leader_of_same_term():
    r = new_raft(1, [1, 2, 3])
    r.step(msg(MT.HUP, frm=1))
    assert r.role == Role.CANDIDATE
    r.step(msg(MT.APP, frm=2, to=1, term=r.term))
    assert (r.role, r.lead) == (Role.FOLLOWER, 2)


def test_single_voter_becomes_leader_and_commits_its_noop_once_persisted():
    r = new_raft(1, [1])
    r.step(msg(MT.HUP, frm=1))
    assert r.role == Role.LEADER and r.log.last_index() == 1
    assert r.log.committed == 0  # not durable yet: the leader does not count itself
    persist(r)
    assert r.log.committed == 1


def test_prevote_does_not_change_term_or_vote():
    r = new_raft(1, [1, 2, 3], pre_vote=True)
    r.step(msg(MT.HUP, frm=1))
    assert (r.role, r.term, r.vote) == (Role.PRE_CANDIDATE, 0, NONE)
    out = read_messages(r)
    assert {(m.type, m.term) for m in out} == {(MT.PRE_VOTE, 1)}
    # A voter answers a pre-vote without changing its own term or vote.
    v = new_raft(2, [1, 2, 3], pre_vote=True)
    v.step(out[0])
    [resp] = read_messages(v)
    assert (resp.type, resp.reject, resp.term) == (MT.PRE_VOTE_RESP, False, 1)
    assert (v.term, v.vote) == (0, NONE)
    # Winning the pre-vote starts the real election.
    r.step(resp)
    assert (r.role, r.term, r.vote) == (Role.CANDIDATE, 1, 1)


def test_prevote_rejection_from_higher_term_makes_pre_candidate_follow():
    r = new_raft(1, [1, 2, 3], pre_vote=True)
    r.step(msg(MT.HUP, frm=1))
    r.step(msg(MT.PRE_VOTE_RESP, frm=2, to=1, term=7, reject=True))
    assert (r.role, r.term) == (Role.FOLLOWER, 7)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_partitioned_node_rejoining(pre_vote):
    c = Cluster([1, 2, 3], pre_vote=pre_vote)
    c.elect(1)
    term = c.nodes[1].term
    c.isolate(3)
    c.tick(100, only=[3])  # node 3 keeps timing out alone
    c.heal()
    c.tick(30)  # everyone runs again for a few election timeouts
    if pre_vote:
        # Its pre-votes failed, so its term never moved and the leader is undisturbed.
        assert c.nodes[3].term == term
        assert c.nodes[1].role == Role.LEADER and c.nodes[1].term == term
        assert c.nodes[3].leader_id == 1
    else:
        # Without PreVote it came back with a higher term and forced an election.
        assert c.nodes[1].term > term + 5


def test_check_quorum_leader_steps_down_when_cut_off():
    c = Cluster([1, 2, 3], check_quorum=True, pre_vote=True)
    c.elect(1)
    c.isolate(1)
    c.tick(c.nodes[1].raft.election_timeout - 1, only=[1])
    # The first check after being elected counts the appends it saw; the next sees none.
    c.tick(c.nodes[1].raft.election_timeout + 1, only=[1])
    assert c.nodes[1].role == Role.FOLLOWER
    assert c.nodes[1].leader_id == NONE


def test_check_quorum_leader_stays_with_a_quorum():
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    c.isolate(3)
    c.tick(50, only=[1, 2])
    assert c.nodes[1].role == Role.LEADER


def test_leader_lease_ignores_disruptive_vote_requests():
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    term = c.nodes[1].term
    c.isolate(3)
    c.nodes[3].campaign()  # no PreVote here: node 3 raises its term, its requests are lost
    c.stabilize()
    c.heal()
    c.nodes[3].campaign()  # now they arrive, at term + 2
    c.stabilize()
    assert c.count(MT.VOTE, frm=3) == 2
    assert c.nodes[3].term == term + 2
    # 1 and 2 heard from a live leader within the election timeout: they ignore it entirely.
    assert (c.nodes[2].term, c.nodes[2].raft.vote) == (term, 1)
    assert (c.nodes[1].role, c.nodes[1].term) == (Role.LEADER, term)
    # Without CheckQuorum there is no lease and the same request deposes the leader.
    c2 = Cluster([1, 2, 3], check_quorum=False)
    c2.elect(1)
    c2.nodes[3].campaign()
    c2.stabilize()
    assert c2.nodes[1].term == c2.nodes[3].term == term + 1 and c2.nodes[1].role == Role.FOLLOWER


def test_stuck_high_term_candidate_is_freed_by_check_quorum():
    # With CheckQuorum, a node that raised its term alone cannot win (others are in lease)
    # and would never hear from the leader (it ignores lower-term appends) unless it
    # answers the stale leader with its term, which makes a new election possible.
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    c.isolate(1)
    for _ in range(3):
        c.nodes[3].campaign()
        c.stabilize()
    high = c.nodes[3].term
    c.heal()
    c.tick(2, only=[1])  # heartbeat to 3; 3 answers with its higher term
    assert c.nodes[1].term == high
    assert c.nodes[1].role == Role.FOLLOWER
    c.tick(60)
    leader = c.leader()
    assert leader is not None and leader.term > high - 1


def test_learner_never_campaigns_and_its_vote_does_not_count():
    c = Cluster([1, 2], learners=[3])
    c.tick(200, only=[3])
    assert c.nodes[3].role == Role.FOLLOWER and c.count(MT.VOTE, frm=3) == 0
    assert c.nodes[3].raft.is_learner
    # Candidate 1 with voter 2 unreachable: the learner's grant is not enough.
    c.cut |= {(1, 2), (2, 1)}
    c.nodes[1].campaign()
    c.stabilize()
    assert c.nodes[1].role == Role.CANDIDATE
    c.heal()
    c.nodes[1].campaign()
    c.stabilize()
    assert c.nodes[1].role == Role.LEADER


def test_leader_ignores_campaign_and_heartbeat_drives_followers():
    r = new_raft(1, [1, 2, 3], heartbeat_tick=2)
    make_leader(r)
    r.step(msg(MT.HUP, frm=1))
    assert r.role == Role.LEADER
    r.tick()
    assert read_messages(r) == []
    r.tick()
    beats = read_messages(r)
    assert sorted((m.type, m.to) for m in beats) == [(MT.HEARTBEAT, 2), (MT.HEARTBEAT, 3)]
