"""Compact binary encoding of Raft records, for the durable log and the peer transport.

Little-endian, fixed-width integers (struct), every variable part length-prefixed:

    Entry            term:u64 index:u64 type:u8 len:u32 data
    entry list       count:u32 Entry*
    HardState        term:u64 vote:u64 commit:u64
    ConfState        nvoters:u32 nlearners:u32 voter:u64* learner:u64*
    SnapshotMetadata index:u64 term:u64 ConfState
    ConfChange       type:u8 node_id:u64 len:u32 context
    Message          version:u8(=1) type:u8 to:u64 frm:u64 term:u64 log_term:u64 index:u64
                     commit:u64 reject:u8 reject_hint:u64 len:u32 context  entry list
                     has_snapshot:u8 [SnapshotMetadata len:u64 data]

Decoders accept bytes, bytearray or memoryview, check every length against what is
left, reject unknown enum values and trailing bytes, and raise `CodecError` for
anything malformed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final, TypeVar

from etcdstore.raft.errors import CodecError
from etcdstore.raft.records import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

_ENTRY: Final = struct.Struct("<QQBI")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_U8: Final = struct.Struct("<B")
_HARD_STATE: Final = struct.Struct("<QQQ")
_CONF_STATE: Final = struct.Struct("<II")
_META: Final = struct.Struct("<QQ")
_CONF_CHANGE: Final = struct.Struct("<BQI")
_MESSAGE: Final = struct.Struct("<BBQQQQQQBQI")
MESSAGE_VERSION: Final = 1

_ENTRY_TYPES: Final = frozenset(int(t) for t in EntryType)
# Enum members by value (values are 0..n-1): indexing is much cheaper than Enum(value).
_MESSAGE_TYPE_BY_VALUE: Final = tuple(sorted(MessageType))
_ENTRY_TYPE_BY_VALUE: Final = tuple(sorted(EntryType))
_CONF_CHANGE_TYPES: Final = frozenset(int(t) for t in ConfChangeType)

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")


# -- encoding -----------------------------------------------------------------------------------
def _put_entries(parts: list[bytes], entries: list[Entry]) -> None:
    pack = _ENTRY.pack
    append = parts.append
    append(_U32.pack(len(entries)))
    for e in entries:
        data = e.data
        append(pack(e.term, e.index, e.type, len(data)))
        append(data)


def _conf_state_bytes(cs: ConfState) -> bytes:
    ids = cs.voters + cs.learners
    return _CONF_STATE.pack(len(cs.voters), len(cs.learners)) + struct.pack(f"<{len(ids)}Q", *ids)


def encode_entry(e: Entry) -> bytes:
    return _ENTRY.pack(e.term, e.index, e.type, len(e.data)) + e.data


def encode_entries(entries: list[Entry]) -> bytes:
    parts: list[bytes] = []
    _put_entries(parts, entries)
    return b"".join(parts)


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE.pack(hs.term, hs.vote, hs.commit)


def encode_conf_state(cs: ConfState) -> bytes:
    return _conf_state_bytes(cs)


def encode_snapshot_metadata(meta: SnapshotMetadata) -> bytes:
    return _META.pack(meta.index, meta.term) + _conf_state_bytes(meta.conf_state)


def encode_conf_change(cc: ConfChange) -> bytes:
    return _CONF_CHANGE.pack(cc.type, cc.node_id, len(cc.context)) + cc.context


def encode_message(m: Message) -> bytes:
    parts = [
        _MESSAGE.pack(
            MESSAGE_VERSION,
            m.type,
            m.to,
            m.frm,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            1 if m.reject else 0,
            m.reject_hint,
            len(m.context),
        ),
        m.context,
    ]
    _put_entries(parts, m.entries)
    snap = m.snapshot
    if snap is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01")
        parts.append(encode_snapshot_metadata(snap.metadata))
        parts.append(_U64.pack(len(snap.data)))
        parts.append(snap.data)
    return b"".join(parts)


# -- decoding -----------------------------------------------------------------------------------
class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: Buffer) -> None:
        self.buf = buf if isinstance(buf, bytes) else bytes(buf)
        self.pos = 0

    def unpack(self, s: struct.Struct) -> tuple[Any, ...]:
        pos = self.pos
        if pos + s.size > len(self.buf):
            raise CodecError(
                f"truncated input: need {s.size} bytes at offset {pos}, have {len(self.buf) - pos}"
            )
        self.pos = pos + s.size
        return s.unpack_from(self.buf, pos)

    def take(self, n: int) -> bytes:
        pos = self.pos
        if pos + n > len(self.buf):
            raise CodecError(f"truncated input: need {n} bytes at offset {pos}, have {len(self.buf) - pos}")
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def finish(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise CodecError(f"{len(self.buf) - self.pos} trailing bytes after {what}")


def _get_entry(r: _Reader) -> Entry:
    term, index, etype, n = r.unpack(_ENTRY)
    if etype not in _ENTRY_TYPES:
        raise CodecError(f"unknown entry type {etype}")
    return Entry(term, index, _ENTRY_TYPE_BY_VALUE[etype], r.take(n))


def _get_entries(r: _Reader) -> list[Entry]:
    (count,) = r.unpack(_U32)
    if count * _ENTRY.size > len(r.buf) - r.pos:
        raise CodecError(f"entry count {count} exceeds the remaining {len(r.buf) - r.pos} bytes")
    buf, pos, unpack_from, size = r.buf, r.pos, _ENTRY.unpack_from, _ENTRY.size
    end = len(buf)
    out: list[Entry] = []
    append = out.append
    types = _ENTRY_TYPE_BY_VALUE
    ntypes = len(types)
    for _ in range(count):
        if pos + size > end:
            raise CodecError(f"truncated entry header at offset {pos}")
        term, index, etype, n = unpack_from(buf, pos)
        pos += size
        if pos + n > end:
            raise CodecError(f"truncated entry data at offset {pos}: need {n} bytes")
        if etype >= ntypes:
            raise CodecError(f"unknown entry type {etype}")
        append(Entry(term, index, types[etype], buf[pos : pos + n]))
        pos += n
    r.pos = pos
    return out


def _get_conf_state(r: _Reader) -> ConfState:
    nv, nl = r.unpack(_CONF_STATE)
    if (nv + nl) * 8 > len(r.buf) - r.pos:
        raise CodecError(f"conf state of {nv}+{nl} ids exceeds the remaining input")
    ids = struct.unpack_from(f"<{nv + nl}Q", r.buf, r.pos)
    r.pos += (nv + nl) * 8
    voters, learners = ids[:nv], ids[nv:]
    if len(set(ids)) != len(ids):
        raise CodecError("conf state lists a node twice")
    return ConfState(voters, learners)


def _get_meta(r: _Reader) -> SnapshotMetadata:
    index, term = r.unpack(_META)
    return SnapshotMetadata(index, term, _get_conf_state(r))


def _decode(buf: Buffer, what: str, read: Callable[[_Reader], T]) -> T:
    r = _Reader(buf)
    try:
        out = read(r)
    except CodecError:
        raise
    except (struct.error, ValueError, OverflowError) as exc:
        raise CodecError(f"malformed {what}: {exc}") from exc
    r.finish(what)
    return out


def _get_hard_state(r: _Reader) -> HardState:
    return HardState(*r.unpack(_HARD_STATE))


def _get_conf_change(r: _Reader) -> ConfChange:
    ctype, node_id, n = r.unpack(_CONF_CHANGE)
    if ctype not in _CONF_CHANGE_TYPES:
        raise CodecError(f"unknown conf change type {ctype}")
    return ConfChange(ConfChangeType(ctype), node_id, r.take(n))


def _get_message(r: _Reader) -> Message:
    (version, mtype, to, frm, term, log_term, index, commit, reject, reject_hint, nctx) = r.unpack(_MESSAGE)
    if version != MESSAGE_VERSION:
        raise CodecError(f"unsupported message encoding version {version}")
    if mtype >= len(_MESSAGE_TYPE_BY_VALUE):
        raise CodecError(f"unknown message type {mtype}")
    if reject > 1:
        raise CodecError(f"bad reject flag {reject}")
    context = r.take(nctx)
    buf, pos = r.buf, r.pos
    if pos + 5 == len(buf) and buf[pos : pos + 5] == b"\x00\x00\x00\x00\x00":
        entries: list[Entry] = []  # the common case: no entries, no snapshot
        r.pos = pos + 5
        snapshot = None
    else:
        entries = _get_entries(r)
        (has_snap,) = r.unpack(_U8)
        snapshot = None
        if has_snap == 1:
            meta = _get_meta(r)
            (n,) = r.unpack(_U64)
            snapshot = Snapshot(meta, r.take(n))
        elif has_snap != 0:
            raise CodecError(f"bad snapshot flag {has_snap}")
    return Message(
        _MESSAGE_TYPE_BY_VALUE[mtype],
        to,
        frm,
        term,
        log_term,
        index,
        entries,
        commit,
        reject == 1,
        reject_hint,
        snapshot,
        context,
    )


def decode_entry(buf: Buffer) -> Entry:
    return _decode(buf, "entry", _get_entry)


def decode_entries(buf: Buffer) -> list[Entry]:
    return _decode(buf, "entry list", _get_entries)


def decode_hard_state(buf: Buffer) -> HardState:
    return _decode(buf, "hard state", _get_hard_state)


def decode_conf_state(buf: Buffer) -> ConfState:
    return _decode(buf, "conf state", _get_conf_state)


def decode_snapshot_metadata(buf: Buffer) -> SnapshotMetadata:
    return _decode(buf, "snapshot metadata", _get_meta)


def decode_conf_change(buf: Buffer) -> ConfChange:
    return _decode(buf, "conf change", _get_conf_change)


def decode_message(buf: Buffer) -> Message:
    return _decode(buf, "message", _get_message)
