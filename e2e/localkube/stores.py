"""The backing store of a local control plane: etcdstore members or real etcd 3.4 members, with
the same flags (etcdstore takes etcd's), on free loopback ports, data under the work dir."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .procs import HOST, Proc, free_port
from .toolchain import REPO

STORES = ("etcdstore", "etcd")


def etcdstore_command() -> list[str]:
    venv = REPO / ".venv" / "bin" / "etcdstore"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("etcdstore")
    if found:
        return [found]
    return [sys.executable, "-m", "etcdstore"]


def etcd_command() -> list[str]:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if not found:
        raise FileNotFoundError("etcd is not installed: apt-get install -y etcd-server etcd-client")
    return [found]


def etcdctl_path() -> str:
    found = shutil.which("etcdctl") or ("/usr/bin/etcdctl" if Path("/usr/bin/etcdctl").exists() else None)
    if not found:
        raise FileNotFoundError("etcdctl is not installed: apt-get install -y etcd-client")
    return found


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: Proc

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


class Store:
    def __init__(
        self,
        kind: str,
        size: int,
        workdir: Path,
        pidfile: Path,
        *,
        die_with_parent: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if kind not in STORES:
            raise ValueError(f"store must be one of {STORES}, not {kind!r}")
        self.kind = kind
        self.size = size
        self.workdir = workdir
        self.members: list[Member] = []
        cmd = etcdstore_command() if kind == "etcdstore" else etcd_command()
        ports = [(free_port(), free_port()) for _ in range(size)]
        names = [f"{kind}-{i}" for i in range(size)]
        cluster = ",".join(f"{n}=http://{HOST}:{pp}" for n, (_, pp) in zip(names, ports))
        for name, (cp, pp) in zip(names, ports):
            data = workdir / f"{name}.data"
            argv = cmd + [
                "--name",
                name,
                "--data-dir",
                str(data),
                "--listen-client-urls",
                f"http://{HOST}:{cp}",
                "--advertise-client-urls",
                f"http://{HOST}:{cp}",
                "--listen-peer-urls",
                f"http://{HOST}:{pp}",
                "--initial-advertise-peer-urls",
                f"http://{HOST}:{pp}",
                "--initial-cluster",
                cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                f"localkube-{kind}",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                *extra_args,
            ]
            proc = Proc(
                name, argv, workdir / "logs" / f"{name}.log", pidfile, die_with_parent=die_with_parent
            )
            self.members.append(Member(name, cp, pp, data, proc))

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, timeout: float = 60.0) -> None:
        for m in self.members:
            m.proc.start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60.0, members: list[Member] | None = None) -> None:
        members = members or self.members
        deadline = time.monotonic() + timeout
        while True:
            dead = [m for m in members if not m.proc.running]
            if dead:
                raise RuntimeError(
                    f"{dead[0].name} exited ({dead[0].proc.exit_code()}):\n{dead[0].proc.tail()}"
                )
            if all(m.healthy() for m in members):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} members not healthy after {timeout} s")
            time.sleep(0.1)

    def status(self) -> list[dict]:
        """`etcdctl endpoint status -w json` of the running members (works on both stores)."""
        live = [m for m in self.members if m.proc.running]
        out = subprocess.run(
            [
                etcdctl_path(),
                "--endpoints",
                ",".join(m.endpoint for m in live),
                "--command-timeout=3s",
                "endpoint",
                "status",
                "-w",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        try:
            return json.loads(out.stdout or "[]")
        except ValueError:
            return []

    def leader_index(self) -> int | None:
        for st in self.status():
            header = st.get("Status", {}).get("header", {})
            if st.get("Status", {}).get("leader") and st["Status"]["leader"] == header.get("member_id"):
                for i, m in enumerate(self.members):
                    if st.get("Endpoint", "").endswith(f":{m.client_port}"):
                        return i
        return None

    def kill(self, index: int) -> None:
        self.members[index].proc.kill()

    def restart(self, index: int, timeout: float = 60.0) -> None:
        m = self.members[index]
        m.proc.start()
        self.wait_healthy(timeout, [m])

    def stop(self) -> None:
        for m in self.members:
            m.proc.stop()
