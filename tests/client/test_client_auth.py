"""Auth against a real etcd 3.4 member: users, roles, permissions, tokens."""

from __future__ import annotations

import asyncio

import pytest
from etcdstore import errors
from etcdstore.client import Client, PermissionType
from etcdstore.errors import EtcdError

pytestmark = pytest.mark.etcd


async def raises(coro, expected: EtcdError) -> None:
    with pytest.raises(EtcdError) as e:
        await coro
    assert e.value == expected


async def setup_users(c: Client) -> None:
    await c.user_add("root", "rootpw")
    await c.user_grant_role("root", "root")
    await c.role_add("reader")
    await c.role_grant_permission("reader", "pub/", prefix=True, perm_type=PermissionType.READ)
    await c.user_add("alice", "alicepw")
    await c.user_grant_role("alice", "reader")


async def test_users_roles_permissions_and_enforcement(etcd) -> None:
    eps = etcd.endpoints
    async with (
        Client(eps, timeout=10) as admin,
        Client(eps, user="root", password="rootpw", timeout=10) as root,
    ):
        await raises(admin.auth_enable(), errors.ROOT_USER_NOT_EXIST)
        await setup_users(admin)
        await raises(admin.user_add("alice", "x"), errors.USER_ALREADY_EXIST)
        await raises(admin.role_add("reader"), errors.ROLE_ALREADY_EXIST)
        await raises(admin.user_grant_role("alice", "nope"), errors.ROLE_NOT_FOUND)
        await raises(admin.user_get("bob"), errors.USER_NOT_FOUND)
        await admin.user_add("svc", no_password=True)
        assert list((await admin.user_get("alice")).roles) == ["reader"]
        assert sorted((await admin.user_list()).users) == ["alice", "root", "svc"]
        assert "reader" in (await admin.role_list()).roles  # 3.4 lists "root" only once it is added
        perm = (await admin.role_get("reader")).perm[0]
        assert (perm.permType, perm.key, perm.range_end) == (PermissionType.READ, b"pub/", b"pub0")
        await root.put("before", "auth")  # auth still off: works without a token
        with pytest.raises(EtcdError) as e:
            await admin.auth_status()  # added in etcd 3.5
        assert e.value.code.name == "UNIMPLEMENTED"

        await admin.auth_enable()
        await raises(admin.get("pub/x"), errors.USER_EMPTY)  # no credentials
        await root.put("pub/x", "1")  # "user name is empty" made it authenticate, then resend
        await root.put("priv", "secret")

        async with Client(eps, user="alice", password="alicepw", timeout=10) as alice:
            assert (await alice.get("pub/x")).kvs[0].value == b"1"
            await raises(alice.put("pub/x", "2"), errors.PERMISSION_DENIED)
            await raises(alice.get("priv"), errors.PERMISSION_DENIED)
            await raises(alice.watch("priv"), errors.PERMISSION_DENIED)
            w = await alice.watch("pub/", prefix=True)
            await root.put("pub/y", "2")
            assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.key == b"pub/y"
            await w.cancel()

        async with Client(eps, user="alice", password="wrong", timeout=10) as bad:
            await raises(bad.get("pub/x"), errors.AUTH_FAILED)
        assert (await root.authenticate("alice", "alicepw")).token

        await root.user_change_password("alice", "new")
        async with Client(eps, user="alice", password="new", timeout=10) as alice:
            assert (await alice.get("pub/x")).count == 1
            await root.role_revoke_permission("reader", "pub/", prefix=True)
            await raises(alice.get("pub/x"), errors.PERMISSION_DENIED)
            await root.role_grant_permission("reader", "pub/x")
            assert (await alice.get("pub/x")).count == 1
            await root.user_revoke_role("alice", "reader")
            await raises(alice.get("pub/x"), errors.PERMISSION_DENIED)
        await root.role_delete("reader")
        await root.user_delete("alice")
        await raises(root.role_get("reader"), errors.ROLE_NOT_FOUND)
        await raises(root.user_delete("alice"), errors.USER_NOT_FOUND)
        await root.auth_disable()
        assert (await admin.get("priv")).kvs[0].value == b"secret"


@pytest.mark.etcd_args("--auth-token-ttl", "1")
async def test_expired_token_is_refreshed_once(etcd) -> None:
    async with Client(etcd.endpoints, timeout=10) as admin:
        await setup_users(admin)
        await admin.auth_enable()
    async with Client(etcd.endpoints, user="root", password="rootpw", timeout=10) as root:
        await root.put("a", "1")
        first_token = root._shared.token
        await asyncio.sleep(3)  # the simple token expires after 1 s unused
        await root.put("a", "2")  # "invalid auth token" -> Authenticate -> resend
        assert root._shared.token != first_token and root._shared.token_gen == 2
        await asyncio.sleep(3)
        w = await root.watch("a")  # a refused watch create refreshes the token too
        assert root._shared.token_gen == 3
        await root.put("a", "3")
        assert (await asyncio.wait_for(w.__anext__(), 5)).events[0].kv.value == b"3"
        await w.cancel()
