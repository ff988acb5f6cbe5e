"""etcdserverpb.Auth: enable/disable, Authenticate, users, roles and permissions.

Changes go through Raft with the caller's credentials in the entry; the root check happens
when the entry is applied (auth/apply.py). Reads (get/list/status) wait for the ReadIndex
barrier and answer from this member's store, which gives the same linearizable answer etcd
gets by sending them through the log, without writing to it.

Passwords are bcrypt-hashed here, off the event loop, before proposing (etcd 3.5's
`hashedPassword`): every member stores the same hash and the log never holds a password.
Authenticate checks the password (off the loop), then proposes the token's creation so it is
ordered after every auth change; if the store changed meanwhile it starts over (etcd 3.4).
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import grpc

from etcdstore import errors
from etcdstore.api.common import gate, unary
from etcdstore.auth.apply import Authenticated, encode_authenticate
from etcdstore.auth.hooks import hooks_of
from etcdstore.auth.passwords import check_password, hash_password
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.txn.requests import Kind

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: ServerAPI) -> None:
        self.s = server
        self.hooks = hooks_of(server)
        self.store = self.hooks.store

    async def _propose(self, context: grpc.aio.ServicerContext, kind: int, request: Any) -> Any:
        gate(self.s, context)
        user, rev = self.hooks.credentials(context)
        return await self.s.propose(kind, request.SerializeToString(), user=user, auth_revision=rev)

    async def _read(self, context: grpc.aio.ServicerContext) -> str:
        """Credentials, then the linearizable barrier; returns the requesting user."""
        gate(self.s, context)
        user, _ = self.hooks.credentials(context)
        await self.s.read_index()
        return user

    async def _hash_into(self, context: grpc.aio.ServicerContext, request: Any) -> None:
        """Replace the plain password by its bcrypt hash (unless the client sent a hash only)."""
        if request.hashedPassword and not request.password:
            return
        # Fail fast before spending ~50 ms of bcrypt on a caller the applier will refuse anyway.
        self.store.check_admin(self.hooks.credentials(context)[0])
        hashed = await asyncio.get_running_loop().run_in_executor(
            None, hash_password, request.password, self.s.cfg.bcrypt_cost
        )
        request.hashedPassword = base64.b64encode(hashed).decode()
        request.password = ""

    # ---- enable / disable / status ----------------------------------------------------------------

    @unary
    async def AuthEnable(
        self, request: rpc_pb2.AuthEnableRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthEnableResponse:
        return await self._propose(context, Kind.AUTH_ENABLE, request)

    @unary
    async def AuthDisable(
        self, request: rpc_pb2.AuthDisableRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthDisableResponse:
        return await self._propose(context, Kind.AUTH_DISABLE, request)

    @unary
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthStatusResponse:
        user = await self._read(context)
        self.store.check_admin(user)
        return rpc_pb2.AuthStatusResponse(
            header=self.s.header(), enabled=self.store.enabled, authRevision=self.store.revision
        )

    # ---- Authenticate -------------------------------------------------------------------------------

    @unary
    async def Authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthenticateResponse:
        s, st, tokens = self.s, self.store, self.hooks.tokens
        gate(s, context)
        user, rev = self.hooks.credentials(context)  # a bad token alongside is refused, as in etcd
        await s.read_index()
        loop = asyncio.get_running_loop()
        while True:
            hashed, checked_revision = st.password_hash_of(request.name)
            if not await loop.run_in_executor(None, check_password, request.password, hashed):
                raise errors.AUTH_FAILED()
            payload = encode_authenticate(request.name, tokens.gen_prefix())
            result: Authenticated = await s.propose(Kind.AUTHENTICATE, payload, user=user, auth_revision=rev)
            if checked_revision == st.revision:
                break
            # The user may have changed (password, deletion) since the check: check again.
        # sign is not on the TokenProvider protocol
        token = result.token or tokens.sign(result.user, result.revision)  # type: ignore[attr-defined]
        return rpc_pb2.AuthenticateResponse(header=s.header(), token=token)

    # ---- users --------------------------------------------------------------------------------------

    @unary
    async def UserAdd(
        self, request: rpc_pb2.AuthUserAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserAddResponse:
        gate(self.s, context)
        if request.options.no_password:
            request.password = ""  # unused, and kept out of the log
        else:
            await self._hash_into(context, request)
        return await self._propose(context, Kind.AUTH_USER_ADD, request)

    @unary
    async def UserGet(
        self, request: rpc_pb2.AuthUserGetRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserGetResponse:
        user = await self._read(context)
        if user != request.name:  # anyone may look at themselves
            self.store.check_admin(user)
        return rpc_pb2.AuthUserGetResponse(header=self.s.header(), roles=self.store.user_get(request.name))

    @unary
    async def UserList(
        self, request: rpc_pb2.AuthUserListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserListResponse:
        self.store.check_admin(await self._read(context))
        return rpc_pb2.AuthUserListResponse(header=self.s.header(), users=self.store.user_list())

    @unary
    async def UserDelete(
        self, request: rpc_pb2.AuthUserDeleteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserDeleteResponse:
        return await self._propose(context, Kind.AUTH_USER_DELETE, request)

    @unary
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        gate(self.s, context)
        await self._hash_into(context, request)
        return await self._propose(context, Kind.AUTH_USER_CHANGE_PASSWORD, request)

    @unary
    async def UserGrantRole(
        self, request: rpc_pb2.AuthUserGrantRoleRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserGrantRoleResponse:
        return await self._propose(context, Kind.AUTH_USER_GRANT_ROLE, request)

    @unary
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        return await self._propose(context, Kind.AUTH_USER_REVOKE_ROLE, request)

    # ---- roles --------------------------------------------------------------------------------------

    @unary
    async def RoleAdd(
        self, request: rpc_pb2.AuthRoleAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleAddResponse:
        return await self._propose(context, Kind.AUTH_ROLE_ADD, request)

    @unary
    async def RoleGet(
        self, request: rpc_pb2.AuthRoleGetRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleGetResponse:
        user = await self._read(context)
        if not self.store.has_role(user, request.role):  # anyone may look at their own roles
            self.store.check_admin(user)
        return rpc_pb2.AuthRoleGetResponse(header=self.s.header(), perm=self.store.role_get(request.role))

    @unary
    async def RoleList(
        self, request: rpc_pb2.AuthRoleListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleListResponse:
        self.store.check_admin(await self._read(context))
        return rpc_pb2.AuthRoleListResponse(header=self.s.header(), roles=self.store.role_list())

    @unary
    async def RoleDelete(
        self, request: rpc_pb2.AuthRoleDeleteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleDeleteResponse:
        return await self._propose(context, Kind.AUTH_ROLE_DELETE, request)

    @unary
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        return await self._propose(context, Kind.AUTH_ROLE_GRANT_PERMISSION, request)

    @unary
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        return await self._propose(context, Kind.AUTH_ROLE_REVOKE_PERMISSION, request)
