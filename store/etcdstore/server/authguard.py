"""The auth checks as the server and the API see them: an object that is always there.

`EtcdServer.auth` starts as `NoAuth` (every check passes, no credentials); the auth layer
(`etcdstore.auth.install`, called by the composition root) replaces it with its `AuthHooks`,
which implements the same `AuthGuard` protocol. Nobody tests `auth is None`.
"""

from __future__ import annotations

from typing import Any, Protocol

from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.txn.requests import Request

NO_CREDENTIALS = ("", 0)


class AuthGuard(Protocol):
    """API-time checks take the gRPC call context; apply-time checks take the decoded entry and
    judge it against the replicated auth store (a system request is never checked)."""

    def credentials(self, context: Any) -> tuple[str, int]: ...
    def authorize_range(self, context: Any, req: rpc_pb2.RangeRequest) -> None: ...
    def authorize_put(self, context: Any, req: rpc_pb2.PutRequest) -> tuple[str, int]: ...
    def authorize_delete(self, context: Any, req: rpc_pb2.DeleteRangeRequest) -> tuple[str, int]: ...
    def authorize_txn(self, context: Any, req: rpc_pb2.TxnRequest) -> tuple[str, int]: ...
    def authorize_admin(self, context: Any, rpc: str = "") -> tuple[str, int]: ...
    def authorize_watch(self, context: Any, key: bytes, range_end: bytes) -> None: ...
    def authorize_lease_revoke(self, context: Any, lease_id: int) -> None: ...
    def check_at_apply(self, req: Request, op: str, key: bytes, range_end: bytes) -> None: ...
    def check_txn_at_apply(self, req: Request, txn: rpc_pb2.TxnRequest) -> None: ...
    def check_lease_revoke_at_apply(self, req: Request, keys: list[bytes]) -> None: ...
    def reload(self) -> None: ...


class NoAuth:
    """Auth not installed (a server built without the auth layer, as in unit tests): allow all."""

    def credentials(self, context: Any) -> tuple[str, int]:
        return NO_CREDENTIALS

    def authorize_range(self, context: Any, req: rpc_pb2.RangeRequest) -> None:
        return None

    def authorize_put(self, context: Any, req: rpc_pb2.PutRequest) -> tuple[str, int]:
        return NO_CREDENTIALS

    def authorize_delete(self, context: Any, req: rpc_pb2.DeleteRangeRequest) -> tuple[str, int]:
        return NO_CREDENTIALS

    def authorize_txn(self, context: Any, req: rpc_pb2.TxnRequest) -> tuple[str, int]:
        return NO_CREDENTIALS

    def authorize_admin(self, context: Any, rpc: str = "") -> tuple[str, int]:
        return NO_CREDENTIALS

    def authorize_watch(self, context: Any, key: bytes, range_end: bytes) -> None:
        return None

    def authorize_lease_revoke(self, context: Any, lease_id: int) -> None:
        return None

    def check_at_apply(self, req: Request, op: str, key: bytes, range_end: bytes) -> None:
        return None

    def check_txn_at_apply(self, req: Request, txn: rpc_pb2.TxnRequest) -> None:
        return None

    def check_lease_revoke_at_apply(self, req: Request, keys: list[bytes]) -> None:
        return None

    def reload(self) -> None:
        return None
