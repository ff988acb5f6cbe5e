"""Runs one attack against one fresh member (etcdstore or real etcd 3.4) and measures what the
other clients see.

While the attack runs (in its own process), a probe client on its own connection (grpcio, as
etcd's clients) does a KV.Put then a KV.Range every 200 ms, each pair with a 1 s budget:
availability is the share of probes answered within that second. The member's RSS (the process
and its children, from /proc) is sampled every 100 ms: the table reports the value before the
attack and the peak. After the attack, probing goes on until one succeeds (up to 10 s): the
recovery time. Every member is started fresh for each attack and killed after it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from . import attacks as atk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: testlib
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import HOST, Cluster

PROBE_INTERVAL = 0.2
PROBE_BUDGET = 1.0
RECOVERY_LIMIT = 10.0


@dataclass
class Result:
    target: str
    attack: str
    duration: float
    probes: int = 0
    ok: int = 0
    rss_start: int = 0  # bytes
    rss_peak: int = 0
    recovery: float | None = None  # seconds after the attack until a probe succeeded (None: never)
    member_died: bool = False
    attack_stats: dict = field(default_factory=dict)

    @property
    def availability(self) -> float:
        return self.ok / self.probes if self.probes else 0.0

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "attack": self.attack,
            "duration": self.duration,
            "probes": self.probes,
            "ok": self.ok,
            "availability": round(self.availability, 4),
            "rss_start_mb": _mb(self.rss_start),
            "rss_peak_mb": _mb(self.rss_peak),
            "recovery_s": self.recovery,
            "member_died": self.member_died,
            "attack_stats": self.attack_stats,
        }


def _mb(n: int) -> float:
    return round(n / (1 << 20), 1)


# -- memory ------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def rss_of_tree(pid: int) -> int:
    """VmRSS of `pid` and its descendants, in bytes (0 once gone)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        todo.extend(_children(p))
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, rss_of_tree(self.pid))
            self.stop_event.wait(self.interval)

    def stop(self) -> int:
        self.stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_of_tree(self.pid))
        return self.peak


# -- the probe ---------------------------------------------------------------------------------------


