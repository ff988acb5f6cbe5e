"""etcd 3.4's snapshot file: its bbolt database (buckets and encodings as etcd writes them) + sha256.

What `Maintenance.Snapshot` streams, what `etcdctl snapshot save` stores and what
`etcdctl snapshot status|restore` and `etcdstore snapshot status|restore` read. Buckets, and how
each maps to this store's column families (see docs/snapshots.md):

    key              revision bytes (8-byte BE main | '_' | 8-byte BE sub [| 't' for a tombstone])
                     -> mvccpb.KeyValue                     KEY: the same bytes both ways
    meta             consistent_index (u64 BE), scheduledCompactRev, finishedCompactRev (revision
                     bytes)                                 META: the same keys (our "term" stays out)
    lease            lease ID (u64 BE) -> leasepb.Lease{ID, TTL, RemainingTTL}
                                                            LEASE: (id, ttl, remaining) records
    auth             authEnabled (1 byte), authRevision (u64 BE)          AUTH: the same
    authUsers        name -> authpb.User                    AUTH_USERS: the same
    authRoles        name -> authpb.Role                    AUTH_ROLES: the same
    members          member ID in hex -> member JSON        MEMBERS: member/<u64 BE> -> the same JSON
    members_removed  member ID in hex -> "removed"          MEMBERS: removed/<u64 BE>
    cluster          clusterVersion -> "3.4.0"              (not stored)
    alarm            etcdserverpb.AlarmMember bytes -> ""    ALARM: <member u64 BE, alarm u32 BE>

The snapshot stream is the database followed by the sha256 of the database, as etcd's
maintenance server sends it; etcd's snapshot tools recognise that trailer by the file length
(512*k + 32) and refuse a mismatch.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator

import crc32c

from etcdstore.lease.lessor import _KEY as LEASE_KEY
from etcdstore.lease.lessor import _RECORD as LEASE_RECORD
from etcdstore.membership import MEMBER_PREFIX, REMOVED_PREFIX, Member
from etcdstore.mvcc.kvstore import (
    CONSISTENT_INDEX_KEY,
    FINISHED_COMPACT_KEY,
    SCHEDULED_COMPACT_KEY,
)
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.snapshot import bbolt
from etcdstore.storage import backend as bk

SHA_SIZE = 32
CLUSTER_VERSION = b"3.4.0"  # what etcd 3.4.x records as its cluster version
_META_KEYS = (CONSISTENT_INDEX_KEY, FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY)
_ID = struct.Struct(">Q")
_ALARM_KEY = struct.Struct(">QI")  # server/alarms.py's key


class EtcdSnapshotError(ValueError):
    """A file that is not an etcd snapshot, or a damaged one."""


# -- detection and integrity -------------------------------------------------------------------------


def is_bbolt(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like a bbolt database (meta page magic)."""
    with open(path, "rb") as f:
        head = f.read(bbolt.HEADER + 8)
    return len(head) == bbolt.HEADER + 8 and struct.unpack_from("<II", head, bbolt.HEADER) == (
        bbolt.MAGIC,
        bbolt.VERSION,
    )


def has_checksum(size: int) -> bool:
    """etcd's test: a snapshot stream is page-aligned data plus a 32-byte sha256."""
    return size % 512 == SHA_SIZE


def verify_checksum(path: str | os.PathLike[str], *, skip_hash_check: bool = False) -> bool:
    """Check the sha256 trailer as `etcdctl snapshot restore` does; returns whether there is one.
    A file without a trailer (a db copied from a data dir) needs skip_hash_check, as in etcd."""
    size = os.path.getsize(path)
    if not has_checksum(size):
        if not skip_hash_check:
            raise EtcdSnapshotError("snapshot missing hash but --skip-hash-check=false")
        return False
    if skip_hash_check:
        return True
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size - SHA_SIZE
        while remaining:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                raise EtcdSnapshotError("snapshot file is truncated")
            sha.update(chunk)
            remaining -= len(chunk)
        expected = f.read(SHA_SIZE)
    if expected != sha.digest():
        raise EtcdSnapshotError(f"expected sha256 {expected.hex()}, got {sha.hexdigest()}")
    return True


def open_checked(path: str | os.PathLike[str]) -> bbolt.Reader:
    """Open the database and run bbolt's integrity check (as etcdctl snapshot status does)."""
    try:
        reader = bbolt.Reader(path)
    except bbolt.BoltError as e:
        raise EtcdSnapshotError(str(e)) from None
    try:
        errs = reader.check()
    except bbolt.BoltError as e:
        errs = [str(e)]
    if errs:
        reader.close()
        raise EtcdSnapshotError(
            f"snapshot file integrity check failed. {len(errs)} errors found.\n" + "\n".join(errs[:20])
        )
    return reader


