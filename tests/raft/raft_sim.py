"""A deterministic cluster simulator for the Raft core, with safety and liveness checks.

Everything is driven by one `random.Random(seed)`: a seed fixes the whole run, so any
failure is reproduced by its number (see `rerun_hint`). The simulated world:

* an in-process network that drops, delays, duplicates and reorders messages and can be
  partitioned; every message goes through `codec` (encode on send, decode on delivery);
* hosts that follow the `RawNode` contract (persist, send, apply, advance) into a
  `MemoryStorage` that stands for their disk, take snapshots of their state machine and
  compact their log (so lagging nodes get InstallSnapshot);
* crashes at any point of Ready handling (anything not yet persisted is lost) and
  restarts from the persisted state only; a leader sometimes sends before persisting
  when the Ready allows it;
* membership changes during the run (add learner, promote, add voter, remove — the
  leader too — and re-add a removed node), leadership transfers and ReadIndex calls.

The `Checker` asserts, as the run goes: at most one leader per term; log matching (same
index and term => same entry and same history); leader completeness (a new leader holds
every entry known committed); state machine safety (every node applies the same entry
at each index, in order, none twice within one incarnation; snapshots agree with the
applied history); committed entries are never lost across crashes; ReadIndex answers are
at least the highest commit index anywhere when the read was requested, and themselves
committed. At the end faults heal and a leader must be elected and a new proposal
committed and applied by every member within a bounded number of ticks.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import struct
import zlib
from collections import deque
from dataclasses import dataclass

from etcdstore.raft import codec
from etcdstore.raft.errors import ProposalDropped
from etcdstore.raft.raft import Config
from etcdstore.raft.rawnode import RawNode, Ready
from etcdstore.raft.records import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Role,
)
from etcdstore.raft.storage import MemoryStorage

_SNAP_DATA = struct.Struct("<QI")
TEST_FILE = "tests/raft/test_raft_simulation.py"


def rerun_hint(seed: int) -> str:
    return f"RAFT_SIM_SEED={seed} .venv/bin/python -m pytest {TEST_FILE}::test_one_seed -x"


class SimFailure(AssertionError):
    pass


@dataclass(slots=True)
class Params:
    """The shape of one run, drawn from the seed."""

    nodes: int
    chaos_ticks: int
    election_tick: int
    pre_vote: bool
    check_quorum: bool
    forwarding: bool
    max_size_per_msg: int | None
    max_inflight: int
    max_committed_per_ready: int | None
    max_uncommitted: int | None
    drop: float
    dup: float
    max_delay: int
    p_propose: float
    p_read: float
    p_transfer: float
    p_conf: float
    p_crash: float
    p_crash_point: float
    p_partition: float
    snap_every: int
    early_send: float

    @staticmethod
    def draw(rng: random.Random) -> Params:
        return Params(
            nodes=rng.choice((1, 2, 3, 3, 3, 4, 5, 5)),
            chaos_ticks=rng.randint(80, 160),
            election_tick=rng.choice((4, 5, 6, 8)),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            forwarding=rng.random() < 0.85,
            max_size_per_msg=rng.choice((None, 0, 16, 64, 1 << 20)),
            max_inflight=rng.choice((1, 2, 4, 256)),
            max_committed_per_ready=rng.choice((0, 0, None, 8)),
            max_uncommitted=rng.choice((None, None, None, 40)),
            drop=rng.choice((0.0, 0.02, 0.1, 0.25)),
            dup=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.choice((0, 1, 2, 4)),
            p_propose=rng.choice((0.2, 0.5, 0.9)),
            p_read=rng.choice((0.05, 0.2)),
            p_transfer=rng.choice((0.0, 0.02, 0.05)),
            p_conf=rng.choice((0.0, 0.03, 0.08)),
            p_crash=rng.choice((0.0, 0.01, 0.03)),
            p_crash_point=rng.choice((0.0, 0.002, 0.01)),
            p_partition=rng.choice((0.0, 0.02, 0.05)),
            snap_every=rng.choice((3, 5, 10, 1000)),
            early_send=rng.choice((0.0, 0.5, 1.0)),
        )


class Checker:
    """Global observer of every node; raises SimFailure at the first violation."""

    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        # (index, term) -> (type, data, term of the previous entry) for every persisted entry
        self.entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.committed_term: dict[int, int] = {}  # index -> entry term, for every index known committed
        # index -> term of the leader seen committing it. Leader completeness speaks of
        # leaders of later terms only: a leader of an older term can legitimately be
        # elected after the commit (its vote grants were delayed in the network).
        self.commit_at: dict[int, int] = {}
        self.max_committed = 0
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.chain: dict[int, int] = {}  # index -> state-machine hash after applying it
        self.reads: dict[bytes, int] = {}  # ctx -> highest commit index when requested
        self.reads_served = 0

    def fail(self, msg: str) -> None:
        raise SimFailure(msg)

    def on_leader(self, node_id: int, term: int, raft) -> None:
        prev = self.leader_of_term.setdefault(term, node_id)
        if prev != node_id:
            self.fail(f"two leaders in term {term}: {prev} and {node_id}")
        if node_id not in raft.trk.voters:
            self.fail(f"node {node_id} leads term {term} but is not a voter in its configuration")
        # Leader completeness: every entry committed in an earlier term is in its log.
        log = raft.log
        first = log.first_index()
        last = log.last_index()
        committed_term = self.committed_term
        for i, at in self.commit_at.items():
            if at >= term:
                continue
            if i > last:
                self.fail(
                    f"leader {node_id} (term {term}) has last index {last} < index {i} committed in term {at}"
                )
            if i >= first and log.term(i) != committed_term[i]:
                self.fail(
                    f"leader {node_id} (term {term}) lacks entry {i} (term {committed_term[i]}) committed in "
                    f"term {at}; has term {log.term(i)}"
                )

    def on_persisted(self, node_id: int, storage: MemoryStorage, entries: list[Entry]) -> None:
        prev_term = None
        first_kept = storage.first_index() - 1
        for e in entries:
            if prev_term is None:
                if e.index - 1 < first_kept:
                    prev_term = -1  # compacted: cannot see the predecessor
                else:
                    prev_term = storage.term(e.index - 1)
            rec = (e.type, e.data, prev_term)
            old = self.entries.setdefault((e.index, e.term), rec)
            if old is not rec:
                if old[:2] != rec[:2]:
                    self.fail(
                        f"log matching violated on node {node_id}: two different entries at index "
                        f"{e.index} term {e.term}: {old!r} vs {rec!r}"
                    )
                if old[2] != prev_term and old[2] != -1 and prev_term != -1:
                    self.fail(
                        f"log matching violated on node {node_id}: entry {e.index}/{e.term} follows "
                        f"term {prev_term} here and term {old[2]} elsewhere"
                    )
            prev_term = e.term

    def on_commit(self, node_id: int, raft, since: int) -> None:
        """`raft`'s commit index moved past `since`: every node must agree on those entries."""
        log = raft.log
        c = log.committed
        leader_term = raft.term if raft.role == Role.LEADER else 0
        committed_term, commit_at = self.committed_term, self.commit_at
        for i in range(max(since + 1, log.first_index()), c + 1):
            t = log.term(i)
            old = committed_term.setdefault(i, t)
            if old != t:
                self.fail(
                    f"node {node_id} committed index {i} with term {t}, earlier committed with term {old}"
                )
            if leader_term and i not in commit_at:
                commit_at[i] = leader_term
        self.max_committed = max(self.max_committed, c)

    def on_apply(self, node_id: int, e: Entry, sm_hash: int) -> None:
        rec = (e.term, e.data)
        old = self.applied.setdefault(e.index, rec)
        if old != rec:
            self.fail(
                f"state machine safety: node {node_id} applied {rec!r} at {e.index}, another applied {old!r}"
            )
        h = self.chain.setdefault(e.index, sm_hash)
        if h != sm_hash:
            self.fail(f"node {node_id} state diverged at index {e.index}")
        t = self.committed_term.get(e.index)
        if t is not None and t != e.term:
            self.fail(f"node {node_id} applied index {e.index} term {e.term}, committed term is {t}")

    def on_snapshot(self, node_id: int, index: int, sm_hash: int) -> None:
        h = self.chain.get(index)
        if h is not None and h != sm_hash:
            self.fail(
                f"node {node_id} installed a snapshot at {index} that disagrees with the applied history"
            )

    def on_read_request(self, ctx: bytes, highest_commit: int) -> None:
        self.reads[ctx] = highest_commit

    def on_read_state(self, node_id: int, index: int, ctx: bytes, highest_commit_now: int) -> None:
        floor = self.reads.get(ctx)  # (the network may duplicate requests and answers)
        if floor is None:
            self.fail(f"node {node_id} got a read state for unknown context {ctx!r}")
        if index < floor:
            self.fail(
                f"ReadIndex not linearizable: node {node_id} read at {index}, "
                f"but {floor} was committed when the read was requested"
            )
        if index > highest_commit_now:
            self.fail(
                f"ReadIndex {index} at node {node_id} is beyond any commit index ({highest_commit_now})"
            )
        self.reads_served += 1


