"""The snapshot file: a consistent copy of a member's state machine, with a checksum.

Layout:
    magic  b"ETCDSTORE-SNAPSHOT\\n" and a format version byte
    records, each: family index (1 byte, 1-based into STATE_MACHINE_FAMILIES) |
                   key length (u32) | key | value length (u32) | value
    end marker (family index 0)
    footer length (u32) | footer JSON (record counts per family, revision, hash)
    zero padding up to a multiple of 512 bytes
    sha256 of everything above (32 bytes)

The padding gives the file etcd's shape (a page-aligned database followed by its sha256):
etcdctl 3.4's `snapshot save` refuses a stream whose length is not 512*k + 32.

Like etcd's snapshot (a bbolt file followed by its sha256), a truncated or corrupted file is
detected before anything is restored. The Raft log and hard state are not included: they
belong to one member; restore and snapshot install build fresh ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from etcdstore.storage import backend as bk

MAGIC = b"ETCDSTORE-SNAPSHOT\n"
VERSION = 1
_U32 = struct.Struct(">I")
_FAMILIES = bk.STATE_MACHINE_FAMILIES
_INDEX = {cf: i + 1 for i, cf in enumerate(_FAMILIES)}


class SnapshotError(ValueError):
    """A snapshot file that is truncated, corrupted or not a snapshot."""


def _revision_of(key: bytes) -> int:
    return int.from_bytes(key[:8], "big")


def write(source: bk.Backend, out: BinaryIO) -> dict:
    """Stream the state-machine families of `source` (a checkpoint) to `out`; returns the footer."""
    sha = hashlib.sha256()
    written = 0
    crc = 0
    counts: dict[str, int] = {}
    revision = 0
    buf = bytearray()

    def flush() -> None:
        nonlocal written
        sha.update(buf)
        out.write(buf)
        written += len(buf)
        buf.clear()

    buf += MAGIC + bytes([VERSION])
    pack = _U32.pack
    for cf in _FAMILIES:
        idx = bytes([_INDEX[cf]])
        n = 0
        for key, value in source.items(cf):
            buf += idx + pack(len(key)) + key + pack(len(value)) + value
            if cf == bk.KEY:
                crc = zlib.crc32(value, zlib.crc32(key, crc))
                revision = max(revision, _revision_of(key))
            n += 1
            if len(buf) >= 1 << 20:
                flush()
        counts[cf] = n
    footer = {"counts": counts, "revision": revision, "hash": crc, "totalKeys": sum(counts.values())}
    raw = json.dumps(footer, sort_keys=True).encode()
    buf += b"\x00" + pack(len(raw)) + raw
    buf += bytes(-(written + len(buf)) % 512)
    flush()
    out.write(sha.digest())
    return footer


def create_file(source: bk.Backend, path: str) -> tuple[int, dict]:
    """Write a snapshot file atomically (temp file, fsync, rename); returns (size, footer)."""
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        footer = write(source, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return os.path.getsize(path), footer


def verify(path: str) -> dict:
    """Check the checksum and structure of a snapshot file; returns its footer."""
    size = os.path.getsize(path)
    if size < len(MAGIC) + 1 + 1 + 4 + 32:
        raise SnapshotError("snapshot file is too short")
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size - 32
        while remaining:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                raise SnapshotError("snapshot file is truncated")
            sha.update(chunk)
            remaining -= len(chunk)
        if f.read(32) != sha.digest():
            raise SnapshotError("snapshot file checksum mismatch (corrupted or truncated)")
    footer = None
    for item in read_records(path):
        if isinstance(item, dict):
            footer = item
    if footer is None:
        raise SnapshotError("snapshot file has no footer")
    return footer


def read_records(path: str) -> Iterator[tuple[str, bytes, bytes] | dict]:
    """Yield (family, key, value) for every record, then the footer dict (no checksum check)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 1)
        if head[: len(MAGIC)] != MAGIC:
            raise SnapshotError("not an etcdstore snapshot (bad magic)")
        if head[len(MAGIC)] != VERSION:
            raise SnapshotError(f"unsupported snapshot format version {head[len(MAGIC)]}")
        read = f.read
        while True:
            tag = read(1)
            if not tag:
                raise SnapshotError("snapshot file is truncated")
            if tag == b"\x00":
                (n,) = _U32.unpack(_exact(read, 4))
                yield json.loads(_exact(read, n))
                return
            if tag[0] > len(_FAMILIES):
                raise SnapshotError(f"unknown column family index {tag[0]}")
            (klen,) = _U32.unpack(_exact(read, 4))
            key = _exact(read, klen)
            (vlen,) = _U32.unpack(_exact(read, 4))
            yield _FAMILIES[tag[0] - 1], key, _exact(read, vlen)


def _exact(read: Callable[[int], bytes], n: int) -> bytes:
    data = read(n)
    if len(data) != n:
        raise SnapshotError("snapshot file is truncated")
    return data


def load_into(path: str, target: bk.Backend, batch_bytes: int = 4 << 20) -> dict:
    """Replace `target`'s state-machine families with the snapshot's contents (after verify)."""
    footer = verify(path)
    batch = target.batch()
    for cf in _FAMILIES:
        target.clear_family(batch, cf)
    size = 0
    for item in read_records(path):
        if isinstance(item, dict):
            break
        cf, key, value = item
        batch.put(cf, key, value)
        size += len(key) + len(value)
        if size >= batch_bytes:
            target.write(batch, sync=False)
            batch = target.batch()
            size = 0
    target.write(batch, sync=True)
    return footer