def status(path: str | os.PathLike[str]) -> dict:
    """etcd's snapshot Status: crc32c (Castagnoli) of every bucket name, key and value in order,
    the main revision of the last key of the "key" bucket, the number of keys of all buckets, and
    the database size (high water mark * page size, the sha256 trailer not counted)."""
    h = 0
    revision = 0
    total = 0
    with open_checked(path) as r:
        try:
            for name, value, flags in r.root_items():
                if not flags & bbolt.BUCKET_LEAF_FLAG:
                    raise EtcdSnapshotError(f"cannot get hash of bucket {name.decode(errors='replace')}")
                h = crc32c.crc32c(name, h)
                is_key = name == b"key"
                for k, v, _f in r.bucket_items(value):
                    h = crc32c.crc32c(v, crc32c.crc32c(k, h))
                    if is_key and len(k) >= 8:
                        revision = int.from_bytes(k[:8], "big", signed=True)
                    total += 1
        except bbolt.BoltError as e:
            raise EtcdSnapshotError(str(e)) from None
        return {"hash": h, "revision": revision, "totalKey": total, "totalSize": r.size}


# -- this store -> etcd ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 on the wire: negative numbers take 10 bytes
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_lease(lease_id: int, ttl: int, remaining: int) -> bytes:
    """leasepb.Lease{ID: 1, TTL: 2, RemainingTTL: 3} (int64 fields; zero fields left out)."""
    out = b""
    for field, value in ((1, lease_id), (2, ttl), (3, remaining)):
        if value:
            out += bytes([field << 3]) + _varint(value)
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The unsigned varint at data[i:], and the index after it."""
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def decode_lease(data: bytes) -> tuple[int, int, int]:
    fields = {1: 0, 2: 0, 3: 0}
    i = 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            n, i = _read_varint(data, i)
            n &= 0xFFFFFFFFFFFFFFFF
            if n >= 1 << 63:
                n -= 1 << 64
            if field in fields:
                fields[field] = n
        elif wire == 2:
            n, i = _read_varint(data, i)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise EtcdSnapshotError(f"bad leasepb.Lease encoding (wire type {wire})")
    if i != len(data):
        raise EtcdSnapshotError("truncated leasepb.Lease")
    return fields[1], fields[2], fields[3]


def _members(source: bk.Backend) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    members = []
    for _key, value in source.items_with_prefix(bk.MEMBERS, MEMBER_PREFIX):
        m = Member.from_json(value)
        members.append((f"{m.id:x}".encode(), m.to_json()))
    removed = [
        (f"{_ID.unpack(key[len(REMOVED_PREFIX) :])[0]:x}".encode(), b"removed")
        for key, _ in source.items_with_prefix(bk.MEMBERS, REMOVED_PREFIX)
    ]
    return sorted(members), sorted(removed)


def _alarms(source: bk.Backend) -> list[tuple[bytes, bytes]]:
    out = []
    for key, _ in source.items(bk.ALARM):
        member, alarm = _ALARM_KEY.unpack(key)
        out.append((rpc_pb2.AlarmMember(memberID=member, alarm=alarm).SerializeToString(), b""))
    return sorted(out)


def _leases(source: bk.Backend) -> Iterator[tuple[bytes, bytes]]:
    for key, value in source.items(bk.LEASE):
        lease_id, ttl, remaining = LEASE_RECORD.unpack(value)
        yield key, encode_lease(lease_id, ttl, remaining)


def write_db(source: bk.Backend, f) -> dict:
    """Write `source`'s state machine (a checkpoint: a consistent view) as etcd 3.4's bbolt
    database to the new file `f`; returns {"size": bytes, "keys": per-bucket counts}."""
    members, removed = _members(source)
    meta = sorted((k, v) for k in _META_KEYS if (v := source.get(bk.META, k)) is not None)
    buckets: list[tuple[bytes, Iterable[tuple[bytes, bytes]]]] = [
        (b"alarm", _alarms(source)),
        (b"auth", source.items(bk.AUTH)),
        (b"authRoles", source.items(bk.AUTH_ROLES)),
        (b"authUsers", source.items(bk.AUTH_USERS)),
        (b"cluster", [(b"clusterVersion", CLUSTER_VERSION)]),
        (b"key", source.items(bk.KEY)),
        (b"lease", _leases(source)),
        (b"members", members),
        (b"members_removed", removed),
        (b"meta", meta),
    ]
    w = bbolt.Writer(f)
    counts = {name.decode(): w.add_bucket(name, items) for name, items in buckets}
    size = w.finish()
    return {"size": size, "keys": counts}


def create_db_file(source: bk.Backend, path: str | os.PathLike[str]) -> dict:
    """write_db into `path` (created; fsynced)."""
    with open(path, "w+b") as f:
        info = write_db(source, f)
        f.flush()
        os.fsync(f.fileno())
    return info


def create_snapshot_file(source: bk.Backend, path: str | os.PathLike[str]) -> dict:
    """A complete snapshot file as `etcdctl snapshot save` would store it: database + sha256."""
    info = create_db_file(source, path)
    sha = hashlib.sha256()
    with open(path, "r+b") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
        f.write(sha.digest())
        f.flush()
        os.fsync(f.fileno())
    return info


# -- etcd -> this store ------------------------------------------------------------------------------


def verify(path: str | os.PathLike[str], *, skip_hash_check: bool = False) -> None:
    """Everything `load_into` checks before it writes: the sha256 trailer and bbolt's integrity."""
    verify_checksum(path, skip_hash_check=skip_hash_check)
    open_checked(path).close()


