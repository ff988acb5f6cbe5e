"""RawNode: bootstrap, restart, the Ready/advance contract, input validation."""

import random

import pytest
from etcdstore.raft import codec
from etcdstore.raft.errors import ConfigError, ProposalDropped, RaftError
from etcdstore.raft.raft import Config
from etcdstore.raft.rawnode import RawNode
from etcdstore.raft.records import ConfChange, ConfChangeType, ConfState, EntryType, HardState, Role
from etcdstore.raft.storage import MemoryStorage
from raft_helpers import MT, Cluster, config, msg


def test_bootstrap_first_ready_carries_membership_entries():
    st = MemoryStorage()
    node = RawNode.bootstrap(config(1), st, [1, 2], learners=[3], contexts={2: b"member-2"})
    assert node.has_ready()
    rd = node.ready()
    assert [e.type for e in rd.entries] == [EntryType.CONF_CHANGE] * 3
    changes = [codec.decode_conf_change(e.data) for e in rd.committed_entries]
    assert changes == [
        ConfChange(ConfChangeType.ADD_NODE, 1),
        ConfChange(ConfChangeType.ADD_NODE, 2, b"member-2"),
        ConfChange(ConfChangeType.ADD_LEARNER_NODE, 3),
    ]
    assert rd.hard_state == HardState(1, 0, 3) and rd.must_sync
    assert rd.soft_state is None  # a follower with no leader, as before
    st.append(rd.entries)
    st.set_hard_state(rd.hard_state)
    for cc in changes:
        assert node.apply_conf_change(cc) == ConfState([1, 2], [3])  # re-applying is a no-op
    node.advance(rd)
    assert not node.has_ready()


@pytest.mark.parametrize(
    "voters,learners,match",
    [([], [], "at least one voter"), ([1, 1], [], "distinct"), ([1, 2], [2], "distinct")],
)
def test_bootstrap_validates_membership(voters, learners, match):
    with pytest.raises(ConfigError, match=match):
        RawNode.bootstrap(config(1), MemoryStorage(), voters, learners)


def test_bootstrap_refuses_non_empty_storage():
    c = Cluster([1])
    with pytest.raises(ConfigError, match="non-empty"):
        RawNode.bootstrap(config(1), c.storages[1], [1])


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"id": 0}, "positive"),
        ({"heartbeat_tick": 0}, "heartbeat"),
        ({"election_tick": 1}, "election_tick"),
        ({"max_inflight_msgs": 0}, "inflight"),
        ({"max_size_per_msg": -1}, "max_size_per_msg"),
    ],
)
def test_config_validation(kw, match):
    args = {"id": 1, **kw}
    with pytest.raises(ConfigError, match=match):
        RawNode(Config(**args), MemoryStorage(ConfState([1])))


def test_ready_advance_pairing_is_enforced():
    c = Cluster([1])
    node = c.nodes[1]
    node.campaign()
    rd = node.ready()
    assert not node.has_ready()  # while a Ready is outstanding
    with pytest.raises(RaftError, match="before advance"):
        node.ready()
    with pytest.raises(RaftError, match="last ready"):
        node.advance(object())
    c.handle_ready(1, rd)
    assert node.has_ready()


def test_must_sync_and_early_send_flags():
    c = Cluster([1, 2, 3])
    n1 = c.nodes[1]
    n1.campaign()
    rd = n1.ready()
    # Campaigning changed term and vote: persist before the vote requests go out.
    assert rd.must_sync and not rd.can_send_early and rd.hard_state.vote == 1
    c.handle_ready(1, rd)
    c.stabilize()
    assert n1.role == Role.LEADER
    n1.propose(b"x")
    rd = n1.ready()
    assert rd.must_sync and rd.can_send_early and rd.entries and rd.hard_state is None
    c.handle_ready(1, rd)
    c.stabilize()
    # A follower whose Ready only moves the commit index need not fsync.
    seen = []
    orig = c.handle_ready

    def spy(i, ready):
        if i == 2:
            seen.append((bool(ready.entries), ready.hard_state, ready.must_sync))
        orig(i, ready)

    c.handle_ready = spy
    c.propose(1, b"y")
    assert (True, None, True) in seen or any(e and ms for e, _, ms in seen)
    commit_only = [ms for e, hs, ms in seen if not e and hs is not None]
    assert commit_only and not any(commit_only)


def test_leader_early_send_is_safe_end_to_end():
    c = Cluster([1, 2, 3])
    c.early_send = True
    c.elect(1)
    for k in range(10):
        c.propose(1, b"v%d" % k)
    assert c.data(2) == c.data(3) == c.data(1) == [b"v%d" % k for k in range(10)]


def test_step_ignores_local_types_and_responses_from_strangers():
    c = Cluster([1, 2, 3])
    c.nodes[2].step(msg(MT.HUP, frm=2, to=2))
    assert c.nodes[2].role == Role.FOLLOWER and not c.nodes[2].has_ready()
    leader = c.elect(1)
    before = leader.status()
    leader.step(msg(MT.APP_RESP, frm=9, to=1, term=leader.term, index=100))
    assert leader.status() == before


def test_restart_restores_state_and_membership():
    c = Cluster([1, 2, 3])
    c.elect(2)
    c.propose(2, b"x")
    c.crash(1)
    node = c.restart(1)
    assert node.term == c.nodes[2].term and node.raft.vote == 2
    assert node.commit_index >= 4
    # Membership came from conf-change entries (no snapshot yet): the host re-applies them.
    assert node.raft.trk.voters == set()
    c.stabilize()
    assert node.raft.trk.voters == {1, 2, 3}
    assert c.data(1)[-1] == b"x"  # re-applied from the log after restart (applied was 0)


def test_propose_errors_and_empty_batch():
    c = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped, match="no leader"):
        c.nodes[1].propose(b"x")
    c.nodes[1].propose_batch([])
    c.elect(1)
    c.nodes[1].propose_batch([b"a", b"b", b"c"])
    c.stabilize()
    assert c.data(3) == [b"a", b"b", b"c"]


def test_properties():
    c = Cluster([1, 2], learners=[3], rng=random.Random(1))
    c.elect(1)
    n = c.nodes[3]
    assert (n.id, n.leader_id, n.role, n.is_learner) == (3, 1, Role.FOLLOWER, True)
    assert n.term == c.nodes[1].term and n.applied_index == n.commit_index
