"""`etcdstore bench compare`: real etcd 3.4 and etcdstore side by side, measured with etcd's own Go
benchmark tool (etcd 3.4.23's tools/benchmark, the load generator behind etcd's published numbers).

    etcdstore bench compare [--suite headline|scale|all] [--rounds 5] [--quick] [--only CELL,...]
        [--json PATH] [--markdown PATH] [--keys 1000000] [--watchers 10000] [--leases 100000]

Each round starts fresh clusters (new data dirs, members on free loopback ports) of one server at a
time, runs that group's cells against it with the Go tool, and stops it; the next round starts with
the other server (etcd first in odd rounds, etcdstore first in even ones), so load drift on a shared
machine weighs on both alike. Per cell the table shows each server's median requests/s and median
p50/p99 latency over the rounds, and the median (and range) of the rounds' etcdstore/etcd ratios.
The load average before and after is printed with the table. Everything started is stopped at the
end, on error, and on Ctrl-C / SIGTERM, which exit 130 (a second one while stopping kills what is left
at once instead of waiting for it to stop; the children also get SIGTERM from the kernel if this
process dies: PR_SET_PDEATHSIG through setpriv).

etcd 3.4's tool has no delete workload: the delete cell (delete-m3-c100, run only when named with
--only) measures both servers with etcdstore's own Python load driver (`etcdstore bench delete`: op i
deletes key i, every key written by the driver's prefill first), the same driver, members, clients
and rounds for both, and is labelled "Python driver" in the tables.

The Go tool is a measurement dependency, not part of etcdstore: it is found with --benchmark-bin,
$ETCD_BENCHMARK_BIN, or the cache ($XDG_CACHE_HOME or ~/.cache)/etcdstore-bench/etcd-benchmark-v3.4.23/,
and built there when missing by --build-script / $ETCD_BENCHMARK_BUILD (default: the shared
tools/etcd-benchmark/build.sh beside the repo, which builds it offline from Debian's Go and etcd
source packages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

TOOL_VERSION = "v3.4.23"
HOST = "127.0.0.1"
SERVERS = ("etcd", "etcdstore")
VAL_SIZE = 256
RANGE_KEY = "etcdstore-bench-range-key"

# ---------------------------------------------------------------------------------------------
# The Go tool


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "etcdstore-bench" / f"etcd-benchmark-{TOOL_VERSION}"


def _default_build_script() -> Path:
    # store/etcdstore/bench/compare.py -> the repo's top, whose sibling is shared/ on this project's machines
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "tools" / "etcd-benchmark" / "build.sh"


def find_tool(explicit: str | None = None, build_script: str | None = None, out: TextIO = sys.stderr) -> str:
    """The path of etcd's benchmark binary, built into the cache (keyed by the tool's version) if missing."""
    path = explicit or os.environ.get("ETCD_BENCHMARK_BIN")
    if path:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"etcd benchmark tool {path!r} is not an executable")
        return path
    cached = _cache_dir() / "etcd-benchmark"
    if os.access(cached, os.X_OK):
        return str(cached)
    script = Path(build_script or os.environ.get("ETCD_BENCHMARK_BUILD") or _default_build_script())
    if not script.is_file():
        raise SystemExit(
            f"etcd's benchmark tool is not built ({cached} is missing) and its build script {script} does not "
            "exist: pass --benchmark-bin or --build-script (see docs/performance.md)"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"# building etcd's benchmark tool {TOOL_VERSION} with {script} into {cached} ...",
        file=out,
        flush=True,
    )
    env = dict(os.environ, OUT=str(cached), GOBENCH_WORK=str(cached.parent / "build"))
    # Its own process group like every child (interrupted, the whole build is stopped, not just bash).
    p = _spawn(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate()
    finally:
        _reap(p)
    if p.returncode != 0 or not os.access(cached, os.X_OK):
        raise SystemExit(f"building etcd's benchmark tool failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return str(cached)


_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_TOTAL = re.compile(r"Total:\s+([0-9.]+) secs")
_PCT = re.compile(r"([0-9.]+)% in ([0-9.]+) secs")
_ERR = re.compile(r"^\s*\[(\d+)\]\s+(.*)$")


@dataclass
class ToolResult:
    rps: float = 0.0
    total_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    error_kinds: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu: float | None = None  # the Python driver's: cores it kept busy (1 per process: saturated)


def parse_report(text: str) -> ToolResult:
    """The numbers of one report of etcd's benchmark tool (pkg/report's text)."""
    res = ToolResult()
    m = _RPS.search(text)
    if m:
        res.rps = float(m.group(1))
    m = _TOTAL.search(text)
    if m:
        res.total_s = float(m.group(1))
    for pct, secs in _PCT.findall(text):
        if pct == "50":
            res.p50_ms = float(secs) * 1000
        elif pct == "99":
            res.p99_ms = float(secs) * 1000
    if "Error distribution:" in text:
        for line in text.split("Error distribution:", 1)[1].splitlines():
            m = _ERR.match(line)
            if m:
                res.errors += int(m.group(1))
                res.error_kinds.append(m.group(2)[:200])
    return res


# ---------------------------------------------------------------------------------------------
# Processes: everything this command starts is in _LIVE until it has been waited for.
#
# Ctrl-C and SIGTERM (main() installs _on_interrupt for both): the first raises KeyboardInterrupt in the
# main thread, but never while a child is being started (_spawn defers it to the end of the start: raised
# inside Popen() it would leave a child running that nothing knows of). From then on the command is
# stopping and the cleanup runs to its end: later signals do not raise (as in etcd's HandleInterrupts, whose
# handlers run once, whatever arrives meanwhile) but make it hurry: what is still running is killed at once
# instead of being given its grace period. Every wait of the cleanup is bounded.

_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
STOP_GRACE_S = 15.0  # SIGTERM to SIGKILL
KILL_WAIT_S = 30.0  # SIGKILL to giving up on a process (one stuck in the kernel): reported, not waited for


class _Interrupts:
    def __init__(self) -> None:
        self.stopping = threading.Event()  # an interrupt was raised: the cleanup is under way
        self.hurry = threading.Event()  # interrupted again meanwhile: kill, do not wait
        self.deferring = 0  # depth of _Deferred blocks in the main thread
        self.pending = False  # an interrupt arrived in one

    def reset(self) -> None:
        self.stopping.clear()
        self.hurry.clear()
        self.deferring, self.pending = 0, False

    def interrupt(self) -> None:
        """Raise the first interrupt (KeyboardInterrupt) unless it must wait for the end of a deferred block."""
        if self.stopping.is_set():
            self.hurry.set()
        elif self.deferring:
            self.pending = True
        else:
            self.stopping.set()
            raise KeyboardInterrupt


_INTERRUPTS = _Interrupts()


def _on_interrupt(signum: int, frame: object) -> None:
    _INTERRUPTS.interrupt()


class _Deferred:
    """A block of the main thread that an interrupt does not cut short: raised at its end instead."""

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            _INTERRUPTS.deferring += 1

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        _INTERRUPTS.deferring -= 1
        if not _INTERRUPTS.deferring and _INTERRUPTS.pending:
            _INTERRUPTS.pending = False
            _INTERRUPTS.interrupt()


def _die_with_parent() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    # Own session: a terminal's Ctrl-C reaches this process only, which then stops the children, and the
    # child's process group (its pid) holds whatever it starts. Its output goes where `kw` says (log files,
    # a pipe of this process or DEVNULL): never to this process's stdout/stderr, which a child would keep
    # open after this process exited. Started from the main thread only: PR_SET_PDEATHSIG follows the
    # thread that started the child.
    with _Deferred():
        p = subprocess.Popen(_die_with_parent() + cmd, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        with _LIVE_LOCK:
            _LIVE.add(p)
    return p


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)  # its own session: process group id == pid
        except ProcessLookupError:
            pass


def _wait_for(p: subprocess.Popen, seconds: float, hurry: bool = True) -> bool:
    """Wait up to `seconds` for `p` to exit (cut short by a repeated interrupt when `hurry`); whether it did."""
    deadline = time.monotonic() + seconds
    while p.poll() is None:
        left = deadline - time.monotonic()
        if left <= 0 or (hurry and _INTERRUPTS.hurry.is_set()):
            return False
        try:
            p.wait(min(left, 0.2))
        except subprocess.TimeoutExpired:
            pass
    return True


def _stop(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to each process's group, up to `grace` s for all to exit, SIGKILL to what is left; each
    waited for (KILL_WAIT_S at most: one that still has not exited is reported and left)."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        _wait_for(p, deadline - time.monotonic())
    for p in procs:
        _signal_group(p, signal.SIGKILL)
    for p in procs:
        if not _wait_for(p, KILL_WAIT_S, hurry=False):
            print(
                f"# pid {p.pid} has not exited {KILL_WAIT_S:.0f} s after SIGKILL: {p.args}", file=sys.stderr
            )
    with _LIVE_LOCK:
        _LIVE.difference_update(procs)


def _reap(p: subprocess.Popen, timeout: float = STOP_GRACE_S) -> None:
    _stop([p], timeout)


def stop_everything() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    _stop(procs)


def run_tool(
    tool: str, endpoints: list[str], clients: int, conns: int, args: list[str], timeout: float
) -> ToolResult:
    cmd = [tool, f"--endpoints={','.join(endpoints)}", f"--conns={conns}", f"--clients={clients}", *args]
    t0 = time.monotonic()
    text, rc = _run_child(cmd, f"benchmark {' '.join(args[:1])}", timeout, subprocess.DEVNULL)
    res = parse_report(text)
    res.wall_s = time.monotonic() - t0
    if rc != 0 or not res.rps and "Requests/sec" not in text:
        raise RuntimeError(f"benchmark {args[0]} exited {rc}: {text[-600:]!r}")
    return res


def _run_child(cmd: list[str], what: str, timeout: float, stderr: int) -> tuple[str, int]:
    """Run a load generator as a child (stopped with everything else on Ctrl-C): its output and exit code."""
    p = _spawn(cmd, stdout=subprocess.PIPE, stderr=stderr)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{what} did not finish in {timeout:.0f} s") from None
    finally:
        _reap(p)
    return out.decode("utf-8", "replace"), p.returncode


def driver_result(run: dict[str, Any]) -> ToolResult:
    """The numbers of one run of the Python driver (a line of `etcdstore bench --json`)."""
    lat = run.get("latency_ms") or {}
    errors = run.get("errors") or {}
    return ToolResult(
        rps=float(run["ops_per_s"]),
        total_s=float(run["elapsed_s"]),
        p50_ms=lat.get("p50"),
        p99_ms=lat.get("p99"),
        errors=sum(errors.values()),
        error_kinds=[f"{k}: {v}" for k, v in errors.items()],
        client_cpu=run.get("client_cpu_cores"),
    )


def run_driver(
    endpoints: list[str], clients: int, conns: int, args: list[str], timeout: float, work: Path
) -> ToolResult:
    """One run of etcdstore's Python driver (`etcdstore bench`, a child like the Go tool: stopped with
    everything else on Ctrl-C), its numbers read from its --json line."""
    fd, name = tempfile.mkstemp(prefix="driver-", suffix=".jsonl", dir=work)
    os.close(fd)
    out_json = Path(name)
    cmd = [sys.executable, "-m", "etcdstore", "bench", *args, f"--endpoints={','.join(endpoints)}"]
    cmd += [f"--clients={clients}", f"--conns={conns}", f"--json={out_json}"]
    t0 = time.monotonic()
    try:
        text, rc = _run_child(cmd, f"python driver {args[0]}", timeout, subprocess.STDOUT)
        lines = out_json.read_text().splitlines()
    finally:
        out_json.unlink(missing_ok=True)
    if rc != 0 or not lines:
        raise RuntimeError(f"python driver {args[0]} exited {rc}: {text[-600:]!r}")
    res = driver_result(json.loads(lines[-1]))
    res.wall_s = time.monotonic() - t0
    return res


# ---------------------------------------------------------------------------------------------
# Clusters


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _server_cmd(server: str, etcd_bin: str) -> list[str]:
    if server == "etcd":
        return [etcd_bin]
    return [sys.executable, "-m", "etcdstore"]


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and all its descendants, in KiB (0 if gone)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def dir_bytes(path: Path, only_wal: bool = False) -> int:
    """Bytes allocated on disk under `path` (or only under its directories named wal)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        if only_wal and "wal" not in Path(root).relative_to(path).parts:
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"


