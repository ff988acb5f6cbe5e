"""The auth store and its apply handlers on a real RocksDB backend: etcd's rules and errors,
the auth revision, persistence across reopen, and identical results on every member."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pytest
from etcdstore import errors
from etcdstore.auth.apply import AuthApplier, Authenticated, encode_authenticate
from etcdstore.auth.passwords import check_password, hash_password
from etcdstore.auth.perms import READ, READWRITE, WRITE
from etcdstore.auth.store import NO_PASSWORD_USER, AuthStore
from etcdstore.auth.tokens import SimpleTokens
from etcdstore.proto.authpb import auth_pb2
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.storage import backend as bk
from etcdstore.txn.requests import Kind, Request

_ids = itertools.count(1)
HASH = base64.b64encode(hash_password("pw", 4)).decode()


class Node:
    """One member's auth state machine: store + handlers over a real backend."""

    def __init__(self, path: Path) -> None:
        self.backend = bk.Backend(path)
        self.tokens = SimpleTokens(300)
        self.store = AuthStore(self.backend, self.tokens)
        self.index = 0
        self.handlers = AuthApplier(self.store, 4, lambda: self.index).handlers()

    def apply(self, kind: int, msg: object = None, user: str = "", payload: bytes | None = None) -> object:
        """Apply one entry in its own batch; returns the response or the EtcdError."""
        self.index += 1
        # msg is a protobuf message
        data = payload if payload is not None else msg.SerializeToString()  # type: ignore[attr-defined]
        req = Request(kind, next(_ids), data, user, self.store.revision if user else 0)
        batch = self.backend.batch()
        try:
            return self.handlers[kind](batch, req)
        except errors.EtcdError as e:
            return e
        finally:
            self.backend.write(batch, sync=False)

    def dump(self) -> dict[str, list[tuple[bytes, bytes]]]:
        return {cf: list(self.backend.items(cf)) for cf in (bk.AUTH, bk.AUTH_USERS, bk.AUTH_ROLES)}


@pytest.fixture
def node(tmp_path: Path):
    n = Node(tmp_path / "db")
    yield n
    n.backend.close()


def user_add(name: str, no_password: bool = False) -> rpc_pb2.AuthUserAddRequest:
    r = rpc_pb2.AuthUserAddRequest(name=name, hashedPassword="" if no_password else HASH)
    r.options.no_password = no_password
    return r


def perm(t: int, key: bytes, end: bytes = b"") -> rpc_pb2.AuthRoleGrantPermissionRequest:
    return rpc_pb2.AuthRoleGrantPermissionRequest(
        name="r", perm=auth_pb2.Permission(permType=t, key=key, range_end=end)
    )


def setup_root(n: Node) -> None:
    assert not isinstance(n.apply(Kind.AUTH_USER_ADD, user_add("root")), errors.EtcdError)
    n.apply(Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))


