"""Merged permission intervals against a literal model of etcd 3.4's interval-tree checks.

The model below follows etcd's pkg/adt semantics step by step (BytesAffineComparable where the
empty key is +infinity, Interval.Compare overlap rules, Visit in ascending begin order, the
Contains contiguity walk, Intersects) over the raw, unmerged permissions. Our merged, binary-
searched version must agree with it on every permission set and request tried.
"""

from __future__ import annotations

import functools
import itertools
import random

from etcdstore.auth.perms import READ, READWRITE, WRITE, Intervals, UserPermissions
from etcdstore.proto.authpb import auth_pb2

KEYS = [b"", b"\x00", b"a", b"a\x00", b"ab", b"b", b"b\x00", b"c", b"z", b"\xff"]
TYPES = [READ, WRITE, READWRITE, 7]  # 7: not a permission type (grants nothing)


# ---- etcd's model ---------------------------------------------------------------------------------


def _cmp(a: bytes, b: bytes) -> int:
    if not a:
        return 0 if not b else 1
    if not b:
        return -1
    return (a > b) - (a < b)


def _ivl_compare(a: tuple[bytes, bytes], b: tuple[bytes, bytes]) -> int:
    if _cmp(a[0], b[0]) < 0 and _cmp(a[1], b[0]) <= 0:
        return -1
    if _cmp(a[0], b[1]) >= 0:
        return 1
    return 0


def _etcd_interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes]:
    end = b"" if range_end == b"\x00" else range_end
    return (key, end) if range_end else (key, key + b"\x00")


def _etcd_contains(ivls: list[tuple[bytes, bytes]], q: tuple[bytes, bytes]) -> bool:
    visited = sorted(
        (i for i in ivls if _ivl_compare(q, i) == 0), key=functools.cmp_to_key(lambda x, y: _cmp(x[0], y[0]))
    )
    if not visited:
        return False
    min_begin, max_end = visited[0]
    for begin, end in visited[1:]:
        if _cmp(max_end, begin) < 0:
            return False
        if _cmp(end, max_end) > 0:
            max_end = end
    return _cmp(max_end, q[1]) >= 0 and _cmp(min_begin, q[0]) <= 0


def etcd_permits(perms: list[auth_pb2.Permission], key: bytes, range_end: bytes, want: int) -> bool:
    ivls = [
        _etcd_interval(p.key, p.range_end) for p in perms if p.permType == READWRITE or p.permType == want
    ]
    if not range_end:
        point = (key, key + b"\x00")
        return any(_ivl_compare(point, i) == 0 for i in ivls)
    end = b"" if range_end == b"\x00" else range_end
    return _etcd_contains(ivls, (key, end))


# ---- tests ------------------------------------------------------------------------------------------


def _perm(t: int, key: bytes, end: bytes = b"") -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=t, key=key, range_end=end)


def _role(*perms: auth_pb2.Permission) -> auth_pb2.Role:
    return auth_pb2.Role(name=b"r", keyPermission=list(perms))


def test_agrees_with_etcd_model_on_random_permission_sets() -> None:
    rng = random.Random(7)
    queries = [(k, e) for k in KEYS for e in [b"", b"\x00", *KEYS[1:]]]
    checked = 0
    for _ in range(400):
        perms = [
            _perm(rng.choice(TYPES), rng.choice(KEYS), rng.choice([b"", b"\x00", *KEYS]))
            for _ in range(rng.randint(0, 5))
        ]
        mine = UserPermissions([_role(*perms[:2]), _role(*perms[2:])])  # split over two roles
        for (key, end), want in itertools.product(queries, (READ, WRITE)):
            assert mine.permits(key, end, want) == etcd_permits(perms, key, end, want), (
                perms,
                key,
                end,
                want,
            )
            checked += 1
    assert checked > 50_000


def test_prefix_range_and_from_key_permissions() -> None:
    p = UserPermissions(
        [
            _role(
                _perm(READ, b"pub/", b"pub0"),
                _perm(READWRITE, b"a", b"c"),
                _perm(WRITE, b"k"),
                _perm(READ, b"z", b"\x00"),
            )
        ]
    )
    assert p.permits(b"pub/x", b"", READ) and not p.permits(b"pub/x", b"", WRITE)
    assert p.permits(b"pub/", b"pub0", READ) and not p.permits(b"pub/", b"pub1", READ)
    assert p.permits(b"b", b"", WRITE) and p.permits(b"a", b"c", READ) and not p.permits(b"a", b"c\x00", READ)
    assert (
        p.permits(b"k", b"", WRITE)
        and not p.permits(b"k", b"k\x01", WRITE)
        and not p.permits(b"ka", b"", WRITE)
    )
    assert (
        p.permits(b"zzz", b"\x00", READ) and p.permits(b"z", b"", READ) and not p.permits(b"y", b"\x00", READ)
    )
    assert not p.permits(b"", b"", READ)  # the empty key is +infinity: nothing covers it


def test_adjacent_and_overlapping_intervals_merge() -> None:
    ivs = Intervals([(b"a", b"c"), (b"c", b"e"), (b"b", b"d"), (b"x", None), (b"y", b"z")])
    assert ivs.starts == [b"a", b"x"] and ivs.ends == [b"e", None]
    assert ivs.covers(b"a", b"e") and not ivs.covers(b"a", b"e\x00")
    assert ivs.covers(b"x", None) and ivs.covers(b"xyz", b"\xff") and not ivs.covers(b"w", None)
    assert ivs.contains(b"d") and not ivs.contains(b"e") and ivs.contains(b"zzzz")