class Cluster:
    """`size` members of `server` (etcd or etcdstore) on free loopback ports, data under `root`."""

    def __init__(self, server: str, size: int, root: Path, etcd_bin: str, extra: list[str] | None = None):
        self.server, self.size, self.root, self.etcd_bin = server, size, root, etcd_bin
        self.extra = extra or []
        self.members = [
            Member(f"m{i + 1}", free_port(), free_port(), root / f"m{i + 1}.data") for i in range(size)
        ]
        self.token = f"bench-{os.getpid()}-{int(time.time() * 1000)}"
        self.leader_endpoint = ""

    def _cmd(self, m: Member, state: str) -> list[str]:
        cluster = ",".join(f"{x.name}=http://{HOST}:{x.peer_port}" for x in self.members)
        c, p = f"http://{HOST}:{m.client_port}", f"http://{HOST}:{m.peer_port}"
        return (
            _server_cmd(self.server, self.etcd_bin)
            + [
                "--name",
                m.name,
                "--data-dir",
                str(m.data_dir),
                "--listen-client-urls",
                c,
                "--advertise-client-urls",
                c,
                "--listen-peer-urls",
                p,
                "--initial-advertise-peer-urls",
                p,
                "--initial-cluster",
                cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                self.token,
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]
            + self.extra
        )

    def spawn(self, m: Member, state: str = "new") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{m.name}.log", "ab") as log:
            m.proc = _spawn(self._cmd(m, state), stdout=log, stderr=subprocess.STDOUT)

    def start(self, timeout: float = 90.0) -> None:
        for m in self.members:
            self.spawn(m)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Every member answers Status with a leader; the leader's endpoint goes first in `endpoints`."""
        import grpc

        from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

        deadline = time.monotonic() + timeout
        ids: dict[int, str] = {}
        leader = 0
        for m in self.members:
            while True:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.server} member {m.name} exited {m.proc.returncode}; "
                        f"log: {self.root / (m.name + '.log')}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.server} cluster of {self.size} not serving after {timeout:.0f} s"
                    )
                try:
                    with grpc.insecure_channel(m.endpoint) as ch:
                        st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=2.0)
                    if st.leader:
                        ids[st.header.member_id] = m.endpoint
                        leader = st.leader
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.leader_endpoint = ids.get(leader, self.members[0].endpoint)

    @property
    def endpoints(self) -> list[str]:
        eps = [m.endpoint for m in self.members]
        if self.leader_endpoint in eps:
            eps.remove(self.leader_endpoint)
            eps.insert(0, self.leader_endpoint)
        return eps

    def rss_kib(self) -> int:
        return sum(tree_rss_kib(m.proc.pid) for m in self.members if m.proc and m.proc.poll() is None)

    def disk_bytes(self, only_wal: bool = False) -> int:
        return sum(dir_bytes(m.data_dir, only_wal) for m in self.members)

    def stop(self) -> None:
        _stop([m.proc for m in self.members if m.proc is not None])


