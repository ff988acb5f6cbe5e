"""TLS on both sides of the proxy: clients reach it over TLS with a client certificate
(--cert-file/--key-file/--trusted-ca-file: a CA means client certificates are required, as in
etcd), it reaches a TLS cluster that wants client certificates (--cert/--key/--cacert, a
certificate with an empty Common Name, as etcd's proxy insists); the same through etcd's proxy and
ours."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from proxyprocs import Proxy, proxy_command
from testlib import CA, Member, TLSFiles, etcdctl, free_port, have_etcd, wait_serving

pytestmark = pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")
KINDS = [pytest.param("etcd", marks=pytest.mark.etcd), "etcdstore"]


def make_pki(d: Path) -> tuple[TLSFiles, Path, Path]:
    """The member's and etcdctl's certificates, and the proxy's identity towards the cluster (a
    certificate with no Common Name, and its key)."""
    ca = CA(d, "proxy-test-ca")
    server = ca.issue("server", "server", server=True)
    client = ca.issue("client", "client")  # etcdctl's
    proxy_cert, proxy_key = ca.issue("proxy", None)
    return TLSFiles(ca.cert, *server, *client), proxy_cert, proxy_key


@pytest.mark.parametrize("kind", KINDS)
def test_tls_both_sides(tmp_path, kind):
    files, proxy_cert, proxy_key = make_pki(tmp_path / "pki")
    client_tls = files.etcdctl_args()
    binary = "etcd" if kind == "etcd" else "etcdstore"
    with Member("s0", tmp_path / "s0.etcd", free_port(), free_port(), binary=binary, tls=files) as m:
        m.spawn()
        wait_serving([m])  # Status over TLS with the client certificate
        ep = m.client_url  # https://
        extra = [
            "--cert", str(proxy_cert),
            "--key", str(proxy_key),
            "--cacert", str(files.ca),
            "--cert-file", str(files.server_cert),
            "--key-file", str(files.server_key),
            "--trusted-ca-file", str(files.ca),
        ]  # fmt: skip
        with Proxy(kind, [ep], tmp_path / "p.log", extra=extra, ready_args=client_tls).start() as p:
            pep = f"https://{p.endpoint}"
            assert etcdctl(pep, *client_tls, "put", "k", "v").stdout == "OK\n"
            assert etcdctl(pep, *client_tls, "get", "k").stdout == "k\nv\n"
            no_cert = etcdctl(pep, "--cacert", str(files.ca), "--dial-timeout", "2s", "get", "k", check=False)
            assert no_cert.returncode != 0  # a CA given: client certificates are required
            plain = etcdctl(p.endpoint, "--dial-timeout", "2s", "get", "k", check=False)
            assert plain.returncode != 0


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_certificate_with_a_common_name_is_refused(tmp_path, kind):
    files, _, _ = make_pki(tmp_path / "pki")
    p = subprocess.run(
        proxy_command(kind)
        + [
            "--listen-addr",
            "127.0.0.1:0",
            "--endpoints",
            "https://127.0.0.1:1",
            "--cert",
            str(files.client_cert),
            "--key",
            str(files.client_key),
            "--cacert",
            str(files.ca),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert "cert has non empty Common Name (client)" in p.stderr
