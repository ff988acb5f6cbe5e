"""Checks in front of every request: the backend quota (NOSPACE) and the auth hooks
(which do nothing while auth is off)."""

from __future__ import annotations

import time
from typing import Any

from etcdstore import errors
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.server import requests as rq


class GuardsMixin:
    """Part of EtcdServer (see server.py); methods use its state."""

    def check_quota(self, cost: int) -> None:
        """Refuse writes once the backend is over --quota-backend-bytes, raising NOSPACE (etcd's quota).

        The check is a cheap estimate (the size is sampled at most every 100 ms); the alarm itself is
        replicated, so every member refuses writes once it is raised.
        """
        if self.alarms.active(rpc_pb2.NOSPACE):
            raise errors.NO_SPACE()
        now = time.monotonic()
        if now - self._size_sampled_at > 0.1:
            self._size_sampled_at = now
            self._db_size = self.backend.size()
        if self._db_size + cost >= self.cfg.quota_backend_bytes:
            if not self._nospace_raising:
                self._nospace_raising = True
                payload = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.member_id,
                                               alarm=rpc_pb2.NOSPACE).SerializeToString()
                self._spawn_proposal(rq.Kind.ALARM, payload, done=self._nospace_raised)
            raise errors.NO_SPACE()

    def _nospace_raised(self) -> None:
        self._nospace_raising = False

    def alarm_deactivated(self) -> None:
        """After a disarm, measure the backend afresh before judging the quota again."""
        self._size_sampled_at = 0.0
        self._nospace_raising = False

    def authorize_range(self, context: Any, req: rpc_pb2.RangeRequest) -> None:
        if self.auth is not None:
            self.auth.authorize_range(context, req)

    def authorize_put(self, context: Any, req: rpc_pb2.PutRequest) -> tuple[str, int]:
        return self.auth.authorize_put(context, req) if self.auth is not None else ("", 0)

    def authorize_delete(self, context: Any, req: rpc_pb2.DeleteRangeRequest) -> tuple[str, int]:
        return self.auth.authorize_delete(context, req) if self.auth is not None else ("", 0)

    def authorize_txn(self, context: Any, req: rpc_pb2.TxnRequest) -> tuple[str, int]:
        return self.auth.authorize_txn(context, req) if self.auth is not None else ("", 0)

    def authorize_admin(self, context: Any, rpc: str) -> tuple[str, int]:
        return self.auth.authorize_admin(context, rpc) if self.auth is not None else ("", 0)

    def credentials(self, context: Any) -> tuple[str, int]:
        """(user, auth revision) of the caller; raises INVALID_AUTH_TOKEN for a bad token."""
        return self.auth.credentials(context) if self.auth is not None else ("", 0)

    def check_lease_revoke_at_apply(self, req: rq.Request, keys: list[bytes]) -> None:
        """Revoking deletes the lease's keys: the caller must be allowed to write every one,
        judged again in log order (the API-time check may be stale)."""
        if self.auth is not None and not req.system and self.auth.store.enabled and keys:
            self.auth.store.check_keys_writable(req.user, req.auth_revision, keys)

    def authorize_watch(self, context: Any, key: bytes, range_end: bytes) -> None:
        if self.auth is not None:
            self.auth.authorize_watch(context, key, range_end)

    def authorize_lease_revoke(self, context: Any, lease_id: int) -> None:
        if self.auth is not None:
            self.auth.authorize_lease_revoke(context, lease_id)

    def check_permission_at_apply(self, req: rq.Request, op: str, key: bytes, range_end: bytes) -> None:
        if self.auth is not None and not req.system:
            self.auth.check_at_apply(req, op, key, range_end)

    def check_txn_permission_at_apply(self, req: rq.Request, txn: rpc_pb2.TxnRequest) -> None:
        if self.auth is not None and not req.system:
            self.auth.check_txn_at_apply(req, txn)
