"""The replicated state machine's stores on one member's backend: the MVCC store, the lessor, the
alarms and the member list (etcd keeps the same four on its EtcdServer: kv, lessor, alarmStore,
cluster).

They change only by applying entries. A snapshot install loads the leader's state into the backend
and reopens all four on it (`reload`), in place in this one object: whoever was given it (the
server, the applier, the lease and membership operations, the quota) reads the new ones on its
next use.
"""

from __future__ import annotations

from etcdstore.lease.lessor import Lessor
from etcdstore.membership import Membership
from etcdstore.mvcc.kvstore import KVStore
from etcdstore.server.alarms import Alarms
from etcdstore.storage.backend import Backend


class Stores:
    __slots__ = ("alarms", "backend", "kv", "lessor", "membership")

    def __init__(self, backend: Backend, min_lease_ttl: int) -> None:
        """Open the stores on the backend as it is."""
        self.backend = backend
        self.lessor = Lessor(backend, min_ttl=min_lease_ttl)
        self.kv = KVStore(backend, lessor=self.lessor)
        self.alarms = Alarms(backend)
        # As persisted; bootstrap replaces it with the member list of a new or joining member.
        self.membership = Membership.load(backend)

    def reload(self) -> None:
        """The backend now holds a snapshot's state: open every store afresh on it."""
        backend = self.backend
        self.lessor = Lessor(backend, min_ttl=self.lessor.min_ttl)
        self.kv = KVStore(backend, lessor=self.lessor)
        self.alarms = Alarms(backend)
        self.membership = Membership.load(backend)
