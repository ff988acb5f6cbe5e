"""Helpers for the Raft unit tests: a directly driven `Raft`, and a small synchronous
cluster of `RawNode`s that follows the host contract (persist, send, apply, advance)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

from etcdstore.raft import codec
from etcdstore.raft.raft import Config, Raft
from etcdstore.raft.rawnode import RawNode, Ready
from etcdstore.raft.records import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
)
from etcdstore.raft.storage import MemoryStorage

MT = MessageType


def config(node_id: int, **kw) -> Config:
    kw.setdefault("election_tick", 10)
    kw.setdefault("heartbeat_tick", 1)
    kw.setdefault("check_quorum", False)
    kw.setdefault("pre_vote", False)
    kw.setdefault("rng", random.Random(node_id))
    return Config(node_id, **kw)


def new_raft(
    node_id: int,
    voters: Iterable[int],
    learners: Iterable[int] = (),
    storage: MemoryStorage | None = None,
    **kw,
) -> Raft:
    if storage is None:
        storage = MemoryStorage(ConfState(list(voters), list(learners)))
    return Raft(config(node_id, **kw), storage)


def read_messages(r: Raft) -> list[Message]:
    msgs, r.msgs = r.msgs, []
    return msgs


def persist(r: Raft) -> None:
    """Do what a host does with the durable part of a Ready (entries, hard state)."""
    st = r.log.storage
    ents = r.log.unstable_entries()
    if ents:
        st.append(ents)
    st.set_hard_state(r.hard_state())
    if ents:
        r.on_persisted(ents[-1].index, ents[-1].term)


def make_leader(r: Raft) -> None:
    """Turn `r` into the leader of the next term directly and persist its no-op."""
    r.become_candidate()
    r.become_leader()
    persist(r)
    read_messages(r)


def ents(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from `start`."""
    return [Entry(t, start + k, EntryType.NORMAL, b"") for k, t in enumerate(terms)]


def storage_with(entries: list[Entry], voters: Iterable[int], hs: HardState | None = None) -> MemoryStorage:
    st = MemoryStorage(ConfState(list(voters)))
    st.append(entries)
    if hs is not None:
        st.set_hard_state(hs)
    return st


def msg(type: MessageType, frm: int = 0, to: int = 0, **kw) -> Message:
    return Message(type, to=to, frm=frm, **kw)


class Cluster:
    """A synchronous in-memory network of RawNodes with per-link filtering."""

    def __init__(
        self, voters: Iterable[int], learners: Iterable[int] = (), bootstrap: bool = True, **cfg
    ) -> None:
        self.cfg = cfg
        self.voters = list(voters)
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.reads: dict[int, list[ReadState]] = {}
        self.conf: dict[int, ConfState] = {}
        self.queue: deque[Message] = deque()
        self.delivered: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.drop_types: set[MessageType] = set()
        self.filter: Callable[[Message], bool] | None = None  # return False to drop
        self.early_send = False
        for i in list(voters) + list(learners):
            st = MemoryStorage()
            self.storages[i] = st
            if bootstrap:
                self.nodes[i] = RawNode.bootstrap(config(i, **cfg), st, self.voters, list(learners))
            else:
                raise NotImplementedError
            self.applied[i] = []
            self.reads[i] = []
        self.stabilize()

    # -- topology ------------------------------------------------------------------------------------
    def add_node(self, node_id: int, **cfg) -> RawNode:
        """A brand-new member process (empty storage) that will learn everything from the leader."""
        st = MemoryStorage()
        self.storages[node_id] = st
        node = RawNode(config(node_id, **{**self.cfg, **cfg}), st)
        self.nodes[node_id] = node
        self.applied[node_id] = []
        self.reads[node_id] = []
        return node

    def isolate(self, node_id: int) -> None:
        for other in self.storages:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()
        self.drop_types.clear()
        self.filter = None

    def crash(self, node_id: int) -> None:
        del self.nodes[node_id]

    def restart(self, node_id: int, **cfg) -> RawNode:
        st = self.storages[node_id]
        applied = st.snapshot().metadata.index
        node = RawNode(config(node_id, applied=applied, **{**self.cfg, **cfg}), st)
        self.nodes[node_id] = node
        return node

    # -- driving ---------------------------------------------------------------------------------------
    def leader(self) -> RawNode | None:
        leads = [n for n in self.nodes.values() if n.role == Role.LEADER]
        return max(leads, key=lambda n: n.term) if leads else None

    def elect(self, node_id: int) -> RawNode:
        self.nodes[node_id].campaign()
        self.stabilize()
        node = self.nodes[node_id]
        assert node.role == Role.LEADER, f"node {node_id} did not win: {node.status()}"
        return node

    def tick(self, n: int = 1, only: Iterable[int] | None = None) -> None:
        ids = list(only) if only is not None else list(self.nodes)
        for _ in range(n):
            for i in ids:
                if i in self.nodes:
                    self.nodes[i].tick()
            self.stabilize()

    def send(self, *msgs: Message) -> None:
        self.queue.extend(msgs)
        self.stabilize()

    def stabilize(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            progressed = False
            for i in list(self.nodes):
                node = self.nodes.get(i)
                if node is not None and node.has_ready():
                    self.handle_ready(i, node.ready())
                    progressed = True
            while self.queue:
                m = self.queue.popleft()
                self.deliver(m)
                progressed = True
            if not progressed:
                return
        raise AssertionError("cluster did not stabilize")

    def dropped(self, m: Message) -> bool:
        if (m.frm, m.to) in self.cut or m.type in self.drop_types:
            return True
        return self.filter is not None and not self.filter(m)

    def deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or self.dropped(m):
            return
        self.delivered.append(m)
        node.step(codec.decode_message(codec.encode_message(m)))

    def handle_ready(self, node_id: int, rd: Ready) -> None:
        st = self.storages[node_id]
        node = self.nodes[node_id]
        if self.early_send and rd.can_send_early:
            self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
            self.conf[node_id] = rd.snapshot.metadata.conf_state
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        if not (self.early_send and rd.can_send_early):
            self.queue.extend(rd.messages)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self.conf[node_id] = node.apply_conf_change(codec.decode_conf_change(e.data))
            elif e.data:
                self.applied[node_id].append(e)
        self.reads[node_id].extend(rd.read_states)
        node.advance(rd)

    def propose(self, node_id: int, data: bytes) -> None:
        self.nodes[node_id].propose(data)
        self.stabilize()

    def conf_change(self, node_id: int, cc: ConfChange) -> None:
        self.nodes[node_id].propose_conf_change(cc)
        self.stabilize()

    def snapshot_and_compact(self, node_id: int) -> None:
        """Snapshot node's applied state into its storage and compact the log up to it."""
        node = self.nodes[node_id]
        st = self.storages[node_id]
        idx = node.applied_index
        st.create_snapshot(idx, self.conf.get(node_id, node.raft.trk.conf_state()), b"snap@%d" % idx)
        st.compact(idx)

    def data(self, node_id: int) -> list[bytes]:
        return [e.data for e in self.applied[node_id]]

    def count(self, type: MessageType, frm: int | None = None, to: int | None = None) -> int:
        return sum(
            1
            for m in self.delivered
            if m.type == type and (frm is None or m.frm == frm) and (to is None or m.to == to)
        )
