"""Runs a benchmark over one or more processes and merges what they measured."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
import traceback
from array import array
from dataclasses import dataclass, field
from typing import Any

from etcdstore.bench import wire
from etcdstore.bench.config import BenchConfig, WorkerResult, WorkerShare, shares
from etcdstore.bench.worker import install_uvloop, make_channel, run_share

_START_DELAY = 0.2  # s between "all ready" and the common start
_READY_TIMEOUT = 120.0


@dataclass
class Summary:
    cfg: BenchConfig
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 max mean
    events: int = 0
    event_throughput: float = 0.0
    event_latency_ms: dict[str, float] = field(default_factory=dict)
    client_cpu: float = 0.0  # cores the load generator itself kept busy

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.cfg.label,
            "workload": self.cfg.workload,
            "clients": self.cfg.clients,
            "conns": self.cfg.effective_conns,
            "procs": self.cfg.procs,
            "config": self.cfg.describe(),
            "ops": self.ops,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 3),
            "ops_per_s": round(self.throughput, 1),
            "latency_ms": self.latency_ms,
            "events": self.events,
            "events_expected": self.cfg.watchers * self.ops if self.cfg.workload == "watch" else 0,
            "events_per_s": round(self.event_throughput, 1),
            "event_latency_ms": self.event_latency_ms,
            "client_cpu_cores": round(self.client_cpu, 2),
        }


def percentiles(samples: array) -> dict[str, float]:
    if not samples:
        return {}
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return s[min(n - 1, int(q * n))] * 1000.0

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": s[-1] * 1000.0,
        "mean": sum(s) / n * 1000.0,
    }


def merge(cfg: BenchConfig, results: list[WorkerResult]) -> Summary:
    lat, ev_lat = array("d"), array("d")
    out = Summary(cfg)
    for r in results:
        lat.frombytes(r.latencies)
        ev_lat.frombytes(r.event_latencies)
        out.ops += r.ops
        out.events += r.events
        for k, v in r.errors.items():
            out.errors[k] = out.errors.get(k, 0) + v
    start = min(r.start for r in results)
    out.elapsed = max(r.end for r in results) - start
    out.throughput = out.ops / out.elapsed if out.elapsed > 0 else 0.0
    out.latency_ms = percentiles(lat)
    if cfg.workload == "watch":
        ev_end = max((r.events_end for r in results), default=0.0)
        out.event_throughput = out.events / (ev_end - start) if ev_end > start else 0.0
        out.event_latency_ms = percentiles(ev_lat)
    out.client_cpu = sum(r.busy_cpu for r in results) / out.elapsed if out.elapsed > 0 else 0.0
    return out


async def prefill(cfg: BenchConfig) -> None:
    """Write every key of the key space once (txns of 128 puts, 8 in flight): what range reads and
    delete removes."""
    channel = make_channel(cfg.endpoints[0], cfg.tls)
    try:
        txn = channel.unary_unary("/etcdserverpb.KV/Txn", request_serializer=None, response_deserializer=None)
        value = b"v" * cfg.val_size
        batches = [range(lo, min(lo + 128, cfg.key_space)) for lo in range(0, cfg.key_space, 128)]
        sem = asyncio.Semaphore(8)

        async def one(keys: range) -> None:
            async with sem:
                await txn(
                    wire.txn_put_request([(wire.key_bytes(i, cfg.key_size), value) for i in keys]), timeout=60
                )

        await asyncio.gather(*(one(b) for b in batches))
    finally:
        await channel.close()


def _in_process(cfg: BenchConfig, share: WorkerShare) -> WorkerResult:
    async def go() -> float:
        return time.monotonic()

    async def main() -> WorkerResult:
        if cfg.prefill:
            await prefill(cfg)
        return await run_share(cfg, share, go)

    install_uvloop()
    return asyncio.run(main())


def _process_main(
    cfg: BenchConfig, share: WorkerShare, ready: Any, results: Any, go: Any, start_at: Any
) -> None:
    async def wait_go() -> float:
        ready.put(share.index)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        return start_at.value

    install_uvloop()
    try:
        results.put((share.index, asyncio.run(run_share(cfg, share, wait_go))))
    except (RuntimeError, ValueError, OSError) as e:  # expected failures: one line
        results.put((share.index, f"{type(e).__name__}: {e}"))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the run
        results.put((share.index, traceback.format_exc()))


def run(cfg: BenchConfig) -> Summary:
    """Run `cfg` and return the merged summary; raises RuntimeError if a worker failed."""
    if cfg.workload == "delete" and not (0 < cfg.total <= cfg.key_space):
        # Op i deletes key i, which the prefill wrote (keys 0 .. key_space - 1); without the prefill,
        # deletes of absent keys count as errors (NOT_DELETED).
        raise ValueError("delete needs --total, and a key space of at least --total keys")
    parts = shares(cfg)
    if cfg.procs == 1:
        return merge(cfg, [_in_process(cfg, parts[0])])
    if cfg.prefill:
        install_uvloop()
        asyncio.run(prefill(cfg))
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_process_main, args=(cfg, p, ready, results, go, start_at), daemon=True)
        for p in parts
    ]
    for p in procs:
        p.start()
    collected: dict[int, WorkerResult] = {}
    try:
        deadline = time.monotonic() + _READY_TIMEOUT
        waiting = len(procs)
        while waiting:
            try:
                ready.get(timeout=0.5)
                waiting -= 1
            except queue.Empty:
                pass
            _check_failures(results, collected, procs)
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark workers did not get ready in time")
        start_at.value = time.monotonic() + _START_DELAY
        go.set()
        run_limit = cfg.duration * 3 + 120 if not cfg.total else None
        end_by = time.monotonic() + run_limit if run_limit else None
        while len(collected) < len(procs):
            try:
                index, res = results.get(timeout=1.0)
            except queue.Empty:
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                    raise RuntimeError("a benchmark worker process died")
                if end_by and time.monotonic() > end_by:
                    raise RuntimeError("benchmark workers did not finish in time")
                continue
            if isinstance(res, str):
                raise RuntimeError(f"benchmark worker {index} failed: {res}")  # noqa: TRY004 - a worker reports its failure as text
            collected[index] = res
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return merge(cfg, [collected[i] for i in sorted(collected)])


def _check_failures(results: Any, collected: dict[int, WorkerResult], procs: list[Any]) -> None:
    try:
        index, res = results.get_nowait()
    except queue.Empty:
        if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
            raise RuntimeError("a benchmark worker process died while getting ready") from None
        return
    if isinstance(res, str):
        raise RuntimeError(f"benchmark worker {index} failed: {res}")  # noqa: TRY004 - a worker reports its failure as text
    collected[index] = res
