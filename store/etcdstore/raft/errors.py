"""Errors raised by the Raft core, its storage and its codec."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of everything this package raises on purpose."""


class ProposalDropped(RaftError):
    """The node cannot accept the proposal now; the caller should retry later or elsewhere."""


class ReadIndexDropped(ProposalDropped):
    """A read-index request cannot be served now (no known leader)."""


class ConfigError(RaftError, ValueError):
    """Invalid `Config` or an inconsistent start-up state."""


class StorageError(RaftError):
    """Base class of the errors a `Storage` reports."""


class CompactedError(StorageError):
    """The requested index is older than the first index still kept (it was compacted away)."""


class UnavailableError(StorageError):
    """The requested index is newer than the last index stored."""


class SnapshotTemporarilyUnavailable(StorageError):
    """The storage cannot produce a snapshot right now; Raft retries later."""


class SnapshotOutOfDate(StorageError):
    """A snapshot older than the one already held was offered."""


class CodecError(RaftError, ValueError):
    """Bytes that do not decode to the expected record."""