@contextlib.contextmanager
def running_cluster(
    server: str, size: int, prefix: str, work: Path, etcd_bin: str, extra: list[str] | None = None
) -> Iterator[Cluster]:
    """A started cluster of `size` members of `server` in a fresh dir under `work` (named `prefix`-server-...);
    stopped and its dir removed on leaving, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-{server}-", dir=work))
    cluster = Cluster(server, size, root, etcd_bin, extra)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


class Proxy:
    """A grpc-proxy of `server` in front of `cluster`: `etcd grpc-proxy start` (etcd 3.4's) for etcd,
    `etcdstore grpc-proxy start` for etcdstore, with the same flags, on a free loopback port."""

    def __init__(self, server: str, cluster: Cluster, etcd_bin: str) -> None:
        self.server, self.cluster, self.etcd_bin = server, cluster, etcd_bin
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        root = self.cluster.root
        cmd = _server_cmd(self.server, self.etcd_bin) + [
            "grpc-proxy",
            "start",
            f"--endpoints={','.join(self.cluster.endpoints)}",
            f"--listen-addr={self.endpoint}",
            f"--advertise-client-url={self.endpoint}",
            f"--data-dir={root / 'proxy.data'}",
        ]
        with open(root / "proxy.log", "ab") as log:
            self.proc = _spawn(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_serving(self.endpoint, self.proc, timeout)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{self.server} grpc-proxy: {e}; log: {root / 'proxy.log'}") from None

    def rss_kib(self) -> int:
        return tree_rss_kib(self.proc.pid) if self.proc is not None and self.proc.poll() is None else 0

    def stop(self) -> None:
        if self.proc is not None:
            _reap(self.proc)


@contextlib.contextmanager
def running_proxy(server: str, cluster: Cluster, etcd_bin: str) -> Iterator[Proxy]:
    proxy = Proxy(server, cluster, etcd_bin)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------
# The headline suite


@dataclass
class Cell:
    id: str
    workload: str  # the table's name
    members: int
    clients: int
    args: Callable[[int], list[str]]  # the load generator's subcommand and flags for a total
    total: int
    quick_total: int
    prefill_range_key: bool = False
    python_driver: bool = False  # measured with etcdstore's Python driver, not etcd's Go tool

    @property
    def conns(self) -> int:
        return max(1, self.clients // 10)


def _put(total: int) -> list[str]:
    return [
        "put",
        "--key-size=8",
        "--sequential-keys",
        "--key-space-size=100000",
        f"--val-size={VAL_SIZE}",
        f"--total={total}",
    ]


def _range(consistency: str) -> Callable[[int], list[str]]:
    return lambda total: ["range", RANGE_KEY, f"--consistency={consistency}", f"--total={total}"]


def _txn_put(total: int) -> list[str]:
    return [
        "txn-put",
        "--key-size=8",
        "--key-space-size=100000",
        f"--val-size={VAL_SIZE}",
        "--txn-ops=1",
        f"--total={total}",
    ]


def _py_delete(total: int) -> list[str]:
    """The Python driver's delete: op i deletes key i (8 bytes), the driver's prefill writes them first."""
    return ["delete", "--key-size=8", f"--val-size={VAL_SIZE}", f"--total={total}"]


HEADLINE = [
    Cell("put-m1-c100", "put", 1, 100, _put, 30000, 2000),
    Cell("put-m1-c1000", "put", 1, 1000, _put, 30000, 3000),
    Cell("put-m3-c1", "put", 3, 1, _put, 2000, 100),
    Cell("put-m3-c100", "put", 3, 100, _put, 20000, 2000),
    Cell("put-m3-c1000", "put", 3, 1000, _put, 30000, 3000),
    Cell("range-l-m3-c100", "range, linearizable", 3, 100, _range("l"), 30000, 2000, True),
    Cell("range-s-m3-c100", "range, serializable", 3, 100, _range("s"), 30000, 2000, True),
    Cell("txn-put-m3-c100", "txn-put", 3, 100, _txn_put, 20000, 2000),
]
# Cells run only when named with --only (e.g. to compare two builds of etcdstore on one member).
# The delete cell is here rather than in the headline: its load generator is not etcd's tool, so its
# numbers compare the two servers with each other, not with the headline's cells.
EXTRA = [
    Cell("put-m1-c1", "put", 1, 1, _put, 2000, 100),
    Cell("delete-m3-c100", "delete (Python driver)", 3, 100, _py_delete, 20000, 2000, python_driver=True),
]
# Not in etcd 3.4's tool: a delete workload (its subcommands are put, range, txn-put, stm, watch,
# watch-get, watch-latency, lease-keepalive, mvcc); see NOT_MEASURED.
NOT_MEASURED = [
    (
        "delete with etcd's tool (etcd 3.4's benchmark tool has no delete workload; --only delete-m3-c100 "
        "measures delete on both servers with etcdstore's Python driver)"
    )
]
DRIVER_NOTE = (
    "(Python driver): measured on both servers with etcdstore's own load driver (`etcdstore bench delete`: "
    "DeleteRange of one key, each key once, all written first by the driver's prefill), not with etcd's "
    "benchmark tool, which has no delete workload"
)


def _put_key(endpoint: str, key: str, value: bytes) -> None:
    import grpc

    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(endpoint) as ch:
        rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key.encode(), value=value), timeout=10.0)


@dataclass
class Measurement:
    cell: str
    server: str
    round: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    total: int
    seconds: float
    error_kinds: list[str] = field(default_factory=list)
    client_cpu: float | None = None  # the Python driver's busy cores (its cells only)


def round_order(r: int) -> tuple[str, str]:
    """Round 0 (and every even round) starts with etcd, odd rounds with etcdstore."""
    return SERVERS if r % 2 == 0 else (SERVERS[1], SERVERS[0])


def run_headline(
    tool: str,
    cells: list[Cell],
    rounds: int,
    quick: bool,
    work: Path,
    etcd_bin: str,
    scale_total: float,
    log: TextIO,
    warmup: bool = True,
) -> list[Measurement]:
    out: list[Measurement] = []
    groups: dict[int, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.members, []).append(c)
    for r in range(rounds):
        for members, group in groups.items():
            for server in round_order(r):
                t0 = time.monotonic()
                with running_cluster(server, members, f"r{r + 1}-m{members}", work, etcd_bin) as cluster:
                    print(
                        f"# round {r + 1}: {server}, {members} member(s) serving after "
                        f"{time.monotonic() - t0:.1f} s (leader {cluster.leader_endpoint})",
                        file=log,
                        flush=True,
                    )
                    for cell in group:
                        if cell.prefill_range_key:
                            _put_key(cluster.endpoints[0], RANGE_KEY, b"v" * VAL_SIZE)
                        total = (
                            cell.quick_total if quick else max(cell.clients, int(cell.total * scale_total))
                        )
                        timeout = 60 + total / 20.0
                        if warmup and not quick:
                            _measure(tool, cell, cluster, max(cell.clients, total // 20), timeout)
                        res = _measure(tool, cell, cluster, total, timeout)
                        m = Measurement(
                            cell.id,
                            server,
                            r + 1,
                            res.rps,
                            res.p50_ms,
                            res.p99_ms,
                            res.errors,
                            total,
                            res.total_s,
                            res.error_kinds,
                            res.client_cpu,
                        )
                        out.append(m)
                        err = f", {res.errors} errors {res.error_kinds[:2]}" if res.errors else ""
                        if res.client_cpu is not None:
                            err += f", Python driver busy {res.client_cpu:.2f} cores"
                        print(
                            f"#   {cell.id:<16} {server:<9} {res.rps:10,.0f} req/s  p50 {_ms(res.p50_ms)}  "
                            f"p99 {_ms(res.p99_ms)} ms{err}",
                            file=log,
                            flush=True,
                        )
    return out


def _measure(tool: str, cell: Cell, cluster: Cluster, total: int, timeout: float) -> ToolResult:
    """One run of `cell`'s load generator against `cluster`."""
    if cell.python_driver:
        return run_driver(
            cluster.endpoints, cell.clients, cell.conns, cell.args(total), timeout, cluster.root
        )
    return run_tool(tool, cluster.endpoints, cell.clients, cell.conns, cell.args(total), timeout)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _num(v: float) -> str:
    return f"{v:,.0f}"


def _mib(v: float) -> str:
    return f"{v:.0f}"


def summarize(cells: list[Cell], ms: list[Measurement]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells:
        per = {
            s: sorted((m for m in ms if m.cell == cell.id and m.server == s), key=lambda m: m.round)
            for s in SERVERS
        }
        if not per["etcd"] and not per["etcdstore"]:
            continue
        row: dict[str, Any] = {
            "cell": cell.id,
            "workload": cell.workload,
            "members": cell.members,
            "clients": cell.clients,
            "conns": cell.conns,
        }
        for s in SERVERS:
            runs = per[s]
            row[s] = {
                "rps_median": statistics.median([m.rps for m in runs]) if runs else None,
                "p50_ms_median": _median([m.p50_ms for m in runs]),
                "p99_ms_median": _median([m.p99_ms for m in runs]),
                "errors": sum(m.errors for m in runs),
                "rounds": [
                    {
                        "round": m.round,
                        "rps": m.rps,
                        "p50_ms": m.p50_ms,
                        "p99_ms": m.p99_ms,
                        "errors": m.errors,
                        "total": m.total,
                    }
                    for m in runs
                ],
            }
        by_round = {m.round: m for m in per["etcd"]}
        ratios = [
            m.rps / by_round[m.round].rps
            for m in per["etcdstore"]
            if m.round in by_round and by_round[m.round].rps
        ]
        row["ratios"] = ratios
        row["ratio_median"] = statistics.median(ratios) if ratios else None
        rows.append(row)
    return rows


def _median(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def _ratio(row: dict[str, Any]) -> str:
    r = row["ratios"]
    if not r:
        return "-"
    if len(r) == 1:
        return f"{r[0]:.2f}"
    return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"


HEAD = [
    "workload",
    "members",
    "clients",
    "etcd 3.4 req/s",
    "etcdstore req/s",
    "etcdstore/etcd, median (range)",
    "etcd p50/p99 ms",
    "etcdstore p50/p99 ms",
]


def _cells(row: dict[str, Any]) -> list[str]:
    e, s = row["etcd"], row["etcdstore"]
    f = lambda d: _num(d["rps_median"]) if d["rps_median"] is not None else "-"
    lat = lambda d: f"{_ms(d['p50_ms_median'])} / {_ms(d['p99_ms_median'])}"
    return [
        row["workload"],
        str(row["members"]),
        str(row["clients"]),
        f(e),
        f(s),
        _ratio(row),
        lat(e),
        lat(s),
    ]


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plain_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    line = fmt(head)
    return "\n".join([line, "-" * len(line)] + [fmt(r) for r in rows]) + "\n"


# ---------------------------------------------------------------------------------------------
# The scale suite (issue 17, item 4): each figure for both servers in the same run


def _grpc(endpoint: str):
    import grpc

    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    ch = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 64 << 20)])
    return ch, rpc_pb2, rpc_pb2_grpc


def page_all(endpoint: str, limit: int, budget: float) -> tuple[int, int, bool]:
    """Range over every key with `limit`-sized pages (keys and values), for at most `budget` seconds;
    returns (keys read, pages, whether it got to the end). etcd 3.4 collects every revision from the
    page's start to the range's end for each page (mvcc's index.Revisions has no limit), so its cost per
    page grows with the keys left: on a large store a full scan can take far longer than the budget."""
    ch, pb, stub = _grpc(endpoint)
    deadline = time.monotonic() + budget
    with ch:
        kv = stub.KVStub(ch)
        key, n, pages = b"\x00", 0, 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return n, pages, False
            resp = kv.Range(pb.RangeRequest(key=key, range_end=b"\x00", limit=limit), timeout=max(left, 1.0))
            pages += 1
            n += len(resp.kvs)
            if not resp.more or not resp.kvs:
                return n, pages, True
            key = resp.kvs[-1].key + b"\x00"


def _compact_defrag(endpoint: str) -> tuple[float, float]:
    ch, pb, stub = _grpc(endpoint)
    with ch:
        kv = stub.KVStub(ch)
        rev = kv.Range(pb.RangeRequest(key=b"\x00", limit=1), timeout=60.0).header.revision
        t0 = time.monotonic()
        kv.Compact(pb.CompactionRequest(revision=rev, physical=True), timeout=600.0)
        t1 = time.monotonic()
        stub.MaintenanceStub(ch).Defragment(pb.DefragmentRequest(), timeout=600.0)
        t2 = time.monotonic()
    return t1 - t0, t2 - t1


def _wait_serving(endpoint: str, proc: subprocess.Popen, timeout: float) -> float:
    """The monotonic time a linearizable range first answers. A new channel per attempt, once the port
    accepts connections: a channel that saw "connection refused" waits out gRPC's reconnect backoff."""
    import grpc

    host, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"member exited {proc.returncode} while restarting")
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
        except OSError:
            time.sleep(0.01)
            continue
        ch, pb, stub = _grpc(endpoint)
        with ch:
            try:
                stub.KVStub(ch).Range(pb.RangeRequest(key=b"\x00", limit=1), timeout=2.0, wait_for_ready=True)
                return time.monotonic()
            except grpc.RpcError:
                time.sleep(0.01)
    raise TimeoutError(f"not serving {timeout:.0f} s after restart")


