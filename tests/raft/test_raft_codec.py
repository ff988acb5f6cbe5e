"""codec: every record round-trips; malformed input raises CodecError, never anything else."""

import random

import pytest
from etcdstore.raft import codec
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

ENTRIES = [
    Entry(1, 1, EntryType.NORMAL, b""),
    Entry(7, 2, EntryType.CONF_CHANGE, b"\x00\x01cc"),
    Entry(2**64 - 1, 2**63, EntryType.NORMAL, bytes(range(256)) * 3),
]
MESSAGES = [
    Message(MessageType.HEARTBEAT, to=2, frm=1, term=5, commit=9, context=b"read-1"),
    Message(MessageType.APP, to=3, frm=1, term=5, log_term=4, index=10, entries=ENTRIES, commit=9),
    Message(MessageType.APP_RESP, to=1, frm=3, term=5, index=10, reject=True, reject_hint=7, log_term=3),
    Message(
        MessageType.SNAP,
        to=4,
        frm=1,
        term=9,
        snapshot=Snapshot(SnapshotMetadata(100, 8, ConfState([1, 2, 3], [4])), b"state" * 1000),
    ),
    Message(MessageType.PRE_VOTE_RESP, to=1, frm=2, term=3, reject=True, commit=5, log_term=2),
    Message(MessageType.READ_INDEX, to=1, frm=2, entries=[Entry(data=b"ctx")]),
]


def test_entries_round_trip():
    for e in ENTRIES:
        assert codec.decode_entry(codec.encode_entry(e)) == e
    assert codec.decode_entries(codec.encode_entries(ENTRIES)) == ENTRIES
    assert codec.decode_entries(codec.encode_entries([])) == []
    # Decoded enum fields are the enum members, not bare ints.
    assert codec.decode_entry(codec.encode_entry(ENTRIES[1])).type is EntryType.CONF_CHANGE


def test_states_and_changes_round_trip():
    hs = HardState(3, 2, 99)
    assert codec.decode_hard_state(codec.encode_hard_state(hs)) == hs
    for cs in (ConfState(), ConfState([1, 2, 3]), ConfState([5], [7, 6])):
        assert codec.decode_conf_state(codec.encode_conf_state(cs)) == cs
    meta = SnapshotMetadata(12, 4, ConfState([1, 2], [3]))
    assert codec.decode_snapshot_metadata(codec.encode_snapshot_metadata(meta)) == meta
    for t in ConfChangeType:
        cc = ConfChange(t, 42, b"member json")
        out = codec.decode_conf_change(codec.encode_conf_change(cc))
        assert out == cc and out.type is t


@pytest.mark.parametrize("m", MESSAGES, ids=lambda m: m.type.name)
def test_messages_round_trip(m):
    data = codec.encode_message(m)
    out = codec.decode_message(data)
    assert out == m
    assert out.type is m.type
    assert codec.decode_message(memoryview(data)) == m
    assert codec.decode_message(bytearray(data)) == m


@pytest.mark.parametrize("m", MESSAGES, ids=lambda m: m.type.name)
def test_every_truncation_and_extension_is_rejected(m):
    data = codec.encode_message(m)
    for n in range(len(data)):
        with pytest.raises(CodecError):
            codec.decode_message(data[:n])
    with pytest.raises(CodecError, match="trailing"):
        codec.decode_message(data + b"\x00")


def test_bad_enum_values_and_flags_are_rejected():
    data = bytearray(codec.encode_message(MESSAGES[0]))
    bad_type = bytearray(data)
    bad_type[1] = 200
    with pytest.raises(CodecError, match="message type"):
        codec.decode_message(bytes(bad_type))
    bad_version = bytearray(data)
    bad_version[0] = 9
    with pytest.raises(CodecError, match="version"):
        codec.decode_message(bytes(bad_version))
    e = bytearray(codec.encode_entry(ENTRIES[0]))
    e[16] = 5
    with pytest.raises(CodecError, match="entry type"):
        codec.decode_entry(bytes(e))
    cc = bytearray(codec.encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, 1)))
    cc[0] = 9
    with pytest.raises(CodecError, match="conf change type"):
        codec.decode_conf_change(bytes(cc))
    with pytest.raises(CodecError, match="twice"):
        codec.decode_conf_state(
            codec.encode_conf_state(ConfState([1, 2]))[:8] + (1).to_bytes(8, "little") * 2
        )


def test_huge_counts_do_not_allocate_before_failing():
    # A count field claiming 2**32-1 entries in a tiny buffer must fail fast.
    with pytest.raises(CodecError, match="exceeds"):
        codec.decode_entries(b"\xff\xff\xff\xff" + b"\x00" * 30)


def test_random_garbage_only_raises_codec_error():
    rng = random.Random(5)
    valid = [codec.encode_message(m) for m in MESSAGES]
    for _ in range(3000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randint(0, 120))
        else:  # flip a few bytes of a valid encoding
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        for decode in (
            codec.decode_message,
            codec.decode_entries,
            codec.decode_conf_change,
            codec.decode_snapshot_metadata,
            codec.decode_hard_state,
        ):
            try:
                decode(data)
            except CodecError:
                pass
