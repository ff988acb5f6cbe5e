"""What a Raft entry carries: one client request, encoded compactly.

An entry's data is a fixed header followed by the serialized request protobuf:

    kind (1 byte) | flags (1 byte) | request ID (8 bytes, big-endian)
    [ if flags & HAS_AUTH: auth revision (8) | user name length (2) | user name ]
    payload (the etcdserverpb request, serialized)

The request ID lets the member that proposed the request find its waiting client when the
entry is applied (every member applies every entry; only the proposer answers). The auth
fields carry who made the request, checked again at apply time against the auth store's
revision, as etcd does. An empty entry (Raft's no-op at the start of a term) has no data.
"""

from __future__ import annotations

import itertools
import struct
import time
from enum import IntEnum

_HEADER = struct.Struct(">BBQ")
_AUTH = struct.Struct(">QH")
HAS_AUTH = 0x01
SYSTEM = 0x02  # the member's own request (lease expiry, v2 emulation): not subject to v3 auth


class Kind(IntEnum):
    PUT = 1
    DELETE_RANGE = 2
    TXN = 3
    COMPACTION = 4
    LEASE_GRANT = 5
    LEASE_REVOKE = 6
    LEASE_CHECKPOINT = 7
    ALARM = 8
    MEMBER_PUBLISH = 9  # a started member's name and client URLs
    RANGE = 10  # a read that must go through the log (not used for ordinary reads)
    AUTH_ENABLE = 20
    AUTH_DISABLE = 21
    AUTH_STATUS = 22
    AUTHENTICATE = 23
    AUTH_USER_ADD = 24
    AUTH_USER_DELETE = 25
    AUTH_USER_CHANGE_PASSWORD = 26
    AUTH_USER_GRANT_ROLE = 27
    AUTH_USER_GET = 28
    AUTH_USER_REVOKE_ROLE = 29
    AUTH_ROLE_ADD = 30
    AUTH_ROLE_GRANT_PERMISSION = 31
    AUTH_ROLE_GET = 32
    AUTH_ROLE_REVOKE_PERMISSION = 33
    AUTH_ROLE_DELETE = 34
    AUTH_USER_LIST = 35
    AUTH_ROLE_LIST = 36


class Request:
    __slots__ = ("auth_revision", "id", "kind", "payload", "system", "user")

    def __init__(
        self,
        kind: int,
        req_id: int,
        payload: bytes,
        user: str = "",
        auth_revision: int = 0,
        system: bool = False,
    ) -> None:
        self.kind = kind
        self.id = req_id
        self.payload = payload
        self.user = user
        self.auth_revision = auth_revision
        self.system = system


def encode(
    kind: int, req_id: int, payload: bytes, user: str = "", auth_revision: int = 0, system: bool = False
) -> bytes:
    if not user:
        return _HEADER.pack(kind, SYSTEM if system else 0, req_id) + payload
    name = user.encode()
    return _HEADER.pack(kind, HAS_AUTH, req_id) + _AUTH.pack(auth_revision, len(name)) + name + payload


class BadEntry(ValueError):
    """Entry data that does not decode: a bug or corruption, never silently skipped."""


def decode(data: bytes) -> Request:
    if len(data) < _HEADER.size:
        raise BadEntry(f"entry data too short ({len(data)} bytes)")
    kind, flags, req_id = _HEADER.unpack_from(data)
    pos = _HEADER.size
    user, auth_revision = "", 0
    if flags & HAS_AUTH:
        if len(data) < pos + _AUTH.size:
            raise BadEntry("truncated auth header")
        auth_revision, n = _AUTH.unpack_from(data, pos)
        pos += _AUTH.size
        user = data[pos : pos + n].decode()
        pos += n
    return Request(kind, req_id, data[pos:], user, auth_revision, bool(flags & SYSTEM))


class IDGenerator:
    """Cluster-unique request IDs: member ID bits, a start time, and a counter (etcd's scheme).

    The top 16 bits come from the member ID, the next 40 from the start time in ms, and the
    low bits count; a restart moves the time forward, so IDs are not reused.
    """

    def __init__(self, member_id: int, now_ms: int | None = None) -> None:
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        base = ((member_id & 0xFFFF) << 48) | ((now_ms & 0xFF_FFFF_FFFF) << 8)
        self._next = itertools.count(base + 1).__next__

    def next(self) -> int:
        return self._next() & 0xFFFF_FFFF_FFFF_FFFF
