"""TLS for the client port and the peer port: contexts that follow certificate rotation,
and self-signed certificates for --auto-tls / --peer-auto-tls.

Rotation: every accepted client connection asks `ReloadingServerTLS.context()`, which
rebuilds the SSLContext when the certificate, key or CA file changed on disk (checked at
most once a second), so replacing the files takes effect for new connections without a
restart. The peer gRPC server gets the same through gRPC's dynamic credentials.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import threading
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdstore.logs import get_logger

log = get_logger("etcdstore.tls")

AUTO_TLS_VALIDITY_DAYS = 365


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert_file: str
    key_file: str
    trusted_ca_file: str = ""
    client_cert_auth: bool = False

    def stamp(self) -> tuple:
        out = []
        for path in (self.cert_file, self.key_file, self.trusted_ca_file):
            try:
                st = os.stat(path) if path else None
                out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
            except OSError:
                out.append(None)
        return tuple(out)


class ReloadingServerTLS:
    """An SSLContext for a server socket, rebuilt when its files change."""

    def __init__(self, files: TLSFiles, alpn: tuple[str, ...] = ("http/1.1", "h2")) -> None:
        self.files = files
        self.alpn = alpn
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple | None = None
        self._ctx: ssl.SSLContext | None = None
        self.context()  # fail at start-up, not at the first connection, if the files are bad

    def _build(self) -> ssl.SSLContext:
        f = self.files
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(f.cert_file, f.key_file)
        if f.trusted_ca_file:
            ctx.load_verify_locations(f.trusted_ca_file)
        ctx.verify_mode = (
            ssl.CERT_REQUIRED
            if f.client_cert_auth
            else (ssl.CERT_OPTIONAL if f.trusted_ca_file else ssl.CERT_NONE)
        )
        # Server preference order: curl (offers both) gets HTTP/1.1 for the JSON APIs, gRPC
        # clients (offer h2 only) get h2.
        ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        if self._ctx is not None and now - self._checked < 1.0:
            return self._ctx
        with self._lock:
            self._checked = now
            stamp = self.files.stamp()
            if stamp != self._stamp or self._ctx is None:
                try:
                    ctx = self._build()
                except (OSError, ssl.SSLError) as e:
                    if self._ctx is None:
                        raise
                    # A half-written rotation: keep serving with the previous certificate.
                    log.warning("could not load rotated TLS files; keeping the previous ones", error=str(e))
                    return self._ctx
                if self._ctx is not None:
                    log.info("reloaded TLS certificate files", cert_file=self.files.cert_file)
                self._ctx, self._stamp = ctx, stamp
            return self._ctx

    def listener_context(self) -> ssl.SSLContext:
        """A context for a listening socket that, at every handshake, switches the connection
        to the freshest context (OpenSSL's server-name callback runs for every ClientHello,
        SNI or not), so new connections always see the current files."""
        base = self._build()

        def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            try:
                sslobj.context = self.context()
            except (OSError, ssl.SSLError) as e:  # keep the base context; the handshake goes on
                log.warning("TLS context reload failed", error=str(e))

        base.sni_callback = pick
        return base

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, certificate chain, CA bundle) as bytes, for gRPC credentials."""
        f = self.files
        with open(f.key_file, "rb") as k, open(f.cert_file, "rb") as c:
            key, cert = k.read(), c.read()
        ca = None
        if f.trusted_ca_file:
            with open(f.trusted_ca_file, "rb") as a:
                ca = a.read()
        return key, cert, ca


def self_signed(directory: str, hosts: list[str], *, name: str = "etcdstore") -> TLSFiles:
    """A self-signed certificate and key for --auto-tls (kept and reused while still valid)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        try:
            with open(cert_path, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
            if cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7):
                return TLSFiles(cert_path, key_path)
        except ValueError:
            pass  # unreadable: make a new one
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=AUTO_TLS_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    tmp_key, tmp_cert = key_path + ".tmp", cert_path + ".tmp"
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    with open(tmp_cert, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    log.info("generated a self-signed certificate", path=cert_path, hosts=",".join(hosts))
    return TLSFiles(cert_path, key_path)


def server_name_of(pem: bytes) -> str:
    """A name the certificate is valid for (first DNS SAN, else CN), for gRPC's target override."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = sans.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
        ips = sans.get_values_for_type(x509.IPAddress)
        if ips:
            return str(ips[0])
    except x509.ExtensionNotFound:
        pass
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn:
        return ""
    value = cn[0].value
    return value if isinstance(value, str) else value.decode()


class GrpcTLS:
    """TLS for a gRPC server or channel (between members, or gRPC bound directly on a client
    URL), following certificate rotation.

    With a trusted CA, peers verify each other against it. Without one (--peer-auto-tls,
    or certificates given without a CA), etcd skips verification; gRPC-Python cannot, so a
    member pins the certificate the peer presents on first contact instead.
    """

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.reloader = ReloadingServerTLS(files, alpn=("h2",))
        self.verify = bool(files.trusted_ca_file)

    def server_credentials(self):  # -> grpc.ServerCredentials
        """Dynamic credentials: rotated files are picked up for new connections."""
        import grpc

        key, cert, ca = self.reloader.pem()
        stamp = [self.files.stamp()]
        require = self.files.client_cert_auth and ca is not None

        def fetch():
            now = self.files.stamp()
            if now == stamp[0]:
                return None
            try:
                k, c, a = self.reloader.pem()
                config = grpc.ssl_server_certificate_configuration([(k, c)], root_certificates=a)
            except OSError as e:
                log.warning("could not load rotated peer TLS files", error=str(e))
                return None
            stamp[0] = now
            log.info("reloaded peer TLS certificate files", cert_file=self.files.cert_file)
            return config

        initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=require)

    def channel_credentials(self, url: str):  # -> (grpc.ChannelCredentials, list of options)
        """Credentials for dialling a peer; blocking (fetches the peer's certificate to pin it)."""
        import grpc

        key, cert, ca = self.reloader.pem()
        options: list[tuple[str, str]] = []
        root = ca
        if not self.verify:
            hostport = url.split("://", 1)[-1].rstrip("/")
            host, _, port = hostport.rpartition(":")
            pinned = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=3).encode()
            root = pinned
            name = server_name_of(pinned)
            if name:
                options.append(("grpc.ssl_target_name_override", name))
        creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
        return creds, options


# Members talk to each other with it.
PeerTLS = GrpcTLS


def cn_from_grpc_context(context) -> str | None:  # context: grpc.aio.ServicerContext
    """The verified client certificate's CN of a call on a TLS gRPC port (etcd's AuthInfoFromTLS)."""
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # noqa: BLE001  # no auth context on plaintext calls (grpc raises various)
        return None
    return names[0].decode() if names else None
