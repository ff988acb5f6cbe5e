"""How v2 nodes live in the v3 key space, and how they are shown to v2 clients.

Layout (all under one reserved prefix, so v2 data is ordinary replicated v3 data):

    PREFIX + b"k" + depth (4 digits) + path   one node; depth = number of path components,
                                              so a directory's children are one prefix range
    PREFIX + b"act"                           written by every v2 write: what it did (action,
                                              path, time), read back by v2 watchers

A node's v3 value is a small header followed by the v2 value:

    flags (1 byte)  DIR | OWN | INH | CI | MI
    [OWN] own expiration (unix ns, 8) + own lease ID (8)   the node's own TTL
    [INH] inherited expiration (8)                          see below
    [CI]  v2 createdIndex (8)   absent: the revision of the write that stored this version
    [MI]  v2 modifiedIndex (8)  absent: likewise

TTLs are v3 leases. A node's key is attached to whichever lease expires first: its own, or
the one its parent directory's key is attached to (INH records that one's expiration). So
when a directory expires, the lease revocation deletes it and everything below it in one
revision, atomically, as the v2 store does.

Indexes: v2 indexes are v3 revisions (X-Etcd-Index is the store revision).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from etcdstore.proto.mvccpb import kv_pb2

PREFIX = b"\x00v2/"
PREFIX_END = b"\x00v20"
NODE_PREFIX = PREFIX + b"k"
ACT_KEY = PREFIX + b"act"
_DEPTH_DIGITS = 4
MAX_DEPTH = 10**_DEPTH_DIGITS - 1

DIR, OWN, INH, CI, MI = 0x01, 0x02, 0x04, 0x08, 0x10
_Q = struct.Struct(">q")
_OWN = struct.Struct(">qq")


def depth_of(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def node_key(path: str) -> bytes:
    return b"%s%04d%s" % (NODE_PREFIX, depth_of(path), path.encode("utf-8", "surrogateescape"))


def level_prefix(dir_path: str, level: int) -> bytes:
    """The key prefix of every node `level` components deep under dir_path."""
    base = b"" if dir_path == "/" else dir_path.encode("utf-8", "surrogateescape")
    return b"%s%04d%s/" % (NODE_PREFIX, level, base)


def prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def path_of_key(key: bytes) -> str:
    return key[len(NODE_PREFIX) + _DEPTH_DIGITS :].decode("utf-8", "surrogateescape")


def is_node_key(key: bytes) -> bool:
    return key.startswith(NODE_PREFIX)


def ancestors(path: str) -> list[str]:
    """The directories above `path`, top first, root excluded: "/a/b/c" -> ["/a", "/a/b"]."""
    parts = path.split("/")[1:-1]
    out = []
    cur = ""
    for p in parts:
        cur += "/" + p
        out.append(cur)
    return out


def parent_of(path: str) -> str:
    i = path.rfind("/")
    return "/" if i <= 0 else path[:i]


def is_hidden_name(path: str) -> bool:
    return path[path.rfind("/") + 1 :].startswith("_")


class Node:
    """One v2 node as read from a v3 KeyValue (indexes resolved)."""

    __slots__ = (
        "created",
        "dir",
        "inh_exp",
        "lease",
        "mod_revision",
        "modified",
        "own_exp",
        "own_lease",
        "path",
        "value",
    )

    def __init__(
        self,
        path: str,
        is_dir: bool,
        value: str,
        created: int,
        modified: int,
        own_exp: int = 0,
        own_lease: int = 0,
        lease: int = 0,
        inh_exp: int = 0,
        mod_revision: int = 0,
    ) -> None:
        self.path = path
        self.dir = is_dir
        self.value = value
        self.created = created
        self.modified = modified
        self.own_exp = own_exp
        self.own_lease = own_lease
        self.lease = lease
        self.inh_exp = inh_exp
        self.mod_revision = mod_revision  # the v3 mod_revision, for compares

    @property
    def effective(self) -> tuple[int, int]:
        """(expiration, lease) of the lease this node's key is attached to; (0, 0) if none."""
        if not self.lease:
            return 0, 0
        if self.lease == self.own_lease:
            return self.own_exp, self.lease
        return self.inh_exp, self.lease


