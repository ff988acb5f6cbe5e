"""Auth methods (users, roles, permissions)."""

from __future__ import annotations

from etcdstore.client.methods import method
from etcdstore.client.requests import Bytes, PermissionType, range_end_for, to_bytes
from etcdstore.client.transport import Transport
from etcdstore.proto.authpb import auth_pb2
from etcdstore.proto.etcdserverpb import rpc_pb2

_M = {
    name: method(f"Auth.{name}")
    for name in (
        "AuthEnable",
        "AuthDisable",
        "AuthStatus",
        "Authenticate",
        "UserAdd",
        "UserGet",
        "UserList",
        "UserDelete",
        "UserChangePassword",
        "UserGrantRole",
        "UserRevokeRole",
        "RoleAdd",
        "RoleGet",
        "RoleList",
        "RoleDelete",
        "RoleGrantPermission",
        "RoleRevokePermission",
    )
}


class AuthMixin(Transport):
    async def auth_enable(self) -> rpc_pb2.AuthEnableResponse:
        """Needs user "root" with role "root" first (else ROOT_USER_NOT_EXIST / ROOT_ROLE_NOT_EXIST)."""
        return await self._call(_M["AuthEnable"], rpc_pb2.AuthEnableRequest(), idempotent=False)

    async def auth_disable(self) -> rpc_pb2.AuthDisableResponse:
        return await self._call(_M["AuthDisable"], rpc_pb2.AuthDisableRequest(), idempotent=False)

    async def auth_status(self) -> rpc_pb2.AuthStatusResponse:
        """etcd 3.5+ (3.4 answers UNIMPLEMENTED)."""
        return await self._call(_M["AuthStatus"], rpc_pb2.AuthStatusRequest(), idempotent=True)

    async def authenticate(self, name: str, password: str) -> rpc_pb2.AuthenticateResponse:
        """A token for name/password (the client does this itself when given user/password)."""
        req = rpc_pb2.AuthenticateRequest(name=name, password=password)
        return await self._call(_M["Authenticate"], req, idempotent=True)

    async def user_add(
        self, name: str, password: str = "", *, no_password: bool = False
    ) -> rpc_pb2.AuthUserAddResponse:
        req = rpc_pb2.AuthUserAddRequest(
            name=name, password=password, options=auth_pb2.UserAddOptions(no_password=no_password)
        )
        return await self._call(_M["UserAdd"], req, idempotent=False)

    async def user_get(self, name: str) -> rpc_pb2.AuthUserGetResponse:
        return await self._call(_M["UserGet"], rpc_pb2.AuthUserGetRequest(name=name), idempotent=True)

    async def user_list(self) -> rpc_pb2.AuthUserListResponse:
        return await self._call(_M["UserList"], rpc_pb2.AuthUserListRequest(), idempotent=True)

    async def user_delete(self, name: str) -> rpc_pb2.AuthUserDeleteResponse:
        return await self._call(_M["UserDelete"], rpc_pb2.AuthUserDeleteRequest(name=name), idempotent=False)

    async def user_change_password(self, name: str, password: str) -> rpc_pb2.AuthUserChangePasswordResponse:
        req = rpc_pb2.AuthUserChangePasswordRequest(name=name, password=password)
        return await self._call(_M["UserChangePassword"], req, idempotent=False)

    async def user_grant_role(self, user: str, role: str) -> rpc_pb2.AuthUserGrantRoleResponse:
        req = rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role)
        return await self._call(_M["UserGrantRole"], req, idempotent=False)

    async def user_revoke_role(self, user: str, role: str) -> rpc_pb2.AuthUserRevokeRoleResponse:
        req = rpc_pb2.AuthUserRevokeRoleRequest(name=user, role=role)
        return await self._call(_M["UserRevokeRole"], req, idempotent=False)

    async def role_add(self, name: str) -> rpc_pb2.AuthRoleAddResponse:
        return await self._call(_M["RoleAdd"], rpc_pb2.AuthRoleAddRequest(name=name), idempotent=False)

    async def role_get(self, name: str) -> rpc_pb2.AuthRoleGetResponse:
        return await self._call(_M["RoleGet"], rpc_pb2.AuthRoleGetRequest(role=name), idempotent=True)

    async def role_list(self) -> rpc_pb2.AuthRoleListResponse:
        return await self._call(_M["RoleList"], rpc_pb2.AuthRoleListRequest(), idempotent=True)

    async def role_delete(self, name: str) -> rpc_pb2.AuthRoleDeleteResponse:
        return await self._call(_M["RoleDelete"], rpc_pb2.AuthRoleDeleteRequest(role=name), idempotent=False)

    async def role_grant_permission(
        self,
        name: str,
        key: Bytes,
        *,
        range_end: Bytes | None = None,
        prefix: bool = False,
        from_key: bool = False,
        perm_type: PermissionType = PermissionType.READWRITE,
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        k = to_bytes(key)
        perm = auth_pb2.Permission(
            permType=int(perm_type), key=k, range_end=range_end_for(k, range_end, prefix, from_key)
        )
        req = rpc_pb2.AuthRoleGrantPermissionRequest(name=name, perm=perm)
        return await self._call(_M["RoleGrantPermission"], req, idempotent=False)

    async def role_revoke_permission(
        self,
        name: str,
        key: Bytes,
        *,
        range_end: Bytes | None = None,
        prefix: bool = False,
        from_key: bool = False,
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        k = to_bytes(key)
        req = rpc_pb2.AuthRoleRevokePermissionRequest(
            role=name, key=k, range_end=range_end_for(k, range_end, prefix, from_key)
        )
        return await self._call(_M["RoleRevokePermission"], req, idempotent=False)