class RssSampler(threading.Thread):
    """The peak of `rss()` (KiB; a cluster's or a proxy's `rss_kib`) while it runs, sampled every 0.2 s."""

    def __init__(self, rss: Callable[[], int]):
        super().__init__(daemon=True)
        self.rss, self.peak, self._halt = rss, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.rss())
            self._halt.wait(0.2)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.rss())  # a last sample: a run shorter than the period counts too
        return self.peak


@contextlib.contextmanager
def sampling_rss(res: dict[str, Any], **sources: Callable[[], int]) -> Iterator[None]:
    """While the block runs, sample each source's RSS; then its peak in MiB goes to res["rss_peak_<name>_mib"]
    (to res["rss_peak_mib"] for the source named `member`)."""
    samplers = {name: RssSampler(fn) for name, fn in sources.items()}
    for x in samplers.values():
        x.start()
    try:
        yield
    finally:
        for name, x in samplers.items():
            res[f"rss_peak_{'' if name == 'member' else name + '_'}mib"] = x.stop() / 1024


def watch_latency(tool: str, endpoints: list[str], watchers: int, puts: int) -> ToolResult:
    """etcd's `benchmark watch-latency`: `watchers` watchers of one key over watchers/100 streams (one
    per connection), `puts` puts of that key at 10/s, each put's latency to every watcher's event."""
    return run_tool(
        tool,
        endpoints,
        watchers,
        max(1, watchers // 100),
        ["watch-latency", f"--total={puts}", "--put-rate=10", f"--val-size={VAL_SIZE}"],
        timeout=600 + puts * 10,
    )


def scale_keys(
    tool: str,
    server: str,
    keys: int,
    work: Path,
    etcd_bin: str,
    log: TextIO,
    page: int = 1000,
    budget: float = 120.0,
) -> dict[str, Any]:
    res: dict[str, Any] = {"server": server, "keys": keys, "members": 1}
    with running_cluster(server, 1, "keys", work, etcd_bin) as cluster:
        res["rss_empty_mib"] = cluster.rss_kib() / 1024
        t0 = time.monotonic()
        load = run_tool(
            tool,
            cluster.endpoints,
            100,
            10,
            [
                "put",
                "--key-size=8",
                "--sequential-keys",
                f"--key-space-size={keys}",
                f"--val-size={VAL_SIZE}",
                f"--total={keys}",
            ],
            timeout=600 + keys / 50,
        )
        res["load_s"] = time.monotonic() - t0
        res["load_rps"] = load.rps
        res["load_errors"] = load.errors
        res["rss_loaded_mib"] = cluster.rss_kib() / 1024
        res["disk_mib"] = cluster.disk_bytes() / 2**20
        res["disk_wal_mib"] = cluster.disk_bytes(only_wal=True) / 2**20
        print(
            f"#   {server}: {keys:,} keys loaded in {res['load_s']:.1f} s, RSS {res['rss_loaded_mib']:.0f} MiB, "
            f"disk {res['disk_mib']:.0f} MiB",
            file=log,
            flush=True,
        )
        t0 = time.monotonic()
        import grpc

        try:
            n, pages, complete = page_all(cluster.endpoints[0], page, budget)
        except grpc.RpcError as e:  # a page that outlived the budget
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            n, pages, complete = 0, 0, False
        took = time.monotonic() - t0
        if complete:
            res["range_all_s"] = took
        res["range_all_complete"], res["range_budget_s"] = complete, budget
        res["range_keys_per_s"] = n / took if took > 0 else None
        res["range_all_keys"], res["range_all_pages"], res["range_page_limit"] = n, pages, page
        res["rss_after_range_mib"] = cluster.rss_kib() / 1024
        compact_s, defrag_s = _compact_defrag(cluster.endpoints[0])
        res["compact_s"], res["defrag_s"] = compact_s, defrag_s
        res["disk_after_defrag_mib"] = cluster.disk_bytes() / 2**20
        print(
            f"#   {server}: paged range read {n:,} keys in {took:.1f} s{'' if complete else ' (budget spent)'}, "
            f"compaction {compact_s:.2f} s, "
            f"defrag {defrag_s:.2f} s",
            file=log,
            flush=True,
        )
        m = cluster.members[0]
        assert m.proc is not None
        t0 = time.monotonic()
        _reap(m.proc, timeout=120)
        res["stop_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        cluster.spawn(m, state="existing")
        assert m.proc is not None
        res["restart_to_serving_s"] = _wait_serving(m.endpoint, m.proc, 600) - t0
        res["rss_restarted_mib"] = cluster.rss_kib() / 1024
        print(f"#   {server}: restart to serving {res['restart_to_serving_s']:.2f} s", file=log, flush=True)
    return res


def scale_watchers(
    tool: str, server: str, watchers: int, puts: int, work: Path, etcd_bin: str, log: TextIO
) -> dict[str, Any]:
    res: dict[str, Any] = {"server": server, "watchers": watchers, "puts": puts, "members": 1}
    with running_cluster(server, 1, "watch", work, etcd_bin) as cluster:
        res["rss_idle_mib"] = cluster.rss_kib() / 1024
        with sampling_rss(res, member=cluster.rss_kib):
            out = watch_latency(tool, cluster.endpoints, watchers, puts)
        res["watch_streams"] = max(1, watchers // 100)
        res["events"] = puts * watchers
        res["p50_ms"], res["p99_ms"] = out.p50_ms, out.p99_ms
        res["errors"] = out.errors
        print(
            f"#   {server}: {watchers:,} watchers, put-to-event p50 {_ms(out.p50_ms)} p99 {_ms(out.p99_ms)} ms, "
            f"peak RSS {res['rss_peak_mib']:.0f} MiB",
            file=log,
            flush=True,
        )
    return res


def scale_proxy_watchers(
    tool: str, server: str, watchers: int, puts: int, work: Path, etcd_bin: str, log: TextIO
) -> dict[str, Any]:
    """The watchers part through a grpc-proxy: `etcd grpc-proxy start` in front of etcd, `etcdstore
    grpc-proxy start` in front of etcdstore (same flags), the tool's watchers and puts all on the proxy;
    RSS of the member and of the proxy."""
    res: dict[str, Any] = {"server": server, "watchers": watchers, "puts": puts, "members": 1}
    with (
        running_cluster(server, 1, "pwatch", work, etcd_bin) as cluster,
        running_proxy(server, cluster, etcd_bin) as proxy,
    ):
        res["rss_idle_mib"], res["rss_proxy_idle_mib"] = cluster.rss_kib() / 1024, proxy.rss_kib() / 1024
        with sampling_rss(res, member=cluster.rss_kib, proxy=proxy.rss_kib):
            out = watch_latency(tool, [proxy.endpoint], watchers, puts)
        res["watch_streams"] = max(1, watchers // 100)
        res["p50_ms"], res["p99_ms"], res["errors"] = out.p50_ms, out.p99_ms, out.errors
        print(
            f"#   {server}: {watchers:,} watchers through its grpc-proxy, put-to-event p50 {_ms(out.p50_ms)} "
            f"p99 {_ms(out.p99_ms)} ms, peak RSS member {res['rss_peak_mib']:.0f} MiB, "
            f"proxy {res['rss_peak_proxy_mib']:.0f} MiB",
            file=log,
            flush=True,
        )
    return res


def scale_slow_watcher(
    tool: str,
    server: str,
    watchers: int,
    puts: int,
    work: Path,
    etcd_bin: str,
    log: TextIO,
    slow: int,
    fill_mib: float,
    fill_rate_mib: float,
    value_kib: int,
) -> dict[str, Any]:
    """Normal watchers' put-to-event latency (etcd's `watch-latency`, as in the watchers part) while a
    filler puts `fill_mib` MiB of `value_kib` KiB values at `fill_rate_mib` MiB/s, twice on fresh
    members: without, then with `slow` watchers of every key whose clients stop reading once their
    watch is created (`StalledWatch`: TCP and HTTP/2 flow control fill, every event for them backs up in
    the member). RSS growth of the member over each phase, and how the slow connections stood at the
    end (the server may close them)."""
    from etcdstore.bench.scale_clients import Filler, StalledWatch

    res: dict[str, Any] = {
        "server": server,
        "watchers": watchers,
        "puts": puts,
        "members": 1,
        "slow_watchers": slow,
        "fill_mib": fill_mib,
        "fill_rate_mib": fill_rate_mib,
        "value_kib": value_kib,
    }
    for phase in ("without", "with"):
        with running_cluster(server, 1, f"slow-{phase}", work, etcd_bin) as cluster:
            ep = cluster.endpoints[0]
            stalled = [StalledWatch(ep, b"\x00", b"\x00") for _ in range(slow if phase == "with" else 0)]
            try:
                rss0 = cluster.rss_kib()
                filler = Filler(ep, int(fill_mib * 2**20), value_kib * 1024, fill_rate_mib * 2**20)
                peak: dict[str, Any] = {}
                with sampling_rss(peak, member=cluster.rss_kib):
                    filler.start()
                    time.sleep(
                        min(1.0, fill_mib / fill_rate_mib / 4)
                    )  # the slow watchers' backlog forms first
                    try:
                        out = watch_latency(tool, cluster.endpoints, watchers, puts)
                    finally:
                        filler.join(600 + fill_mib / fill_rate_mib * 4)
                        filler.stop()
                if filler.error is not None:
                    raise RuntimeError(f"filler failed: {filler.error!r}")
                time.sleep(1.0)
                res[f"{phase}_p50_ms"], res[f"{phase}_p99_ms"] = out.p50_ms, out.p99_ms
                res[f"{phase}_errors"] = out.errors
                res[f"{phase}_rss_start_mib"] = rss0 / 1024
                res[f"{phase}_rss_peak_mib"] = peak["rss_peak_mib"]
                res[f"{phase}_rss_growth_mib"] = (peak["rss_peak_mib"] * 1024 - rss0) / 1024
                res[f"{phase}_rss_end_mib"] = cluster.rss_kib() / 1024
                res[f"{phase}_filled_mib"] = filler.sent / 2**20
                res[f"{phase}_fill_s"] = filler.seconds
                res[f"{phase}_fill_mib_s"] = filler.sent / 2**20 / filler.seconds if filler.seconds else None
            finally:
                states = [w.close() for w in stalled]
            if phase == "with":
                res["slow_backlog_mib"] = filler.sent * slow / 2**20
                res["slow_states"] = {st: states.count(st) for st in sorted(set(states))}
                res["slow_open_at_end"] = states.count("open")
                time.sleep(1.0)
                res["rss_slow_closed_mib"] = cluster.rss_kib() / 1024
            print(
                f"#   {server}, {phase} {slow if phase == 'with' else 0} slow watcher(s): {watchers:,} watchers "
                f"p50 {_ms(out.p50_ms)} p99 {_ms(out.p99_ms)} ms; filled {filler.sent / 2**20:.0f} MiB in "
                f"{filler.seconds:.1f} s; RSS {rss0 / 1024:.0f} -> peak {peak['rss_peak_mib']:.0f} MiB"
                + (f"; slow connections at the end: {res['slow_states']}" if phase == "with" else ""),
                file=log,
                flush=True,
            )
    return res


async def _grant_leases(endpoint: str, n: int, ttl: int, concurrency: int = 100) -> float:
    import grpc

    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    async with grpc.aio.insecure_channel(endpoint) as ch:
        lease = rpc_pb2_grpc.LeaseStub(ch)
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=60.0)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - t0


async def _expiry(endpoint: str, n: int, ttl: int) -> list[float]:
    """Grant n leases of `ttl` s, one key on each; seconds from each lease's expected expiry (grant
    answer + TTL) to the key's delete event."""
    import grpc

    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    prefix = b"etcdstore-bench-expiry/"
    async with grpc.aio.insecure_channel(endpoint) as ch:
        lease, kv, watch = rpc_pb2_grpc.LeaseStub(ch), rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.WatchStub(ch)
        due: dict[bytes, float] = {}
        gone: dict[bytes, float] = {}
        done = asyncio.Event()
        created = asyncio.Event()

        async def requests():
            yield rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=prefix,
                    range_end=prefix[:-1] + bytes([prefix[-1] + 1]),
                    filters=[rpc_pb2.WatchCreateRequest.NOPUT],
                )
            )
            await done.wait()

        async def watcher() -> None:
            call = watch.Watch(requests())
            async for resp in call:
                if resp.created:
                    created.set()
                now = time.monotonic()
                for ev in resp.events:
                    gone.setdefault(ev.kv.key, now)
                if len(gone) >= n:
                    done.set()
                    call.cancel()
                    return

        wt = asyncio.create_task(watcher())
        await asyncio.wait_for(created.wait(), 30)
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with sem:
                g = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=30.0)
                t = time.monotonic()
                key = prefix + str(i).encode()
                await kv.Put(rpc_pb2.PutRequest(key=key, value=b"x", lease=g.ID), timeout=30.0)
                due[key] = t + g.TTL

        await asyncio.gather(*(one(i) for i in range(n)))
        try:
            await asyncio.wait_for(done.wait(), ttl + 120)
        except TimeoutError:
            pass
        wt.cancel()
        try:
            await wt
        except (asyncio.CancelledError, grpc.RpcError):
            pass
    return sorted(gone[k] - due[k] for k in gone if k in due)


def scale_leases(
    tool: str,
    server: str,
    leases: int,
    work: Path,
    etcd_bin: str,
    log: TextIO,
    keepalives: int,
    expiring: int,
    ttl: int,
) -> dict[str, Any]:
    res: dict[str, Any] = {"server": server, "leases": leases, "members": 1}
    with running_cluster(server, 1, "lease", work, etcd_bin) as cluster:
        ep = cluster.endpoints[0]
        res["rss_idle_mib"] = cluster.rss_kib() / 1024
        res["grant_s"] = asyncio.run(_grant_leases(ep, leases, 3600))
        res["rss_leases_mib"] = cluster.rss_kib() / 1024
        ka = run_tool(
            tool,
            cluster.endpoints,
            100,
            10,
            ["lease-keepalive", f"--total={keepalives}"],
            timeout=600 + keepalives / 50,
        )
        res["keepalive_rps"], res["keepalive_p50_ms"], res["keepalive_p99_ms"] = ka.rps, ka.p50_ms, ka.p99_ms
        res["keepalive_errors"] = ka.errors
        late = asyncio.run(_expiry(ep, expiring, ttl))
        res["expiry_leases"], res["expiry_ttl_s"], res["expired_seen"] = expiring, ttl, len(late)
        if late:
            res["expiry_late_p50_s"] = late[len(late) // 2]
            res["expiry_late_p99_s"] = late[min(len(late) - 1, int(len(late) * 0.99))]
            res["expiry_late_max_s"] = late[-1]
        print(
            f"#   {server}: {leases:,} leases granted in {res['grant_s']:.1f} s, RSS {res['rss_leases_mib']:.0f} MiB, "
            f"keepalive {ka.rps:,.0f}/s, expiry late p50 {res.get('expiry_late_p50_s', float('nan')):.2f} s",
            file=log,
            flush=True,
        )
    return res


def scale_big_values(
    tool: str, server: str, total: int, work: Path, etcd_bin: str, log: TextIO
) -> dict[str, Any]:
    res: dict[str, Any] = {"server": server, "value_bytes": 1 << 20, "clients": 10, "members": 1}
    with running_cluster(server, 1, "big", work, etcd_bin) as cluster:
        res["rss_idle_mib"] = cluster.rss_kib() / 1024
        with sampling_rss(res, member=cluster.rss_kib):
            out = run_tool(
                tool,
                cluster.endpoints,
                10,
                1,
                [
                    "put",
                    "--key-size=8",
                    "--sequential-keys",
                    "--key-space-size=100",
                    f"--val-size={1 << 20}",
                    f"--total={total}",
                ],
                timeout=600 + total,
            )
        res.update(
            rps=out.rps,
            p50_ms=out.p50_ms,
            p99_ms=out.p99_ms,
            errors=out.errors,
            total=total,
            mib_per_s=out.rps,
            rss_mib=cluster.rss_kib() / 1024,
            disk_mib=cluster.disk_bytes() / 2**20,
        )
        time.sleep(2.0)
        res["rss_after_2s_mib"] = cluster.rss_kib() / 1024
        print(
            f"#   {server}: 1 MiB puts {out.rps:,.1f}/s p50 {_ms(out.p50_ms)} p99 {_ms(out.p99_ms)} ms, RSS idle "
            f"{res['rss_idle_mib']:.0f} peak {res['rss_peak_mib']:.0f} after {res['rss_mib']:.0f} MiB"
            f"{f', {out.errors} errors {out.error_kinds[:1]}' if out.errors else ''}",
            file=log,
            flush=True,
        )
    return res


def scale_leader_change(
    server: str, leases: int, ttl: int, hows: list[str], work: Path, etcd_bin: str, log: TextIO
) -> dict[str, Any]:
    """Three members, `leases` leases of `ttl` s with a key each, renewed for one TTL and more (so a
    member's own view of their expiry, from the grant, has passed), then for each of `hows` in turn:
    "move" (MoveLeader to a follower) or "kill" (SIGKILL of the leader, not restarted). Right after the
    change every lease is renewed once over keepalive streams that fail over between the members still
    up: the time to a new leader, to the first keepalive answered, and to every lease renewed, and the
    leases found revoked (a keepalive answered TTL 0, a key's delete event on a watch, missing at the end)."""
    res: dict[str, Any] = {"server": server, "leases": leases, "ttl_s": ttl, "members": 3, "hows": hows}
    with running_cluster(server, 3, "leader", work, etcd_bin) as cluster:
        asyncio.run(_leader_change(cluster, res, leases, ttl, hows))
    print(
        f"#   {server}: {leases:,} leases (TTL {ttl} s), "
        + "; ".join(
            f"{how}: new leader {_s(res.get(f'{how}_leader_s'))}, first keepalive {_s(res.get(f'{how}_first_ok_s'))}, "
            f"all renewed {_s(res.get(f'{how}_all_ok_s'))}, revoked {res.get(f'{how}_revoked')}, "
            f"retries {res.get(f'{how}_retries')} {res.get(f'{how}_retry_errors') or ''}"
            for how in hows
        )
        + f"; leases left {res.get('leases_left')}, keys deleted {res.get('keys_deleted')}",
        file=log,
        flush=True,
    )
    return res


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


async def _leader_change(cluster: Cluster, res: dict[str, Any], n: int, ttl: int, hows: list[str]) -> None:
    import grpc

    from etcdstore.bench.scale_clients import (
        DeleteWatch,
        grant_with_keys,
        member_ids,
        renew_all,
        wait_new_leader,
    )
    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    prefix = b"etcdstore-bench-lease/"
    by_ep = {m.endpoint: m for m in cluster.members}
    chans = {ep: grpc.aio.insecure_channel(ep) for ep in by_ep}
    watch: DeleteWatch | None = None
    try:
        ids, leader = await member_ids(chans)
        ep_of = {i: ep for ep, i in ids.items()}
        up = list(by_ep)
        followers = [ep for ep in up if ids[ep] != leader]
        # The delete watch goes on a member that is neither the first leader nor the move's target (so no
        # step below stops it).
        watch = DeleteWatch(chans[followers[-1]], prefix)
        await watch.start()
        t0 = time.monotonic()
        lease_ids = await grant_with_keys(chans[ep_of[leader]], n, ttl, prefix)
        res["grant_s"] = time.monotonic() - t0
        # Renew for one TTL and a second: a member that took the grant's expiry for granted on promotion
        # would now revoke them all.
        aged = time.monotonic() + ttl + 1
        while time.monotonic() < aged:
            t = time.monotonic()
            ok, gone, _ = await renew_all([chans[ep] for ep in up], lease_ids, t + ttl)
            res["renew_all_s"] = time.monotonic() - t
            if gone or len(ok) < len(lease_ids):
                raise RuntimeError(
                    f"{len(gone)} leases gone, {len(lease_ids) - len(ok) - len(gone)} not renewed before any change"
                )
            await asyncio.sleep(max(0.0, min(ttl / 3 - (time.monotonic() - t), aged - time.monotonic())))
        for how in hows:
            await renew_all([chans[ep] for ep in up], lease_ids, time.monotonic() + ttl)
            old_ep = ep_of[leader]
            t_change = time.monotonic()
            move = None
            if how == "move":
                target = (
                    ids[followers[0]]
                    if followers[0] in up
                    else next(ids[ep] for ep in up if ids[ep] != leader)
                )
                move = asyncio.ensure_future(
                    rpc_pb2_grpc.MaintenanceStub(chans[old_ep]).MoveLeader(
                        rpc_pb2.MoveLeaderRequest(targetID=target), timeout=30.0
                    )
                )
            elif how == "kill":
                m = by_ep[old_ep]
                assert m.proc is not None
                m.proc.kill()
                up.remove(old_ep)
            else:
                raise ValueError(f"unknown leader change {how!r} (move, kill)")
            give_up = t_change + ttl
            kinds: dict[str, int] = {}
            sweep = asyncio.get_running_loop().create_task(
                renew_all([chans[ep] for ep in up], lease_ids, give_up, errors=kinds)
            )
            elected, new = await wait_new_leader([chans[ep] for ep in up if ep != old_ep], leader, give_up)
            ok, gone, retries = await sweep
            if move is not None:
                await move
                res["move_call_s"] = time.monotonic() - t_change
            res[f"{how}_leader_s"] = None if elected is None else elected - t_change
            res[f"{how}_first_ok_s"] = min(ok.values()) - t_change if ok else None
            res[f"{how}_all_ok_s"] = max(ok.values()) - t_change if len(ok) == len(lease_ids) else None
            res[f"{how}_renewed"] = len(ok)
            res[f"{how}_revoked"] = len(gone)
            res[f"{how}_retries"] = retries
            res[f"{how}_retry_errors"] = kinds
            if new:
                leader = new
                followers = [ep for ep in up if ids[ep] != leader]
        await asyncio.sleep(1.0)  # a late revocation's delete event
        ch = chans[up[0]]
        left = await rpc_pb2_grpc.LeaseStub(ch).LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=30.0)
        ours = set(lease_ids)
        res["leases_left"] = sum(1 for x in left.leases if x.ID in ours)
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        keys = await rpc_pb2_grpc.KVStub(ch).Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True), timeout=30.0
        )
        res["keys_left"] = keys.count
        res["keys_deleted"] = len(watch.deleted)
    finally:
        if watch is not None:
            await watch.stop()
        for c in chans.values():
            await c.close()


