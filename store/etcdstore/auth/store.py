"""The auth store: users, roles, permissions, the enabled flag and the auth revision.

State lives in memory and is written through to the backend's AUTH, AUTH_USERS and
AUTH_ROLES column families (etcd's bucket layout: "authEnabled", "authRevision", name ->
authpb.User / authpb.Role). Changes happen only while applying Raft entries and go into the
apply batch; memory is the truth while a batch is pending (entries applied together must see
each other's changes), and is reloaded from the backend after a restart or snapshot install.

Every change bumps the auth revision except AuthEnable (as in etcd 3.4). A request carries
the revision its credentials were checked at; a request checked at an older revision is
refused with "revision of auth store is old" and the client re-authenticates.

Merged permissions per user are cached and the cache is dropped on every change (etcd's
range permission cache), so a permission check is a dict lookup and a binary search.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import grpc

from etcdstore import errors
from etcdstore.auth.perms import READ, WRITE, UserPermissions
from etcdstore.auth.tokens import TokenProvider
from etcdstore.logs import get_logger
from etcdstore.proto.authpb import auth_pb2
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.storage import backend as bk

log = get_logger("etcdstore.auth")

ROOT = "root"  # the root user and the root role
ENABLED_KEY = b"authEnabled"
REVISION_KEY = b"authRevision"
_ON, _OFF = b"\x01", b"\x00"
_U64 = struct.Struct(">Q")

# CheckPassword's error for a no-password user is not in etcd's gRPC table: code Unknown.
NO_PASSWORD_USER = errors.EtcdError(
    grpc.StatusCode.UNKNOWN, "auth: authentication failed, password was given for no password user"
)

_ALL = object()  # cache marker: a user with the root role may do anything


class AuthStore:
    def __init__(self, backend: bk.Backend, tokens: TokenProvider) -> None:
        self.tokens = tokens
        self.users: dict[str, auth_pb2.User] = {}
        self.roles: dict[str, auth_pb2.Role] = {}
        self.enabled = False
        self.revision = 1
        self._perms: dict[str, object] = {}
        self.load(backend)

    def load(self, backend: bk.Backend) -> None:
        """(Re)read everything from the backend: at start-up and after a snapshot install."""
        self.users = {k.decode(): auth_pb2.User.FromString(v) for k, v in backend.items(bk.AUTH_USERS)}
        self.roles = {k.decode(): auth_pb2.Role.FromString(v) for k, v in backend.items(bk.AUTH_ROLES)}
        raw = backend.get(bk.AUTH, REVISION_KEY)
        # etcd starts a fresh store at revision 1.
        self.revision = _U64.unpack(raw)[0] if raw else 1
        self.enabled = backend.get(bk.AUTH, ENABLED_KEY) == _ON
        self._perms = {}
        if self.enabled:
            self.tokens.enable()
        else:
            self.tokens.disable()

    # ---- persistence ------------------------------------------------------------------------

    def _commit_revision(self, batch: bk.Batch) -> None:
        self.revision += 1
        batch.put(bk.AUTH, REVISION_KEY, _U64.pack(self.revision))
        self._perms = {}

    def _put_user(self, batch: bk.Batch, user: auth_pb2.User) -> None:
        self.users[user.name.decode()] = user
        batch.put(bk.AUTH_USERS, bytes(user.name), user.SerializeToString())

    def _put_role(self, batch: bk.Batch, role: auth_pb2.Role) -> None:
        self.roles[role.name.decode()] = role
        batch.put(bk.AUTH_ROLES, bytes(role.name), role.SerializeToString())

    # ---- enable / disable ----------------------------------------------------------------------

    def enable(self, batch: bk.Batch) -> None:
        if self.enabled:
            return
        root = self.users.get(ROOT)
        if root is None:
            raise errors.ROOT_USER_NOT_EXIST()
        if ROOT not in root.roles:
            raise errors.ROOT_ROLE_NOT_EXIST()
        batch.put(bk.AUTH, ENABLED_KEY, _ON)
        self.enabled = True
        self._perms = {}
        self.tokens.enable()
        log.info("enabled authentication")

    def disable(self, batch: bk.Batch) -> None:
        if not self.enabled:
            return
        batch.put(bk.AUTH, ENABLED_KEY, _OFF)
        self._commit_revision(batch)
        self.enabled = False
        self.tokens.disable()
        log.info("disabled authentication")

    # ---- users -----------------------------------------------------------------------------------

    def user_add(self, batch: bk.Batch, name: str, hashed: bytes, no_password: bool) -> None:
        if not name:
            raise errors.USER_EMPTY()
        if name in self.users:
            raise errors.USER_ALREADY_EXIST()
        user = auth_pb2.User(name=name.encode(), password=b"" if no_password else hashed)
        user.options.no_password = no_password
        user.options.SetInParent()  # etcd always stores the options message
        self._put_user(batch, user)
        self._commit_revision(batch)

    def user_delete(self, batch: bk.Batch, name: str) -> None:
        if self.enabled and name == ROOT:
            raise errors.INVALID_AUTH_MGMT()
        if name not in self.users:
            raise errors.USER_NOT_FOUND()
        del self.users[name]
        batch.delete(bk.AUTH_USERS, name.encode())
        self._commit_revision(batch)
        self.tokens.invalidate_user(name)

    def user_change_password(self, batch: bk.Batch, name: str, hashed: bytes) -> None:
        old = self.users.get(name)
        if old is None:
            raise errors.USER_NOT_FOUND()
        user = auth_pb2.User()
        user.CopyFrom(old)
        # A no-password user keeps having none (etcd 3.5).
        user.password = b"" if old.options.no_password else hashed
        self._put_user(batch, user)
        self._commit_revision(batch)
        self.tokens.invalidate_user(name)

    def user_grant_role(self, batch: bk.Batch, name: str, role: str) -> None:
        old = self.users.get(name)
        if old is None:
            raise errors.USER_NOT_FOUND()
        if role != ROOT and role not in self.roles:
            raise errors.ROLE_NOT_FOUND()
        if role in old.roles:
            return  # already granted: success, nothing changes
        user = auth_pb2.User()
        user.CopyFrom(old)
        roles = sorted([*old.roles, role])
        del user.roles[:]
        user.roles.extend(roles)
        self._put_user(batch, user)
        self._commit_revision(batch)

    def user_revoke_role(self, batch: bk.Batch, name: str, role: str) -> None:
        if self.enabled and name == ROOT and role == ROOT:
            raise errors.INVALID_AUTH_MGMT()
        old = self.users.get(name)
        if old is None:
            raise errors.USER_NOT_FOUND()
        if role not in old.roles:
            raise errors.ROLE_NOT_GRANTED()
        self._put_user(batch, _without_role(old, role))
        self._commit_revision(batch)

    def user_get(self, name: str) -> list[str]:
        user = self.users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND()
        return list(user.roles)

    def user_list(self) -> list[str]:
        return sorted(self.users, key=str.encode)

    # ---- roles ---------------------------------------------------------------------------------------

    def role_add(self, batch: bk.Batch, name: str) -> None:
        if not name:
            raise errors.ROLE_EMPTY()
        if name in self.roles:
            raise errors.ROLE_ALREADY_EXIST()
        self._put_role(batch, auth_pb2.Role(name=name.encode()))
        self._commit_revision(batch)

    def role_delete(self, batch: bk.Batch, name: str) -> None:
        if self.enabled and name == ROOT:
            raise errors.INVALID_AUTH_MGMT()
        if name not in self.roles:
            raise errors.ROLE_NOT_FOUND()
        del self.roles[name]
        batch.delete(bk.AUTH_ROLES, name.encode())
        for user_name in self.user_list():
            user = self.users[user_name]
            if name in user.roles:
                self._put_user(batch, _without_role(user, name))
        self._commit_revision(batch)

    def role_get(self, name: str) -> list[auth_pb2.Permission]:
        role = self.roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND()
        return list(role.keyPermission)

    def role_list(self) -> list[str]:
        return sorted(self.roles, key=str.encode)

    def role_grant_permission(self, batch: bk.Batch, name: str, perm: auth_pb2.Permission) -> None:
        old = self.roles.get(name)
        if old is None:
            raise errors.ROLE_NOT_FOUND()
        role = auth_pb2.Role()
        role.CopyFrom(old)
        perms = role.keyPermission
        # etcd looks only at the first permission whose key is >= the new one's: the same key and
        # range end there means "update its type", anything else adds a new permission.
        idx = next((i for i, p in enumerate(perms) if p.key >= perm.key), len(perms))
        if idx < len(perms) and perms[idx].key == perm.key and perms[idx].range_end == perm.range_end:
            perms[idx].permType = perm.permType
        else:
            ordered = sorted([*perms, perm], key=_perm_key)  # stable, like etcd's sort of few items
            del perms[:]
            perms.extend(ordered)
        self._put_role(batch, role)
        self._commit_revision(batch)

    def role_revoke_permission(self, batch: bk.Batch, name: str, key: bytes, range_end: bytes) -> None:
        old = self.roles.get(name)
        if old is None:
            raise errors.ROLE_NOT_FOUND()
        kept = [p for p in old.keyPermission if p.key != key or p.range_end != range_end]
        if len(kept) == len(old.keyPermission):
            raise errors.PERMISSION_NOT_GRANTED()
        self._put_role(batch, auth_pb2.Role(name=old.name, keyPermission=kept))
        self._commit_revision(batch)

    # ---- checks ---------------------------------------------------------------------------------------

    def has_role(self, user: str, role: str) -> bool:
        u = self.users.get(user)
        return u is not None and role in u.roles

    def check_admin(self, user: str) -> None:
        """etcd's IsAdminPermitted: only a user with the root role, once auth is on."""
        if not self.enabled:
            return
        if not user:
            raise errors.USER_EMPTY()
        u = self.users.get(user)
        if u is None:
            raise errors.USER_NOT_FOUND()
        if ROOT not in u.roles:
            raise errors.PERMISSION_DENIED()

    def check(self, user: str, revision: int, key: bytes, range_end: bytes, perm_type: int) -> None:
        """etcd's isOpPermitted for one key or range (call only while auth is enabled)."""
        if revision == 0:
            raise errors.USER_EMPTY()  # no credentials at all
        if revision < self.revision:
            raise errors.AUTH_OLD_REVISION()
        perms = self._perms.get(user)
        if perms is None:
            perms = self._merged(user)
        if perms is _ALL:
            return
        # _ALL is a bare object marker
        if not perms.permits(key, range_end, perm_type):  # type: ignore[attr-defined]
            raise errors.PERMISSION_DENIED()

    def _merged(self, name: str) -> object:
        user = self.users.get(name)
        if user is None:
            raise errors.PERMISSION_DENIED()
        if ROOT in user.roles:
            perms: object = _ALL
        else:
            perms = UserPermissions(r for r in (self.roles.get(n) for n in user.roles) if r is not None)
        self._perms[name] = perms
        return perms

    def check_read(self, user: str, revision: int, key: bytes, range_end: bytes) -> None:
        self.check(user, revision, key, range_end, READ)

    def check_write(self, user: str, revision: int, key: bytes, range_end: bytes) -> None:
        self.check(user, revision, key, range_end, WRITE)

    def check_keys_writable(self, user: str, revision: int, keys: Iterable[bytes]) -> None:
        for key in keys:
            self.check(user, revision, key, b"", WRITE)

    def check_txn(self, user: str, revision: int, txn: rpc_pb2.TxnRequest) -> None:
        """Every compare needs read; every op of both branches its own permission (nested too)."""
        for cmp in txn.compare:
            self.check(user, revision, cmp.key, cmp.range_end, READ)
        for ops in (txn.success, txn.failure):
            for op in ops:
                which = op.WhichOneof("request")
                if which == "request_range":
                    r = op.request_range
                    self.check(user, revision, r.key, r.range_end, READ)
                elif which == "request_put":
                    self.check(user, revision, op.request_put.key, b"", WRITE)
                elif which == "request_delete_range":
                    d = op.request_delete_range
                    if d.prev_kv:
                        self.check(user, revision, d.key, d.range_end, READ)
                    self.check(user, revision, d.key, d.range_end, WRITE)
                elif which == "request_txn":
                    # etcd 3.4 skips nested txns here; checking them closes that hole.
                    self.check_txn(user, revision, op.request_txn)

    # ---- passwords -----------------------------------------------------------------------------------

    def password_hash_of(self, name: str) -> tuple[bytes, int]:
        """For Authenticate: the stored hash and the revision it was read at (etcd's CheckPassword)."""
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED()
        user = self.users.get(name)
        if user is None:
            raise errors.AUTH_FAILED()
        if user.options.no_password:
            raise NO_PASSWORD_USER()
        return bytes(user.password), self.revision


def _without_role(user: auth_pb2.User, role: str) -> auth_pb2.User:
    updated = auth_pb2.User()
    updated.CopyFrom(user)
    del updated.roles[:]
    updated.roles.extend(r for r in user.roles if r != role)
    return updated


def _perm_key(p: auth_pb2.Permission) -> bytes:
    return p.key