class Host:
    """One simulated server: a RawNode, its 'disk' (MemoryStorage) and a state machine."""

    def __init__(self, sim: Sim, node_id: int, bootstrap: tuple[int, ...] | None) -> None:
        self.sim = sim
        self.id = node_id
        self.storage = MemoryStorage()
        self.incarnation = 0
        self.sm_index = 0
        self.sm_hash = 0
        self.conf_state = ConfState()
        self.node: RawNode | None = None
        self.last_role = Role.FOLLOWER
        self.last_term = 0
        self.last_commit = -1
        if bootstrap is not None:
            self.node = RawNode.bootstrap(self._config(0), self.storage, bootstrap)
        else:
            self.node = RawNode(self._config(0), self.storage)

    def _config(self, applied: int) -> Config:
        p = self.sim.params
        return Config(
            self.id,
            election_tick=p.election_tick,
            heartbeat_tick=1,
            applied=applied,
            max_size_per_msg=p.max_size_per_msg,
            max_committed_size_per_ready=p.max_committed_per_ready,
            max_uncommitted_entries_size=p.max_uncommitted,
            max_inflight_msgs=p.max_inflight,
            check_quorum=p.check_quorum,
            pre_vote=p.pre_vote,
            disable_proposal_forwarding=not p.forwarding,
            rng=random.Random(self.sim.seed * 7919 + self.id * 104729 + self.incarnation),
        )

    @property
    def alive(self) -> bool:
        return self.node is not None

    def crash(self) -> None:
        self.sim.trace(f"crash {self.id}")
        self.node = None

    def restart(self) -> None:
        self.incarnation += 1
        snap = self.storage.snapshot()
        if snap.metadata.index:
            self.sm_index, self.sm_hash = _SNAP_DATA.unpack(snap.data)
        else:
            self.sm_index, self.sm_hash = 0, 0
        self.conf_state = snap.metadata.conf_state
        self.node = RawNode(self._config(self.sm_index), self.storage)
        self.last_role = Role.FOLLOWER
        self.last_commit = -1
        self.sim.trace(
            f"restart {self.id} from snapshot {self.sm_index}, hard state {self.storage.hard_state}"
        )

    def observe(self) -> None:
        """Check role/commit facts after anything that may have changed them."""
        node = self.node
        if node is None:
            return
        r = node.raft
        role = r.role
        if role == Role.LEADER and (self.last_role != role or self.last_term != r.term):
            self.sim.trace(f"{self.id} leads term {r.term}")
            self.sim.checker.on_leader(self.id, r.term, r)
        self.last_role = role
        self.last_term = r.term
        if r.log.committed != self.last_commit:
            self.sim.checker.on_commit(self.id, r, self.last_commit)
            self.last_commit = r.log.committed

    def handle_ready(self) -> bool:
        node = self.node
        if node is None or not node.has_ready():
            return False
        sim = self.sim
        rng = sim.rng
        rd = node.ready()
        if sim.crash_point():
            self.crash()  # nothing of this Ready reached the disk
            return True
        early = rd.can_send_early and rd.messages and rng.random() < sim.params.early_send
        if early:
            sim.early_sends += 1
            self._send(rd)
            if sim.crash_point():
                self.crash()  # a leader's appends are out, its own copy is lost
                return True
        self._persist(rd)
        if sim.crash_point():
            self.crash()  # durable, but nothing sent or applied
            return True
        if not early:
            self._send(rd)
        self._apply(rd)
        node.advance(rd)
        self._maybe_snapshot()
        self.observe()
        return True

    def _persist(self, rd: Ready) -> None:
        st = self.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
            self.sim.checker.on_persisted(self.id, st, rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)

    def _send(self, rd: Ready) -> None:
        for m in rd.messages:
            if m.type == MessageType.SNAP:
                self._refresh_snapshot(m)
            self.sim.net.send(m)

    def _refresh_snapshot(self, m: Message) -> None:
        """Ship a snapshot of what we applied so far, as etcd's server does: the stored one
        may predate the recipient's membership (then the recipient must ignore it)."""
        snap = m.snapshot
        assert snap is not None
        cs = snap.metadata.conf_state
        stale = m.to not in cs.voters and m.to not in cs.learners
        if self.sm_index > snap.metadata.index and (stale or self.sim.rng.random() < 0.5):
            st = self.storage
            if st.snapshot().metadata.index < self.sm_index:
                st.create_snapshot(
                    self.sm_index, self.conf_state, _SNAP_DATA.pack(self.sm_index, self.sm_hash)
                )
            m.snapshot = st.snapshot()

    def _apply(self, rd: Ready) -> None:
        sim = self.sim
        checker = sim.checker
        if rd.snapshot is not None:
            meta = rd.snapshot.metadata
            index, h = _SNAP_DATA.unpack(rd.snapshot.data)
            if index != meta.index:
                checker.fail(f"node {self.id}: snapshot data for {index} in metadata {meta.index}")
            checker.on_snapshot(self.id, index, h)
            self.sm_index, self.sm_hash = index, h
            self.conf_state = meta.conf_state
            sim.snapshots_installed += 1
            sim.trace(f"{self.id} installed snapshot {index}")
        node = self.node
        assert node is not None
        for e in rd.committed_entries:
            if e.index != self.sm_index + 1:
                checker.fail(f"node {self.id} applied index {e.index} after {self.sm_index} (gap or repeat)")
            self.sm_hash = zlib.crc32(e.data, zlib.crc32(e.term.to_bytes(8, "little"), self.sm_hash))
            self.sm_index = e.index
            checker.on_apply(self.id, e, self.sm_hash)
            if e.type == EntryType.CONF_CHANGE:
                cc = codec.decode_conf_change(e.data)
                self.conf_state = node.apply_conf_change(cc)
                if sim.tracing:
                    sim.trace(f"{self.id} applied {cc!r} at {e.index} -> {self.conf_state!r}")
            elif e.data.startswith(b"mark"):
                sim.marks_applied.setdefault(e.data, set()).add(self.id)
        if rd.read_states:
            highest = sim.highest_commit()
            for rs in rd.read_states:
                checker.on_read_state(self.id, rs.index, rs.request_ctx, highest)

    def _maybe_snapshot(self) -> None:
        st = self.storage
        snap_index = st.snapshot().metadata.index
        if self.sm_index - snap_index < self.sim.params.snap_every or self.sm_index > st.last_index():
            return
        st.create_snapshot(self.sm_index, self.conf_state, _SNAP_DATA.pack(self.sm_index, self.sm_hash))
        keep = self.sim.rng.randint(0, 3)
        to = self.sm_index - keep
        if to >= st.first_index():
            st.compact(to)


