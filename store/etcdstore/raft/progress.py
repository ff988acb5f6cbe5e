"""What a leader knows about each member: replication progress, flow control, votes, quorum.

Single-step membership only (no joint configurations): one voter set, one learner set.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from etcdstore.raft.records import ConfState


class ProgressState(IntEnum):
    PROBE = 0  # one append per heartbeat until the follower's match is found
    REPLICATE = 1  # stream appends, up to max_inflight_msgs unacknowledged
    SNAPSHOT = 2  # a snapshot is on its way; send nothing until it is reported


PROBE = ProgressState.PROBE
REPLICATE = ProgressState.REPLICATE
SNAPSHOT = ProgressState.SNAPSHOT


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


class Inflights:
    """Last indexes of the appends sent but not yet acknowledged (a bounded FIFO)."""

    __slots__ = ("_q", "capacity")

    def __init__(self, capacity: int) -> None:
        self._q: deque[int] = deque()
        self.capacity = capacity

    def add(self, last_index: int) -> None:
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False, match: int = 0) -> None:
        self.match = match
        self.next = next_index
        self.state = PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # Coming out of a snapshot, probe right after it (the follower has it by now).
        if self.state == SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """The peer acknowledged entries up to `n`; False if that is old news."""
        updated = False
        if self.match < n:
            self.match = n
            self.probe_sent = False
            updated = True
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected an append at `rejected`; back off Next. False if the rejection is stale."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # probes go one at a time: anything else is a stale answer
        self.next = max(min(rejected, match_hint + 1), 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        state = self.state
        if state == REPLICATE:
            return self.inflights.full()
        if state == PROBE:
            return self.probe_sent
        return True

    def __repr__(self) -> str:
        s = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.pending_snapshot:
            s += f" pending_snap={self.pending_snapshot}"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
        return s


class ProgressTracker:
    """Membership plus per-member progress and votes."""

    __slots__ = ("learners", "max_inflight", "progress", "voters", "votes")

    def __init__(self, max_inflight: int) -> None:
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight

    def conf_state(self) -> ConfState:
        return ConfState(sorted(self.voters), sorted(self.learners))

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> int:
        """Largest index acknowledged by a majority of voters (0 with no voters)."""
        voters = self.voters
        n = len(voters)
        if n == 0:
            return 0
        progress = self.progress
        if n == 1:
            for v in voters:
                return progress[v].match
        matches = sorted([progress[v].match for v in voters])
        return matches[n - (n // 2 + 1)]

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        votes = self.votes
        for v in self.voters:
            got = votes.get(v)
            if got is True:
                granted += 1
            elif got is False:
                rejected += 1
        return granted, rejected, self.vote_result_of(granted, rejected)

    def vote_result_of(self, granted: int, rejected: int) -> VoteResult:
        q = self.quorum()
        if granted >= q:
            return VoteResult.WON
        if len(self.voters) - rejected < q:
            return VoteResult.LOST
        return VoteResult.PENDING

    def acks_won(self, acks: set[int]) -> bool:
        """Did a majority of voters acknowledge (used by ReadIndex heartbeat rounds)?"""
        return len(self.voters & acks) >= self.quorum()

    def quorum_active(self) -> bool:
        progress = self.progress
        active = sum(1 for v in self.voters if progress[v].recent_active)
        return active >= self.quorum()
