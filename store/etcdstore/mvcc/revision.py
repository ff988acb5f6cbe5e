"""Revisions and their on-disk form in the KEY column family.

A revision is {main, sub}: `main` counts write transactions, `sub` counts changes inside
one. On disk (as etcd lays them out) a revision is 8-byte big-endian main, '_', 8-byte
big-endian sub, plus a trailing 't' for a tombstone, so byte order is revision order.

In memory a revision is one int, `main << SUB_BITS | sub`: ints compare in revision order
and cost no tuple allocation on the hot paths.
"""

from __future__ import annotations

import struct
from typing import Final

SUB_BITS: Final = 32
SUB_MASK: Final = (1 << SUB_BITS) - 1
REV_BYTES_LEN: Final = 17
TOMBSTONE_MARK: Final = b"t"

_REV = struct.Struct(">QcQ")
_pack = _REV.pack
_unpack = _REV.unpack_from


def pack(main: int, sub: int = 0) -> int:
    return main << SUB_BITS | sub


def main_of(rev: int) -> int:
    return rev >> SUB_BITS


def sub_of(rev: int) -> int:
    return rev & SUB_MASK


def to_bytes(rev: int) -> bytes:
    """On-disk key of a (non-tombstone) revision."""
    return _pack(rev >> SUB_BITS, b"_", rev & SUB_MASK)


def tombstone_bytes(rev: int) -> bytes:
    return _pack(rev >> SUB_BITS, b"_", rev & SUB_MASK) + TOMBSTONE_MARK


def main_bytes(main: int) -> bytes:
    """Smallest on-disk key with this main revision: a bound for range scans."""
    return _pack(main, b"_", 0)


def from_bytes(b: bytes) -> int:
    main: int
    sub: int
    main, _, sub = _unpack(b)
    return main << SUB_BITS | sub


def is_tombstone(b: bytes) -> bool:
    return len(b) == REV_BYTES_LEN + 1 and b[REV_BYTES_LEN] == 0x74  # 't'
