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
end, on error, and on Ctrl-C / SIGTERM (the children also get SIGTERM from the kernel if this
process dies: PR_SET_PDEATHSIG through setpriv).

The Go tool is a measurement dependency, not part of etcdstore: it is found with --benchmark-bin,
$ETCD_BENCHMARK_BIN, or the cache ($XDG_CACHE_HOME or ~/.cache)/etcdstore-bench/etcd-benchmark-v3.4.23/,
and built there when missing by --build-script / $ETCD_BENCHMARK_BUILD (default: the shared
tools/etcd-benchmark/build.sh beside the repo, which builds it offline from Debian's Go and etcd
source packages).
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Callable
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
    r = subprocess.run(["bash", str(script)], env=env, check=False, capture_output=True, text=True)
    if r.returncode != 0 or not os.access(cached, os.X_OK):
        raise SystemExit(f"building etcd's benchmark tool failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
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

_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


def _die_with_parent() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    # Own session: a terminal's Ctrl-C reaches this process only, which then stops the children.
    p = subprocess.Popen(_die_with_parent() + cmd, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
    with _LIVE_LOCK:
        _LIVE.add(p)
    return p


def _reap(p: subprocess.Popen, timeout: float = 15.0) -> None:
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    with _LIVE_LOCK:
        _LIVE.discard(p)


def stop_everything() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        _reap(p)


def run_tool(
    tool: str, endpoints: list[str], clients: int, conns: int, args: list[str], timeout: float
) -> ToolResult:
    cmd = [tool, f"--endpoints={','.join(endpoints)}", f"--conns={conns}", f"--clients={clients}", *args]
    t0 = time.monotonic()
    p = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _reap(p)
        raise TimeoutError(f"benchmark {' '.join(args[:1])} did not finish in {timeout:.0f} s") from None
    finally:
        _reap(p)
    text = out.decode("utf-8", "replace")
    res = parse_report(text)
    res.wall_s = time.monotonic() - t0
    if p.returncode != 0 or not res.rps and "Requests/sec" not in text:
        raise RuntimeError(f"benchmark {args[0]} exited {p.returncode}: {text[-600:]!r}")
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
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            if m.proc is not None:
                _reap(m.proc)


# ---------------------------------------------------------------------------------------------
# The headline suite


@dataclass
class Cell:
    id: str
    workload: str  # the table's name
    members: int
    clients: int
    args: Callable[[int], list[str]]  # the tool's subcommand and flags for a total
    total: int
    quick_total: int
    prefill_range_key: bool = False

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


HEADLINE = [
    Cell("put-m1-c100", "put", 1, 100, _put, 30000, 2000),
    Cell("put-m3-c1", "put", 3, 1, _put, 2000, 100),
    Cell("put-m3-c100", "put", 3, 100, _put, 20000, 2000),
    Cell("put-m3-c1000", "put", 3, 1000, _put, 30000, 3000),
    Cell("range-l-m3-c100", "range, linearizable", 3, 100, _range("l"), 30000, 2000, True),
    Cell("range-s-m3-c100", "range, serializable", 3, 100, _range("s"), 30000, 2000, True),
    Cell("txn-put-m3-c100", "txn-put", 3, 100, _txn_put, 20000, 2000),
]
# Cells run only when named with --only (e.g. to compare two builds of etcdstore on one member).
EXTRA = [
    Cell("put-m1-c1", "put", 1, 1, _put, 2000, 100),
]
# Not in etcd 3.4's tool: a delete workload (its subcommands are put, range, txn-put, stm, watch,
# watch-get, watch-latency, lease-keepalive, mvcc); see NOT_MEASURED.
NOT_MEASURED = ["delete: etcd 3.4's benchmark tool has no delete workload"]


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
                root = Path(tempfile.mkdtemp(prefix=f"r{r + 1}-{server}-m{members}-", dir=work))
                cluster = Cluster(server, members, root, etcd_bin)
                t0 = time.monotonic()
                try:
                    cluster.start()
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
                            run_tool(
                                tool,
                                cluster.endpoints,
                                cell.clients,
                                cell.conns,
                                cell.args(max(cell.clients, total // 20)),
                                timeout,
                            )
                        res = run_tool(
                            tool, cluster.endpoints, cell.clients, cell.conns, cell.args(total), timeout
                        )
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
                        )
                        out.append(m)
                        err = f", {res.errors} errors {res.error_kinds[:2]}" if res.errors else ""
                        print(
                            f"#   {cell.id:<16} {server:<9} {res.rps:10,.0f} req/s  p50 {_ms(res.p50_ms)}  "
                            f"p99 {_ms(res.p99_ms)} ms{err}",
                            file=log,
                            flush=True,
                        )
                finally:
                    cluster.stop()
                    shutil.rmtree(root, ignore_errors=True)
    return out


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _num(v: float) -> str:
    return f"{v:,.0f}"


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


def _grpc(endpoint: str):  # type: ignore[no-untyped-def]
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
    """The peak RSS of a cluster's member trees while it runs (sampled every 0.2 s)."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.cluster, self.peak, self._halt = cluster, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.cluster.rss_kib())
            self._halt.wait(0.2)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


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
    root = Path(tempfile.mkdtemp(prefix=f"keys-{server}-", dir=work))
    cluster = Cluster(server, 1, root, etcd_bin)
    res: dict[str, Any] = {"server": server, "keys": keys, "members": 1}
    try:
        cluster.start()
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
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return res


def scale_watchers(
    tool: str, server: str, watchers: int, puts: int, work: Path, etcd_bin: str, log: TextIO
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"watch-{server}-", dir=work))
    cluster = Cluster(server, 1, root, etcd_bin)
    res: dict[str, Any] = {"server": server, "watchers": watchers, "puts": puts, "members": 1}
    try:
        cluster.start()
        res["rss_idle_mib"] = cluster.rss_kib() / 1024
        sampler = RssSampler(cluster)
        sampler.start()
        conns = max(1, watchers // 100)
        try:
            out = run_tool(
                tool,
                cluster.endpoints,
                watchers,
                conns,
                ["watch-latency", f"--total={puts}", "--put-rate=10", f"--val-size={VAL_SIZE}"],
                timeout=600 + puts * 10,
            )
        finally:
            res["rss_peak_mib"] = sampler.stop() / 1024
        res["watch_streams"] = conns
        res["events"] = puts * watchers
        res["p50_ms"], res["p99_ms"] = out.p50_ms, out.p99_ms
        res["errors"] = out.errors
        print(
            f"#   {server}: {watchers:,} watchers, put-to-event p50 {_ms(out.p50_ms)} p99 {_ms(out.p99_ms)} ms, "
            f"peak RSS {res['rss_peak_mib']:.0f} MiB",
            file=log,
            flush=True,
        )
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
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

        async def requests():  # type: ignore[no-untyped-def]
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
    root = Path(tempfile.mkdtemp(prefix=f"lease-{server}-", dir=work))
    cluster = Cluster(server, 1, root, etcd_bin)
    res: dict[str, Any] = {"server": server, "leases": leases, "members": 1}
    try:
        cluster.start()
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
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return res


def scale_big_values(
    tool: str, server: str, total: int, work: Path, etcd_bin: str, log: TextIO
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"big-{server}-", dir=work))
    cluster = Cluster(server, 1, root, etcd_bin)
    res: dict[str, Any] = {"server": server, "value_bytes": 1 << 20, "clients": 10, "members": 1}
    try:
        cluster.start()
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
        print(
            f"#   {server}: 1 MiB puts {out.rps:,.1f}/s p50 {_ms(out.p50_ms)} p99 {_ms(out.p99_ms)} ms"
            f"{f', {out.errors} errors {out.error_kinds[:1]}' if out.errors else ''}",
            file=log,
            flush=True,
        )
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return res


SCALE_PARTS = ("keys", "watchers", "leases", "values")


def run_scale(
    tool: str, args: argparse.Namespace, work: Path, log: TextIO
) -> dict[str, list[dict[str, Any]]]:
    parts = [p for p in SCALE_PARTS if p in args.scale_parts.split(",")]
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
    return scale_big_values(tool, server, 10 if q else args.big_values, work, args.etcd_bin, log)


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
        ("RSS after, MiB", "rss_mib", lambda v: f"{v:.0f}"),
    ],
}


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
    return "values of 1 MiB (`benchmark put --val-size=1048576`), 1 member"


def scale_rows(part: str, recs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for label, key, fmt in _SCALE_ROWS[part]:
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdstore bench compare",
        description="Run real etcd 3.4 and etcdstore side by side on this machine with etcd's own Go benchmark "
        "tool (rounds alternate which server goes first; fresh clusters each round) and print the "
        "table: median req/s, the median and range of the etcdstore/etcd ratio, p50/p99 latency.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cells of the headline suite: "
        + ", ".join(c.id for c in HEADLINE)
        + "; only with --only: "
        + ", ".join(c.id for c in EXTRA)
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
    s = p.add_argument_group("scale suite")
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
    s.add_argument("--watchers", type=int, default=10_000)
    s.add_argument("--watch-puts", type=int, default=50, help="puts the watchers each see (at 10/s)")
    s.add_argument("--leases", type=int, default=100_000)
    s.add_argument("--keepalives", type=int, default=50_000, help="lease-keepalive requests")
    s.add_argument("--expiring", type=int, default=1000, help="leases whose expiry is timed")
    s.add_argument("--expiry-ttl", type=int, default=5, help="their TTL, s")
    s.add_argument("--big-values", type=int, default=300, help="1 MiB puts")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds < 1 or args.scale_rounds < 1:
        raise SystemExit("--rounds wants at least 1")
    if args.quick:
        args.rounds = 1
    log = sys.stdout
    cells = HEADLINE
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [w for w in want if w not in {c.id for c in HEADLINE + EXTRA}]
        if unknown:
            raise SystemExit(f"unknown cell(s) {unknown}; cells: {', '.join(c.id for c in HEADLINE + EXTRA)}")
        cells = [c for c in HEADLINE + EXTRA if c.id in want]
    if not os.access(args.etcd_bin, os.X_OK):
        raise SystemExit(f"no etcd binary at {args.etcd_bin} (apt-get install etcd-server)")
    tool = find_tool(args.benchmark_bin, args.build_script, log)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    own_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="etcdstore-bench-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    etcd_version = subprocess.run(
        [args.etcd_bin, "--version"], check=False, capture_output=True, text=True
    ).stdout.split("\n")[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = _loadavg()
    cmdline = "etcdstore bench compare " + " ".join(sys.argv[1:] if argv is None else argv)
    source = source_info()
    print(
        f"# {cmdline.strip()}\n# {etcd_version}; etcdstore from {source}\n# tool {tool}; {os.cpu_count()} cores; "
        f"load average before: {load_before}",
        file=log,
        flush=True,
    )
    measurements: list[Measurement] = []
    scale: dict[str, list[dict[str, Any]]] = {}
    t0 = time.monotonic()
    interrupted = False
    loads = LoadSampler()
    loads.start()
    try:
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
        signal.signal(signal.SIGTERM, old)
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
        print("\n" + plain_table(HEAD, table_rows), file=log)
        md_parts.append(markdown_table(HEAD, table_rows))
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