def test_revision_bumps_and_enable_rules(node: Node) -> None:
    st = node.store
    assert (st.revision, st.enabled) == (1, False)
    assert node.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest()) == errors.ROOT_USER_NOT_EXIST
    node.apply(Kind.AUTH_USER_ADD, user_add("root"))
    assert st.revision == 2
    assert node.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest()) == errors.ROOT_ROLE_NOT_EXIST
    assert (
        node.apply(Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="nope"))
        == errors.ROLE_NOT_FOUND
    )
    node.apply(Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    assert st.revision == 3  # "root" needs no role object
    node.apply(Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    assert st.revision == 3  # granting again changes nothing
    resp = node.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    assert isinstance(resp, rpc_pb2.AuthEnableResponse) and st.enabled and st.revision == 3  # enable: no bump
    assert node.apply(Kind.AUTH_DISABLE, rpc_pb2.AuthDisableRequest(), user="root") is not None
    assert not st.enabled and st.revision == 4


def test_admin_checked_at_apply_once_enabled(node: Node) -> None:
    setup_root(node)
    node.apply(Kind.AUTH_USER_ADD, user_add("alice"))
    node.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    req = rpc_pb2.AuthRoleAddRequest(name="r")
    assert node.apply(Kind.AUTH_ROLE_ADD, req) == errors.USER_EMPTY
    assert node.apply(Kind.AUTH_ROLE_ADD, req, user="ghost") == errors.USER_NOT_FOUND
    assert node.apply(Kind.AUTH_ROLE_ADD, req, user="alice") == errors.PERMISSION_DENIED
    # The root check comes first, before the request's own validation (etcd's authApplierV3).
    assert node.apply(Kind.AUTH_USER_ADD, user_add(""), user="alice") == errors.PERMISSION_DENIED
    assert isinstance(node.apply(Kind.AUTH_ROLE_ADD, req, user="root"), rpc_pb2.AuthRoleAddResponse)
    assert (
        node.apply(Kind.AUTH_USER_DELETE, rpc_pb2.AuthUserDeleteRequest(name="root"), user="root")
        == errors.INVALID_AUTH_MGMT
    )
    assert (
        node.apply(Kind.AUTH_ROLE_DELETE, rpc_pb2.AuthRoleDeleteRequest(role="root"), user="root")
        == errors.INVALID_AUTH_MGMT
    )
    assert (
        node.apply(
            Kind.AUTH_USER_REVOKE_ROLE,
            rpc_pb2.AuthUserRevokeRoleRequest(name="root", role="root"),
            user="root",
        )
        == errors.INVALID_AUTH_MGMT
    )


def test_user_and_role_errors(node: Node) -> None:
    assert node.apply(Kind.AUTH_USER_ADD, user_add("")) == errors.USER_EMPTY
    node.apply(Kind.AUTH_USER_ADD, user_add("bob"))
    assert node.apply(Kind.AUTH_USER_ADD, user_add("bob")) == errors.USER_ALREADY_EXIST
    assert node.apply(Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="")) == errors.ROLE_EMPTY
    node.apply(Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="r"))
    assert node.apply(Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="r")) == errors.ROLE_ALREADY_EXIST
    assert node.apply(Kind.AUTH_USER_DELETE, rpc_pb2.AuthUserDeleteRequest(name="x")) == errors.USER_NOT_FOUND
    assert (
        node.apply(Kind.AUTH_USER_REVOKE_ROLE, rpc_pb2.AuthUserRevokeRoleRequest(name="bob", role="r"))
        == errors.ROLE_NOT_GRANTED
    )
    assert (
        node.apply(
            Kind.AUTH_ROLE_REVOKE_PERMISSION, rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"k")
        )
        == errors.PERMISSION_NOT_GRANTED
    )
    assert (
        node.apply(Kind.AUTH_ROLE_GRANT_PERMISSION, rpc_pb2.AuthRoleGrantPermissionRequest(name="x"))
        == errors.ROLE_NOT_FOUND
    )
    bad = rpc_pb2.AuthUserAddRequest(name="eve", hashedPassword="not base64!")
    assert node.apply(Kind.AUTH_USER_ADD, bad) == NO_PASSWORD_USER
    with pytest.raises(errors.EtcdError) as e:
        node.store.role_get("x")
    assert e.value == errors.ROLE_NOT_FOUND


def test_grant_permission_updates_same_range_and_keeps_key_order(node: Node) -> None:
    node.apply(Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="r"))
    for req in (perm(READ, b"m"), perm(READ, b"b", b"c"), perm(WRITE, b"m"), perm(READ, b"b", b"d")):
        node.apply(Kind.AUTH_ROLE_GRANT_PERMISSION, req)
    got = [(p.permType, p.key, p.range_end) for p in node.store.role_get("r")]
    assert got == [(READ, b"b", b"c"), (READ, b"b", b"d"), (WRITE, b"m", b"")]


