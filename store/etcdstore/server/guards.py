"""The check in front of every write: the backend quota (NOSPACE). The auth checks are the
`auth` object's (server/authguard.py), which the API and the applier call directly."""

from __future__ import annotations

import time
from collections.abc import Callable

from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.server.alarms import Alarms
from etcdstore.storage.backend import Backend
from etcdstore.txn import requests as rq


class Quota:
    """etcd's backend quota: writes are refused with NOSPACE once the backend is over
    --quota-backend-bytes, and the first refusal raises the (replicated) NOSPACE alarm.

    The check is a cheap estimate (the size is sampled at most every 100 ms); the alarm itself is
    replicated, so every member refuses writes once it is raised."""

    def __init__(
        self,
        quota_bytes: int,
        member_id: int,
        alarms: Callable[[], Alarms],
        backend: Backend,
        propose: Callable[[int, bytes, Callable[[], None]], None],
    ) -> None:
        self.quota_bytes = quota_bytes
        self.member_id = member_id
        self._alarms = alarms  # read on each use: a snapshot install replaces the alarms
        self._backend = backend
        self._propose = propose  # a system proposal in the background, `done` called after
        self._sampled_at = 0.0
        self._db_size = 0
        self._raising = False

    def check(self, cost: int) -> None:
        """Raises NOSPACE if a write of about `cost` bytes must be refused."""
        if self._alarms().active(rpc_pb2.NOSPACE):
            raise errors.NO_SPACE()
        now = time.monotonic()
        if now - self._sampled_at > 0.1:
            self._sampled_at = now
            self._db_size = self._backend.size()
        if self._db_size + cost >= self.quota_bytes:
            if not self._raising:
                self._raising = True
                payload = rpc_pb2.AlarmRequest(
                    action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=rpc_pb2.NOSPACE
                ).SerializeToString()
                self._propose(rq.Kind.ALARM, payload, self._raised)
            raise errors.NO_SPACE()

    def _raised(self) -> None:
        self._raising = False

    def alarm_deactivated(self) -> None:
        """After a disarm, measure the backend afresh before judging the quota again."""
        self._sampled_at = 0.0
        self._raising = False
