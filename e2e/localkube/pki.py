"""Certificates and keys for a local control plane, made with the `cryptography` package.

One CA signs everything: the kube-apiserver serving certificate, the client certificates of the
admin (system:masters), kube-controller-manager, kube-scheduler, the apiserver's kubelet client and
one per node (system:node:<name> in system:nodes, so a node agent is judged by the Node authorizer
and NodeRestriction as a kubelet is). The CA also signs CSRs (kube-controller-manager's csrsigning
controller gets its key). A separate EC key pair signs service-account tokens.

Keys are ECDSA P-256: kube-apiserver, client-go and kubectl accept them, and they are made in
microseconds (RSA 2048 costs ~50 ms each on this machine).
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

VALIDITY = datetime.timedelta(days=365)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


@dataclass
class CertPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


class PKI:
    """All files live in one directory; `PKI.create(dir, ...)` makes them, `PKI(dir)` reopens them."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    # --- paths -----------------------------------------------------------------------------------
    @property
    def ca(self) -> CertPair:
        return CertPair(self.dir / "ca.crt", self.dir / "ca.key")

    @property
    def apiserver(self) -> CertPair:
        return CertPair(self.dir / "apiserver.crt", self.dir / "apiserver.key")

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client(self, name: str) -> CertPair:
        return CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    # --- creation --------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, *, service_ip: str, extra_sans: tuple[str, ...] = ()) -> PKI:
        pki = cls(directory)
        pki.dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)

        ca_key = _new_key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localkube-ca")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(pki.ca.cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        _write(pki.ca.key, _key_pem(ca_key), private=True)

        dns = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        ips = ["127.0.0.1", service_ip]
        for san in extra_sans:
            try:
                ipaddress.ip_address(san)
                ips.append(san)
            except ValueError:
                dns.append(san)
        pki._issue(pki.apiserver, "kube-apiserver", (), server=True, dns=dns, ips=ips)
        pki._issue(pki.client("admin"), "kubernetes-admin", ("system:masters",))
        pki._issue(pki.client("kube-controller-manager"), "system:kube-controller-manager", ())
        pki._issue(pki.client("kube-scheduler"), "system:kube-scheduler", ())
        # kube-apiserver -> kubelet (logs, exec); kubeadm's group is bound to system:kubelet-api-admin,
        # system:masters is simpler and equivalent for a test cluster.
        pki._issue(
            pki.client("apiserver-kubelet-client"), "kube-apiserver-kubelet-client", ("system:masters",)
        )

        sa = _new_key()
        _write(pki.sa_key, _key_pem(sa), private=True)
        _write(
            pki.sa_pub,
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        return pki

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca.cert.read_bytes())
        key = serialization.load_pem_private_key(self.ca.key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def _issue(
        self,
        pair: CertPair,
        cn: str,
        orgs: tuple[str, ...],
        *,
        server: bool = False,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
    ) -> CertPair:
        ca_cert, ca_key = self._load_ca()
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=True,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips or [])]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(pair.key, _key_pem(key), private=True)
        return pair

    def node_client(self, node: str) -> CertPair:
        """A kubelet-style client certificate: CN system:node:<node>, O system:nodes (made once)."""
        pair = self.client(f"node-{node}")
        if not pair.cert.exists():
            self._issue(pair, f"system:node:{node}", ("system:nodes",))
        return pair

    def user_client(self, user: str, groups: tuple[str, ...] = ()) -> CertPair:
        """A client certificate for any user name and groups (made once per name)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        pair = self.client(f"user-{safe}")
        if not pair.cert.exists():
            self._issue(pair, user, groups)
        return pair
