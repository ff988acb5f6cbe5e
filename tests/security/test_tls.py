"""Client and peer TLS with the real etcdctl: certificates, client-cert auth, auto TLS, rotation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from testlib import (
    Cluster,
    Member,
    TLSFiles,
    etcdctl,
    eventually,
    free_port,
    have_etcd,
    make_tls_files,
    wait_serving,
)

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def start_member(tmp_path: Path, name: str, **opts) -> Member:
    m = Member(
        name=name, data_dir=tmp_path / f"{name}.etcd", client_port=free_port(), peer_port=free_port(), **opts
    )
    m.spawn()
    return m


def test_client_tls_with_client_cert_auth(tmp_path):
    files = make_tls_files(tmp_path / "pki", client_cn="alice")
    with start_member(tmp_path, "s0", tls=files) as m:
        wait_serving([m])  # Status over TLS with the client certificate
        ep = [f"https://{m.endpoint}"]
        assert etcdctl(ep, *files.etcdctl_args(), "put", "k", "v").stdout == "OK\n"
        assert etcdctl(ep, *files.etcdctl_args(), "get", "k").stdout == "k\nv\n"
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


def test_certificate_rotation_without_restart(tmp_path):
    old = make_tls_files(tmp_path / "old", client_cn="alice")
    new = make_tls_files(tmp_path / "new", client_cn="alice")  # a different CA altogether
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "old", live)
    # The member serves the files in live/ (the old ones, until they are replaced below).
    served = TLSFiles(
        live / "ca.pem", live / "server.pem", live / "server-key.pem", old.client_cert, old.client_key
    )
    with start_member(tmp_path, "r0", tls=served) as m:
        wait_serving([m])
        ep = [f"https://{m.endpoint}"]
        assert etcdctl(ep, *old.etcdctl_args(), "put", "k", "v1").returncode == 0
        pid = m.proc.pid
        for name in ("ca.pem", "server.pem", "server-key.pem"):
            shutil.copy(tmp_path / "new" / name, live / f"{name}.tmp")
            (live / f"{name}.tmp").rename(live / name)
        eventually(
            lambda: (
                etcdctl(ep, *new.etcdctl_args(), "--dial-timeout", "2s", "get", "k", check=False).returncode
                == 0
            ),
            10,
            message="rotated certificates picked up",
        )
        assert m.proc.pid == pid and m.running  # no restart
        assert etcdctl(ep, *new.etcdctl_args(), "get", "k").stdout == "k\nv1\n"
        # Clients that only trust the old CA are now refused.
        assert (
            etcdctl(ep, *old.etcdctl_args(), "--dial-timeout", "2s", "get", "k", check=False).returncode != 0
        )


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
    with start_member(tmp_path, "a0", scheme="https", tls_args=["--auto-tls"]) as m:
        ep = [f"https://{m.endpoint}"]

        def healthy() -> bool:
            if not m.running:
                pytest.fail(f"the member exited:\n{m.log_tail()}")
            return etcdctl(ep, *SKIP_VERIFY, "endpoint", "health", check=False).returncode == 0

        eventually(healthy, 30, message="auto-TLS member healthy")
        assert etcdctl(ep, *SKIP_VERIFY, "put", "k", "v").stdout == "OK\n"
        assert (m.data_dir / "fixtures" / "client" / "cert.pem").exists()
