"""Client and peer TLS with the real etcdctl: certificates, client-cert auth, auto TLS, rotation."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from client.etcd_procs import make_tls_files
from testlib import Cluster, Member, etcdctl, free_port, have_etcd, wait_serving

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def tls_args(files) -> list[str]:
    return ["--cacert", str(files.ca), "--cert", str(files.client_cert), "--key", str(files.client_key)]


def https_member(tmp_path: Path, files, extra: list[str] = ()) -> Member:
    m = Member(
        name="s0",
        data_dir=tmp_path / "s0.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        scheme="https",
        tls_args=[
            "--cert-file",
            str(files.server_cert),
            "--key-file",
            str(files.server_key),
            "--trusted-ca-file",
            str(files.ca),
            "--client-cert-auth",
            *extra,
        ],
    )
    m.spawn()
    return m


def wait_tls(m: Member, args: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if etcdctl([f"https://{m.endpoint}"], *args, "endpoint", "health", check=False).returncode == 0:
            return
        assert m.running, m.log_tail()
        assert time.monotonic() < deadline, m.log_tail()
        time.sleep(0.2)


def test_client_tls_with_client_cert_auth(tmp_path):
    files = make_tls_files(tmp_path / "pki", client_cn="alice")
    m = https_member(tmp_path, files)
    try:
        wait_tls(m, tls_args(files))
        ep = [f"https://{m.endpoint}"]
        assert etcdctl(ep, *tls_args(files), "put", "k", "v").stdout == "OK\n"
        assert etcdctl(ep, *tls_args(files), "get", "k").stdout == "k\nv\n"
        # Without a client certificate the handshake is refused.
        no_cert = etcdctl(ep, "--cacert", str(files.ca), "--dial-timeout", "2s", "get", "k", check=False)
        assert no_cert.returncode != 0
        # Plain HTTP on the TLS port is not served either.
        plain = etcdctl([m.endpoint], "--dial-timeout", "2s", "get", "k", check=False)
        assert plain.returncode != 0
        # HTTP/1 endpoints share the port: curl negotiates HTTP/1.1 over TLS.
        out = subprocess.run(
            [
                "curl",
                "-s",
                "--cacert",
                str(files.ca),
                "--cert",
                str(files.client_cert),
                "--key",
                str(files.client_key),
                f"https://{m.endpoint}/health",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.stdout == '{"health": "true"}'
    finally:
        m.kill()


def test_certificate_rotation_without_restart(tmp_path):
    old = make_tls_files(tmp_path / "old", client_cn="alice")
    new = make_tls_files(tmp_path / "new", client_cn="alice")  # a different CA altogether
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "old", live)
    m = Member(
        name="r0",
        data_dir=tmp_path / "r0.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        scheme="https",
        tls_args=[
            "--cert-file",
            str(live / "server.pem"),
            "--key-file",
            str(live / "server-key.pem"),
            "--trusted-ca-file",
            str(live / "ca.pem"),
            "--client-cert-auth",
        ],
    )
    m.spawn()
    try:
        wait_tls(m, tls_args(old))
        ep = [f"https://{m.endpoint}"]
        assert etcdctl(ep, *tls_args(old), "put", "k", "v1").returncode == 0
        pid = m.proc.pid
        for name in ("ca.pem", "server.pem", "server-key.pem"):
            shutil.copy(tmp_path / "new" / name, live / f"{name}.tmp")
            (live / f"{name}.tmp").rename(live / name)
        deadline = time.monotonic() + 10
        while etcdctl(ep, *tls_args(new), "--dial-timeout", "2s", "get", "k", check=False).returncode != 0:
            assert time.monotonic() < deadline, "rotated certificates were not picked up"
            time.sleep(0.3)
        assert m.proc.pid == pid and m.running  # no restart
        assert etcdctl(ep, *tls_args(new), "get", "k").stdout == "k\nv1\n"
        # Clients that only trust the old CA are now refused.
        assert etcdctl(ep, *tls_args(old), "--dial-timeout", "2s", "get", "k", check=False).returncode != 0
    finally:
        m.kill()


@pytest.mark.parametrize("mode", ["files", "auto"])
def test_three_members_with_peer_tls(tmp_path, mode, monkeypatch):
    if mode == "files":
        files = make_tls_files(tmp_path / "pki")
        args = [
            "--peer-cert-file",
            str(files.server_cert),
            "--peer-key-file",
            str(files.server_key),
            "--peer-trusted-ca-file",
            str(files.ca),
        ]
    else:
        args = ["--peer-auto-tls"]
    monkeypatch.setattr(Member, "peer_url", property(lambda self: f"https://127.0.0.1:{self.peer_port}"))
    with Cluster.start(tmp_path, 3, binary="etcdstore", extra_args=args) as c:
        etcdctl(c.endpoints, "put", "a", "1")
        members = etcdctl(c.endpoints, "member", "list").stdout
        assert members.count("https://127.0.0.1:") == 3
        old = c.leader_index()
        c.members[old].kill()
        assert c.leader_index() != old
        assert etcdctl(c.endpoints, "get", "a").stdout == "a\n1\n"
        c.members[old].restart()
        wait_serving([c.members[old]])
        assert etcdctl([c.members[old].endpoint], "get", "a").stdout == "a\n1\n"


# etcdctl 3.4 skips verification only with both flags (the same against a real etcd).
SKIP_VERIFY = ("--insecure-transport=false", "--insecure-skip-tls-verify")


def test_client_auto_tls(tmp_path):
    m = Member(
        name="a0",
        data_dir=tmp_path / "a0.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        scheme="https",
        tls_args=["--auto-tls"],
    )
    m.spawn()
    try:
        deadline = time.monotonic() + 30
        ep = [f"https://{m.endpoint}"]
        while etcdctl(ep, *SKIP_VERIFY, "endpoint", "health", check=False).returncode:
            assert time.monotonic() < deadline and m.running, m.log_tail()
            time.sleep(0.2)
        assert etcdctl(ep, *SKIP_VERIFY, "put", "k", "v").stdout == "OK\n"
        assert (m.data_dir / "fixtures" / "client" / "cert.pem").exists()
    finally:
        m.kill()
