"""Client-certificate CN as the user (--client-cert-auth): the same etcdctl session over mutual
TLS against a real etcd 3.4 and against etcdstore, outputs compared.

Without a token the verified certificate's CN is the user; a token, when given, wins.

Both servers run as processes with the same flags and certificate files (made here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from authprocs import Step, run_script, step
from testlib import CA, Member, TLSFiles, free_port, have_etcd, wait_serving

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4 binaries")]


def session(ca: CA) -> list[Step]:
    def as_(cn: str, *args: str) -> Step:
        cert, key = ca.issue(cn, cn)
        # A generous dial timeout: a TLS handshake on a loaded 2-core machine can take seconds.
        return step(
            *args, "--cacert", str(ca.cert), "--cert", str(cert), "--key", str(key), "--dial-timeout", "10s"
        )

    return [
        as_("root", "user", "add", "root", "--new-user-password=rootpw"),
        as_("root", "user", "grant-role", "root", "root"),
        as_("root", "role", "add", "r"),
        as_("root", "role", "grant-permission", "r", "readwrite", "k/", "--prefix"),
        as_("root", "user", "add", "alice", "--no-password"),
        as_("root", "user", "grant-role", "alice", "r"),
        as_("root", "put", "k/1", "v"),
        as_("root", "put", "other", "o"),
        as_("root", "auth", "enable"),
        as_("root", "put", "k/2", "v2"),
        as_("root", "user", "list"),
        as_("alice", "get", "k/", "--prefix"),
        as_("alice", "put", "k/3", "v3"),
        as_("alice", "get", "other"),
        as_("alice", "user", "list"),
        as_("alice", "user", "get", "alice"),
        as_("alice", "del", "k/1"),
        as_("mallory", "get", "k/1"),
        as_("mallory", "put", "k/1", "x"),
        as_("alice", "get", "other", "--user", "root:rootpw"),
        as_("alice", "get", "k/2", "--user", "alice:pw"),
        as_("root", "auth", "disable"),
        as_("mallory", "get", "other"),
    ]


def run_session(binary: str, tmp_path: Path, files: TLSFiles, steps: list[Step]) -> list:
    """The session against one member of `binary`, serving clients over mutual TLS only."""
    with Member(
        "m", tmp_path / binary / "m.etcd", free_port(), free_port(), binary=binary, tls=files,
        extra_args=["--bcrypt-cost", "4"],
    ) as m:  # fmt: skip
        m.spawn()
        wait_serving([m])  # Status over TLS with root's certificate, before auth is enabled
        return run_script(m.client_url, steps)


def test_client_certificate_cn_is_the_user(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("server", "server", server=True)
    files = TLSFiles(ca.cert, *server, *ca.issue("root", "root"))
    steps = session(ca)
    expected = run_session("etcd", tmp_path, files, steps)
    got = run_session("etcdstore", tmp_path, files, steps)
    diffs = [
        f"{' '.join(s.args[:4])}\n  etcd:      {e}\n  etcdstore: {g}"
        for (s, e), (_, g) in zip(expected, got)
        if e != g
    ]
    assert not diffs, "\n".join(diffs)
    by_step = [out for _, out in expected]
    assert by_step[9] == (0, ["OK"], [])  # root by certificate, no password given
    assert by_step[13] == (1, [], ["Error: etcdserver: permission denied"])  # alice by certificate
    assert by_step[19][0] == 0  # a token wins over the certificate