ROOT = Node("/", True, "", 0, 0)


def decode(kv: kv_pb2.KeyValue) -> Node:
    v = kv.value
    flags = v[0] if v else 0
    pos = 1
    own_exp = own_lease = inh_exp = 0
    created = modified = kv.mod_revision
    if flags & OWN:
        own_exp, own_lease = _OWN.unpack_from(v, pos)
        pos += 16
    if flags & INH:
        inh_exp = _Q.unpack_from(v, pos)[0]
        pos += 8
    if flags & CI:
        created = _Q.unpack_from(v, pos)[0]
        pos += 8
    if flags & MI:
        modified = _Q.unpack_from(v, pos)[0]
        pos += 8
    return Node(
        path_of_key(kv.key),
        bool(flags & DIR),
        v[pos:].decode("utf-8", "replace"),
        created,
        modified,
        own_exp,
        own_lease,
        kv.lease,
        inh_exp,
        kv.mod_revision,
    )


def encode(
    is_dir: bool,
    value: str,
    *,
    own_exp: int = 0,
    own_lease: int = 0,
    inh_exp: int = 0,
    created: int = 0,
    modified: int = 0,
) -> bytes:
    """A node's v3 value; created/modified 0 mean "the revision of this write"."""
    flags = DIR if is_dir else 0
    parts = [b""]
    if own_lease:
        flags |= OWN
        parts.append(_OWN.pack(own_exp, own_lease))
    if inh_exp:
        flags |= INH
        parts.append(_Q.pack(inh_exp))
    if created:
        flags |= CI
        parts.append(_Q.pack(created))
    if modified:
        flags |= MI
        parts.append(_Q.pack(modified))
    parts[0] = bytes((flags,))
    if not is_dir:
        parts.append(value.encode("utf-8", "surrogateescape"))
    return b"".join(parts)


# -- what clients see ------------------------------------------------------------------------------


def format_time(ns: int) -> str:
    """Go's time.Time JSON form (RFC 3339 with nanoseconds, trailing zeros dropped), in UTC."""
    secs, frac = divmod(ns, 1_000_000_000)
    out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"


def ttl_of(exp_ns: int, now_ns: int) -> int:
    """etcd's ceil((expiration - now) / 1s), with Go's truncating integer division."""
    d = exp_ns - now_ns
    q = abs(d) // 1_000_000_000
    if d < 0:
        return -q
    return q + 1 if d % 1_000_000_000 else q


def extern(n: Node, now_ns: int, nodes: list | None = None, *, modified: int | None = None) -> dict[str, Any]:
    """A node as etcd's NodeExtern JSON (fields in its order, empty ones omitted). `nodes`,
    when given, is included as is (a listing still being filled; prune empty ones after)."""
    out: dict[str, Any] = {}
    if n.path != "/":
        out["key"] = n.path
    if n.dir:
        out["dir"] = True
    else:
        out["value"] = n.value
    if n.own_exp:
        out["expiration"] = format_time(n.own_exp)
        ttl = ttl_of(n.own_exp, now_ns)
        if ttl:
            out["ttl"] = ttl
    if nodes is not None:
        out["nodes"] = nodes
    mod = n.modified if modified is None else modified
    if mod:
        out["modifiedIndex"] = mod
    if n.created:
        out["createdIndex"] = n.created
    return out


def event_node(path: str, created: int, modified: int, is_dir: bool) -> dict[str, Any]:
    """The bare node of a delete/expire event: key, dir, indexes."""
    out: dict[str, Any] = {"key": path} if path != "/" else {}
    if is_dir:
        out["dir"] = True
    if modified:
        out["modifiedIndex"] = modified
    if created:
        out["createdIndex"] = created
    return out
