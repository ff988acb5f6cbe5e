"""The Raft protocol as a deterministic state machine (no I/O, clocks, threads or sockets).

`Raft` reacts to ticks and messages by changing its state and queueing outgoing messages
in `msgs`; `RawNode` (rawnode.py) packages what the host must persist, send and apply.
The rules follow the Raft paper and etcd's library: PreVote, CheckQuorum with leader
lease, a no-op entry per term, commit by counting only entries of the current term,
per-follower flow control, fast log backtracking by term, single-step membership changes
applied on commit, leadership transfer, and ReadIndex in safe mode.

One deliberate difference from etcd 3.4: a leader counts itself toward the commit quorum
only for entries the host has made durable (reported through `RawNode.advance`), so the
host may send a leader's appends before writing them locally.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Final

from etcdstore.raft import confchange
from etcdstore.raft.codec import decode_conf_change
from etcdstore.raft.errors import (
    CodecError,
    CompactedError,
    ConfigError,
    ProposalDropped,
    RaftError,
    ReadIndexDropped,
    SnapshotTemporarilyUnavailable,
    StorageError,
)
from etcdstore.raft.log import RaftLog
from etcdstore.raft.progress import PROBE, REPLICATE, SNAPSHOT, Progress, ProgressTracker, VoteResult
from etcdstore.raft.read_only import ReadOnly
from etcdstore.raft.records import (
    NONE,
    ConfChange,
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
from etcdstore.raft.storage import Storage, payload_size

# Hot-path aliases (module globals resolve faster than enum class attributes).
HUP, BEAT, PROP, APP, APP_RESP = (
    MessageType.HUP,
    MessageType.BEAT,
    MessageType.PROP,
    MessageType.APP,
    MessageType.APP_RESP,
)
VOTE, VOTE_RESP, SNAP = MessageType.VOTE, MessageType.VOTE_RESP, MessageType.SNAP
HEARTBEAT, HEARTBEAT_RESP = MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP
UNREACHABLE, SNAP_STATUS, CHECK_QUORUM = (
    MessageType.UNREACHABLE,
    MessageType.SNAP_STATUS,
    MessageType.CHECK_QUORUM,
)
TRANSFER_LEADER, TIMEOUT_NOW = MessageType.TRANSFER_LEADER, MessageType.TIMEOUT_NOW
READ_INDEX, READ_INDEX_RESP = MessageType.READ_INDEX, MessageType.READ_INDEX_RESP
PRE_VOTE, PRE_VOTE_RESP = MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP
NORMAL, CONF_CHANGE = EntryType.NORMAL, EntryType.CONF_CHANGE
FOLLOWER, CANDIDATE, LEADER, PRE_CANDIDATE = Role.FOLLOWER, Role.CANDIDATE, Role.LEADER, Role.PRE_CANDIDATE

# Vote requests carry this context when they come from a leadership transfer: voters then
# ignore their leader lease (the old leader asked for the election).
CAMPAIGN_TRANSFER: Final = b"CampaignTransfer"
_PRE_ELECTION, _ELECTION, _TRANSFER = 0, 1, 2

_entry_type = attrgetter("type")


@dataclass(slots=True)
class Config:
    """Parameters of one Raft node.

    Sizes count entry payload bytes. ``max_size_per_msg``: None for unlimited, 0 for one
    entry per append. ``max_committed_size_per_ready``: 0 means "same as
    max_size_per_msg", None unlimited. ``max_uncommitted_entries_size``: None for no
    limit; otherwise a leader refuses proposals once its uncommitted tail would exceed
    it (a proposal is always accepted when the tail is empty). ``applied``: on restart,
    the index the host's state machine already reflects (entries up to it are not handed
    out again). ``rng`` drives the randomized election timeout; pass
    ``random.Random(seed)`` for reproducible runs (default: seeded with the node id).
    """

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    max_size_per_msg: int | None = 1 << 20
    max_committed_size_per_ready: int | None = 0
    max_uncommitted_entries_size: int | None = None
    max_inflight_msgs: int = 256
    check_quorum: bool = True
    pre_vote: bool = True
    disable_proposal_forwarding: bool = False
    rng: random.Random | None = field(default=None, repr=False)

    def validate(self) -> None:
        if self.id <= 0:
            raise ConfigError("node id must be a positive integer (0 means 'none')")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat_tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0:
            raise ConfigError("max_inflight_msgs must be greater than 0")
        for name in ("max_size_per_msg", "max_committed_size_per_ready", "max_uncommitted_entries_size"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name} must be >= 0 or None")


class Raft:
    """One node's protocol state. Driven by `tick`, `step` and the host's persistence reports."""

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.id
        max_committed = config.max_committed_size_per_ready
        if max_committed == 0:
            max_committed = config.max_size_per_msg
        self.log = RaftLog(storage, max_committed)
        hs, cs = storage.initial_state()
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = FOLLOWER
        self.is_learner = False
        self.msgs: list[Message] = []
        # Inside a step batch (RawNode.begin_batch) broadcasts are owed, not sent: one at the end
        # covers every entry and commit index the batch produced, instead of one MsgApp per event.
        self.batching = False
        self.bcast_owed = False
        self.read_states: list[ReadState] = []
        self.max_msg_size = config.max_size_per_msg
        self.max_uncommitted_size = config.max_uncommitted_entries_size
        self.uncommitted_size = 0
        self.trk = ProgressTracker(config.max_inflight_msgs)
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        # Index of a pending entry that removes (or demotes) this leader; while set the leader
        # takes no proposals, so its log ends with that change and the remaining voters can
        # hold everything it has (otherwise a removed ex-leader with a longer log could
        # refuse its vote to the only possible successor forever).
        self.self_removal_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.heartbeat_timeout = config.heartbeat_tick
        self.election_timeout = config.election_tick
        self.randomized_election_timeout = config.election_tick
        self.disable_proposal_forwarding = config.disable_proposal_forwarding
        self.rng = config.rng if config.rng is not None else random.Random(config.id)
        self._tick = self._tick_election
        self._step_role = self._step_follower

        confchange.restore(self.trk, cs, self.log.last_index())
        self._switch_to_config()
        if not hs.is_empty():
            self._load_state(hs)
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

    # -- small accessors -----------------------------------------------------------------------
    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def promotable(self) -> bool:
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner

    def _load_state(self, hs: HardState) -> None:
        log = self.log
        if hs.commit > log.last_index():
            raise ConfigError(
                f"persisted commit {hs.commit} is beyond the last stored index {log.last_index()}"
            )
        log.committed = max(hs.commit, log.committed)
        self.term = hs.term
        self.vote = hs.vote

    # -- sending -------------------------------------------------------------------------------
    def send(self, m: Message) -> None:
        m.frm = self.id
        t = m.type
        if (
            t != VOTE
            and t != VOTE_RESP
            and t != PRE_VOTE
            and t != PRE_VOTE_RESP
            and t != PROP
            and t != READ_INDEX
        ):
            m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send `to` the entries it is missing (or the commit index, or a snapshot)."""
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        nxt = pr.next
        if nxt >= log.first_index():
            try:
                log_term = log.term(nxt - 1)
                ents = log.entries(nxt, self.max_msg_size)
            except CompactedError:
                return self._send_snapshot(to, pr)
            if not ents and not send_if_empty:
                return False
            if ents:
                if pr.state == REPLICATE:
                    last = ents[-1].index
                    pr.next = last + 1
                    pr.inflights.add(last)
                else:
                    pr.probe_sent = True
            self.msgs.append(Message(APP, to, self.id, self.term, log_term, nxt - 1, ents, log.committed))
            return True
        return self._send_snapshot(to, pr)

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a peer that may be down
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty():
            raise RaftError("a follower needs a snapshot but storage has none")
        pr.become_snapshot(snap.metadata.index)
        self.send(Message(SNAP, to, snapshot=snap))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # Never tell a follower a commit index beyond what it is known to hold.
        commit = min(self.trk.progress[to].match, self.log.committed)
        self.msgs.append(Message(HEARTBEAT, to, self.id, self.term, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        if self.batching:
            self.bcast_owed = True
            return
        me = self.id
        last = self.log.last_index()
        for pid, pr in self.trk.progress.items():
            if pid != me and self.maybe_send_append(pid, True) and pr.state == REPLICATE:
                # Pipeline the rest of a large batch now (flow control permitting) rather
                # than one message per round trip.
                while pr.next <= last and self.maybe_send_append(pid, False):
                    pass

    def bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_context()
        me = self.id
        for pid in self.trk.progress:
            if pid != me:
                self.send_heartbeat(pid, ctx)

    # -- persistence reports from the host --------------------------------------------------------
    def on_persisted(self, index: int, term: int) -> None:
        """Entries up to (index, term) are durable on this node."""
        if self.log.stable_to(index, term) and self.role == LEADER:
            self._self_ack()

    def on_snapshot_persisted(self, index: int) -> None:
        self.log.stable_snap_to(index)

    def on_applied(self, index: int, entries: list[Entry]) -> None:
        self.log.applied_to(index)
        if self.self_removal_index and index >= self.self_removal_index:
            self.self_removal_index = 0  # applied and we still lead: it was a no-op for us
        if self.uncommitted_size and entries:
            self.uncommitted_size = max(0, self.uncommitted_size - payload_size(entries))

    def _self_ack(self) -> None:
        pr = self.trk.progress.get(self.id)
        if pr is not None and pr.maybe_update(self.log.persisted_index()) and self._maybe_commit():
            self._release_pending_read_index()
            self.bcast_append()

    def _maybe_commit(self) -> bool:
        return self.log.maybe_commit(self.trk.committed(), self.term)

    # -- role transitions -----------------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(self.election_timeout)
        self.lead_transferee = NONE
        self.trk.reset_votes()
        log = self.log
        nxt = log.last_index() + 1
        me = self.id
        for pid, pr in self.trk.progress.items():
            pr.match = 0
            pr.next = nxt
            pr.state = PROBE
            pr.pending_snapshot = 0
            pr.recent_active = False
            pr.probe_sent = False
            pr.inflights.reset()
            if pid == me:
                pr.match = log.persisted_index()
        self.pending_conf_index = 0
        self.self_removal_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []

    def become_follower(self, term: int, lead: int) -> None:
        self._step_role = self._step_follower
        self._reset(term)
        self._tick = self._tick_election
        self.lead = lead
        self.role = FOLLOWER

    def become_candidate(self) -> None:
        if self.role == LEADER:
            raise RaftError("invalid transition leader -> candidate")
        self._step_role = self._step_candidate
        self._reset(self.term + 1)
        self._tick = self._tick_election
        self.vote = self.id
        self.role = CANDIDATE

    def become_pre_candidate(self) -> None:
        if self.role == LEADER:
            raise RaftError("invalid transition leader -> pre-candidate")
        # No term change and no vote: a pre-election must not disturb anyone.
        self._step_role = self._step_candidate
        self.trk.reset_votes()
        self._tick = self._tick_election
        self.lead = NONE
        self.role = PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.role == FOLLOWER:
            raise RaftError("invalid transition follower -> leader")
        self._step_role = self._step_leader
        self._reset(self.term)
        self._tick = self._tick_heartbeat
        self.lead = self.id
        self.role = LEADER
        pr = self.trk.progress.get(self.id)
        if pr is not None:
            pr.become_replicate()
        # Any conf change in the uncommitted tail may still be pending; be conservative.
        log = self.log
        self.pending_conf_index = log.last_index()
        self.self_removal_index = self._find_self_removal(log.applied + 1, log.last_index())
        # The no-op of the new term: committing it commits everything before it.
        # It is not counted against the uncommitted-size limit.
        log.append([Entry(self.term, log.last_index() + 1)])

    # -- ticks ----------------------------------------------------------------------------------------
    def tick(self) -> None:
        self._tick()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self.step(Message(HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(CHECK_QUORUM, frm=self.id))
            if self.role == LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer did not finish in an election timeout
        if self.role != LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(BEAT, frm=self.id))

    # -- elections ------------------------------------------------------------------------------------
    def _has_unapplied_conf_change(self) -> bool:
        log = self.log
        if log.committed <= log.applied:
            return False
        ents = log.slice(max(log.applied + 1, log.first_index()), log.committed + 1, None)
        return CONF_CHANGE in map(_entry_type, ents)

    def _hup(self, kind: int) -> None:
        if self.role == LEADER:
            return
        if not self.promotable():
            return
        # Our membership may be about to change: let the host apply it first.
        if self._has_unapplied_conf_change():
            return
        self._campaign(kind)

    def _campaign(self, kind: int) -> None:
        if kind == _PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = PRE_VOTE
            term = self.term + 1  # pre-votes are asked for the term we would campaign in
        else:
            self.become_candidate()
            vote_msg = VOTE
            term = self.term
        if self._poll(self.id, True) == VoteResult.WON:
            # Single voter: we won already.
            if kind == _PRE_ELECTION:
                self._campaign(_ELECTION)
            else:
                self.become_leader()
                self.bcast_append()
            return
        log = self.log
        last = log.last_index()
        last_term = log.term(last)
        ctx = CAMPAIGN_TRANSFER if kind == _TRANSFER else b""
        for pid in sorted(self.trk.voters):
            if pid != self.id:
                self.send(Message(vote_msg, pid, term=term, index=last, log_term=last_term, context=ctx))

    def _poll(self, node: int, granted: bool) -> VoteResult:
        self.trk.record_vote(node, granted)
        return self.trk.tally_votes()[2]

    # -- the step function ----------------------------------------------------------------------------
    def step(self, m: Message) -> RaftError | None:
        """Process one message. Returns (does not raise) the reason a local proposal or read
        was dropped; network messages never produce errors."""
        term = m.term
        if m.reject and m.commit > self.log.committed and (m.type == VOTE_RESP or m.type == PRE_VOTE_RESP):
            self._learn_commit(m.commit, m.log_term)
        if term == 0:
            pass  # local message, or a forwarded proposal / read index
        elif term > self.term:
            t = m.type
            if t == VOTE or t == PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum and self.lead != NONE and self.election_elapsed < self.election_timeout
                )
                if in_lease and not force:
                    # Leader lease: we heard from a live leader within the minimum election
                    # timeout, so this candidate is disruptive; ignore it entirely.
                    return None
            if t == PRE_VOTE or (t == PRE_VOTE_RESP and not m.reject):
                # A pre-vote never changes our term; a granted pre-vote response carries the
                # future term we asked about, we bump it only if we win.
                pass
            elif t == APP or t == HEARTBEAT or t == SNAP:
                self.become_follower(term, m.frm)
            else:
                self.become_follower(term, NONE)
        elif term < self.term:
            t = m.type
            if t == HEARTBEAT or t == APP:
                # A leader of an older term is still around (we may have advanced our term
                # while partitioned). Tell it our term so it steps down, as the Raft paper's
                # AppendEntries reply does. etcd answers only with CheckQuorum or PreVote,
                # relying otherwise on our own vote requests to spread the term; but a node
                # that cannot campaign (it believes it was removed, yet a stale leader
                # re-added it) would then leave that leader stuck forever.
                self.send(Message(APP_RESP, m.frm))
            elif t == PRE_VOTE:
                # Answer, or a lagging pre-candidate could wait forever for responses.
                self.send(Message(PRE_VOTE_RESP, m.frm, term=self.term, reject=True))
            return None

        t = m.type
        if t == HUP:
            self._hup(_PRE_ELECTION if self.pre_vote else _ELECTION)
            return None
        if t == VOTE or t == PRE_VOTE:
            self._handle_vote_request(m)
            return None
        return self._step_role(m)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == PRE_VOTE and m.term > self.term)
        )
        resp = VOTE_RESP if m.type == VOTE else PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Answer with the term of the request: for pre-votes our own term may be older
            # and the pre-candidate would discard the answer as stale.
            # A node that believes itself a learner still answers: the candidate may know
            # of a promotion we have not applied yet (learner votes never count otherwise,
            # since candidates only tally their voters).
            self.send(Message(resp, m.frm, term=m.term))
            if m.type == VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            # Share our commit index: a candidate whose membership is stale may need exactly
            # that to apply a change that no longer requires our vote (e.g. we were removed
            # from a 2-voter group and our longer log makes us refuse the only voter left).
            log = self.log
            commit = log.committed
            self.send(
                Message(resp, m.frm, term=self.term, reject=True, commit=commit, log_term=log.term(commit))
            )

    def _learn_commit(self, commit: int, commit_term: int) -> None:
        """Adopt a commit index reported by a peer. Commitment is a fact independent of terms
        and roles, and matching the entry's term proves our log is identical up to it."""
        log = self.log
        if commit <= log.last_index() and log.match_term(commit, commit_term):
            log.commit_to(commit)

    # -- leader ---------------------------------------------------------------------------------------
    def _step_leader(self, m: Message) -> RaftError | None:
        t = m.type
        if t == APP_RESP:
            pr = self.trk.progress.get(m.frm)
            if pr is not None:
                self._handle_append_response(m, pr)
            return None
        if t == HEARTBEAT_RESP:
            pr = self.trk.progress.get(m.frm)
            if pr is not None:
                self._handle_heartbeat_response(m, pr)
            return None
        if t == PROP:
            return self._leader_propose(m)
        if t == BEAT:
            self.bcast_heartbeat()
            return None
        if t == CHECK_QUORUM:
            self._check_quorum()
            return None
        if t == READ_INDEX:
            self._leader_read_index(m)
            return None
        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return None
        if t == SNAP_STATUS:
            if pr.state != SNAPSHOT:
                return None
            if m.reject:
                pr.pending_snapshot = 0  # probe from where we were, not from the failed snapshot
            pr.become_probe()
            # Wait for the follower's answer (or a heartbeat interval) before the next append.
            pr.probe_sent = True
        elif t == UNREACHABLE:
            # Appends sent optimistically were probably lost.
            if pr.state == REPLICATE:
                pr.become_probe()
        elif t == TRANSFER_LEADER:
            self._leader_transfer(m.index or m.frm)
        return None

    def _check_quorum(self) -> None:
        me = self.id
        progress = self.trk.progress
        pr = progress.get(me)
        if pr is not None:
            pr.recent_active = True
        if not self.trk.quorum_active():
            self.become_follower(self.term, NONE)
        for pid, p in progress.items():
            if pid != me:
                p.recent_active = False

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        log = self.log
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of ours whose term the follower cannot have.
                hint = log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        state = pr.state
        if state == REPLICATE:
            pr.inflights.free_le(m.index)
        elif state == PROBE:
            pr.become_replicate()
        elif pr.match + 1 >= log.first_index():
            # Snapshot state: the follower caught up far enough to use the log again.
            pr.become_probe()
            pr.become_replicate()
        frm = m.frm
        if self._maybe_commit():
            self._release_pending_read_index()
            self.bcast_append()
        elif old_paused:
            self.send_append(frm)  # it may be missing our latest commit index
        # Flow control may allow several more appends now.
        last = log.last_index()
        while pr.next <= last and self.maybe_send_append(frm, False):
            pass
        if frm == self.lead_transferee and pr.match == log.last_index():
            self.send(Message(TIMEOUT_NOW, frm))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()  # let one append through so replication can resume
        if pr.match < self.log.last_index():
            self.send_append(m.frm)
        ctx = m.context
        if not ctx:
            return
        acks = self.read_only.recv_ack(m.frm, ctx)
        if acks is None or not self.trk.acks_won(acks):
            return
        for rs in self.read_only.advance(ctx):
            self._answer_read(rs.request, rs.index)

    def _leader_propose(self, m: Message) -> RaftError | None:
        if self.id not in self.trk.progress:
            return ProposalDropped("this node was removed from the group")
        if self.lead_transferee != NONE:
            return ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if self.self_removal_index:
            return ProposalDropped("this leader is being removed from the group")
        ents = m.entries
        if not ents:
            return None
        local = m.frm == self.id or m.frm == NONE
        log = self.log
        pending = self_removal = 0
        for k, e in enumerate(ents):
            if e.type != CONF_CHANGE:
                continue
            reason, cc = self._conf_change_refusal(e.data, pending)
            if reason is None:
                pending = log.last_index() + k + 1
                if cc is not None and self._removes_self(cc):
                    self_removal = pending
            elif local:
                return ProposalDropped(f"configuration change refused: {reason}")
            else:
                # Keep the rest of a forwarded batch; the proposer sees its change never apply.
                ents[k] = Entry(data=b"")
        err = self._append_proposal(ents)
        if err is None and pending:
            self.pending_conf_index = pending
            if self_removal:
                self.self_removal_index = self_removal
        return err

    def _conf_change_refusal(self, data: bytes, batch_pending: int) -> tuple[str | None, ConfChange | None]:
        if batch_pending or self.pending_conf_index > self.log.applied:
            return (
                f"a configuration change (index {batch_pending or self.pending_conf_index}) is not applied yet",
                None,
            )
        try:
            cc = decode_conf_change(data)
        except CodecError as exc:
            return f"undecodable conf change ({exc})", None
        return confchange.refusal(self.trk, cc), cc

    def _append_proposal(self, ents: list[Entry]) -> RaftError | None:
        limit = self.max_uncommitted_size
        if limit is not None:
            size = payload_size(ents)
            if self.uncommitted_size > 0 and self.uncommitted_size + size > limit:
                return ProposalDropped("too many uncommitted bytes in the log; retry once it commits")
            self.uncommitted_size += size
        log = self.log
        first = log.last_index() + 1
        term = self.term
        for k, e in enumerate(ents):
            e.term = term
            e.index = first + k
        log.append(ents)
        self.bcast_append()
        return None

    def propose_local(self, datas: list[bytes]) -> None:
        """Leader fast path for a batch of normal proposals (entries built already stamped)."""
        if self.id not in self.trk.progress:
            raise ProposalDropped("this node was removed from the group")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if self.self_removal_index:
            raise ProposalDropped("this leader is being removed from the group")
        limit = self.max_uncommitted_size
        if limit is not None:
            size = sum(map(len, datas))
            if self.uncommitted_size > 0 and self.uncommitted_size + size > limit:
                raise ProposalDropped("too many uncommitted bytes in the log; retry once it commits")
            self.uncommitted_size += size
        log = self.log
        first = log.last_index() + 1
        log.append(
            list(map(Entry, repeat(self.term), range(first, first + len(datas)), repeat(NORMAL), datas))
        )
        self.bcast_append()

    def _leader_read_index(self, m: Message) -> None:
        if self.trk.is_singleton():
            self._answer_read(m, self.log.committed)
            return
        if not self._committed_entry_in_current_term():
            # Our commit index may lag what an earlier leader committed until our no-op commits.
            self.pending_read_index_messages.append(m)
            return
        self._start_read_round(m)

    def _start_read_round(self, m: Message) -> None:
        ctx = m.entries[0].data
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, ctx)
        self.bcast_heartbeat(ctx)

    def _committed_entry_in_current_term(self) -> bool:
        try:
            return self.log.term(self.log.committed) == self.term
        except StorageError:
            return False

    def _release_pending_read_index(self) -> None:
        if not self.pending_read_index_messages or not self._committed_entry_in_current_term():
            return
        msgs, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in msgs:
            self._start_read_round(m)

    def _answer_read(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.entries[0].data))
        else:
            self.send(Message(READ_INDEX_RESP, req.frm, index=index, entries=req.entries))

    def _leader_transfer(self, transferee: int) -> None:
        pr = self.trk.progress.get(transferee)
        if pr is None or pr.is_learner:
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == transferee:
                return  # already under way
            self.lead_transferee = NONE
        if transferee == self.id:
            return
        # The transfer must finish within an election timeout, counted from now.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self.send(Message(TIMEOUT_NOW, transferee))
        else:
            self.send_append(transferee)

    # -- candidate ------------------------------------------------------------------------------------
    def _step_candidate(self, m: Message) -> RaftError | None:
        t = m.type
        my_resp = PRE_VOTE_RESP if self.role == PRE_CANDIDATE else VOTE_RESP
        if t == my_resp:
            result = self._poll(m.frm, not m.reject)
            if result == VoteResult.WON and not self.promotable():
                self.become_follower(self.term, NONE)  # defensive: never lead while not a voter
            elif result == VoteResult.WON:
                if self.role == PRE_CANDIDATE:
                    self._campaign(_ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif result == VoteResult.LOST:
                # A rejected pre-vote carries a future term; stay in ours.
                self.become_follower(self.term, NONE)
        elif t == APP:
            self.become_follower(m.term, m.frm)  # m.term == our term: someone else won
            self._handle_append_entries(m)
        elif t == HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == PROP:
            return ProposalDropped(f"no leader at term {self.term}")
        elif t == READ_INDEX:
            return ReadIndexDropped(f"no leader at term {self.term}")
        return None

    # -- follower -------------------------------------------------------------------------------------
    def _step_follower(self, m: Message) -> RaftError | None:
        t = m.type
        if t == APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t == HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == PROP:
            if self.lead == NONE:
                return ProposalDropped(f"no leader at term {self.term}")
            if self.disable_proposal_forwarding:
                return ProposalDropped(
                    f"not forwarding proposals to leader {self.lead} (forwarding disabled)"
                )
            self.send(Message(PROP, self.lead, entries=m.entries))
        elif t == READ_INDEX:
            if self.lead == NONE:
                return ReadIndexDropped(f"no leader at term {self.term}")
            self.send(Message(READ_INDEX, self.lead, entries=m.entries))
        elif t == READ_INDEX_RESP:
            if len(m.entries) == 1:
                self.read_states.append(ReadState(m.index, m.entries[0].data))
        elif t == TRANSFER_LEADER:
            if self.lead != NONE:
                # Forward, naming the transferee explicitly (we become the sender).
                self.send(Message(TRANSFER_LEADER, self.lead, index=m.index or m.frm))
        elif t == TIMEOUT_NOW:
            # Our leader asked us to take over: no pre-vote, and voters ignore their lease.
            self._hup(_TRANSFER)
        return None

    def _handle_append_entries(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self.send(Message(APP_RESP, m.frm, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(Message(APP_RESP, m.frm, index=last_new))
            return
        # Reject, with a hint that lets the leader skip whole terms: the last index of ours
        # whose term is <= the term the leader has at m.index.
        hint = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        try:
            hint_term = log.term(hint)
        except StorageError:
            hint_term = 0
        self.send(Message(APP_RESP, m.frm, index=m.index, reject=True, reject_hint=hint, log_term=hint_term))

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self.send(Message(HEARTBEAT_RESP, m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self._restore(snap):
            self.send(Message(APP_RESP, m.frm, index=self.log.last_index()))
        else:
            self.send(Message(APP_RESP, m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        """Install a leader's snapshot; False if it is stale or already covered by our log."""
        meta = snap.metadata
        log = self.log
        if meta.index <= log.committed:
            return False
        if self.role != FOLLOWER:
            return False  # only followers install snapshots (defence in depth)
        cs = meta.conf_state
        if self.id not in cs.voters and self.id not in cs.learners:
            return False  # not addressed to a member: never adopt it
        if log.match_term(meta.index, meta.term):
            # We have the entry: just move the commit index forward.
            log.commit_to(meta.index)
            return False
        log.restore(snap)
        confchange.restore(self.trk, cs, log.last_index())
        self._switch_to_config()
        return True

    # -- membership ----------------------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        confchange.apply(self.trk, cc, self.log.last_index())
        return self._switch_to_config()

    def _switch_to_config(self) -> ConfState:
        cs = self.trk.conf_state()
        pr = self.trk.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if self.role != LEADER:
            if self.role != FOLLOWER and (pr is None or self.is_learner):
                # Removed or demoted mid-campaign (the commit index can move while campaigning,
                # see _learn_commit): stop, we may not lead.
                self.become_follower(self.term, NONE)
            return cs
        if pr is None or self.is_learner:
            self._step_down_after_removal()
            return cs
        if self._maybe_commit():
            self.bcast_append()
        else:
            me = self.id
            for pid in self.trk.progress:
                if pid != me:
                    self.maybe_send_append(pid, False)  # probe newcomers without waiting
        if self.lead_transferee != NONE and self.lead_transferee not in self.trk.progress:
            self.lead_transferee = NONE
        return cs

    def _removes_self(self, cc: ConfChange) -> bool:
        return cc.node_id == self.id and cc.type in (confchange.REMOVE_NODE, confchange.ADD_LEARNER_NODE)

    def _find_self_removal(self, lo: int, hi: int) -> int:
        """Index of the last entry in [lo, hi] that removes or demotes us (0 if none)."""
        if hi < lo:
            return 0
        found = 0
        for e in self.log.slice(max(lo, self.log.first_index()), hi + 1, None):
            if e.type == CONF_CHANGE:
                try:
                    if self._removes_self(decode_conf_change(e.data)):
                        found = e.index
                except CodecError:
                    pass
        return found

    def _step_down_after_removal(self) -> None:
        """We lead but are no longer a voter. Tell everyone our commit index, hand leadership
        to the most up-to-date voter right away, and step down."""
        if self.trk.voters:
            self._maybe_commit()
            self.bcast_append()
            last = self.log.last_index()
            progress = self.trk.progress
            best = max(sorted(self.trk.voters), key=lambda v: progress[v].match)
            if progress[best].match == last:
                self.send(Message(TIMEOUT_NOW, best))
        self.become_follower(self.term, NONE)