SCALE_PARTS = ("keys", "watchers", "leases", "values", "proxy-watchers", "slow-watcher", "leader-change")


def run_scale(
    tool: str, args: argparse.Namespace, work: Path, log: TextIO
) -> dict[str, list[dict[str, Any]]]:
    want = {x.strip() for x in args.scale_parts.split(",")}
    parts = [p for p in SCALE_PARTS if p in want]
    out: dict[str, list[dict[str, Any]]] = {p: [] for p in parts}
    for r in range(args.scale_rounds):
        for part in parts:
            for server in round_order(r):
                print(f"# scale round {r + 1}: {part} on {server}", file=log, flush=True)
                try:
                    out[part].append(_scale_part(tool, args, part, server, work, log))
                except Exception as e:
                    import grpc

                    if not isinstance(
                        e, (RuntimeError, TimeoutError, OSError, AssertionError, grpc.RpcError)
                    ):
                        raise
                    print(
                        f"#   {part} on {server} failed: {type(e).__name__}: {str(e)[:300]}",
                        file=log,
                        flush=True,
                    )
                    out[part].append({"server": server, "error": f"{type(e).__name__}: {str(e)[:500]}"})
                out[part][-1]["round"] = r + 1
    return out


def _scale_part(
    tool: str, args: argparse.Namespace, part: str, server: str, work: Path, log: TextIO
) -> dict[str, Any]:
    q = args.quick
    if part == "keys":
        return scale_keys(
            tool, server, 2000 if q else args.keys, work, args.etcd_bin, log, budget=args.range_budget
        )
    if part == "watchers":
        return scale_watchers(
            tool, server, 200 if q else args.watchers, 5 if q else args.watch_puts, work, args.etcd_bin, log
        )
    if part == "leases":
        return scale_leases(
            tool,
            server,
            200 if q else args.leases,
            work,
            args.etcd_bin,
            log,
            500 if q else args.keepalives,
            20 if q else args.expiring,
            2 if q else args.expiry_ttl,
        )
    if part == "proxy-watchers":
        return scale_proxy_watchers(
            tool, server, 200 if q else args.watchers, 5 if q else args.watch_puts, work, args.etcd_bin, log
        )
    if part == "slow-watcher":
        return scale_slow_watcher(
            tool,
            server,
            200 if q else args.watchers,
            5 if q else args.watch_puts,
            work,
            args.etcd_bin,
            log,
            2 if q else args.slow_watchers,
            4 if q else args.slow_fill_mib,
            args.slow_fill_rate,
            args.slow_value_kib,
        )
    if part == "leader-change":
        return scale_leader_change(
            server,
            200 if q else args.leader_change_leases,
            6 if q else args.leader_change_ttl,
            _leader_changes(args.leader_changes),
            work,
            args.etcd_bin,
            log,
        )
    return scale_big_values(tool, server, 10 if q else args.big_values, work, args.etcd_bin, log)


def _leader_changes(spec: str) -> list[str]:
    hows = [x.strip() for x in spec.split(",") if x.strip()]
    if not hows or any(h not in _HOW for h in hows) or hows.count("kill") > 1:
        raise SystemExit(
            f"--leader-changes wants move and/or kill (at most one kill of 3 members), not {spec!r}"
        )
    return hows


