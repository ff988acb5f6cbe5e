"""Real etcd 3.4 processes for tests: single members, clusters, TLS material.

Everything binds to 127.0.0.1 on random free ports with data in a caller-given directory,
so several test runs (and other helpers' runs) can share the machine.

    with EtcdCluster.start(tmp_path, size=3) as cluster:
        cluster.endpoints            # ["127.0.0.1:41234", ...]
        cluster.members[0].kill()    # SIGKILL; .restart() brings it back on the same ports/data
        cluster.leader_index()       # which member leads right now

TLS: `make_tls_files(dir)` writes a CA, a server cert (SAN 127.0.0.1 + localhost) and a client
cert, all made with `cryptography`; `EtcdCluster.start(..., tls=files)` serves https with
--client-cert-auth. Peer traffic stays plain http (tests exercise the client side).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
HOST = "127.0.0.1"


# Wrap etcd in `setpriv --pdeathsig KILL` (util-linux, always on Debian): the kernel kills it
# when the test process dies, however it dies, so no orphaned etcd keeps ports and CPU on a
# shared machine. (Not a preexec_fn: Python code between fork and exec next to gRPC's threads
# crashed the child.) The signal follows the spawning *thread*: spawn from the main thread.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


def free_port() -> int:
    """A port the kernel just handed out; another process may still race us for it (callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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
class EtcdMember:
    """One etcd process; its ports and data dir survive kill()/restart()."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    tls: TLSFiles | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    initial_cluster: str = ""
    cluster_state: str = "new"
    cluster_token: str = ""

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """ "host:port" of the client port (what Client() takes)."""
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        args = [
            ETCD_BIN,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state",
            self.cluster_state,
            "--initial-cluster-token",
            self.cluster_token or "tok",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        if self.tls:
            args += [
                "--cert-file",
                str(self.tls.server_cert),
                "--key-file",
                str(self.tls.server_key),
                "--trusted-ca-file",
                str(self.tls.ca),
                "--client-cert-auth",
            ]
        return args + self.extra_args

    def spawn(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            # Own session: a SIGINT to pytest does not hit etcd first, and signals target only it.
            self.proc = subprocess.Popen(
                _DIE_WITH_PARENT + self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap (a crash)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), SIGKILL if it does not exit in time."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        """SIGSTOP, returning once the kernel reports the process stopped (state T)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _proc_state(self.proc.pid) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, *, wait: bool = True) -> None:
        """Start again on the same ports and data (joins the cluster it was part of)."""
        self.kill()
        self.cluster_state = "existing"
        self.spawn()
        if wait:
            wait_serving([self])

    def channel(self) -> grpc.Channel:
        target = self.endpoint
        if not self.tls:
            return grpc.insecure_channel(target)
        creds = grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.client_key.read_bytes(), self.tls.client_cert.read_bytes()
        )
        return grpc.secure_channel(target, creds)

    def status(self, timeout: float = 2.0) -> rpc_pb2.StatusResponse:
        """Status straight from the generated stub (independent of the client under test)."""
        with self.channel() as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class EtcdStartError(RuntimeError):
    pass


def wait_serving(members: list[EtcdMember], timeout: float = 30.0) -> None:
    """Until every member answers Status with a leader known (a cluster that can serve writes)."""
    deadline = time.monotonic() + timeout
    pending = list(members)
    while pending:
        m = pending[0]
        if not m.running:
            raise EtcdStartError(f"{m.name} exited with {m.proc and m.proc.returncode}:\n{m.log_tail()}")
        try:
            if m.status(timeout=1.0).leader != 0:
                pending.pop(0)
                continue
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise EtcdStartError(f"{m.name} not serving after {timeout}s:\n{m.log_tail()}")
        time.sleep(0.05)


def _port_clash(members: list[EtcdMember]) -> bool:
    return any("address already in use" in m.log_tail(200) for m in members)


@dataclass
class EtcdCluster:
    """A set of etcd members started together (size 1 is a single member)."""

    base_dir: Path
    members: list[EtcdMember]
    tls: TLSFiles | None = None

    @classmethod
    def start(
        cls,
        base_dir: Path,
        size: int = 1,
        *,
        tls: TLSFiles | None = None,
        extra_args: list[str] | None = None,
        attempts: int = 3,
    ) -> EtcdCluster:
        """Start `size` members and wait until they serve; retried on a lost port race."""
        for attempt in range(attempts):
            cluster = cls._spawn(base_dir / f"try{attempt}", size, tls, extra_args or [])
            try:
                wait_serving(cluster.members)
                return cluster
            except EtcdStartError:
                clash = _port_clash(cluster.members)
                cluster.close()
                if not clash or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _spawn(cls, base: Path, size: int, tls: TLSFiles | None, extra: list[str]) -> EtcdCluster:
        token = uuid.uuid4().hex[:12]
        members = [
            EtcdMember(
                name=f"m{i}",
                data_dir=base / f"m{i}.etcd",
                client_port=free_port(),
                peer_port=free_port(),
                tls=tls,
                extra_args=list(extra),
                cluster_token=token,
            )
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for m in members:
            m.initial_cluster = initial
            m.spawn()
        return cls(base, members, tls)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def leader_index(self) -> int:
        """Index in `members` of the current leader (asks a running member)."""
        for m in self.members:
            if m.running:
                with contextlib.suppress(grpc.RpcError):
                    st = m.status()
                    if st.leader:
                        for i, other in enumerate(self.members):
                            if other.running and other.status().header.member_id == st.leader:
                                return i
        raise RuntimeError("no leader")

    def wait_leader(self, timeout: float = 15.0) -> int:
        """Until a running member leads (after a leader was killed); returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.leader_index()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def new_member(self, name: str) -> EtcdMember:
        """A not-yet-started member with fresh ports joining this cluster (set initial_cluster, spawn()).

        It is not in `members` until the caller appends it (so close() also stops it)."""
        return EtcdMember(
            name=name,
            data_dir=self.base_dir / f"{name}.etcd",
            client_port=free_port(),
            peer_port=free_port(),
            tls=self.tls,
            extra_args=list(self.members[0].extra_args),
            cluster_state="existing",
            cluster_token=self.members[0].cluster_token,
        )

    def close(self) -> None:
        for m in self.members:
            if m.running:
                with contextlib.suppress(ProcessLookupError):
                    m.resume()  # a SIGSTOPped process ignores SIGTERM until continued
            m.kill()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def etcdctl(endpoints: list[str], *args: str, tls: TLSFiles | None = None, timeout: float = 30.0) -> str:
    """Run etcdctl (API v3) against these endpoints and return stdout; raises on failure."""
    cmd = [ETCDCTL_BIN, "--endpoints", ",".join(endpoints)]
    if tls:
        cmd += ["--cacert", str(tls.ca), "--cert", str(tls.client_cert), "--key", str(tls.client_key)]
    env = dict(os.environ, ETCDCTL_API="3")
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout
