"""`RawNode`: the host's handle on one Raft node, and the `Ready` batches it hands out.

The host contract (one thread at a time; nothing here blocks or does I/O):

1. Feed the node: `tick()` on a fixed interval; `step(message)` for every message that
   arrives from a peer; `propose*`, `read_index`, `transfer_leadership`, `campaign` on
   behalf of clients. `propose*` raise `ProposalDropped` when the proposal cannot be
   taken now (no leader, forwarding disabled, transfer in progress, uncommitted-size
   limit, a conf change already pending).
2. When `has_ready()`, take `rd = ready()` and, in this order:
   a. persist durably (atomically, fsync when `rd.must_sync`): `rd.snapshot` (if any;
      the log is replaced by it), then `rd.entries` (an entry at index i replaces any
      stored entry at i and everything after it), then `rd.hard_state` (if not None);
   b. send `rd.messages` (each has `to` set). Messages that must not precede step a
      cannot be told apart by type, so the rule is: send after persisting — except that
      when `rd.can_send_early` is True (a leader whose term and vote are already durable)
      all of them may be sent before or while persisting, because a leader counts itself
      toward the commit quorum only for entries reported durable in step d;
   c. if `rd.snapshot`, restore the state machine from it; then apply
      `rd.committed_entries` in order, calling `apply_conf_change` for CONF_CHANGE ones
      (their data decodes with `codec.decode_conf_change`); serve reads from
      `rd.read_states` once the state machine has applied their `index`;
   d. call `advance(rd)`.
   Steps may be taken between `ready()` and `advance()`; `ready()` may not be called
   again before `advance()`.
3. A SNAP message carries `storage.snapshot()`. Before sending it the host should replace
   it by a snapshot of its state machine at its current applied index (index, term and
   membership of that index), as etcd's server does: a follower ignores a snapshot whose
   membership does not include it (one taken before it was added). Report the outcome of
   every snapshot sent with `report_snapshot(id, ok)` (until then the follower gets
   nothing else), and peers that could not be reached with `report_unreachable(id)`.
4. Log compaction is the host's: record a snapshot of the state machine at an applied
   index in storage, then compact storage up to at most that index.

Start a brand-new group with `RawNode.bootstrap(config, storage, voters)` on every
initial member (storage must be empty); a member added later starts with
`RawNode(config, empty_storage)` and learns everything from the leader; a restart is
`RawNode(config, storage)` with ``config.applied`` set to what the state machine holds.
A removed member should keep running (answering votes) until the remaining members have
applied its removal, or a two-member group that lost the commit notice could stall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from etcdstore.raft.codec import encode_conf_change
from etcdstore.raft.errors import ConfigError, RaftError
from etcdstore.raft.progress import ProgressState
from etcdstore.raft.raft import Config, Raft
from etcdstore.raft.records import (
    LOCAL_MESSAGES,
    NONE,
    RESPONSE_MESSAGES,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)
from etcdstore.raft.storage import Storage

_EMPTY_HARD_STATE = HardState()


class Ready:
    """One batch of work for the host; fields listed in the order they must be handled."""

    __slots__ = (
        "can_send_early",
        "committed_entries",
        "entries",
        "hard_state",
        "messages",
        "must_sync",
        "read_states",
        "snapshot",
        "soft_state",
    )

    def __init__(
        self,
        entries: list[Entry],
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        messages: list[Message],
        committed_entries: list[Entry],
        read_states: list[ReadState],
        soft_state: SoftState | None,
        must_sync: bool,
        can_send_early: bool,
    ) -> None:
        self.entries = entries  # to persist (may replace a stored suffix)
        self.hard_state = hard_state  # to persist; None when unchanged
        self.snapshot = snapshot  # to persist and install; usually None
        self.messages = messages  # to send once the above is durable (see can_send_early)
        self.committed_entries = committed_entries  # to apply, in order
        self.read_states = read_states  # reads that may be served once applied >= index
        self.soft_state = soft_state  # leader / role, when changed
        self.must_sync = must_sync  # entries, term or vote changed: fsync before sending
        self.can_send_early = can_send_early  # messages may go out before persisting

    def __repr__(self) -> str:
        parts = []
        if self.entries:
            parts.append(f"entries[{self.entries[0].index}..{self.entries[-1].index}]")
        if self.hard_state is not None:
            parts.append(repr(self.hard_state))
        if self.snapshot is not None:
            parts.append(repr(self.snapshot))
        if self.messages:
            parts.append(f"{len(self.messages)} msgs")
        if self.committed_entries:
            parts.append(f"committed[{self.committed_entries[0].index}..{self.committed_entries[-1].index}]")
        if self.read_states:
            parts.append(f"{len(self.read_states)} reads")
        if self.soft_state is not None:
            parts.append(repr(self.soft_state))
        return "Ready(" + ", ".join(parts) + ")"


@dataclass(slots=True, frozen=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    recent_active: bool
    paused: bool
    inflight: int
    pending_snapshot: int


@dataclass(slots=True, frozen=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    last_index: int
    leader: int
    role: Role
    lead_transferee: int
    conf_state: ConfState
    progress: dict[int, ProgressStatus]  # only on the leader


class RawNode:
    __slots__ = ("_outstanding", "_prev_hard", "_prev_soft", "raft")

    def __init__(self, config: Config, storage: Storage) -> None:
        """Start (or restart) a node from whatever `storage` holds."""
        self.raft = Raft(config, storage)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._outstanding: Ready | None = None

    @classmethod
    def bootstrap(
        cls,
        config: Config,
        storage: Storage,
        voters: Sequence[int],
        learners: Sequence[int] = (),
        contexts: Mapping[int, bytes] | None = None,
    ) -> RawNode:
        """Create the first members of a new group. Every initial member must be bootstrapped
        with the same voters/learners/contexts: the membership becomes the first log
        entries (one committed conf change per member, term 1), so the host sees them
        through `committed_entries` like any later change (re-applying them is a no-op)."""
        if not voters:
            raise ConfigError("a new group needs at least one voter")
        if (
            set(voters) & set(learners)
            or len(set(voters)) != len(voters)
            or len(set(learners)) != len(learners)
        ):
            raise ConfigError("voters and learners must be distinct ids")
        if storage.last_index() != 0 or not storage.initial_state()[0].is_empty():
            raise ConfigError("cannot bootstrap over non-empty storage; restart from it instead")
        node = cls(config, storage)
        r = node.raft
        r.become_follower(1, NONE)
        contexts = contexts or {}
        changes = [ConfChange(ConfChangeType.ADD_NODE, v, contexts.get(v, b"")) for v in voters]
        changes += [ConfChange(ConfChangeType.ADD_LEARNER_NODE, v, contexts.get(v, b"")) for v in learners]
        ents = [
            Entry(1, k + 1, EntryType.CONF_CHANGE, encode_conf_change(cc)) for k, cc in enumerate(changes)
        ]
        r.log.append(ents)
        r.log.committed = len(ents)
        for cc in changes:
            r.apply_conf_change(cc)
        node._prev_hard = _EMPTY_HARD_STATE  # nothing is durable yet: the first Ready persists it all
        return node

    # -- inputs -----------------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (PreVote first when enabled)."""
        self.raft.step(Message(MessageType.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        self.propose_batch([data])

    def propose_batch(self, datas: list[bytes]) -> None:
        """Propose many normal entries at once (one append, one message per follower)."""
        if not datas:
            return
        r = self.raft
        if r.role == Role.LEADER:
            r.propose_local(datas)
            return
        err = r.step(Message(MessageType.PROP, frm=r.id, entries=[Entry(data=d) for d in datas]))
        if err is not None:
            raise err

    def propose_conf_change(self, change: ConfChange) -> None:
        """Propose a membership change; it takes effect when the host applies its entry."""
        r = self.raft
        ent = Entry(type=EntryType.CONF_CHANGE, data=encode_conf_change(change))
        err = r.step(Message(MessageType.PROP, frm=r.id, entries=[ent]))
        if err is not None:
            raise err

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; answered by a `ReadState` carrying `context`
        (which must be unique among pending requests). Raises ReadIndexDropped with no leader."""
        err = self.raft.step(Message(MessageType.READ_INDEX, entries=[Entry(data=context)]))
        if err is not None:
            raise err

    def transfer_leadership(self, to: int) -> None:
        """Ask the leader (directly, or via this follower) to hand leadership to `to`."""
        self.raft.step(Message(MessageType.TRANSFER_LEADER, frm=to, index=to))

    def step(self, message: Message) -> None:
        """Feed a message received from a peer. Local-only message types are ignored, as are
        responses from nodes that are not members."""
        t = message.type
        if t in LOCAL_MESSAGES:
            return
        if t in RESPONSE_MESSAGES and message.frm not in self.raft.trk.progress:
            return
        self.raft.step(message)

    def begin_batch(self) -> None:
        """Start stepping a batch of messages and proposals: the leader's appends and commit
        updates are broadcast once, at end_batch, rather than once per message or proposal."""
        self.raft.batching = True

    def end_batch(self) -> None:
        r = self.raft
        r.batching = False
        if r.bcast_owed:
            r.bcast_owed = False
            if r.role == Role.LEADER:  # a node that stepped down mid-batch owes nothing
                r.bcast_append()

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(change)

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=not ok))

    # -- outputs ---------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        r = self.raft
        if r.msgs or r.read_states:
            return True
        log = r.log
        u = log.unstable
        if u.entries or u.snapshot is not None:
            return True
        if log.has_next_entries():
            return True
        ps = self._prev_soft
        if r.lead != ps.leader or r.role != ps.role:
            return True
        ph = self._prev_hard
        return r.term != ph.term or r.vote != ph.vote or log.committed != ph.commit

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise RaftError("ready() called again before advance() of the previous Ready")
        r = self.raft
        if r.batching:
            raise RaftError("ready() called inside a step batch (end_batch first)")
        log = r.log
        entries = log.unstable_entries()
        committed = log.next_entries() if log.has_next_entries() else []
        soft = None
        if r.lead != self._prev_soft.leader or r.role != self._prev_soft.role:
            soft = self._prev_soft = r.soft_state()
        ph = self._prev_hard
        hard = None
        if r.term != ph.term or r.vote != ph.vote or log.committed != ph.commit:
            hard = r.hard_state()
        snap = log.unstable.snapshot
        msgs, r.msgs = r.msgs, []
        reads, r.read_states = r.read_states, []
        term_or_vote_changed = hard is not None and (hard.term != ph.term or hard.vote != ph.vote)
        rd = Ready(
            entries,
            hard,
            snap,
            msgs,
            committed,
            reads,
            soft,
            bool(entries) or term_or_vote_changed or snap is not None,
            r.role == Role.LEADER and not term_or_vote_changed and snap is None,
        )
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The host persisted, sent and applied everything in `rd`."""
        if rd is not self._outstanding:
            raise RaftError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        r = self.raft
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.committed_entries:
            r.on_applied(rd.committed_entries[-1].index, rd.committed_entries)
        elif rd.snapshot is not None:
            r.log.applied_to(rd.snapshot.metadata.index)
        if rd.snapshot is not None:
            r.on_snapshot_persisted(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)

    # -- introspection ---------------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def leader_id(self) -> int:
        return self.raft.lead

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def commit_index(self) -> int:
        return self.raft.log.committed

    @property
    def applied_index(self) -> int:
        return self.raft.log.applied

    @property
    def is_learner(self) -> bool:
        return self.raft.is_learner

    def status(self) -> Status:
        r = self.raft
        progress: dict[int, ProgressStatus] = {}
        if r.role == Role.LEADER:
            for pid, pr in sorted(r.trk.progress.items()):
                progress[pid] = ProgressStatus(
                    pr.match,
                    pr.next,
                    pr.state,
                    pr.is_learner,
                    pr.recent_active,
                    pr.is_paused(),
                    pr.inflights.count(),
                    pr.pending_snapshot,
                )
        return Status(
            r.id,
            r.term,
            r.vote,
            r.log.committed,
            r.log.applied,
            r.log.last_index(),
            r.lead,
            r.role,
            r.lead_transferee,
            r.trk.conf_state(),
            progress,
        )
