"""Real etcd 3.4 processes for the client tests, and TLS material: a thin layer over tests/procs.py.

    with EtcdCluster.start(tmp_path, size=3) as cluster:
        cluster.endpoints            # ["127.0.0.1:41234", ...] (all members, running or not)
        cluster.members[0].kill()    # SIGKILL; .restart() brings it back on the same ports/data
        cluster.leader_index()       # which member leads right now

TLS: `make_tls_files(dir)` writes a CA, a server cert (SAN 127.0.0.1 + localhost) and a client
cert, all made with `cryptography`; `EtcdCluster.start(..., tls=files)` serves https with
--client-cert-auth. Peer traffic stays plain http (tests exercise the client side).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc
import procs
from procs import ETCD_BIN, HOST, Cluster, Member, free_port, wait_serving

__all__ = [
    "ETCD_BIN",
    "EtcdCluster",
    "EtcdMember",
    "TLSFiles",
    "etcdctl",
    "free_port",
    "make_tls_files",
    "wait_serving",
]

# Wrap etcd in `setpriv --pdeathsig KILL` (util-linux, always on Debian): the kernel kills it
# when the test process dies, however it dies, so no orphaned etcd keeps ports and CPU on a
# shared machine. (Not a preexec_fn: Python code between fork and exec next to gRPC's threads
# crashed the child.) The signal follows the spawning *thread*: spawn from the main thread.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, *, client_cn: str = "client") -> TLSFiles:
    """A throwaway CA plus server and client certificates (EC P-256, valid one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("etcdstore-test-ca"))
        .issuer_name(name("etcdstore-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(
        "etcd-server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")],
    )
    client_key, client_cert = leaf(client_cn, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    files = TLSFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    write_key(server_key, files.server_key)
    write_key(client_key, files.client_key)
    return files


@dataclass
class EtcdMember(Member):
    """One real etcd process; with `tls` it serves https and requires client certificates."""

    binary: str = "etcd"
    tls: TLSFiles | None = None
    spawn_prefix: ClassVar[list[str]] = _DIE_WITH_PARENT

    def __post_init__(self) -> None:
        if self.tls is not None:
            self.scheme = "https"
            self.tls_args = [
                "--cert-file",
                str(self.tls.server_cert),
                "--key-file",
                str(self.tls.server_key),
                "--trusted-ca-file",
                str(self.tls.ca),
                "--client-cert-auth",
            ]

    def channel(self) -> grpc.Channel:
        if self.tls is None:
            return super().channel()
        creds = grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.client_key.read_bytes(), self.tls.client_cert.read_bytes()
        )
        return grpc.secure_channel(self.endpoint, creds)


@dataclass
class EtcdCluster(Cluster):
    """Real etcd members started together (size 1 is a single member)."""

    member_type: ClassVar[type[Member]] = EtcdMember

    @classmethod
    def start(  # type: ignore[override]
        cls,
        base_dir: Path,
        size: int = 1,
        *,
        tls: TLSFiles | None = None,
        extra_args: list[str] | None = None,
        attempts: int = 3,
        binary: str = "etcd",
    ) -> EtcdCluster:
        """`binary`: "etcd" (the real etcd 3.4) or "etcdstore" (ours), started with the same flags."""
        cluster = super().start(
            base_dir, size, binary=binary, extra_args=extra_args, attempts=attempts, tls=tls
        )
        assert isinstance(cluster, EtcdCluster)
        return cluster

    @property
    def endpoints(self) -> list[str]:
        """Every member's, running or not: the tests address members by position."""
        return [m.endpoint for m in self.members]

    def wait_leader(self, timeout: float = 15.0) -> int:
        """Until a running member leads (after a leader was killed); returns its index."""
        return self.leader_index(timeout)


def etcdctl(endpoints: list[str], *args: str, tls: TLSFiles | None = None, timeout: float = 30.0) -> str:
    """Run etcdctl (API v3) against these endpoints and return stdout; raises on failure."""
    tls_args = (
        ["--cacert", str(tls.ca), "--cert", str(tls.client_cert), "--key", str(tls.client_key)] if tls else []
    )
    return procs.etcdctl(endpoints, *tls_args, *args, timeout=timeout).stdout
