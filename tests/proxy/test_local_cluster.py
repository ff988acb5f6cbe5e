"""The local cluster in one command (`etcdstore local-cluster`) and the repo's Procfile under a
goreman-compatible runner (honcho): they start, serve etcdctl on every endpoint and the proxy,
and stop on SIGINT/SIGTERM with no process left behind."""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from etcdstore.localcluster import MEMBERS, PROXY_PORT, procfile
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import etcdctl, have_etcd

pytestmark = pytest.mark.skipif(not have_etcd(), reason="needs etcdctl 3.4")
REPO = Path(__file__).resolve().parents[2]


def _ports(offset: int) -> list[int]:
    return [p + offset for _, c, peer in MEMBERS for p in (c, peer)] + [PROXY_PORT + offset]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_offset() -> int:
    """A port offset at which all seven ports of the cluster are free (etcd's own ports may be in use)."""
    for _ in range(200):
        offset = random.randint(10, 2000)
        if all(_free(p) for p in _ports(offset)):
            return offset
    raise RuntimeError("no free port offset")


def processes_using(offset: int) -> list[int]:
    """Pids of live processes whose command line names one of this cluster's client ports."""
    marks = [f"127.0.0.1:{c + offset}" for _, c, _ in MEMBERS]
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(m in cmd for m in marks):
            found.append(int(d))
    return found


def wait_gone(offset: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_using(offset)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def serving(endpoint: str) -> bool:
    try:
        with grpc.insecure_channel(endpoint) as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1.0).leader != 0
    except grpc.RpcError:
        return False


def exercise(offset: int) -> None:
    """etcdctl put/get through each member and the proxy."""
    members = [f"127.0.0.1:{c + offset}" for _, c, _ in MEMBERS]
    proxy = f"127.0.0.1:{PROXY_PORT + offset}"
    for i, ep in enumerate(members + [proxy]):
        etcdctl(ep, "put", f"k{i}", f"v{i}")
    for ep in members + [proxy]:
        out = etcdctl(ep, "get", "k", "--prefix").stdout.split()
        assert out == ["k0", "v0", "k1", "v1", "k2", "v2", "k3", "v3"]
    st = etcdctl(members, "endpoint", "status").stdout
    assert st.count("3.4.23") == 3


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 90.0) -> str:
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in buf:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} (rc={proc.poll()}):\n{buf.decode(errors='replace')}")
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            buf += os.read(proc.stdout.fileno(), 65536)
    return buf.decode()


def test_procfile_is_the_local_cluster():
    assert (REPO / "Procfile").read_text() == procfile()
    text = procfile()
    for name, c, p in MEMBERS:
        assert f"--name {name} " in text and f":{c} " in text and f":{p} " in text
    assert "grpc-proxy start" in text and f"--listen-addr=127.0.0.1:{PROXY_PORT}" in text


def _start_local_cluster(tmp_path: Path, offset: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etcdstore",
            "local-cluster",
            "--data-dir",
            str(tmp_path),
            "--port-offset",
            str(offset),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out = read_until(proc, "Ctrl-C stops all.")
    except BaseException:
        proc.kill()
        proc.wait()
        wait_gone(offset)
        raise
    return proc, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_local_cluster_command(tmp_path, sig):
    offset = free_offset()
    proc, out = _start_local_cluster(tmp_path, offset)
    try:
        eps = ",".join(f"127.0.0.1:{c + offset}" for _, c, _ in MEMBERS)
        assert f"endpoints: {eps}" in out
        assert f"proxy:     127.0.0.1:{PROXY_PORT + offset}" in out
        assert len(processes_using(offset)) == 4
        exercise(offset)
        assert all((tmp_path / f"{n}.etcd").is_dir() for n, _, _ in MEMBERS)
        proc.send_signal(sig)
        assert proc.wait(60) == 0
        assert proc.stdout is not None
        assert "etcdstore local-cluster: stopped" in proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone(offset) == []


def test_local_cluster_children_die_with_it(tmp_path):
    """Even a SIGKILLed local-cluster leaves no member behind (the kernel tells them, PR_SET_PDEATHSIG)."""
    offset = free_offset()
    proc, _ = _start_local_cluster(tmp_path, offset)
    assert len(processes_using(offset)) == 4
    proc.kill()
    proc.wait()
    assert wait_gone(offset) == []


@pytest.mark.skipif(
    shutil.which("honcho", path=os.path.dirname(sys.executable)) is None,
    reason="honcho (a goreman-compatible runner, in the test extra) not installed",
)
def test_procfile_under_honcho(tmp_path):
    """The Procfile, with ports shifted and this interpreter as etcdstore, run by honcho."""
    offset = free_offset()
    (tmp_path / "Procfile").write_text(procfile(offset, exe=f"{sys.executable} -m etcdstore"))
    honcho = os.path.join(os.path.dirname(sys.executable), "honcho")
    log = open(tmp_path / "honcho.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [honcho, "-f", str(tmp_path / "Procfile"), "-d", str(tmp_path), "start"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 90
        eps = [f"127.0.0.1:{c + offset}" for _, c, _ in MEMBERS] + [f"127.0.0.1:{PROXY_PORT + offset}"]
        while not all(serving(ep) for ep in eps):
            assert proc.poll() is None, (tmp_path / "honcho.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "honcho.log").read_text()
            time.sleep(0.2)
        exercise(offset)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert wait_gone(offset) == []
    assert all((tmp_path / f"{n}.etcd").is_dir() for n, _, _ in MEMBERS)
