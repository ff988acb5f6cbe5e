"""Users, roles, permissions and the enabled flag survive restarts (graceful and kill -9), and a
restarted member keeps enforcing them; tokens are per process and must be obtained again."""

from __future__ import annotations

from pathlib import Path

from authprocs import authenticate, call
from etcdstore.proto.etcdserverpb import rpc_pb2
from testlib import Cluster, etcdctl

ROOT = ("--user", "root:rootpw")


def test_auth_state_survives_restarts(tmp_path: Path) -> None:
    with Cluster.start(tmp_path, 1, binary="etcdstore", extra_args=["--bcrypt-cost", "4"]) as c:
        m = c.members[0]
        ep = m.endpoint
        for args in (
            ("user", "add", "root:rootpw"),
            ("user", "grant-role", "root", "root"),
            ("role", "add", "app"),
            ("role", "grant-permission", "app", "readwrite", "app/", "--prefix"),
            ("user", "add", "svc:svcpw"),
            ("user", "grant-role", "svc", "app"),
            ("put", "app/1", "one"),
            ("put", "other", "x"),
            ("auth", "enable"),
        ):
            etcdctl(ep, *args)
        token = authenticate(ep, "svc", "svcpw")
        before = [
            etcdctl(ep, "user", "list", *ROOT).stdout,
            etcdctl(ep, "role", "get", "app", *ROOT).stdout,
            etcdctl(ep, "user", "get", "svc", *ROOT).stdout,
        ]

        for restart in ("graceful", "kill"):
            if restart == "graceful":
                m.stop()
                m.restart()
            else:
                m.restart()  # SIGKILL, then start again on the same data
            # Still enabled: no credentials -> refused; the same users and roles.
            assert call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"app/1")) == (
                "INVALID_ARGUMENT",
                "etcdserver: user name is empty",
            )
            assert [
                etcdctl(ep, "user", "list", *ROOT).stdout,
                etcdctl(ep, "role", "get", "app", *ROOT).stdout,
                etcdctl(ep, "user", "get", "svc", *ROOT).stdout,
            ] == before
            # Tokens lived in the old process's memory.
            assert (
                call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"app/1"), token=token)[0]
                == "UNAUTHENTICATED"
            )
            token = authenticate(ep, "svc", "svcpw")
            assert call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"app/1"), token=token)[0] == "OK"
            assert call(ep, "KV", "Range", rpc_pb2.RangeRequest(key=b"other"), token=token) == (
                "PERMISSION_DENIED",
                "etcdserver: permission denied",
            )
            assert etcdctl(ep, "put", "app/2", restart, "--user", "svc:svcpw").stdout.strip() == "OK"
        # Changes made after the restarts are durable too.
        etcdctl(ep, "role", "revoke-permission", "app", "app/", "--prefix", *ROOT)
        m.restart()
        out = etcdctl(ep, "get", "app/1", "--user", "svc:svcpw", check=False)
        assert out.returncode != 0 and "permission denied" in out.stderr
        etcdctl(ep, "auth", "disable", *ROOT)
        m.restart()
        assert etcdctl(ep, "get", "app/2", "--print-value-only").stdout.strip() == "kill"