def load_into(
    path: str | os.PathLike[str],
    target: bk.Backend,
    *,
    skip_hash_check: bool = False,
    verified: bool = False,
    batch_bytes: int = 4 << 20,
) -> dict:
    """Replace `target`'s state-machine families with an etcd snapshot's contents (checksum and
    bbolt integrity checked first, unless `verified` says `verify` passed already). Returns the
    number of records loaded per family."""
    if not verified:
        verify(path, skip_hash_check=skip_hash_check)
    counts: dict[str, int] = {}
    batch = target.batch()
    for cf in bk.STATE_MACHINE_FAMILIES:
        target.clear_family(batch, cf)
    size = 0

    def put(cf: str, key: bytes, value: bytes) -> None:
        nonlocal batch, size
        batch.put(cf, key, value)
        counts[cf] = counts.get(cf, 0) + 1
        size += len(key) + len(value) + 16
        if size >= batch_bytes:
            target.write(batch, sync=False)
            batch = target.batch()
            size = 0

    with bbolt.Reader(path) as r:
        try:
            for k, v in r.items(b"key"):
                if not (len(k) == 17 and k[8] == 0x5F or len(k) == 18 and k[8] == 0x5F and k[17] == 0x74):
                    raise EtcdSnapshotError(
                        f"invalid etcd snapshot: bad revision key {k.hex()} in bucket key"
                    )
                put(bk.KEY, k, v)
            for name, cf in (
                (b"auth", bk.AUTH),
                (b"authUsers", bk.AUTH_USERS),
                (b"authRoles", bk.AUTH_ROLES),
            ):
                for k, v in r.items(name):
                    put(cf, k, v)
            for k, v in r.items(b"meta"):
                if k in _META_KEYS:
                    put(bk.META, k, v)
            for k, v in r.items(b"lease"):
                lease_id, ttl, remaining = decode_lease(v)
                put(bk.LEASE, LEASE_KEY.pack(lease_id), LEASE_RECORD.pack(lease_id, ttl, remaining))
            for _k, v in r.items(b"members"):
                m = Member.from_json(v)
                put(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(m.id), m.to_json())
            for k, _v in r.items(b"members_removed"):
                put(bk.MEMBERS, REMOVED_PREFIX + _ID.pack(int(k, 16)), b"")
            for k, _v in r.items(b"alarm"):
                am = rpc_pb2.AlarmMember.FromString(k)
                put(bk.ALARM, _ALARM_KEY.pack(am.memberID, am.alarm), b"")
        except (bbolt.BoltError, ValueError, KeyError) as e:
            raise EtcdSnapshotError(f"invalid etcd snapshot: {e}") from None
    target.write(batch, sync=True)
    return counts


def describe(path: str | os.PathLike[str]) -> dict:
    """Bucket name -> key count (for docs and debugging)."""
    with open_checked(path) as r:
        return {name.decode(): sum(1 for _ in r.bucket_items(value)) for name, value in r.buckets().items()}


__all__ = [
    "EtcdSnapshotError",
    "create_db_file",
    "create_snapshot_file",
    "is_bbolt",
    "load_into",
    "status",
    "verify_checksum",
    "write_db",
]
