"""Writes are judged again when their entry is applied, against the replicated auth store.

An in-process member (real Raft, RocksDB and gRPC) is driven directly: a write checked at the
API at auth revision R is proposed with (user, R); if a revoke is applied in between, the write
must be refused ("revision of auth store is old") instead of slipping through, and an entry
whose user lacks the permission is refused at apply even though no API check ran.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from etcdstore import errors
from etcdstore.auth import hooks_of
from etcdstore.auth.apply import Authenticated, encode_authenticate
from etcdstore.auth.passwords import hash_password
from etcdstore.config import parse_args
from etcdstore.member import Member
from etcdstore.proto.authpb import auth_pb2
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.txn import kv_apply
from etcdstore.txn.requests import Kind
from testlib import eventually_async, lone_member_args


@pytest.fixture
async def member(tmp_path: Path):
    _client, flags = lone_member_args(tmp_path / "n1")
    cfg = parse_args(
        [
            *flags,
            "--bcrypt-cost",
            "4",
        ],
        environ={},
    )
    m = Member(cfg)
    await m.start()
    try:
        s = m.server
        assert s is not None
        await eventually_async(lambda: s.is_leader, interval=0.02, message="a leader")
        yield m
    finally:
        await m.stop()


async def _propose(s, kind: int, msg: object, user: str = "", rev: int = 0) -> object:
    try:
        # msg is a protobuf message
        return await s.propose(kind, msg.SerializeToString(), user=user, auth_revision=rev)  # type: ignore[attr-defined]
    except errors.EtcdError as e:
        return e


async def test_revoke_between_check_and_apply_refuses_the_write(member: Member) -> None:
    s = member.server
    hashed = base64.b64encode(hash_password("pw", 4)).decode()
    setup = [
        (Kind.AUTH_USER_ADD, rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=hashed)),
        (Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root")),
        (Kind.AUTH_USER_ADD, rpc_pb2.AuthUserAddRequest(name="alice", hashedPassword=hashed)),
        (Kind.AUTH_ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="w")),
        (
            Kind.AUTH_ROLE_GRANT_PERMISSION,
            rpc_pb2.AuthRoleGrantPermissionRequest(
                name="w", perm=auth_pb2.Permission(permType=auth_pb2.Permission.WRITE, key=b"k")
            ),
        ),
        (Kind.AUTH_USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="w")),
        (Kind.AUTH_ENABLE, rpc_pb2.AuthEnableRequest()),
    ]
    for kind, msg in setup:
        assert not isinstance(await _propose(s, kind, msg), errors.EtcdError)
    store = hooks_of(s).store
    rev = store.revision
    put = rpc_pb2.PutRequest(key=b"k", value=b"v1")
    # Allowed when nothing changed since the check.
    assert isinstance(await _propose(s, Kind.PUT, put, "alice", rev), rpc_pb2.PutResponse)
    # The revoke is ordered before the write in the log: the write must not go through.
    revoke = rpc_pb2.AuthRoleRevokePermissionRequest(role="w", key=b"k")
    out = await asyncio.gather(
        _propose(s, Kind.AUTH_ROLE_REVOKE_PERMISSION, revoke, "root", rev),
        _propose(s, Kind.PUT, rpc_pb2.PutRequest(key=b"k", value=b"v2"), "alice", rev),
    )
    assert isinstance(out[0], rpc_pb2.AuthRoleRevokePermissionResponse)
    assert out[1] == errors.AUTH_OLD_REVISION
    # At the current revision the (unchecked) entry is judged on its own: denied.
    assert await _propose(s, Kind.PUT, put, "alice", store.revision) == errors.PERMISSION_DENIED
    txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=put)])
    assert await _propose(s, Kind.TXN, txn, "alice", store.revision) == errors.PERMISSION_DENIED
    assert (
        await _propose(s, Kind.DELETE_RANGE, rpc_pb2.DeleteRangeRequest(key=b"k"), "", 0) == errors.USER_EMPTY
    )
    assert kv_apply.range(s.kv, rpc_pb2.RangeRequest(key=b"k")).kvs[0].value == b"v1"  # v2 never landed
    assert isinstance(await _propose(s, Kind.PUT, put, "root", store.revision), rpc_pb2.PutResponse)
    # Authenticate entries are judged at apply too.
    with pytest.raises(errors.EtcdError) as e:
        await s.propose(Kind.AUTHENTICATE, encode_authenticate("ghost", "x" * 16))
    assert e.value == errors.AUTH_FAILED
    ok = await s.propose(Kind.AUTHENTICATE, encode_authenticate("alice", "y" * 16))
    assert isinstance(ok, Authenticated) and ok.token.startswith("y" * 16 + ".")
