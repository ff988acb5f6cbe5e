"""Real member processes for tests — our `etcdstore` or the real etcd 3.4 — with the same flags.

Everything binds to 127.0.0.1 on free ports with data under a caller-given directory.

    with Cluster.start(tmp_path, size=3, binary="etcdstore") as c:
        c.endpoints                 # ["127.0.0.1:41234", ...]
        c.members[0].kill()         # SIGKILL; .restart() brings it back on the same ports/data
        c.leader_index()
        etcdctl(c.endpoints, "put", "k", "v")
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import grpc

from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
HOST = "127.0.0.1"
BINARIES = ("etcd", "etcdstore")


def have_etcd() -> bool:
    return os.path.exists(ETCD_BIN) and os.path.exists(ETCDCTL_BIN)


def free_port() -> int:
    """A currently free port below Linux's ephemeral range (32768+), so that outgoing connections
    of the many processes in a test run cannot take it between now and the member's bind."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def command_for(binary: str) -> list[str]:
    if binary == "etcd":
        return [ETCD_BIN]
    if binary == "etcdstore":
        return [sys.executable, "-m", "etcdstore"]
    raise ValueError(binary)


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    binary: str = "etcdstore"
    extra_args: list[str] = field(default_factory=list)
    initial_cluster: str = ""
    cluster_state: str = "new"
    cluster_token: str = "tok"
    proc: subprocess.Popen | None = None
    scheme: str = "http"
    tls_args: list[str] = field(default_factory=list)
    spawn_prefix: ClassVar[list[str]] = []  # wraps the command (see EtcdMember)

    @property
    def endpoint(self) -> str:
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
        return command_for(self.binary) + [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", self.cluster_token,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ] + self.tls_args + self.extra_args

    def spawn(self) -> None:
        assert not self.running, f"{self.name} already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Own session: a SIGINT to pytest does not hit the member first, and signals target only it.
            self.proc = subprocess.Popen(self.spawn_prefix + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap (a crash). A paused member dies without running again: no SIGCONT first,
        or it could act on requests it received while stopped (tests rely on that)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
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
        self.kill()
        self.cluster_state = "existing"
        self.spawn()
        if wait:
            wait_serving([self])

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def status(self, timeout: float = 2.0) -> rpc_pb2.StatusResponse:
        """Status straight from the generated stub (independent of the client under test)."""
        with self.channel() as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
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


class StartError(RuntimeError):
    pass


def wait_serving(members: list[Member], timeout: float = 60.0) -> None:
    """Until every member answers Status with a leader known."""
    deadline = time.monotonic() + timeout
    pending = list(members)
    while pending:
        m = pending[0]
        if not m.running:
            raise StartError(f"{m.name} exited with {m.proc and m.proc.returncode}:\n{m.log_tail()}")
        try:
            if m.status(timeout=1.0).leader != 0:
                pending.pop(0)
                continue
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise StartError(f"{m.name} not serving after {timeout}s:\n{m.log_tail()}")
        time.sleep(0.05)


@dataclass
class Cluster:
    base_dir: Path
    members: list[Member]
    binary: str
    member_type: ClassVar[type[Member]] = Member

    @classmethod
    def start(cls, base_dir: Path, size: int = 1, *, binary: str = "etcdstore",
              extra_args: list[str] | None = None, attempts: int = 3, **member_opts: object) -> Cluster:
        """Start `size` members and wait until they serve; retried on a lost port race.
        `member_opts` go to every member (e.g. tls= for an EtcdMember)."""
        for attempt in range(attempts):
            c = cls._spawn(base_dir / f"{binary}-{attempt}", size, binary, extra_args or [], member_opts)
            try:
                wait_serving(c.members)
                return c
            except StartError:
                clash = any("address already in use" in m.log_tail(200) for m in c.members)
                c.close()
                if not clash or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _spawn(cls, base: Path, size: int, binary: str, extra: list[str], opts: dict) -> Cluster:
        token = uuid.uuid4().hex[:12]
        members = [
            cls.member_type(name=f"m{i}", data_dir=base / f"m{i}.etcd", client_port=free_port(),
                            peer_port=free_port(), binary=binary, extra_args=list(extra), cluster_token=token, **opts)
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for m in members:
            m.initial_cluster = initial
            m.spawn()
        return cls(base, members, binary)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members if m.running]

    def leader_index(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.members):
                if m.running:
                    with contextlib.suppress(grpc.RpcError):
                        st = m.status(timeout=1.0)
                        if st.leader and st.leader == st.header.member_id:
                            return i
            if time.monotonic() > deadline:
                raise RuntimeError("no leader")
            time.sleep(0.05)

    def new_member(self, name: str) -> Member:
        """A not-yet-started member with fresh ports, to join this cluster after MemberAdd."""
        first = self.members[0]
        return replace(first, name=name, data_dir=self.base_dir / f"{name}.etcd", client_port=free_port(),
                       peer_port=free_port(), extra_args=list(first.extra_args), initial_cluster="",
                       cluster_state="existing", proc=None)

    def close(self) -> None:
        for m in self.members:
            m.kill()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def etcdctl(endpoints: list[str] | str, *args: str, input: str | None = None, timeout: float = 30.0,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the real etcdctl (API v3) and return the completed process; raises on failure if check."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    cmd = [ETCDCTL_BIN, "--endpoints", ",".join(endpoints), "--command-timeout", "10s", *args]
    env = dict(os.environ, ETCDCTL_API="3")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and out.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out
