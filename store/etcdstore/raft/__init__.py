"""Raft consensus as a pure, deterministic state machine (in the shape of etcd's raft library).

The host drives a `RawNode` with ticks and messages and handles the `Ready` batches it
returns (see `rawnode` for the contract); `Storage` is how Raft reads the durable log,
`MemoryStorage` an in-memory implementation, `codec` the binary encoding of records.
"""

from etcdstore.raft.errors import (
    CodecError,
    CompactedError,
    ConfigError,
    ProposalDropped,
    RaftError,
    ReadIndexDropped,
    SnapshotOutOfDate,
    SnapshotTemporarilyUnavailable,
    StorageError,
    UnavailableError,
)
from etcdstore.raft.progress import ProgressState
from etcdstore.raft.raft import Config
from etcdstore.raft.rawnode import ProgressStatus, RawNode, Ready, Status
from etcdstore.raft.records import (
    NONE,
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
    SnapshotMetadata,
    SoftState,
)
from etcdstore.raft.storage import MemoryStorage, Storage

__all__ = [
    "NONE",
    "CodecError",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProgressState",
    "ProgressStatus",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadIndexDropped",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDate",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "Status",
    "Storage",
    "StorageError",
    "UnavailableError",
]
