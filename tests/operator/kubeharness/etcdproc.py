"""A single real etcd member on loopback, for tests that need one without Kubernetes."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from testlib import free_port


class EtcdProcess:
    def __init__(self, data_dir: Path, *, name: str = "solo", binary: str | None = None) -> None:
        self.data_dir = data_dir
        self.name = name
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self.client_port, self.peer_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, *, initial_cluster: str | None = None, token: str = "solo") -> EtcdProcess:
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster or f'{self.name}={self.peer_url}'}",
            f"--initial-cluster-token={token}",
            f"--listen-metrics-urls=http://127.0.0.1:{self.metrics_port}",
        ]
        log = open(self.data_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}")
            try:
                if (
                    urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=1).status
                    == 200
                ):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
