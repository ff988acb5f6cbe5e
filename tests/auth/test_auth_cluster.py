"""Tokens across a 3-member etcdstore cluster.

JWT: a token issued by one member is accepted by every other one (they share the key pair),
a verify-only member (public key only) accepts tokens but cannot issue them, and a token goes
stale with the auth revision it was issued at, exactly as a single real etcd 3.4 with the same
--auth-token does. Simple tokens: every member applies the Authenticate entry, so a token
issued by one member works on the others too (etcd 3.4 behaves the same way).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from authprocs import authenticate, call, watch_create
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from etcdstore.proto.etcdserverpb import rpc_pb2
from testlib import Cluster, have_etcd, wait_applied

OK = "OK"


def jwt_keys(tmp: Path) -> tuple[str, str]:
    key = rsa.generate_private_key(65537, 2048)
    priv, pub = tmp / "jwt.key", tmp / "jwt.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(pub), str(priv)


def set_up(ep: str) -> str:
    """root + user u (read/write on u/), auth on; returns a root token."""
    for method, req in (
        ("UserAdd", rpc_pb2.AuthUserAddRequest(name="root", password="rpw")),
        ("UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root")),
        ("UserAdd", rpc_pb2.AuthUserAddRequest(name="u", password="upw")),
        ("RoleAdd", rpc_pb2.AuthRoleAddRequest(name="rw")),
        (
            "RoleGrantPermission",
            rpc_pb2.AuthRoleGrantPermissionRequest(
                name="rw", perm={"permType": 2, "key": b"u/", "range_end": b"u0"}
            ),
        ),
        ("UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user="u", role="rw")),
        ("AuthEnable", rpc_pb2.AuthEnableRequest()),
    ):
        code, detail = call(ep, "Auth", method, req)
        assert code == OK, (method, detail)
    return authenticate(ep, "root", "rpw")


def stale_token_outcomes(ep: str, other: str) -> list[object]:
    """What a JWT does once the auth store moves past the revision it was issued at."""
    user = authenticate(ep, "u", "upw")
    out: list[object] = [call(other, "KV", "Put", rpc_pb2.PutRequest(key=b"u/1", value=b"a"), token=user)[0]]
    root = authenticate(ep, "root", "rpw")
    assert call(ep, "Auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest(name="another"), token=root)[0] == OK
    wait_applied(sorted({ep, other}))  # every member applied the change
    out.append(call(other, "KV", "Range", rpc_pb2.RangeRequest(key=b"u/1"), token=user))
    out.append(call(other, "KV", "Put", rpc_pb2.PutRequest(key=b"u/1", value=b"b"), token=user))
    out.append(call(ep, "Auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest(name="again"), token=root)[0])
    fresh = authenticate(other, "u", "upw")
    out.append(call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"u/1"), token=fresh)[0])
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return jwt_keys(tmp_path_factory.mktemp("jwt"))


def test_jwt_tokens_work_on_every_member(tmp_path: Path, keys: tuple[str, str]) -> None:
    pub, priv = keys
    spec = f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"
    with Cluster.start(
        tmp_path, 3, binary="etcdstore", extra_args=["--auth-token", spec, "--bcrypt-cost", "4"]
    ) as c:
        eps = c.endpoints
        set_up(eps[0])
        wait_applied(eps)
        token = authenticate(eps[1], "u", "upw")
        assert token.count(".") == 2  # a JWS, not a simple token
        for i, ep in enumerate(eps):
            assert (
                call(ep, "KV", "Put", rpc_pb2.PutRequest(key=f"u/{i}".encode(), value=b"v"), token=token)[0]
                == OK
            )
            code, resp = call(
                ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"u/", range_end=b"u0"), token=token
            )
            assert code == OK and resp.count >= i + 1  # type: ignore[attr-defined]  # resp is a RangeResponse
            assert call(ep, "KV", "Put", rpc_pb2.PutRequest(key=b"x", value=b"v"), token=token) == (
                "PERMISSION_DENIED",
                "etcdserver: permission denied",
            )
            w = watch_create(ep, b"u/", b"u0", token)
            assert w.created and not w.canceled
        # A forged token (signature of another key) is refused everywhere.
        forged = token.rsplit(".", 1)[0] + ".AAAA"
        assert {call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"u/1"), token=forged)[0] for ep in eps} == {
            "UNAUTHENTICATED"
        }
        ours = stale_token_outcomes(eps[0], eps[2])
        c.members[2].stop()
        # A member that only has the public key verifies tokens but cannot issue them.
        c.members[2].extra_args = [
            "--auth-token",
            f"jwt,pub-key={pub},sign-method=RS256",
            "--bcrypt-cost",
            "4",
        ]
        c.members[2].restart()
        token = authenticate(eps[0], "u", "upw")
        assert call(eps[2], "KV", "Range", rpc_pb2.RangeRequest(key=b"u/1"), token=token)[0] == OK
        assert call(
            eps[2], "Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name="u", password="upw")
        ) == ("UNKNOWN", "auth: token signing attempted with verify-only key")
    assert ours[0] == OK and ours[-1] == OK
    assert ours[1] == ours[2] == ("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
    if have_etcd():  # the same stale-token behaviour as a real etcd 3.4 with JWT
        with Cluster.start(tmp_path / "etcd", 1, binary="etcd", extra_args=["--auth-token", spec]) as e:
            set_up(e.endpoints[0])
            assert stale_token_outcomes(e.endpoints[0], e.endpoints[0]) == ours


def test_simple_tokens_are_known_to_every_member(tmp_path: Path) -> None:
    with Cluster.start(tmp_path, 3, binary="etcdstore", extra_args=["--bcrypt-cost", "4"]) as c:
        eps = c.endpoints
        set_up(eps[0])
        token = authenticate(eps[0], "u", "upw")
        prefix, index = token.split(".")
        assert len(prefix) == 16 and prefix.isalpha() and index.isdigit()
        wait_applied(eps)  # the issuing member answered once it applied; now the others have too
        for ep in eps[1:]:
            code, detail = call(ep, "KV", "Put", rpc_pb2.PutRequest(key=b"u/k", value=b"v"), token=token)
            assert code == OK, detail
        root = authenticate(eps[1], "root", "rpw")
        assert (
            call(
                eps[2],
                "Auth",
                "UserChangePassword",
                rpc_pb2.AuthUserChangePasswordRequest(name="u", password="new"),
                token=root,
            )[0]
            == OK
        )
        wait_applied(eps)
        # A password change forgets the user's tokens on every member.
        assert {call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"u/k"), token=token)[0] for ep in eps} == {
            "UNAUTHENTICATED"
        }
        assert call(eps[2], "Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name="u", password="upw"))[
            0
        ] == ("INVALID_ARGUMENT")
