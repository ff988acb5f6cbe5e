"""TLS on both sides of the proxy: clients reach it over TLS with a client certificate
(--cert-file/--key-file/--trusted-ca-file: a CA means client certificates are required, as in
etcd), it reaches a TLS cluster that wants client certificates (--cert/--key/--cacert, a
certificate with an empty Common Name, as etcd's proxy insists); the same through etcd's proxy and
ours."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from proxyprocs import Proxy, proxy_command
from testlib import Member, etcdctl, free_port, have_etcd

pytestmark = pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")
KINDS = [pytest.param("etcd", marks=pytest.mark.etcd), "etcdstore"]


def make_pki(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, cn: str | None, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), False)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                False,
            )
        cert = b.sign(ca_key, hashes.SHA256())
        out[name] = d / f"{name}.pem"
        out[name + "-key"] = d / f"{name}-key.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[name + "-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    leaf("server", "server", True)
    leaf("client", "client", False)  # etcdctl's
    leaf("proxy", None, False)  # the proxy's identity towards the cluster: no Common Name
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_tls_both_sides(tmp_path, kind):
    pki = make_pki(tmp_path / "pki")
    client_tls = ["--cacert", str(pki["ca"]), "--cert", str(pki["client"]), "--key", str(pki["client-key"])]
    m = Member(
        name="s0",
        data_dir=tmp_path / "s0.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        binary="etcd" if kind == "etcd" else "etcdstore",
        scheme="https",
        tls_args=[
            "--cert-file",
            str(pki["server"]),
            "--key-file",
            str(pki["server-key"]),
            "--trusted-ca-file",
            str(pki["ca"]),
            "--client-cert-auth",
        ],
    )
    m.spawn()
    try:
        ep = f"https://{m.endpoint}"
        deadline = time.monotonic() + 60
        while etcdctl(ep, *client_tls, "endpoint", "health", check=False).returncode != 0:
            assert m.running and time.monotonic() < deadline, m.log_tail()
            time.sleep(0.2)
        extra = [
            "--cert",
            str(pki["proxy"]),
            "--key",
            str(pki["proxy-key"]),
            "--cacert",
            str(pki["ca"]),
            "--cert-file",
            str(pki["server"]),
            "--key-file",
            str(pki["server-key"]),
            "--trusted-ca-file",
            str(pki["ca"]),
        ]
        with Proxy(kind, [ep], tmp_path / "p.log", extra=extra, ready_args=client_tls).start() as p:
            pep = f"https://{p.endpoint}"
            assert etcdctl(pep, *client_tls, "put", "k", "v").stdout == "OK\n"
            assert etcdctl(pep, *client_tls, "get", "k").stdout == "k\nv\n"
            no_cert = etcdctl(
                pep, "--cacert", str(pki["ca"]), "--dial-timeout", "2s", "get", "k", check=False
            )
            assert no_cert.returncode != 0  # a CA given: client certificates are required
            plain = etcdctl(p.endpoint, "--dial-timeout", "2s", "get", "k", check=False)
            assert plain.returncode != 0
    finally:
        m.kill()


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_certificate_with_a_common_name_is_refused(tmp_path, kind):
    pki = make_pki(tmp_path / "pki")
    p = subprocess.run(
        proxy_command(kind)
        + [
            "--listen-addr",
            "127.0.0.1:0",
            "--endpoints",
            "https://127.0.0.1:1",
            "--cert",
            str(pki["client"]),
            "--key",
            str(pki["client-key"]),
            "--cacert",
            str(pki["ca"]),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert "cert has non empty Common Name (client)" in p.stderr
