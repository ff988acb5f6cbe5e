"""Applying auth entries: every member runs these, in log order, with the same outcome.

Management requests carry the requesting user in the entry header; like etcd's authApplierV3
the root check happens here, at apply time, against the replicated store, so a request
proposed just before its user lost the root role is refused everywhere alike.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from etcdstore import errors
from etcdstore.auth.passwords import hash_password
from etcdstore.auth.store import NO_PASSWORD_USER, AuthStore
from etcdstore.auth.tokens import SimpleTokens
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.txn.requests import Kind, Request

if TYPE_CHECKING:
    from etcdstore.storage.backend import Batch


class Authenticated:
    """The outcome of an applied Authenticate: the simple token, or what a JWT must carry."""

    __slots__ = ("revision", "token", "user")

    def __init__(self, user: str, revision: int, token: str) -> None:
        self.user = user
        self.revision = revision
        self.token = token


def encode_authenticate(name: str, simple_token_prefix: str) -> bytes:
    # Like etcd's InternalAuthenticateRequest: the password was checked before proposing and
    # never enters the log.
    return json.dumps({"name": name, "simpleToken": simple_token_prefix}).encode()


def select_password(password: str, hashed_b64: str, cost: int) -> bytes:
    """The bcrypt hash to store (etcd 3.5's selectPassword)."""
    if password and not hashed_b64:
        # Only entries written by servers that did not pre-hash take this path.
        return hash_password(password, cost)
    try:
        return base64.b64decode(hashed_b64, validate=True)
    except (binascii.Error, ValueError):
        raise NO_PASSWORD_USER() from None


class AuthApplier:
    def __init__(self, store: AuthStore, bcrypt_cost: int, entry_index: Callable[[], int]) -> None:
        self.store = store
        self.bcrypt_cost = bcrypt_cost
        self._entry_index = entry_index

    def handlers(self) -> dict[int, Callable[[Batch, Request], Any]]:
        admin = self._admin
        return {
            Kind.AUTH_ENABLE: admin(self._enable),
            Kind.AUTH_DISABLE: admin(self._disable),
            Kind.AUTHENTICATE: self._authenticate,
            Kind.AUTH_USER_ADD: admin(self._user_add),
            Kind.AUTH_USER_DELETE: admin(self._user_delete),
            Kind.AUTH_USER_CHANGE_PASSWORD: admin(self._user_change_password),
            Kind.AUTH_USER_GRANT_ROLE: admin(self._user_grant_role),
            Kind.AUTH_USER_REVOKE_ROLE: admin(self._user_revoke_role),
            Kind.AUTH_ROLE_ADD: admin(self._role_add),
            Kind.AUTH_ROLE_DELETE: admin(self._role_delete),
            Kind.AUTH_ROLE_GRANT_PERMISSION: admin(self._role_grant_permission),
            Kind.AUTH_ROLE_REVOKE_PERMISSION: admin(self._role_revoke_permission),
        }

    def _admin(self, fn: Callable[[Batch, Request], Any]) -> Callable[[Batch, Request], Any]:
        def checked(batch: Batch, req: Request) -> Any:
            self.store.check_admin(req.user)
            return fn(batch, req)

        return checked

    def _enable(self, batch: Batch, req: Request) -> Any:
        self.store.enable(batch)
        return rpc_pb2.AuthEnableResponse(header=rpc_pb2.ResponseHeader())

    def _disable(self, batch: Batch, req: Request) -> Any:
        self.store.disable(batch)
        return rpc_pb2.AuthDisableResponse(header=rpc_pb2.ResponseHeader())

    def _authenticate(self, batch: Batch, req: Request) -> Any:
        doc = json.loads(req.payload)
        name = doc["name"]
        st = self.store
        if not st.enabled:
            raise errors.AUTH_NOT_ENABLED()
        user = st.users.get(name)
        if user is None or user.options.no_password:
            raise errors.AUTH_FAILED()
        token = ""
        if isinstance(st.tokens, SimpleTokens):
            # Every member remembers the token, so it is accepted wherever the client goes next.
            token = st.tokens.assign(name, doc["simpleToken"], self._entry_index())
        return Authenticated(name, st.revision, token)

    def _user_add(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthUserAddRequest.FromString(req.payload)
        no_password = r.options.no_password
        if not r.name:
            raise errors.USER_EMPTY()
        if r.name in self.store.users:
            raise errors.USER_ALREADY_EXIST()
        hashed = b"" if no_password else select_password(r.password, r.hashedPassword, self.bcrypt_cost)
        self.store.user_add(batch, r.name, hashed, no_password)
        return rpc_pb2.AuthUserAddResponse(header=rpc_pb2.ResponseHeader())

    def _user_delete(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthUserDeleteRequest.FromString(req.payload)
        self.store.user_delete(batch, r.name)
        return rpc_pb2.AuthUserDeleteResponse(header=rpc_pb2.ResponseHeader())

    def _user_change_password(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthUserChangePasswordRequest.FromString(req.payload)
        user = self.store.users.get(r.name)
        if user is None:
            raise errors.USER_NOT_FOUND()
        hashed = (
            b""
            if user.options.no_password
            else select_password(r.password, r.hashedPassword, self.bcrypt_cost)
        )
        self.store.user_change_password(batch, r.name, hashed)
        return rpc_pb2.AuthUserChangePasswordResponse(header=rpc_pb2.ResponseHeader())

    def _user_grant_role(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthUserGrantRoleRequest.FromString(req.payload)
        self.store.user_grant_role(batch, r.user, r.role)
        return rpc_pb2.AuthUserGrantRoleResponse(header=rpc_pb2.ResponseHeader())

    def _user_revoke_role(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthUserRevokeRoleRequest.FromString(req.payload)
        self.store.user_revoke_role(batch, r.name, r.role)
        return rpc_pb2.AuthUserRevokeRoleResponse(header=rpc_pb2.ResponseHeader())

    def _role_add(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthRoleAddRequest.FromString(req.payload)
        self.store.role_add(batch, r.name)
        return rpc_pb2.AuthRoleAddResponse(header=rpc_pb2.ResponseHeader())

    def _role_delete(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthRoleDeleteRequest.FromString(req.payload)
        self.store.role_delete(batch, r.role)
        return rpc_pb2.AuthRoleDeleteResponse(header=rpc_pb2.ResponseHeader())

    def _role_grant_permission(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthRoleGrantPermissionRequest.FromString(req.payload)
        self.store.role_grant_permission(batch, r.name, r.perm)
        return rpc_pb2.AuthRoleGrantPermissionResponse(header=rpc_pb2.ResponseHeader())

    def _role_revoke_permission(self, batch: Batch, req: Request) -> Any:
        r = rpc_pb2.AuthRoleRevokePermissionRequest.FromString(req.payload)
        self.store.role_revoke_permission(batch, r.role, r.key, r.range_end)
        return rpc_pb2.AuthRoleRevokePermissionResponse(header=rpc_pb2.ResponseHeader())