def _pair(recs: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    e = _median([x.get(key) for x in recs if x["server"] == "etcd"])
    s = _median([x.get(key) for x in recs if x["server"] == "etcdstore"])  # a failed part has no figures
    return e, s


_SCALE_ROWS: dict[str, list[tuple[str, str, Callable[[float], str]]]] = {
    "keys": [
        ("load time, s (100 clients)", "load_s", lambda v: f"{v:.1f}"),
        ("load, puts/s", "load_rps", _num),
        ("RSS after load, MiB", "rss_loaded_mib", lambda v: f"{v:.0f}"),
        ("data dir on disk (allocated), MiB", "disk_mib", lambda v: f"{v:.0f}"),
        ("of which in wal/ (etcd preallocates 64 MiB files), MiB", "disk_wal_mib", lambda v: f"{v:.0f}"),
        ("range over all keys, pages of 1000, s", "range_all_s", lambda v: f"{v:.1f}"),
        ("paged range, keys read per s", "range_keys_per_s", _num),
        ("compaction, s", "compact_s", lambda v: f"{v:.2f}"),
        ("defragmentation, s", "defrag_s", lambda v: f"{v:.2f}"),
        ("on disk after defrag, MiB", "disk_after_defrag_mib", lambda v: f"{v:.0f}"),
        ("restart to serving, s", "restart_to_serving_s", lambda v: f"{v:.2f}"),
        ("RSS after restart, MiB", "rss_restarted_mib", lambda v: f"{v:.0f}"),
    ],
    "watchers": [
        ("RSS idle, MiB", "rss_idle_mib", lambda v: f"{v:.0f}"),
        ("RSS peak with watchers, MiB", "rss_peak_mib", lambda v: f"{v:.0f}"),
        ("put to event p50, ms", "p50_ms", _ms),
        ("put to event p99, ms", "p99_ms", _ms),
    ],
    "leases": [
        ("grant all, s (100 concurrent, Python client)", "grant_s", lambda v: f"{v:.1f}"),
        ("RSS with the leases, MiB", "rss_leases_mib", lambda v: f"{v:.0f}"),
        ("keepalive, req/s (100 clients)", "keepalive_rps", _num),
        ("keepalive p50 / p99, ms", "keepalive_p50_ms", _ms),
        ("keepalive p99, ms", "keepalive_p99_ms", _ms),
        ("expiry: revoked after TTL, p50 s", "expiry_late_p50_s", lambda v: f"{v:.2f}"),
        ("expiry: revoked after TTL, p99 s", "expiry_late_p99_s", lambda v: f"{v:.2f}"),
        ("expiry: revoked after TTL, max s", "expiry_late_max_s", lambda v: f"{v:.2f}"),
    ],
    "values": [
        ("1 MiB puts/s (10 clients)", "rps", lambda v: f"{v:,.1f}"),
        ("p50, ms", "p50_ms", _ms),
        ("p99, ms", "p99_ms", _ms),
        ("RSS idle, MiB", "rss_idle_mib", _mib),
        ("RSS peak during the puts, MiB", "rss_peak_mib", _mib),
        ("RSS after, MiB", "rss_mib", _mib),
        ("RSS 2 s after, MiB", "rss_after_2s_mib", _mib),
    ],
    "proxy-watchers": [
        ("member RSS idle, MiB", "rss_idle_mib", _mib),
        ("member RSS peak with watchers, MiB", "rss_peak_mib", _mib),
        ("proxy RSS idle, MiB", "rss_proxy_idle_mib", _mib),
        ("proxy RSS peak with watchers, MiB", "rss_peak_proxy_mib", _mib),
        ("put to event p50, ms", "p50_ms", _ms),
        ("put to event p99, ms", "p99_ms", _ms),
    ],
    "slow-watcher": [
        ("others' put to event p50, ms: without slow watchers", "without_p50_ms", _ms),
        ("others' put to event p50, ms: with slow watchers", "with_p50_ms", _ms),
        ("others' put to event p99, ms: without slow watchers", "without_p99_ms", _ms),
        ("others' put to event p99, ms: with slow watchers", "with_p99_ms", _ms),
        ("filler, MiB/s put: without slow watchers", "without_fill_mib_s", lambda v: f"{v:.1f}"),
        ("filler, MiB/s put: with slow watchers", "with_fill_mib_s", lambda v: f"{v:.1f}"),
        ("RSS growth over the run, MiB: without slow watchers", "without_rss_growth_mib", _mib),
        ("RSS growth over the run, MiB: with slow watchers", "with_rss_growth_mib", _mib),
        ("RSS peak with slow watchers, MiB", "with_rss_peak_mib", _mib),
        ("RSS 1 s after the slow connections closed, MiB", "rss_slow_closed_mib", _mib),
        ("events not read by the slow watchers, MiB", "slow_backlog_mib", _mib),
        ("slow connections the server kept open", "slow_open_at_end", lambda v: f"{v:.0f}"),
    ],
}

_HOW = {"move": "leader moved (MoveLeader)", "kill": "leader killed (SIGKILL)"}


def _scale_row_specs(part: str, recs: list[dict[str, Any]]) -> list[tuple[str, str, Callable[[float], str]]]:
    if part != "leader-change":
        return _SCALE_ROWS[part]
    hows = next((x["hows"] for x in recs if "hows" in x), ["move", "kill"])
    sec = lambda v: f"{v:.2f}"
    rows = [
        ("grant the leases + a key each, s (100 concurrent, Python client)", "grant_s", lambda v: f"{v:.1f}"),
        ("renew every lease once, no change, s (50 streams)", "renew_all_s", sec),
    ]
    for how in hows:
        rows += [
            (f"{_HOW[how]}: new leader after, s", f"{how}_leader_s", sec),
            (f"{_HOW[how]}: first keepalive answered after, s", f"{how}_first_ok_s", sec),
            (f"{_HOW[how]}: every lease renewed after, s", f"{how}_all_ok_s", sec),
            (f"{_HOW[how]}: leases answered TTL 0 (revoked)", f"{how}_revoked", lambda v: f"{v:.0f}"),
            (f"{_HOW[how]}: keepalives retried (stream failed or silent 8 s)", f"{how}_retries", _num),
        ]
    rows += [
        ("leases left at the end", "leases_left", _num),
        ("lease keys deleted (seen on a watch)", "keys_deleted", lambda v: f"{v:.0f}"),
    ]
    return rows


def scale_title(part: str, recs: list[dict[str, Any]]) -> str:
    ok = [x for x in recs if "error" not in x]
    if not ok:
        return f"{part}: failed on both servers"
    r = ok[0]
    if part == "keys":
        return f"{r['keys']:,} keys of {VAL_SIZE} bytes, 1 member"
    if part == "watchers":
        return (
            f"{r['watchers']:,} watchers on one key over {r['watch_streams']} streams, 1 member, "
            f"{r['puts']} puts at 10/s (etcd's `benchmark watch-latency`)"
        )
    if part == "leases":
        return (
            f"{r['leases']:,} leases (TTL 1 h), 1 member; expiry: {r['expiry_leases']:,} more leases of "
            f"TTL {r['expiry_ttl_s']} s with a key each, delete event after grant + TTL"
        )
    if part == "proxy-watchers":
        return (
            f"{r['watchers']:,} watchers on one key over {r['watch_streams']} streams through a grpc-proxy "
            f"(etcd's `etcd grpc-proxy start`, etcdstore's `etcdstore grpc-proxy start`), 1 member, "
            f"{r['puts']} puts at 10/s (etcd's `benchmark watch-latency`)"
        )
    if part == "slow-watcher":
        return (
            f"{r['watchers']:,} watchers on one key (`benchmark watch-latency`, {r['puts']} puts at 10/s) while "
            f"{r['fill_mib']:g} MiB of {r['value_kib']} KiB values are put at up to {r['fill_rate_mib']:g} "
            f"MiB/s; without, then with {r['slow_watchers']} watchers of every key whose clients stop "
            "reading (each its own connection), 1 member, fresh each time"
        )
    if part == "leader-change":
        return (
            f"{r['leases']:,} leases (TTL {r['ttl_s']} s) with a key each, 3 members, renewed for one TTL; "
            f"then {', then '.join(_HOW[h] for h in r['hows'])}, every lease renewed once right after each"
        )
    return "values of 1 MiB (`benchmark put --val-size=1048576`; --max-request-bytes 1.5 MiB), 1 member"


def scale_rows(part: str, recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for label, key, fmt in _scale_row_specs(part, recs):
        if key == "keepalive_p99_ms":
            continue
        e, s = _pair(recs, key)
        if key == "keepalive_p50_ms":
            e99, s99 = _pair(recs, "keepalive_p99_ms")
            cell = lambda a, b: "-" if a is None else f"{_ms(a)} / {_ms(b)}"
            rows.append([label, cell(e, e99), cell(s, s99), "-"])
            continue
        ratio = f"{s / e:.2f}" if e and s is not None else "-"
        cells = ["-" if e is None else fmt(e), "-" if s is None else fmt(s)]
        if key == "range_all_s":  # a scan cut short by the budget: how far it got
            for i, server in enumerate(SERVERS):
                cut = [x for x in recs if x["server"] == server and x.get("range_all_complete") is False]
                if cut:
                    x = cut[0]
                    cells[i] = f"> {x['range_budget_s']:.0f} ({x['range_all_keys'] / x['keys']:.0%} read)"
                    ratio = "-"
        rows.append([label, *cells, ratio])
    return rows


SCALE_HEAD = ["measure", "etcd 3.4", "etcdstore", "etcdstore/etcd"]


# ---------------------------------------------------------------------------------------------
# Command line


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, 96)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdstore bench compare",
        description="Run real etcd 3.4 and etcdstore side by side on this machine with etcd's own Go benchmark "
        "tool (rounds alternate which server goes first; fresh clusters each round) and print the "
        "table: median req/s, the median and range of the etcdstore/etcd ratio, p50/p99 latency. "
        "Delete, which etcd's tool lacks, is measured with etcdstore's Python driver on both servers "
        "(--only delete-m3-c100).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cells of the headline suite: "
        + ", ".join(c.id for c in HEADLINE)
        + "; only with --only: "
        + ", ".join(c.id + (" (Python driver)" if c.python_driver else "") for c in EXTRA)
        + "\n\nexamples:\n  etcdstore bench compare                          # headline table, 5 rounds\n"
        "  etcdstore bench compare --quick                  # 1 round, few requests (a smoke run)\n"
        "  etcdstore bench compare --suite scale --keys 1000000 --json scale.json\n",
    )
    p.add_argument("--suite", choices=("headline", "scale", "all"), default="headline")
    p.add_argument(
        "--rounds", type=int, default=5, help="headline rounds, alternating which server goes first"
    )
    p.add_argument("--quick", action="store_true", help="1 round and few requests: checks the command runs")
    p.add_argument("--only", default="", help="comma list of headline cell ids to run (default: all)")
    p.add_argument("--total-scale", type=float, default=1.0, help="multiply every cell's request count")
    p.add_argument("--no-warmup", action="store_true", help="skip the short warm-up run before each cell")
    p.add_argument("--json", metavar="PATH", help="write every measurement and the summary as JSON")
    p.add_argument(
        "--markdown", metavar="PATH", help="write the tables as Markdown (for docs/performance.md)"
    )
    p.add_argument(
        "--benchmark-bin", help="etcd's benchmark binary (default: $ETCD_BENCHMARK_BIN or the cache)"
    )
    p.add_argument("--build-script", help="builds the tool when it is not cached (default: shared build.sh)")
    p.add_argument("--etcd-bin", default=shutil.which("etcd") or "/usr/bin/etcd", help="etcd 3.4 binary")
    p.add_argument("--work-dir", help="where the members' data dirs go (default: a new temporary dir)")
    s = p.add_argument_group(
        "scale suite",
        _wrap(
            "parts (--scale-parts; each on both servers, one member unless said): keys (load, RSS, disk, paged "
            "range, compaction, defrag, restart), watchers (watch-latency, RSS), leases (grant, RSS, keepalive, "
            "expiry accuracy), values (1 MiB puts: throughput, latency, RSS idle/peak/after), proxy-watchers "
            "(watchers through each server's grpc-proxy: latency, RSS of member and proxy), slow-watcher (the "
            "watchers' latency and the member's RSS growth without and with watchers that never read), "
            "leader-change (3 members with leases: time to renew them all after a leader move and a leader "
            "kill, leases revoked). --quick runs each with small fixed sizes."
        ),
    )
    s.add_argument(
        "--scale-parts", default=",".join(SCALE_PARTS), help="comma list of " + ", ".join(SCALE_PARTS)
    )
    s.add_argument("--scale-rounds", type=int, default=1)
    s.add_argument(
        "--keys", type=int, default=1_000_000, help="keys of 256 bytes to load (default 1,000,000)"
    )
    s.add_argument(
        "--range-budget",
        type=float,
        default=120.0,
        help="seconds the paged range over all keys may take (etcd 3.4's pages cost O(keys))",
    )
    s.add_argument(
        "--watchers",
        type=int,
        default=10_000,
        help="watchers of the watchers, proxy-watchers and slow-watcher parts (default 10,000)",
    )
    s.add_argument("--watch-puts", type=int, default=50, help="puts the watchers each see (at 10/s)")
    s.add_argument("--leases", type=int, default=100_000)
    s.add_argument("--keepalives", type=int, default=50_000, help="lease-keepalive requests")
    s.add_argument("--expiring", type=int, default=1000, help="leases whose expiry is timed")
    s.add_argument("--expiry-ttl", type=int, default=5, help="their TTL, s")
    s.add_argument(
        "--big-values", type=int, default=300, help="1 MiB puts (values part; RSS idle, peak, after)"
    )
    s.add_argument(
        "--slow-watchers",
        type=int,
        default=10,
        help="slow-watcher part: watchers of every key whose clients stop reading (one connection each), "
        "present while --watchers normal watchers are measured; the part runs once without, once with them",
    )
    s.add_argument(
        "--slow-fill-mib", type=float, default=64, help="slow-watcher part: MiB put meanwhile (the backlog)"
    )
    s.add_argument(
        "--slow-fill-rate", type=float, default=4.0, help="slow-watcher part: at most this many MiB/s"
    )
    s.add_argument(
        "--slow-value-kib", type=int, default=64, help="slow-watcher part: size of each value put, KiB"
    )
    s.add_argument(
        "--leader-change-leases",
        type=int,
        default=10_000,
        help="leader-change part: leases (a key each) on 3 members when the leader changes",
    )
    s.add_argument(
        "--leader-change-ttl",
        type=int,
        default=20,
        help="leader-change part: their TTL, s (the leases are renewed for one TTL before the first change)",
    )
    s.add_argument(
        "--leader-changes",
        default="move,kill",
        help="leader-change part: the changes, in order: move (MoveLeader to a follower), kill (SIGKILL)",
    )
    return p


