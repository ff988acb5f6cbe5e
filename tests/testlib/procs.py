"""Real member processes for tests, our `etcdstore` or the real etcd 3.4, started with the same flags.

Everything binds to 127.0.0.1 on free ports, with data under a caller-given directory.

    with Cluster.start(tmp_path, size=3, binary="etcdstore") as c:
        c.endpoints                 # ["127.0.0.1:41234", ...]
        c.members[0].kill()         # SIGKILL; .restart() brings it back on the same ports/data
        c.leader_index()
        etcdctl(c.endpoints, "put", "k", "v")

    with Member.single(tmp_path, binary="etcd") as m:   # one member of its own cluster, serving
        m.endpoint

    with Cluster.start(tmp_path, binary="etcd", tls=make_tls_files(tmp_path / "pki")) as c:
        c.members[0].client_url     # https://..., clients need the client certificate

Members started from the main thread die with the test process (see DIE_WITH_PARENT).

Harnesses with needs of their own build on the pieces: `member_args` (the flags every member
gets) and `spawn` (own session, output appended to a log); tests/robustness/cluster.py puts
its peers behind a fault proxy that way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from testlib.oracles import ETCD_BIN
from testlib.ports import HOST, free_port
from testlib.tls import TLSFiles
from testlib.wait import eventually

BINARIES = ("etcd", "etcdstore")

# `setpriv --pdeathsig KILL` (util-linux, always on Debian): the kernel kills the member when the
# process that started it dies, however it dies, so no orphaned member keeps ports and CPU on a
# shared machine. (Not a preexec_fn: Python code between fork and exec next to gRPC's threads
# crashed the child.) The signal follows the spawning *thread*, so `Member.spawn` uses it only
# from the main thread: a member started from a worker thread would die when that thread ends.
_SETPRIV = shutil.which("setpriv")
DIE_WITH_PARENT: list[str] = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


def command_for(binary: str) -> list[str]:
    """The command that runs `binary` ("etcd" or "etcdstore", or a path to an executable)."""
    if binary == "etcd":
        return [ETCD_BIN]
    if binary == "etcdstore":
        return [sys.executable, "-m", "etcdstore"]
    if os.path.sep in binary:
        return [binary]
    raise ValueError(binary)


def member_args(
    *,
    name: str,
    data_dir: Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    state: str = "new",
    token: str = "tok",
    advertise_peer_url: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The flags of one member (etcd's names, which etcdstore shares). `advertise_peer_url` differs
    from `peer_url` when the member's peers reach it through a proxy."""
    return [
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", advertise_peer_url or peer_url,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", state,
        "--initial-cluster-token", token,
        *extra,
    ]  # fmt: skip


def lone_member_args(
    data_dir: Path, *, name: str = "n1", token: str = "etcd-cluster"
) -> tuple[int, list[str]]:
    """The flags of a one-member cluster on fresh loopback ports: (client port, flags)."""
    client, peer = free_port(), free_port()
    peer_url = f"http://{HOST}:{peer}"
    flags = member_args(
        name=name,
        data_dir=data_dir,
        client_url=f"http://{HOST}:{client}",
        peer_url=peer_url,
        initial_cluster=f"{name}={peer_url}",
        token=token,
    )
    return client, flags


