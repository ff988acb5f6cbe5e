"""Client-certificate CN as the user (--client-cert-auth): the same etcdctl session over mutual
TLS against a real etcd 3.4 and against etcdstore, outputs compared.

Without a token the verified certificate's CN is the user; a token, when given, wins.

Both servers run as processes with the same flags and certificate files (made here).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from authprocs import Step, run_script, step
from pki import PKI
from testlib import ETCDCTL_BIN, command_for, free_port, have_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4 binaries")]


def session(pki: PKI) -> list[Step]:
    def as_(cn: str, *args: str) -> Step:
        cert, key = pki.issue(cn)
        # A generous dial timeout: a TLS handshake on a loaded 2-core machine can take seconds.
        return step(*args, "--cacert", str(pki.ca), "--cert", cert, "--key", key, "--dial-timeout", "10s")

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


def tls_flags(pki: PKI, cert: str, key: str) -> list[str]:
    return [
        "--cert-file",
        cert,
        "--key-file",
        key,
        "--trusted-ca-file",
        str(pki.ca),
        "--client-cert-auth",
        "--bcrypt-cost",
        "4",
    ]


def member_flags(name: str, data: Path, client: int, peer: int) -> list[str]:
    url, purl = f"https://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    return [
        "--name",
        name,
        "--data-dir",
        str(data),
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        purl,
        "--initial-advertise-peer-urls",
        purl,
        "--initial-cluster",
        f"{name}={purl}",
    ]


def wait_healthy(endpoint: str, pki: PKI, cert: str, key: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [
                ETCDCTL_BIN,
                "--endpoints",
                endpoint,
                "--cacert",
                str(pki.ca),
                "--cert",
                cert,
                "--key",
                key,
                "endpoint",
                "health",
            ],
            capture_output=True,
            env={"ETCDCTL_API": "3"},
            check=False,
        )
        if out.returncode == 0:
            return
        assert proc is None or proc.poll() is None, "server exited"
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.2)


def run_session(
    binary: str, tmp_path: Path, pki: PKI, steps: list[Step], server: tuple[str, str], root: tuple[str, str]
) -> list:
    """The session against one member of `binary`, serving clients over mutual TLS only."""
    (server_cert, server_key), (root_cert, root_key) = server, root
    port, peer = free_port(), free_port()
    endpoint = f"https://127.0.0.1:{port}"
    data = tmp_path / binary
    with open(tmp_path / f"{binary}.log", "wb") as log:
        proc = subprocess.Popen(
            [
                *command_for(binary),
                *member_flags("m", data, port, peer),
                *tls_flags(pki, server_cert, server_key),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(endpoint, pki, root_cert, root_key, proc)
        return run_script(endpoint, steps)
    finally:
        proc.kill()
        proc.wait()


def test_client_certificate_cn_is_the_user(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    server, root = pki.issue("server", server=True), pki.issue("root")
    steps = session(pki)
    expected = run_session("etcd", tmp_path, pki, steps, server, root)
    got = run_session("etcdstore", tmp_path, pki, steps, server, root)
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
