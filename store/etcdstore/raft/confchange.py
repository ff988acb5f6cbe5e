"""Single-step membership changes applied to a `ProgressTracker`.

A change takes effect when the host applies its (committed) entry, as in etcd's library;
only one may be pending at a time, so consecutive configurations differ by one member
and any two majorities of them intersect.
"""

from __future__ import annotations

from etcdstore.raft.progress import Progress, ProgressTracker
from etcdstore.raft.records import ConfChange, ConfChangeType, ConfState

ADD_NODE = ConfChangeType.ADD_NODE
ADD_LEARNER_NODE = ConfChangeType.ADD_LEARNER_NODE
REMOVE_NODE = ConfChangeType.REMOVE_NODE
UPDATE_NODE = ConfChangeType.UPDATE_NODE


def _new_progress(tracker: ProgressTracker, last_index: int, learner: bool) -> Progress:
    # Probe from our last index; count the newcomer as active so that CheckQuorum does not
    # hold its silence against us before it had a chance to answer (and so it can be sent
    # a snapshot straight away).
    pr = Progress(max(last_index, 1), tracker.max_inflight, is_learner=learner)
    pr.recent_active = True
    return pr


def restore(tracker: ProgressTracker, cs: ConfState, last_index: int) -> None:
    """Reset `tracker` to exactly the membership `cs`."""
    tracker.voters = set(cs.voters)
    tracker.learners = set(cs.learners)
    tracker.progress = {}
    tracker.votes = {}
    for v in cs.voters:
        tracker.progress[v] = _new_progress(tracker, last_index, False)
    for v in cs.learners:
        tracker.progress[v] = _new_progress(tracker, last_index, True)


def refusal(tracker: ProgressTracker, cc: ConfChange) -> str | None:
    """Why a leader should refuse to propose `cc` against the current membership, if it should."""
    if cc.node_id == 0:
        return "node id 0 is reserved"
    if cc.type not in (ADD_NODE, ADD_LEARNER_NODE, REMOVE_NODE, UPDATE_NODE):
        return f"unknown conf change type {cc.type}"
    if cc.type in (REMOVE_NODE, ADD_LEARNER_NODE) and tracker.voters == {cc.node_id}:
        return "the change would leave the group without voters"
    return None


def apply(tracker: ProgressTracker, cc: ConfChange, last_index: int) -> None:
    """Apply a committed change. Changes that are no-ops (adding a present member, removing
    an absent one) or invalid (removing the last voter) leave the membership unchanged, so
    every member applying the same log reaches the same membership."""
    node = cc.node_id
    voters, learners, progress = tracker.voters, tracker.learners, tracker.progress
    if node == 0:
        return
    kind = cc.type
    if kind == ADD_NODE:
        if node in voters:
            return
        if node in learners:  # promotion keeps the progress learned so far
            learners.discard(node)
            progress[node].is_learner = False
        else:
            progress[node] = _new_progress(tracker, last_index, False)
        voters.add(node)
    elif kind == ADD_LEARNER_NODE:
        if node in learners:
            return
        if node in voters:  # demotion
            if len(voters) == 1:
                return
            voters.discard(node)
            progress[node].is_learner = True
        else:
            progress[node] = _new_progress(tracker, last_index, True)
        learners.add(node)
    elif kind == REMOVE_NODE:
        if node not in progress:
            return
        if node in voters:
            if len(voters) == 1:
                return
            voters.discard(node)
        learners.discard(node)
        del progress[node]
        tracker.votes.pop(node, None)
    # UPDATE_NODE (and anything unknown) changes nothing Raft tracks.
