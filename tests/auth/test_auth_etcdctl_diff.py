"""The same etcdctl 3.4 session against a real etcd 3.4 and against etcdstore: every output,
error message and exit code must match (member IDs normalised).

The session sets up users and roles (key, --prefix, range and --from-key permissions), enables
auth, then exercises allowed and denied get/put/del/txn/watch for a non-root user, admin RPCs
by a non-root user, revocations, password changes, wrong passwords, deletions and auth disable.
Raw gRPC calls cover what etcdctl cannot send: unknown and expired tokens, refused watches.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from authprocs import Step, authenticate, call, run_script, step, watch, watch_create
from etcdstore.proto.etcdserverpb import rpc_pb2
from testlib import Cluster, have_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4 binaries")]

ROOT = ("--user", "root:rootpw")
ALICE = ("--user", "alice", "--password", "apw")
FLAGS = ["--bcrypt-cost", "4"]
SNAPSHOT_FILE = os.path.join(tempfile.gettempdir(), f"auth-diff-{os.getpid()}.db")  # refused: never written

SESSION: list[Step] = [
    # --- set-up, auth still off ---
    step("user", "add", "root", "--new-user-password=rootpw"),
    step("user", "grant-role", "root", "root"),
    step("auth", "enable", "--user", "root:rootpw"),  # refused? no: auth is off, credentials unused
    step("auth", "disable", *ROOT),
    step("role", "add", "reader"),
    step("role", "add", "writer"),
    step("role", "add", "reader"),
    step("role", "add", ""),
    step("role", "grant-permission", "reader", "read", "pub/", "--prefix"),
    step("role", "grant-permission", "reader", "read", "z", "--from-key"),
    step("role", "grant-permission", "writer", "readwrite", "a", "c"),
    step("role", "grant-permission", "writer", "write", "w/", "--prefix"),
    step("role", "grant-permission", "writer", "read", "w/x"),
    step("role", "grant-permission", "writer", "readwrite", "w/x"),  # same key: updates the type
    step("role", "grant-permission", "nobody", "read", "k"),
    step("role", "get", "reader"),
    step("role", "get", "writer"),
    step("user", "add", "alice", "--new-user-password=apw"),
    step("user", "add", "bob:bpw"),
    step("user", "add", "svc", "--no-password"),
    step("user", "add", "alice", "--new-user-password=x"),
    step("user", "add", "", "--new-user-password=x"),
    step("user", "grant-role", "alice", "reader"),
    step("user", "grant-role", "alice", "writer"),
    step("user", "grant-role", "alice", "writer"),
    step("user", "grant-role", "alice", "ghost"),
    step("user", "grant-role", "ghost", "reader"),
    step("user", "list"),
    step("role", "list"),
    step("user", "get", "alice"),
    step("user", "get", "alice", "--detail"),
    step("user", "get", "root", "--detail"),
    step("user", "get", "ghost"),
    step("put", "pub/1", "one"),
    step("put", "pub/2", "two"),
    step("put", "a1", "x"),
    step("put", "b1", "y"),
    step("put", "secret", "s"),
    step("put", "zz", "z"),
    # --- auth on ---
    step("auth", "enable"),
    step("auth", "enable", *ROOT),
    step("get", "pub/1"),
    step("put", "pub/1", "nope"),
    step("get", "pub/", "--prefix", *ROOT),
    step("get", "pub/1", *ALICE),
    step("get", "pub/", "--prefix", *ALICE),
    step("get", "pub/1", "--user", "alice:apw"),
    step("put", "pub/1", "x", *ALICE),
    step("get", "secret", *ALICE),
    step("get", "", "--prefix", *ALICE),
    step("get", "a", "c", *ALICE),
    step("get", "a", "d", *ALICE),
    step("put", "b1", "yy", *ALICE),
    step("put", "a0", "new", *ALICE),
    step("del", "a0", *ALICE),
    step("del", "a", "c", "--prev-kv", *ALICE),
    step("del", "secret", *ALICE),
    step("put", "w/x", "1", *ALICE),
    step("put", "w/y", "2", *ALICE),
    step("get", "w/y", *ALICE),
    step("get", "w/x", *ALICE),
    step("put", "w/y", "3", "--prev-kv", *ALICE),
    step("del", "w/", "--prefix", *ALICE),
    step("put", "zz", "new", *ALICE),
    step("get", "zz", *ALICE),
    step("get", "z", "--from-key", *ALICE),
    step("get", "y", "--from-key", *ALICE),
    step("txn", *ALICE, stdin='value("pub/1") = "one"\n\nput a5 v5\n\nget pub/2\n\n'),
    step("txn", *ALICE, stdin='value("pub/1") = "one"\n\nput a6 v6\n\nget secret\n\n'),
    step("txn", *ALICE, stdin='value("secret") = "s"\n\nput a7 v7\n\n\n'),
    step("txn", *ALICE, stdin='value("pub/1") = "zzz"\n\nput secret v\n\nget pub/2\n\n'),
    step("txn", *ALICE, stdin='value("pub/1") = "one"\n\nget pub/1\n\nget z\n\n'),
    watch("secret", *ALICE),
    watch("pub/", "--prefix", *ALICE),
    watch("pub/1", "--rev", "1", *ALICE),
    watch("a", "d", *ALICE),
    # --- non-root admin: root only, except what etcd 3.4 lets anyone do ---
    step("user", "list", *ALICE),
    step("role", "list", *ALICE),
    step("user", "get", "alice", *ALICE),
    step("user", "get", "root", *ALICE),
    step("role", "get", "reader", *ALICE),
    step("role", "get", "root", *ALICE),
    step("user", "add", "mallory:x", *ALICE),
    step("role", "grant-permission", "reader", "readwrite", "secret", *ALICE),
    step("auth", "disable", *ALICE),
    step("defrag", *ALICE),
    step("endpoint", "hashkv", *ALICE),
    step("snapshot", "save", SNAPSHOT_FILE, *ALICE),
    step("compaction", "2", *ALICE),
    step("alarm", "list", *ALICE),
    # --- root manages; changes take effect at once ---
    step("user", "list", *ROOT),
    step("role", "revoke-permission", "reader", "pub/", "--prefix", *ROOT),
    step("role", "revoke-permission", "reader", "pub/", "--prefix", *ROOT),
    step("get", "pub/1", *ALICE),
    step("role", "grant-permission", "reader", "read", "pub/1", *ROOT),
    step("get", "pub/1", *ALICE),
    step("get", "pub/2", *ALICE),
    step("user", "revoke-role", "alice", "writer", *ROOT),
    step("user", "revoke-role", "alice", "writer", *ROOT),
    step("put", "b1", "denied", *ALICE),
    step("get", "pub/1", "--user", "alice:wrong"),
    step("get", "pub/1", "--user", "ghost:pw"),
    step("get", "pub/1", "--user", "svc:pw"),
    step("user", "passwd", "alice", "--interactive=false", *ROOT, stdin="apw2\n"),
    step("get", "pub/1", *ALICE),
    step("get", "pub/1", "--user", "alice:apw2"),
    step("user", "delete", "root", *ROOT),
    step("role", "delete", "root", *ROOT),
    step("user", "revoke-role", "root", "root", *ROOT),
    step("user", "delete", "bob", *ROOT),
    step("user", "delete", "bob", *ROOT),
    step("get", "pub/1", "--user", "bob:bpw"),
    step("role", "delete", "writer", *ROOT),
    step("role", "delete", "writer", *ROOT),
    step("role", "list", *ROOT),
    step("user", "list", *ROOT),
    step("user", "get", "alice", "--detail", *ROOT),
    step("auth", "disable", *ROOT),
    step("get", "secret"),
    step("put", "secret", "open"),
    step("user", "list"),
    step("role", "delete", "root"),
    step("user", "delete", "root"),
    step("user", "list"),
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("authdiff")
    etcd = Cluster.start(Path(base), 1, binary="etcd", extra_args=FLAGS + ["--auth-token-ttl", "2"])
    ours = Cluster.start(Path(base), 1, binary="etcdstore", extra_args=FLAGS + ["--auth-token-ttl", "2"])
    try:
        yield etcd.endpoints[0], ours.endpoints[0]
    finally:
        etcd.close()
        ours.close()


def test_etcdctl_session_matches_etcd(pair: tuple[str, str]) -> None:
    etcd_ep, our_ep = pair
    expected = run_script(etcd_ep, SESSION)
    got = run_script(our_ep, SESSION)
    diffs = [
        f"{' '.join(s.args)}\n  etcd:      {e}\n  etcdstore: {g}"
        for (s, e), (_, g) in zip(expected, got)
        if e != g
    ]
    assert not diffs, "\n".join(diffs)
    # The session really exercised both outcomes: refusals and successes.
    outputs = [line for _, (_, out, err) in expected for line in out + err]
    assert any("permission denied" in line for line in outputs)
    assert any("user name is empty" in line for line in outputs)
    assert sum(1 for _, (rc, _, _) in expected if rc == 0) > 60


def test_tokens_and_watches_over_raw_grpc_match_etcd(pair: tuple[str, str]) -> None:
    """Unknown, forged and expired tokens; refused watches' cancel reasons; Authenticate errors."""
    results: list[list[object]] = []
    for ep in pair:
        r: list[object] = []
        assert call(ep, "Auth", "UserAdd", rpc_pb2.AuthUserAddRequest(name="root", password="pw"))[0] == "OK"
        call(ep, "Auth", "UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
        call(ep, "Auth", "UserAdd", rpc_pb2.AuthUserAddRequest(name="u", password="upw"))
        call(ep, "Auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest(name="ro"))
        r.append(call(ep, "Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name="root", password="pw")))
        r.append(call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"k"), token="abc.1"))  # auth still off
        r.append(call(ep, "Auth", "AuthEnable", rpc_pb2.AuthEnableRequest())[0])
        root = authenticate(ep, "root", "pw")
        r.append(
            call(
                ep,
                "Auth",
                "RoleGrantPermission",
                rpc_pb2.AuthRoleGrantPermissionRequest(
                    name="ro", perm={"permType": 0, "key": b"r/", "range_end": b"r0"}
                ),
                token=root,
            )[0]
        )
        r.append(
            call(
                ep, "Auth", "UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user="u", role="ro"), token=root
            )[0]
        )
        user = authenticate(ep, "u", "upw")
        for token in (None, "garbage", "abcdefghijklmnop.1", user):
            r.append(call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"r/1"), token=token))
            r.append(call(ep, "KV", "Put", rpc_pb2.PutRequest(key=b"r/1", value=b"v"), token=token))
            r.append(call(ep, "Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=12345), token=token))
            r.append(call(ep, "Maintenance", "Hash", rpc_pb2.HashRequest(), token=token))
            r.append(
                call(
                    ep,
                    "Cluster",
                    "MemberUpdate",
                    rpc_pb2.MemberUpdateRequest(ID=1, peerURLs=["http://x:1"]),
                    token=token,
                )
            )
            for key, end in ((b"r/1", b""), (b"r/", b"r0"), (b"s", b""), (b"r/", b"\x00")):
                w = watch_create(ep, key, end, token)
                r.append((w.created, w.canceled, w.cancel_reason, w.watch_id if w.canceled else "id"))
        # Revoking a lease deletes its keys: allowed only with write permission on all of them.
        r.append(
            (
                "lease",
                [
                    call(ep, "Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=777, TTL=60), token=root)[0],
                    call(ep, "Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=778, TTL=60), token=root)[0],
                    call(ep, "KV", "Put", rpc_pb2.PutRequest(key=b"s/1", value=b"v", lease=777), token=root)[
                        0
                    ],
                    call(ep, "Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=777), token=user),
                    call(ep, "Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=778), token=user)[0],
                    call(ep, "Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=777), token=root)[0],
                ],
            )
        )
        r.append(call(ep, "Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name="u", password="bad")))
        r.append(call(ep, "Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name="", password="")))
        r.append(call(ep, "Auth", "UserGet", rpc_pb2.AuthUserGetRequest(name="u"), token=user))
        r.append(call(ep, "Auth", "UserGet", rpc_pb2.AuthUserGetRequest(name="root"), token=user))
        r.append(call(ep, "Auth", "RoleGet", rpc_pb2.AuthRoleGetRequest(role="ro"), token=user))
        r.append(call(ep, "Auth", "UserList", rpc_pb2.AuthUserListRequest(), token=user))
        r.append(
            call(ep, "Auth", "UserAdd", rpc_pb2.AuthUserAddRequest(name="x", password="y"), token="garbage")
        )
        results.append(r)
        # Simple tokens expire after --auth-token-ttl (2 s) without use.
        time.sleep(3.5)
        results[-1].append(call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"r/1"), token=user))
    etcd_r, ours_r = results
    normalised = []
    for r in (etcd_r, ours_r):
        # Token values differ (random prefixes); responses are compared by what they say.
        normalised.append([_shape(x) for x in r])
    diffs = [f"#{i}: etcd {a} / etcdstore {b}" for i, (a, b) in enumerate(zip(*normalised)) if a != b]
    assert not diffs, "\n".join(diffs)
    assert ("UNAUTHENTICATED", "etcdserver: invalid auth token") in normalised[0]
    assert (
        "lease",
        ["OK", "OK", "OK", ("PERMISSION_DENIED", "etcdserver: permission denied"), "OK", "OK"],
    ) in etcd_r


def _shape(x: object) -> object:
    """An outcome without what legitimately differs: headers (IDs, terms) and token values."""
    if not (isinstance(x, tuple) and len(x) == 2 and x[0] == "OK"):
        return x
    resp = type(x[1])()
    resp.CopyFrom(x[1])
    resp.ClearField("header")
    if hasattr(resp, "token"):
        resp.token = "<token>" if resp.token else ""
    return ("OK", str(resp))


if __name__ == "__main__":  # print etcd's side of the session (for reading what it covers)
    import sys

    with Cluster.start(
        Path(tempfile.mkdtemp()), 1, binary=sys.argv[1] if len(sys.argv) > 1 else "etcd", extra_args=FLAGS
    ) as c:
        for s, outcome in run_script(c.endpoints[0], SESSION):
            print(" ".join(s.args), "=>", outcome)
