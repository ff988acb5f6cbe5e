"""Cluster membership: member records, IDs, the cluster ID, and their persistence.

IDs are derived exactly as etcd derives them, so a cluster formed from the same flags
gets the same member and cluster IDs as etcd would give it:
  member ID  = first 8 bytes (big-endian) of sha1(sorted peer URLs + cluster token [+ unix time])
  cluster ID = first 8 bytes of sha1(the sorted member IDs as 8-byte big-endian words)
The unix time enters only for members added at runtime (MemberAdd), so re-adding the same
URLs gives a fresh ID.

Membership changes are replicated: they are applied from committed Raft conf-change
entries, in the same backend batch as the consistent index.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from etcdstore import errors
from etcdstore.storage import backend as bk

_ID = struct.Struct(">Q")
CLUSTER_ID_KEY = b"clusterID"
REMOVED_PREFIX = b"removed/"
MEMBER_PREFIX = b"member/"
# Per-member identity lives with the Raft state (RAFT_STATE family), never in the replicated
# families a snapshot carries.
MEMBER_ID_KEY = b"memberID"


def member_id(peer_urls: Iterable[str], token: str, unix_time: int | None = None) -> int:
    data = "".join(sorted(peer_urls)) + token
    if unix_time is not None:
        data += str(unix_time)
    return _ID.unpack(hashlib.sha1(data.encode()).digest()[:8])[0]


def cluster_id(member_ids: Iterable[int]) -> int:
    data = b"".join(_ID.pack(i) for i in sorted(member_ids))
    return _ID.unpack(hashlib.sha1(data).digest()[:8])[0]


@dataclass(slots=True)
class Member:
    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_json(self) -> bytes:
        # etcd's layout (raft attributes + attributes), so peers and tools read it alike.
        doc: dict = {"id": self.id, "peerURLs": self.peer_urls}
        if self.is_learner:
            doc["isLearner"] = True
        if self.name:
            doc["name"] = self.name
        if self.client_urls:
            doc["clientURLs"] = self.client_urls
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Member:
        doc = json.loads(data)
        return cls(
            id=int(doc["id"]),
            name=doc.get("name", ""),
            peer_urls=list(doc.get("peerURLs", [])),
            client_urls=list(doc.get("clientURLs", [])),
            is_learner=bool(doc.get("isLearner", False)),
        )


class Membership:
    """The replicated member list of one cluster, as this member has applied it."""

    def __init__(self, cluster_id: int = 0) -> None:
        self.cluster_id = cluster_id
        self.members: dict[int, Member] = {}
        self.removed: set[int] = set()

    # -- persistence -----------------------------------------------------------------------

    @classmethod
    def load(cls, backend: bk.Backend) -> Membership:
        m = cls()
        raw = backend.get(bk.MEMBERS, CLUSTER_ID_KEY)
        if raw is not None:
            m.cluster_id = _ID.unpack(raw)[0]
        for key, value in backend.items_with_prefix(bk.MEMBERS, MEMBER_PREFIX):
            member = Member.from_json(value)
            m.members[member.id] = member
        for key, _ in backend.items_with_prefix(bk.MEMBERS, REMOVED_PREFIX):
            m.removed.add(_ID.unpack(key[len(REMOVED_PREFIX) :])[0])
        return m

    def save_all(self, batch: bk.Batch) -> None:
        batch.put(bk.MEMBERS, CLUSTER_ID_KEY, _ID.pack(self.cluster_id))
        for member in self.members.values():
            batch.put(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(member.id), member.to_json())
        for removed in self.removed:
            batch.put(bk.MEMBERS, REMOVED_PREFIX + _ID.pack(removed), b"")

    # -- queries -----------------------------------------------------------------------------

    def get(self, mid: int) -> Member | None:
        return self.members.get(mid)

    def voters(self) -> list[int]:
        return sorted(m.id for m in self.members.values() if not m.is_learner)

    def learners(self) -> list[int]:
        return sorted(m.id for m in self.members.values() if m.is_learner)

    def sorted_members(self) -> list[Member]:
        return [self.members[i] for i in sorted(self.members)]

    def peer_urls(self, mid: int) -> list[str]:
        m = self.members.get(mid)
        return list(m.peer_urls) if m else []

    # -- checks before proposing a change (etcd's ValidateConfigurationChange) ----------------

    def check_add(self, member: Member, max_learners: int = 1) -> None:
        if member.id in self.removed or member.id in self.members:
            raise errors.MEMBER_EXIST()
        urls = set(member.peer_urls)
        for m in self.members.values():
            if urls & set(m.peer_urls):
                raise errors.PEER_URL_EXIST()
        if member.is_learner and len(self.learners()) >= max_learners:
            raise errors.TOO_MANY_LEARNERS()

    def check_remove(self, mid: int) -> None:
        if mid in self.removed or mid not in self.members:
            raise errors.MEMBER_NOT_FOUND()

    def check_promote(self, mid: int) -> None:
        m = self.members.get(mid)
        if m is None or mid in self.removed:
            raise errors.MEMBER_NOT_FOUND()
        if not m.is_learner:
            raise errors.MEMBER_NOT_LEARNER()

    def check_update(self, mid: int, peer_urls: list[str]) -> None:
        if mid in self.removed or mid not in self.members:
            raise errors.MEMBER_NOT_FOUND()
        urls = set(peer_urls)
        for m in self.members.values():
            if m.id != mid and urls & set(m.peer_urls):
                raise errors.PEER_URL_EXIST()

    # -- changes, applied from committed entries -----------------------------------------------

    def add(self, batch: bk.Batch, member: Member) -> None:
        existing = self.members.get(member.id)
        if existing is not None:
            # Keep the name/client URLs a started member already published.
            member.name = member.name or existing.name
            member.client_urls = member.client_urls or existing.client_urls
        self.members[member.id] = member
        batch.put(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(member.id), member.to_json())

    def remove(self, batch: bk.Batch, mid: int) -> None:
        self.members.pop(mid, None)
        self.removed.add(mid)
        batch.delete(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(mid))
        batch.put(bk.MEMBERS, REMOVED_PREFIX + _ID.pack(mid), b"")

    def promote(self, batch: bk.Batch, mid: int) -> None:
        m = self.members.get(mid)
        if m is not None:
            m.is_learner = False
            batch.put(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(mid), m.to_json())

    def update_peer_urls(self, batch: bk.Batch, mid: int, peer_urls: list[str]) -> None:
        m = self.members.get(mid)
        if m is not None:
            m.peer_urls = list(peer_urls)
            batch.put(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(mid), m.to_json())

    def publish(self, batch: bk.Batch, mid: int, name: str, client_urls: list[str]) -> None:
        """A started member announces its name and client URLs (etcd's publish)."""
        m = self.members.get(mid)
        if m is not None:
            m.name = name
            m.client_urls = list(client_urls)
            batch.put(bk.MEMBERS, MEMBER_PREFIX + _ID.pack(mid), m.to_json())

    @classmethod
    def from_initial_cluster(cls, initial: dict[str, list[str]], token: str) -> Membership:
        m = cls()
        for urls in initial.values():
            mid = member_id(urls, token)
            if mid in m.members:
                raise ValueError(f"member exists with identical ID {mid:x}")
            if mid == 0:
                raise ValueError("cannot use 0 as member id")
            # Names are published by each member once it starts, as in etcd; but the
            # initial cluster names are known, and etcdctl shows them before that.
            m.members[mid] = Member(id=mid, name="", peer_urls=sorted(urls))
        m.cluster_id = cluster_id(m.members)
        return m


def conf_context(req_id: int, member: Member) -> bytes:
    """A conf change's context: the proposing request's ID (to find its waiter) and the member."""
    return _ID.pack(req_id) + member.to_json()


def parse_conf_context(ctx: bytes) -> tuple[int, Member]:
    return _ID.unpack_from(ctx)[0], Member.from_json(ctx[8:])