class Network:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.queue: list[tuple[int, float, int, int, int, bytes]] = []
        self.seq = 0
        self.group: dict[int, int] = {}  # node -> partition group (absent: group 0)
        self.lossy = True

    def blocked(self, a: int, b: int) -> bool:
        return self.group.get(a, 0) != self.group.get(b, 0)

    def send(self, m: Message) -> None:
        sim = self.sim
        rng = sim.rng
        p = sim.params
        group = self.group
        lossy = self.lossy
        if (group and group.get(m.frm, 0) != group.get(m.to, 0)) or (lossy and rng.random() < p.drop):
            if sim.tracing:
                sim.trace(f"drop {m!r}")
            self._dropped(m)
            return
        data = codec.encode_message(m)
        copies = 2 if lossy and p.dup and rng.random() < p.dup else 1
        span = p.max_delay + 1 if lossy else 2
        for _ in range(copies):
            self.seq += 1
            heapq.heappush(
                self.queue, (sim.now + int(rng.random() * span), rng.random(), self.seq, m.frm, m.to, data)
            )

    def _dropped(self, m: Message) -> None:
        sender = self.sim.hosts.get(m.frm)
        if sender is None or sender.node is None:
            return
        if m.type == MessageType.SNAP:
            sender.node.report_snapshot(m.to, False)
        elif self.sim.rng.random() < 0.3:
            sender.node.report_unreachable(m.to)

    def deliver_due(self) -> int:
        sim = self.sim
        # Half the time the due messages are stepped as one batch per node, as the server does
        # (RawNode.begin_batch/end_batch: the leader's broadcasts are owed until the end).
        # Ending a batch only sends the owed broadcast; each step was observed already.
        batched: dict[int, RawNode] | None = {} if sim.rng.random() < 0.5 else None
        try:
            return self._deliver_due(batched)
        finally:
            for node in (batched or {}).values():
                node.end_batch()

    def _deliver_due(self, batched: dict[int, RawNode] | None) -> int:
        sim = self.sim
        q = self.queue
        n = 0
        while q and q[0][0] <= sim.now:
            _, _, _, frm, to, data = heapq.heappop(q)
            dest = sim.hosts.get(to)
            m = codec.decode_message(data)
            if dest is None or dest.node is None or self.blocked(frm, to):
                if sim.tracing:
                    sim.trace(f"lost {m!r}")
                self._dropped(m)  # the transport notices a failed stream
                continue
            if batched is not None and to not in batched:
                dest.node.begin_batch()
                batched[to] = dest.node
            dest.node.step(m)
            dest.observe()
            n += 1
            if m.type == MessageType.SNAP:
                sender = sim.hosts.get(frm)
                if sender is not None and sender.node is not None:
                    sender.node.report_snapshot(to, True)
        return n