def source_info() -> str:
    """Where the etcdstore being measured comes from: its package dir, and its git commit if in a checkout
    (`+ uncommitted changes` when store/ differs from it)."""
    import etcdstore

    pkg = Path(etcdstore.__file__).resolve().parent
    info = str(pkg)
    try:
        rev = subprocess.run(
            ["git", "-C", str(pkg), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            info += f" (git {rev.stdout.strip()}{' + uncommitted changes' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return info


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every 5 s while the command runs (others' work included)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(os.getloadavg()[0])
            self._halt.wait(5.0)

    def stop(self) -> str:
        self._halt.set()
        self.join()
        v = self.samples
        return f"median {statistics.median(v):.1f} (min {min(v):.1f}, max {max(v):.1f})" if v else "?"


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def select_cells(only: str) -> list[Cell]:
    """The headline cells, or those `only` (a comma list of ids, EXTRA's included) names."""
    if not only:
        return list(HEADLINE)
    want = [x.strip() for x in only.split(",") if x.strip()]
    unknown = [w for w in want if w not in {c.id for c in HEADLINE + EXTRA}]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; cells: {', '.join(c.id for c in HEADLINE + EXTRA)}")
    return [c for c in HEADLINE + EXTRA if c.id in want]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds < 1 or args.scale_rounds < 1:
        raise SystemExit("--rounds wants at least 1")
    if args.quick:
        args.rounds = 1
    log = sys.stdout
    cells = select_cells(args.only)
    if args.suite in ("scale", "all"):
        unknown = [x for x in args.scale_parts.split(",") if x.strip() and x.strip() not in SCALE_PARTS]
        if unknown:
            raise SystemExit(f"unknown scale part(s) {unknown}; parts: {', '.join(SCALE_PARTS)}")
        _leader_changes(args.leader_changes)
    if not os.access(args.etcd_bin, os.X_OK):
        raise SystemExit(f"no etcd binary at {args.etcd_bin} (apt-get install etcd-server)")
    # Ctrl-C and SIGTERM stop everything and exit 130, from here on whenever they come. Installed whatever
    # this process inherited: a shell starts a background job (`cmd &`) with SIGINT ignored, and Python
    # leaves an ignored SIGINT ignored, so `kill -INT` did nothing and the command ran on (etcd's Go
    # signal.Notify takes SIGINT back the same way).
    _INTERRUPTS.reset()
    old = {sig: signal.signal(sig, _on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(args, argv, cells, log)
    except KeyboardInterrupt:  # before the suites ran (building the tool, reading versions) or after
        stop_everything()
        print("# interrupted: stopped every process started", file=log, flush=True)
        return 130
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _run(args: argparse.Namespace, argv: list[str] | None, cells: list[Cell], log: TextIO) -> int:
    # Cells of the Python driver alone need no Go tool (nor its build).
    needs_tool = args.suite in ("scale", "all") or any(not c.python_driver for c in cells)
    tool = find_tool(args.benchmark_bin, args.build_script, log) if needs_tool else ""
    etcd_version = subprocess.run(
        [args.etcd_bin, "--version"], check=False, capture_output=True, text=True, timeout=60
    ).stdout.split("\n")[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = _loadavg()
    cmdline = "etcdstore bench compare " + " ".join(sys.argv[1:] if argv is None else argv)
    source = source_info()
    print(
        f"# {cmdline.strip()}\n# {etcd_version}; etcdstore from {source}\n"
        f"# tool {tool or 'not needed (Python driver cells only)'}; {os.cpu_count()} cores; "
        f"load average before: {load_before}",
        file=log,
        flush=True,
    )
    measurements: list[Measurement] = []
    scale: dict[str, list[dict[str, Any]]] = {}
    t0 = time.monotonic()
    interrupted = False
    own_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="etcdstore-bench-compare-"))
    loads = LoadSampler()
    loads.start()
    try:
        work.mkdir(parents=True, exist_ok=True)
        if args.suite in ("headline", "all"):
            measurements = run_headline(
                tool,
                cells,
                args.rounds,
                args.quick,
                work,
                args.etcd_bin,
                args.total_scale,
                log,
                warmup=not args.no_warmup,
            )
        if args.suite in ("scale", "all"):
            scale = run_scale(tool, args, work, log)
    except KeyboardInterrupt:
        interrupted = True
        print("# interrupted: stopping every server and load generator started", file=log, flush=True)
    finally:
        stop_everything()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    load_after = _loadavg()
    load_during = loads.stop()
    minutes = (time.monotonic() - t0) / 60
    note = (
        f"{started}, {os.cpu_count()} cores, {minutes:.0f} min; load average (1/5/15 min) before "
        f"{load_before}, after {load_after}, 1-min load during the run {load_during}; rounds {args.rounds if args.suite != 'scale' else args.scale_rounds}"
        f"{' (quick)' if args.quick else ''}"
    )
    rows = summarize(cells, measurements)
    md_parts: list[str] = []
    if rows:
        table_rows = [_cells(r) for r in rows]
        driven = [c.workload for c in cells if c.python_driver and any(r["cell"] == c.id for r in rows)]
        note_py = "".join(f"{w.removesuffix(' (Python driver)')} {DRIVER_NOTE}.\n" for w in driven)
        print("\n" + plain_table(HEAD, table_rows) + note_py, file=log)
        md_parts.append(markdown_table(HEAD, table_rows) + (f"\n{note_py}" if note_py else ""))
    for part, recs in scale.items():
        if not recs:
            continue
        title = scale_title(part, recs)
        srows = scale_rows(part, recs)
        failed = "".join(f"\n(failed on {x['server']}: {x['error'][:200]})" for x in recs if "error" in x)
        print(f"\n{title}\n" + plain_table(SCALE_HEAD, srows) + failed, file=log)
        md_parts.append(f"{title}:\n\n" + markdown_table(SCALE_HEAD, srows) + failed)
    print(f"# {note}", file=log)
    if args.suite in ("headline", "all"):
        print("# not measured: " + "; ".join(NOT_MEASURED), file=log)
    md = "\n".join(md_parts) + f"\n({note}; `{cmdline.strip()}`)\n"
    if md_parts:
        print("\nMarkdown:\n\n" + md, file=log, flush=True)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.json:
        doc = {
            "command": cmdline.strip(),
            "started": started,
            "etcd": etcd_version,
            "tool": tool,
            "tool_version": TOOL_VERSION,
            "etcdstore_source": source,
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_after,
            "load_during": load_during,
            "minutes": round(minutes, 1),
            "rounds": args.rounds,
            "quick": args.quick,
            "interrupted": interrupted,
            "not_measured": NOT_MEASURED,
            "measurements": [m.__dict__ for m in measurements],
            "summary": rows,
            "scale": scale,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    if interrupted:
        return 130
    return 0 if (rows or scale) else 1