def test_role_delete_revokes_it_from_users_and_checks_follow(node: Node) -> None:
    setup_root(node)
    node.apply(Kind.AUTH_USER_ADD, user_add("alice"))
    node.apply(Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="r"))
    node.apply(Kind.AUTH_ROLE_GRANT_PERMISSION, perm(READWRITE, b"k/", b"k0"))
    node.apply(Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="r"))
    node.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    st = node.store
    rev = st.revision
    st.check("alice", rev, b"k/1", b"", WRITE)
    st.check("root", rev, b"anything", b"\x00", WRITE)
    with pytest.raises(errors.EtcdError) as e:
        st.check("alice", rev, b"x", b"", READ)
    assert e.value == errors.PERMISSION_DENIED
    with pytest.raises(errors.EtcdError) as e:
        st.check("alice", 0, b"k/1", b"", READ)
    assert e.value == errors.USER_EMPTY
    node.apply(Kind.AUTH_ROLE_DELETE, rpc_pb2.AuthRoleDeleteRequest(role="r"), user="root")
    assert st.user_get("alice") == [] and st.revision == rev + 1
    with pytest.raises(errors.EtcdError) as e:
        st.check("alice", rev, b"k/1", b"", READ)  # checked at the old revision
    assert e.value == errors.AUTH_OLD_REVISION
    with pytest.raises(errors.EtcdError) as e:
        st.check("alice", st.revision, b"k/1", b"", READ)
    assert e.value == errors.PERMISSION_DENIED


def test_authenticate_assigns_simple_tokens_and_password_changes_drop_them(node: Node) -> None:
    setup_root(node)
    node.apply(Kind.AUTH_USER_ADD, user_add("svc", no_password=True))
    payload = encode_authenticate("root", "abcdefghijklmnop")
    assert node.apply(Kind.AUTHENTICATE, payload=payload) == errors.AUTH_NOT_ENABLED
    node.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    res = node.apply(Kind.AUTHENTICATE, payload=payload)
    assert isinstance(res, Authenticated) and res.token == f"abcdefghijklmnop.{node.index}"
    assert node.tokens.info(res.token, node.store.revision).user == "root"
    assert node.apply(Kind.AUTHENTICATE, payload=encode_authenticate("svc", "x")) == errors.AUTH_FAILED
    assert node.apply(Kind.AUTHENTICATE, payload=encode_authenticate("nobody", "x")) == errors.AUTH_FAILED
    with pytest.raises(errors.EtcdError) as e:
        node.store.password_hash_of("svc")
    assert e.value == NO_PASSWORD_USER
    new = rpc_pb2.AuthUserChangePasswordRequest(
        name="root", hashedPassword=base64.b64encode(hash_password("new", 4)).decode()
    )
    node.apply(Kind.AUTH_USER_CHANGE_PASSWORD, new, user="root")
    assert node.tokens.info(res.token, node.store.revision) is None
    hashed, _ = node.store.password_hash_of("root")
    assert check_password("new", hashed) and not check_password("pw", hashed)


def test_state_survives_reopen_and_members_agree(tmp_path: Path) -> None:
    a, b = Node(tmp_path / "a"), Node(tmp_path / "b")
    for n in (a, b):
        setup_root(n)
        n.apply(Kind.AUTH_USER_ADD, user_add("alice"))
        n.apply(Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="r"))
        n.apply(Kind.AUTH_ROLE_GRANT_PERMISSION, perm(READ, b"p/", b"p0"))
        n.apply(Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="r"))
        n.apply(Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    assert a.dump() == b.dump()  # same entries, same bytes (the hash was computed before proposing)
    snapshot = (
        a.store.revision,
        a.store.enabled,
        a.store.user_list(),
        a.store.role_list(),
        a.store.user_get("alice"),
        [p.SerializeToString() for p in a.store.role_get("r")],
    )
    a.backend.close()
    b.backend.close()
    reopened = Node(tmp_path / "a")
    st = reopened.store
    assert (
        st.revision,
        st.enabled,
        st.user_list(),
        st.role_list(),
        st.user_get("alice"),
        [p.SerializeToString() for p in st.role_get("r")],
    ) == snapshot
    assert snapshot[0] == 7 and snapshot[2] == ["alice", "root"]
    st.check("alice", st.revision, b"p/x", b"", READ)
    reopened.backend.close()