@dataclass
class Stats:
    seed: int
    ticks: int = 0
    leaders: int = 0
    committed: int = 0
    reads: int = 0
    conf_changes: int = 0
    crashes: int = 0
    transfers: int = 0
    snapshots_installed: int = 0
    early_sends: int = 0
    crash_points: int = 0


class Sim:
    def __init__(self, seed: int, trace: bool = False, params: Params | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.params = params or Params.draw(self.rng)
        self.now = 0
        self.checker = Checker()
        self.net = Network(self)
        self._trace: deque[str] | None = deque(maxlen=400) if trace else None
        self.tracing = trace
        ids = tuple(range(1, self.params.nodes + 1))
        self.hosts: dict[int, Host] = {}
        for i in ids:
            self.hosts[i] = Host(self, i, ids)
        self.next_id = len(ids) + 1
        self.removed: set[int] = set()
        self.marks_applied: dict[bytes, set[int]] = {}
        self.proposal_seq = 0
        self.read_seq = 0
        self.crashes = 0
        self.crash_points = 0
        self.transfers = 0
        self.conf_changes = 0
        self.snapshots_installed = 0
        self.early_sends = 0
        self.faults_on = True

    # -- tracing --------------------------------------------------------------------------------------
    def trace(self, msg: str) -> None:
        if self._trace is not None:
            self._trace.append(f"[{self.now}] {msg}")

    def trace_tail(self, n: int = 80) -> list[str]:
        return list(self._trace)[-n:] if self._trace is not None else []

    # -- helpers ---------------------------------------------------------------------------------------
    def crash_point(self) -> bool:
        if self.faults_on and self.now > 3 and self.rng.random() < self.params.p_crash_point:
            self.crash_points += 1
            return True
        return False

    def live(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.node is not None]

    def leader(self) -> Host | None:
        best = None
        for h in self.hosts.values():
            n = h.node
            if n is not None and n.role == Role.LEADER and (best is None or n.term > best.node.term):
                best = h
        return best

    def highest_commit(self) -> int:
        return max(self.checker.max_committed, max((h.node.commit_index for h in self.live()), default=0))

    # -- one tick ------------------------------------------------------------------------------------------
    def step_tick(self) -> None:
        self.now += 1
        for h in self.hosts.values():
            if h.node is not None:
                h.node.tick()
                h.observe()
        for _ in range(20):
            moved = self.net.deliver_due()
            for h in list(self.hosts.values()):
                while h.handle_ready():
                    moved += 1
            if not moved:
                break

    # -- client and operator actions ---------------------------------------------------------------------
    def propose(self) -> None:
        hosts = self.live()
        if not hosts:
            return
        lead = self.leader()
        h = lead if lead is not None and self.rng.random() < 0.7 else self.rng.choice(hosts)
        n = self.rng.choice((1, 1, 1, 3))
        datas = []
        for _ in range(n):
            self.proposal_seq += 1
            datas.append(b"p%d" % self.proposal_seq)
        try:
            h.node.propose_batch(datas)
        except ProposalDropped as exc:
            if self.tracing:
                self.trace(f"proposal at {h.id} dropped: {exc}")
        h.observe()

    def read(self) -> None:
        hosts = self.live()
        if not hosts:
            return
        h = self.rng.choice(hosts)
        self.read_seq += 1
        ctx = b"r%d" % self.read_seq
        self.checker.on_read_request(ctx, self.highest_commit())
        try:
            h.node.read_index(ctx)
        except ProposalDropped:
            self.checker.reads.pop(ctx, None)

    def transfer(self) -> None:
        lead = self.leader()
        if lead is None:
            return
        voters = [v for v in lead.node.raft.trk.voters if v != lead.id]
        if voters:
            to = self.rng.choice(sorted(voters))
            self.trace(f"transfer {lead.id} -> {to}")
            self.transfers += 1
            lead.node.transfer_leadership(to)
            lead.observe()

    def conf_change(self) -> None:
        lead = self.leader()
        if lead is None:
            return
        trk = lead.node.raft.trk
        voters, learners = sorted(trk.voters), sorted(trk.learners)
        rng = self.rng
        choices = []
        if len(self.hosts) < 7:
            choices += ["add_learner", "add_voter"]
        if learners:
            choices += ["promote", "promote", "remove_learner"]
        if len(voters) > 1:
            choices += ["remove_voter", "remove_voter"]
        if self.removed:
            choices += ["readd"]
        if not choices:
            return
        what = rng.choice(choices)
        if what in ("add_learner", "add_voter"):
            node_id = self.next_id
            cc = ConfChange(
                ConfChangeType.ADD_LEARNER_NODE if what == "add_learner" else ConfChangeType.ADD_NODE, node_id
            )
        elif what == "promote":
            node_id = rng.choice(learners)
            cc = ConfChange(ConfChangeType.ADD_NODE, node_id)
        elif what == "remove_learner":
            node_id = rng.choice(learners)
            cc = ConfChange(ConfChangeType.REMOVE_NODE, node_id)
        elif what == "remove_voter":
            node_id = rng.choice(voters)
            cc = ConfChange(ConfChangeType.REMOVE_NODE, node_id)
        else:
            node_id = rng.choice(sorted(self.removed))
            cc = ConfChange(rng.choice((ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE)), node_id)
        try:
            lead.node.propose_conf_change(cc)
        except ProposalDropped as exc:
            self.trace(f"conf change {cc!r} dropped: {exc}")
            return
        self.trace(f"propose {cc!r} at leader {lead.id}")
        self.conf_changes += 1
        if what in ("add_learner", "add_voter"):
            self.hosts[node_id] = Host(self, node_id, None)
            self.next_id += 1
        elif what.startswith("remove"):
            self.removed.add(node_id)  # tentatively: it may still be re-added later
        elif what == "readd":
            self.removed.discard(node_id)
            h = self.hosts[node_id]
            if h.node is None:
                h.restart()
        lead.observe()

    def crash_or_restart(self) -> None:
        rng = self.rng
        dead = [h for h in self.hosts.values() if h.node is None]
        if dead and rng.random() < 0.6:
            rng.choice(dead).restart()
            return
        live = self.live()
        if live:
            h = rng.choice(live)
            self.crashes += 1
            h.crash()

    def partition(self) -> None:
        rng = self.rng
        ids = sorted(self.hosts)
        if self.net.group and rng.random() < 0.5:
            self.net.group = {}
            self.trace("heal partition")
            return
        if rng.random() < 0.5:
            iso = rng.choice(ids)
            self.net.group = {iso: 1}
        else:
            self.net.group = {i: rng.randint(0, 1) for i in ids}
        self.trace(f"partition {self.net.group}")

    # -- the run ------------------------------------------------------------------------------------------
    def run(self) -> Stats:
        p = self.params
        rng = self.rng
        for _ in range(2):
            self.step_tick()
        # Start with an election most of the time so the run does real work early.
        first = self.hosts[1]
        if first.node is not None:
            first.node.campaign()
            first.observe()
        for _ in range(p.chaos_ticks):
            self.step_tick()
            if rng.random() < p.p_propose:
                self.propose()
            if rng.random() < p.p_read:
                self.read()
            if rng.random() < p.p_transfer:
                self.transfer()
            if rng.random() < p.p_conf:
                self.conf_change()
            if rng.random() < p.p_crash:
                self.crash_or_restart()
            if rng.random() < p.p_partition:
                self.partition()
        self.heal_and_check_liveness()
        return Stats(
            seed=self.seed,
            ticks=self.now,
            leaders=len(self.checker.leader_of_term),
            committed=self.checker.max_committed,
            reads=self.checker.reads_served,
            conf_changes=self.conf_changes,
            crashes=self.crashes,
            transfers=self.transfers,
            snapshots_installed=self.snapshots_installed,
            early_sends=self.early_sends,
            crash_points=self.crash_points,
        )

    def heal_and_check_liveness(self) -> None:
        self.faults_on = False
        self.net.group = {}
        self.net.lossy = False
        for h in self.hosts.values():
            if h.node is None:
                h.restart()
        healed_at = self.now
        budget = 60 * self.params.election_tick + 100
        mark = b"mark%d" % self.seed
        proposed_at = None
        while self.now - healed_at < budget:
            self.step_tick()
            lead = self.leader()
            if lead is None:
                continue
            members = lead.node.raft.trk.progress.keys()
            if proposed_at is None or self.now - proposed_at > 3 * self.params.election_tick:
                try:
                    lead.node.propose(mark)
                    proposed_at = self.now
                except ProposalDropped:
                    pass
                lead.observe()
            done = self.marks_applied.get(mark, set())
            if proposed_at is not None and all(m in done for m in members):
                return
        lead = self.leader()
        state = {
            i: (h.node.role.name, h.node.term, h.node.commit_index, h.sm_index) for i, h in self.hosts.items()
        }
        self.checker.fail(
            f"no progress {budget} ticks after healing: leader={lead.id if lead else None}, "
            f"nodes (role, term, commit, applied)={state}, mark applied on "
            f"{sorted(self.marks_applied.get(mark, ()))}"
        )


def run_seed(seed: int, params: Params | None = None) -> Stats:
    """Run one seed; on failure re-run it with tracing and raise with the tail of the trace."""
    try:
        return Sim(seed, params=params).run()
    except Exception as exc:
        sim = Sim(seed, trace=True, params=params)
        with contextlib.suppress(Exception):  # the same failure again, now with a trace
            sim.run()
        tail = "\n    ".join(sim.trace_tail())
        raise SimFailure(
            f"seed {seed} failed: {type(exc).__name__}: {exc}\n  rerun: {rerun_hint(seed)}\n"
            f"  params: {sim.params}\n  trace tail:\n    {tail}"
        ) from exc
