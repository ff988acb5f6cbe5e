"""The plain records Raft persists and exchanges: entries, states, snapshots, messages.

All are small mutable classes with ``__slots__`` (cheap to build on the hot path); they
compare by value so tests and the codec can check round trips. Numbering of the enums
follows etcd's raftpb so logs and traces read the same.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MessageType(IntEnum):
    HUP = 0  # local: start an election
    BEAT = 1  # local: leader should broadcast heartbeats
    PROP = 2  # proposal (local, or forwarded by a follower)
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10  # local: host could not reach a peer
    SNAP_STATUS = 11  # local: host reports the outcome of sending a snapshot
    CHECK_QUORUM = 12  # local
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


# Message types that only ever originate inside the node itself; `RawNode.step` ignores
# them when they come from the network.
LOCAL_MESSAGES: Final = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)
# Responses: only meaningful from a peer the node tracks.
RESPONSE_MESSAGES: Final = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.PRE_VOTE_RESP,
    }
)


class ConfChangeType(IntEnum):
    ADD_NODE = 0
    REMOVE_NODE = 1
    UPDATE_NODE = 2
    ADD_LEARNER_NODE = 3


class Role(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


NONE: Final = 0  # "no node": no leader known, no vote cast


class Entry:
    __slots__ = ("data", "index", "term", "type")

    def __init__(
        self, term: int = 0, index: int = 0, type: int = EntryType.NORMAL, data: bytes = b""
    ) -> None:
        self.term = term
        self.index = index
        self.type = type
        self.data = data

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Entry)
            and self.index == other.index
            and self.term == other.term
            and self.type == other.type
            and self.data == other.data
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        kind = "" if self.type == EntryType.NORMAL else " conf"
        return f"Entry({self.term}/{self.index}{kind} {self.data[:16]!r})"


class HardState:
    """What must be durable before any message that depends on it leaves the node."""

    __slots__ = ("commit", "term", "vote")

    def __init__(self, term: int = 0, vote: int = NONE, commit: int = 0) -> None:
        self.term = term
        self.vote = vote
        self.commit = commit

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == 0 and self.commit == 0

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HardState)
            and self.term == other.term
            and self.vote == other.vote
            and self.commit == other.commit
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"HardState(term={self.term}, vote={self.vote}, commit={self.commit})"


class ConfState:
    """Membership: voters and learners (disjoint), each a sorted tuple of node ids."""

    __slots__ = ("learners", "voters")

    def __init__(
        self, voters: tuple[int, ...] | list[int] = (), learners: tuple[int, ...] | list[int] = ()
    ) -> None:
        self.voters = tuple(sorted(voters))
        self.learners = tuple(sorted(learners))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfState) and self.voters == other.voters and self.learners == other.learners
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"ConfState(voters={list(self.voters)}, learners={list(self.learners)})"


class SnapshotMetadata:
    __slots__ = ("conf_state", "index", "term")

    def __init__(self, index: int = 0, term: int = 0, conf_state: ConfState | None = None) -> None:
        self.index = index
        self.term = term
        self.conf_state = conf_state if conf_state is not None else ConfState()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SnapshotMetadata)
            and self.index == other.index
            and self.term == other.term
            and self.conf_state == other.conf_state
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"SnapshotMetadata(index={self.index}, term={self.term}, {self.conf_state!r})"


class Snapshot:
    """A state-machine image at `metadata.index`; `data` is opaque to Raft."""

    __slots__ = ("data", "metadata")

    def __init__(self, metadata: SnapshotMetadata | None = None, data: bytes = b"") -> None:
        self.metadata = metadata if metadata is not None else SnapshotMetadata()
        self.data = data

    def is_empty(self) -> bool:
        return self.metadata.index == 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self.metadata == other.metadata and self.data == other.data

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"Snapshot({self.metadata!r}, {len(self.data)} bytes)"


class ConfChange:
    """A single-step membership change. `context` is opaque to Raft (etcd puts the member there)."""

    __slots__ = ("context", "node_id", "type")

    def __init__(self, type: int, node_id: int, context: bytes = b"") -> None:
        self.type = type
        self.node_id = node_id
        self.context = context

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfChange)
            and self.type == other.type
            and self.node_id == other.node_id
            and self.context == other.context
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"ConfChange({ConfChangeType(self.type).name}, {self.node_id})"


class ReadState:
    """A linearizable read may be served once the state machine has applied `index`."""

    __slots__ = ("index", "request_ctx")

    def __init__(self, index: int, request_ctx: bytes) -> None:
        self.index = index
        self.request_ctx = request_ctx

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReadState)
            and self.index == other.index
            and self.request_ctx == other.request_ctx
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"ReadState(index={self.index}, ctx={self.request_ctx!r})"


class SoftState:
    """Volatile state the host may want to observe: who leads, and our role."""

    __slots__ = ("leader", "role")

    def __init__(self, leader: int, role: Role) -> None:
        self.leader = leader
        self.role = role

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoftState) and self.leader == other.leader and self.role == other.role

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        return f"SoftState(leader={self.leader}, role={self.role.name})"


class Message:
    """One Raft message. `term` 0 marks a local message (or a forwarded proposal/read)."""

    __slots__ = (
        "commit",
        "context",
        "entries",
        "frm",
        "index",
        "log_term",
        "reject",
        "reject_hint",
        "snapshot",
        "term",
        "to",
        "type",
    )

    def __init__(
        self,
        type: int,
        to: int = NONE,
        frm: int = NONE,
        term: int = 0,
        log_term: int = 0,
        index: int = 0,
        entries: list[Entry] | None = None,
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        snapshot: Snapshot | None = None,
        context: bytes = b"",
    ) -> None:
        self.type = type
        self.to = to
        self.frm = frm
        self.term = term
        self.log_term = log_term
        self.index = index
        self.entries = entries if entries is not None else []
        self.commit = commit
        self.reject = reject
        self.reject_hint = reject_hint
        self.snapshot = snapshot
        self.context = context

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return False
        return all(getattr(self, f) == getattr(other, f) for f in Message.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as in a dataclass

    def __repr__(self) -> str:
        parts = [f"{MessageType(self.type).name} {self.frm}->{self.to} t{self.term}"]
        if self.log_term or self.index:
            parts.append(f"lt{self.log_term} i{self.index}")
        if self.entries:
            parts.append(f"ents[{self.entries[0].index}..{self.entries[-1].index}]")
        if self.commit:
            parts.append(f"c{self.commit}")
        if self.reject:
            parts.append(f"reject(hint {self.reject_hint})")
        if self.snapshot is not None:
            parts.append(repr(self.snapshot.metadata))
        if self.context:
            parts.append(f"ctx={self.context!r}")
        return "Message(" + " ".join(parts) + ")"