class Probe:
    """Put + Range through its own connection; `one()` is True when both answered within the budget."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
                ("grpc.enable_retries", 0),
            ],
        )
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.n = 0
        self.lock = threading.Lock()

    def one(self) -> bool:
        with self.lock:
            self.n += 1
            i = self.n
        start = time.monotonic()
        key = b"abuse-probe/%d" % (i % 16)
        try:
            self.kv.Put(rpc_pb2.PutRequest(key=key, value=b"%d" % i), timeout=PROBE_BUDGET)
            left = PROBE_BUDGET - (time.monotonic() - start)
            if left <= 0:
                return False
            r = self.kv.Range(rpc_pb2.RangeRequest(key=key), timeout=left)
        except grpc.RpcError:
            return False
        return time.monotonic() - start <= PROBE_BUDGET and len(r.kvs) == 1 and r.kvs[0].value == b"%d" % i

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.one():
            if time.monotonic() > deadline:
                raise RuntimeError("the probe never succeeded before the attack")
            time.sleep(0.05)

    def close(self) -> None:
        self.channel.close()


def seed_big_keys(endpoint: str, count: int) -> None:
    with grpc.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        value = b"x" * atk.BIG_VALUE
        for i in range(count):
            kv.Put(rpc_pb2.PutRequest(key=atk.BIG_KEY_PREFIX + b"%04d" % i, value=value), timeout=30)


# -- one run -----------------------------------------------------------------------------------------


def run_one(
    target: str, attack: str, duration: float, profile: str, base_dir: Path, log: object = None
) -> Result:
    """Start a fresh `target` member, run `attack` on it for `duration` seconds, measure, kill it."""
    a = atk.BY_NAME[attack]
    sizes = atk.SIZES[profile]
    result = Result(target, attack, duration)
    run_dir = base_dir / f"{target}-{attack}"
    cluster = Cluster.start(run_dir, 1, binary=target)
    member = cluster.members[0]
    probe = Probe(member.endpoint)
    ctx = multiprocessing.get_context("spawn")
    child = None
    try:
        assert member.proc is not None
        pid = member.proc.pid
        if a.seed_big:
            seed_big_keys(member.endpoint, sizes["big_keys"])
        probe.wait_ready()
        result.rss_start = rss_of_tree(pid)
        sampler = RssSampler(pid)
        sampler.start()
        out = ctx.Queue()
        child = ctx.Process(
            target=atk.run_in_child,
            args=(attack, HOST, member.client_port, duration, profile, out),
            daemon=True,
        )
        child.start()
        futures: list[Future[bool]] = []
        with ThreadPoolExecutor(max_workers=int(PROBE_BUDGET / PROBE_INTERVAL) + 2) as pool:
            t0 = time.monotonic()
            k = 0
            while True:
                at = t0 + k * PROBE_INTERVAL
                if at >= t0 + duration:
                    break
                now = time.monotonic()
                if at > now:
                    time.sleep(at - now)
                futures.append(pool.submit(probe.one))
                k += 1
            result.probes = len(futures)
            result.ok = sum(fut.result() for fut in futures)
        try:
            result.attack_stats = out.get(timeout=15)
        except Exception:  # noqa: BLE001 - queue.Empty, or the child died mid-put
            result.attack_stats = {"attacker_stats_missing": 1}
        child.join(5)
        after = time.monotonic()
        while time.monotonic() - after < RECOVERY_LIMIT:
            if not member.running:
                break
            if probe.one():
                result.recovery = round(time.monotonic() - after, 2)
                break
            time.sleep(0.05)
        result.rss_peak = sampler.stop()
        result.member_died = not member.running
    finally:
        if child is not None and child.is_alive():
            child.kill()
            child.join()
        probe.close()
        cluster.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    if log is not None:
        print(
            f"  {target:9s} {attack:22s} {result.ok}/{result.probes} probes ok, RSS {_mb(result.rss_start)} "
            f"-> {_mb(result.rss_peak)} MB, recovery {result.recovery}, attacker {result.attack_stats}",
            file=log,
            flush=True,
        )
    return result


def format_table(results: list[Result], targets: list[str]) -> str:
    by = {(r.target, r.attack): r for r in results}
    head = "| attack | " + " | ".join(f"{t}: others served" for t in targets)
    head += " | " + " | ".join(f"{t} peak RSS" for t in reversed(targets)) + " | notes |"
    lines = [head, "|" + "---|" * (2 + 2 * len(targets))]
    for a in atk.ATTACKS:
        if not any((t, a.name) in by for t in targets):
            continue
        cells = [a.title]
        notes = []
        for t in targets:
            r = by.get((t, a.name))
            if r is None:
                cells.append("-")
                continue
            cells.append(f"{r.availability:.0%} ({r.ok}/{r.probes})")
            if r.member_died:
                notes.append(f"{t} died")
            elif r.recovery is None:
                notes.append(f"{t} not back {RECOVERY_LIMIT:.0f} s after")
            elif r.recovery > 1.0:
                notes.append(f"{t} back {r.recovery:.1f} s after")
            if "closed_by_server" in r.attack_stats:
                notes.append(
                    f"{t} closed {r.attack_stats['closed_by_server']}/"
                    f"{r.attack_stats.get('connections', 0)} connections"
                )
            goaways = sum(v for k, v in r.attack_stats.items() if k.startswith("goaway_"))
            if goaways:
                notes.append(f"{t} sent GOAWAY {goaways} times")
        for t in reversed(targets):
            r = by.get((t, a.name))
            cells.append("-" if r is None else f"{_mb(r.rss_start):.0f} → {_mb(r.rss_peak):.0f} MB")
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_base_dir() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"etcdstore-abuse-{os.getpid()}"
