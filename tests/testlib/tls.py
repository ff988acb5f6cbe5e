"""Throwaway certificates for TLS tests (EC P-256, valid one day), made with `cryptography`.

files = make_tls_files(tmp_path / "pki")        # a CA, a server and a client certificate
Member.single(tmp_path, tls=files)              # serves https with --client-cert-auth
etcdctl([f"https://{m.endpoint}"], *files.etcdctl_args(), "get", "k")

ca = CA(tmp_path / "pki")                       # more certificates from one CA
cert, key = ca.issue("proxy", cn=None)          # proxy.pem, proxy-key.pem; no Common Name
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testlib.ports import HOST


def _name(cn: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class CA:
    """A certificate authority writing `ca.pem` and, for each `issue(name, ...)`, `name.pem` and
    `name-key.pem` into `directory`."""

    def __init__(self, directory: Path, name: str = "etcdstore-test-ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(name)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            _builder(self._name, self._name, self._key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, cn: str | None, *, client: bool = True, server: bool = False
    ) -> tuple[Path, Path]:
        """(certificate, key) with Common Name `cn` (None: an empty subject), for client and/or
        server authentication; a server certificate names 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        usages += [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        builder = _builder(_name(cn), self._name, key).add_extension(
            x509.ExtendedKeyUsage(usages), critical=False
        )
        if server:
            sans = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"
        cert_path.write_bytes(
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_args(self) -> list[str]:
        """A member's flags to serve clients over https with --client-cert-auth."""
        return [
            "--cert-file", str(self.server_cert),
            "--key-file", str(self.server_key),
            "--trusted-ca-file", str(self.ca),
            "--client-cert-auth",
        ]  # fmt: skip

    def etcdctl_args(self) -> list[str]:
        """etcdctl's flags to connect with the client certificate."""
        return ["--cacert", str(self.ca), "--cert", str(self.client_cert), "--key", str(self.client_key)]


def make_tls_files(directory: Path, *, client_cn: str = "client") -> TLSFiles:
    """A new CA (ca.pem) with a server (server.pem, server-key.pem: 127.0.0.1 and localhost) and a
    client certificate (client.pem, client-key.pem) in `directory`."""
    ca = CA(directory)
    server_cert, server_key = ca.issue("server", "etcd-server", client=False, server=True)
    client_cert, client_key = ca.issue("client", client_cn)
    return TLSFiles(ca.cert, server_cert, server_key, client_cert, client_key)
