"""Step batches (RawNode.begin_batch/end_batch): a leader's broadcasts are owed until the end,
so everything stepped and proposed in one batch reaches each follower as one MsgApp."""

import pytest
from etcdstore.raft.errors import RaftError
from etcdstore.raft.rawnode import RawNode
from etcdstore.raft.records import ConfState, Entry
from etcdstore.raft.storage import MemoryStorage
from raft_helpers import MT, config, make_leader, msg, read_messages


def _replicating_leader() -> RawNode:
    node = RawNode(config(1), MemoryStorage(ConfState([1, 2, 3])))
    r = node.raft
    make_leader(r)
    for f in (2, 3):  # both followers hold the leader's no-op: replicate state
        r.step(msg(MT.APP_RESP, frm=f, to=1, term=r.term, index=r.log.last_index()))
    read_messages(r)
    return node


def _appends(node: RawNode) -> list:
    return [m for m in read_messages(node.raft) if m.type == MT.APP]


def test_a_batch_sends_each_follower_one_append() -> None:
    node = _replicating_leader()
    node.begin_batch()
    for i in range(3):
        node.propose_batch([b"local-%d" % i])
    node.step(msg(MT.PROP, frm=2, to=1, entries=[Entry(data=b"forwarded")]))
    assert not node.raft.msgs  # owed, not yet sent
    node.end_batch()
    apps = _appends(node)
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(
        [e.data for e in m.entries] == [b"local-0", b"local-1", b"local-2", b"forwarded"] for m in apps
    )


def test_without_a_batch_each_proposal_is_its_own_append() -> None:
    node = _replicating_leader()
    for i in range(3):
        node.propose_batch([b"local-%d" % i])
    assert len(_appends(node)) == 6


def test_a_commit_inside_a_batch_still_reaches_the_followers() -> None:
    node = _replicating_leader()
    r = node.raft
    node.propose_batch([b"x"])
    read_messages(r)
    r.log.storage.append(r.log.unstable_entries())
    r.on_persisted(r.log.last_index(), r.term)
    node.begin_batch()
    node.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=r.log.last_index()))
    node.end_batch()
    apps = _appends(node)
    assert sorted(m.to for m in apps) == [2, 3] and all(m.commit == r.log.last_index() for m in apps)


def test_a_leader_that_steps_down_mid_batch_owes_nothing() -> None:
    node = _replicating_leader()
    node.begin_batch()
    node.propose_batch([b"x"])
    node.step(msg(MT.APP, frm=2, to=1, term=node.raft.term + 1))  # a newer leader exists
    node.end_batch()
    assert not [m for m in _appends(node) if m.frm == 1 and m.to != 1]


def test_ready_is_refused_inside_a_batch() -> None:
    node = _replicating_leader()
    node.begin_batch()
    with pytest.raises(RaftError, match="batch"):
        node.ready()
    node.end_batch()
    node.ready()