def spawn(
    cmd: Sequence[str], log_path: Path, *, prefix: Sequence[str] = (), label: str | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session (a SIGINT to pytest does not reach it first; signals to its
    process group reach only it), stdout and stderr appended to `log_path`; with a `label`, after a
    header line `=== {label}: {cmd}` (without, the log holds only the process's output)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        if label is not None:
            log.write(f"\n=== {label}: {' '.join(cmd)}\n".encode())
            log.flush()
        return subprocess.Popen([*prefix, *cmd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


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
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"
    tls_args: list[str] = field(default_factory=list)
    # With `tls`: serves clients over https with --client-cert-auth (tls.server_args()), and
    # `channel()` (so `status()` and `wait_serving`) presents the client certificate. Peer traffic
    # stays plain http. `scheme`/`tls_args` are for flags of one's own (e.g. --auto-tls).
    tls: TLSFiles | None = None

    @classmethod
    def single(
        cls,
        base_dir: Path,
        *,
        binary: str = "etcdstore",
        name: str = "m0",
        extra_args: list[str] | None = None,
        timeout: float = 60.0,
    ) -> Self:
        """One member forming a cluster of its own, started and serving."""
        m = cls(
            name=name,
            data_dir=base_dir / f"{name}.etcd",
            client_port=free_port(),
            peer_port=free_port(),
            binary=binary,
            extra_args=list(extra_args or []),
            cluster_token=uuid.uuid4().hex[:12],
        )
        m.spawn()
        try:
            wait_serving([m], timeout)
        except BaseException:
            m.kill()
            raise
        return m

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else self.scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        tls = self.tls.server_args() if self.tls else []
        return command_for(self.binary) + member_args(
            name=self.name,
            data_dir=self.data_dir,
            client_url=self.client_url,
            peer_url=self.peer_url,
            initial_cluster=self.initial_cluster or f"{self.name}={self.peer_url}",
            state=self.cluster_state,
            token=self.cluster_token,
            extra=["--logger", "zap", "--log-outputs", "stderr", *tls, *self.tls_args, *self.extra_args],
        )

    def spawn(self) -> None:
        assert not self.running, f"{self.name} already running"
        main = threading.current_thread() is threading.main_thread()
        self.proc = spawn(self.command(), self.log_path, prefix=DIE_WITH_PARENT if main else [])

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
        pid = self.proc.pid
        os.kill(pid, signal.SIGSTOP)
        eventually(
            lambda: proc_state(pid) in ("T", "t"), timeout=5, interval=0.001, message=f"{self.name} stopped"
        )

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
        if self.tls is None:
            return grpc.insecure_channel(self.endpoint)
        tls = self.tls
        creds = grpc.ssl_channel_credentials(
            tls.ca.read_bytes(), tls.client_key.read_bytes(), tls.client_cert.read_bytes()
        )
        return grpc.secure_channel(self.endpoint, creds)

    def status(self, timeout: float = 2.0) -> rpc_pb2.StatusResponse:
        """Status straight from the generated stub (independent of the client under test)."""
        with self.channel() as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)

    def unread_bytes(self) -> int:
        """Bytes that reached this member's client connections and that it has not read (the kernel's
        receive queues): after `pause()`, a rise shows a request was sent to the stopped member."""
        return unread_bytes(self.client_port)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def unread_bytes(port: int) -> int:
    """The receive queues of the established TCP connections to local `port` (/proc/net/tcp{,6})."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)  # the header
                for line in f:
                    fields = line.split()
                    local, state, queues = fields[1], fields[3], fields[4]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                        total += int(queues.split(":")[1], 16)  # tx_queue:rx_queue
        except OSError:
            continue
    return total


def proc_state(pid: int) -> str:
    """The process's state letter from /proc (R, S, T ...; "?" when gone)."""
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


def status_of(endpoint: str, timeout: float = 2.0) -> rpc_pb2.StatusResponse:
    """Maintenance.Status of one plaintext endpoint, from the generated stub."""
    with grpc.insecure_channel(endpoint) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)


def wait_applied(endpoints: Sequence[str], timeout: float = 30.0) -> None:
    """Until every member has applied every entry committed now: each one's raftAppliedIndex reaches
    the highest raftIndex (commit index) any of them reports at the call. What a test means by
    "let every member apply the change", as a condition instead of a sleep."""
    target = max(status_of(ep).raftIndex for ep in endpoints)

    def applied() -> bool:
        return all(status_of(ep).raftAppliedIndex >= target for ep in endpoints)

    eventually(applied, timeout, ignoring=(AssertionError, grpc.RpcError), message=f"applied index {target}")


@dataclass
class Cluster:
    base_dir: Path
    members: list[Member]
    binary: str

    @classmethod
    def start(
        cls,
        base_dir: Path,
        size: int = 1,
        *,
        binary: str = "etcdstore",
        extra_args: list[str] | None = None,
        attempts: int = 3,
        **member_opts: Any,
    ) -> Self:
        """Start `size` members and wait until they serve; retried on a lost port race.
        `member_opts` go to every member (e.g. tls=make_tls_files(...))."""
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
    def _spawn(cls, base: Path, size: int, binary: str, extra: list[str], opts: dict[str, Any]) -> Self:
        token = uuid.uuid4().hex[:12]
        members = [
            Member(
                name=f"m{i}",
                data_dir=base / f"m{i}.etcd",
                client_port=free_port(),
                peer_port=free_port(),
                binary=binary,
                extra_args=list(extra),
                cluster_token=token,
                **opts,
            )
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
        def leader() -> int:
            for i, m in enumerate(self.members):
                if m.running:
                    with contextlib.suppress(grpc.RpcError):
                        st = m.status(timeout=1.0)
                        if st.leader and st.leader == st.header.member_id:
                            return i + 1  # truthy even for member 0
            return 0

        return eventually(leader, timeout, message="a leader") - 1

    def new_member(self, name: str) -> Member:
        """A not-yet-started member with fresh ports, to join this cluster after MemberAdd."""
        first = self.members[0]
        return replace(
            first,
            name=name,
            data_dir=self.base_dir / f"{name}.etcd",
            client_port=free_port(),
            peer_port=free_port(),
            extra_args=list(first.extra_args),
            initial_cluster="",
            cluster_state="existing",
            proc=None,
        )

    def close(self) -> None:
        for m in self.members:
            m.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
