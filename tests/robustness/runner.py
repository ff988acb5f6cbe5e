"""One robustness run: cluster + traffic + nemesis, then heal, collect and check.

    tests/run-robustness [--target etcd|etcdstore] [--members 3] [--duration 60] [--seed N]
                         [--faults kill,pause,partition,drop,delay,member-replace] [--runs 1]
                         [--rate 150] [--keep] [--out DIR]

Per run it prints operations (ok / failed / indeterminate), the faults injected, the checker's
findings (anomalies must be 0, acknowledged writes lost must be 0) and how long each part took.
Exit status 1 if any run has an anomaly, lost write, undecided check, or a cluster that did not
recover. The history of every run is saved as history.json (re-check it with
`python -m robustness.checker history.json` from tests/); the run directory (member logs and
data) is kept when a run fails, or with --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checker
from .cluster import Cluster, Target
from .history import History
from .nemesis import DEFAULT_FAULTS, FAULTS, Nemesis
from .traffic import Traffic, TrafficConfig, collect_logs, final_state


@dataclass
class RunResult:
    seed: int
    report: checker.Report
    faults: list[str]
    failures: list[str] = field(default_factory=list)  # not anomalies: the run itself went wrong
    timings: dict[str, float] = field(default_factory=dict)
    directory: str = ""
    proxy: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.failures


async def run_once(
    target: Target,
    *,
    members: int,
    duration: float,
    seed: int,
    faults: list[str],
    base: Path,
    traffic: TrafficConfig,
    max_faults: int | None = None,
    hold: tuple[float, float] = (2.0, 5.0),
    log: bool = True,
) -> RunResult:
    def say(msg: str) -> None:
        if log:
            print(f"[seed {seed} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    rnd = random.Random(seed)
    timings: dict[str, float] = {}
    failures: list[str] = []
    t0 = time.monotonic()
    cluster = Cluster(target, size=members, base=base, seed=seed)
    history = History(
        meta={
            "target": target.name,
            "members": members,
            "duration": duration,
            "seed": seed,
            "faults": faults,
            "rate": traffic.rate,
        }
    )
    nem = Nemesis(cluster, faults, rnd, hold=hold, max_faults=max_faults) if faults else None
    try:
        await cluster.start()
        timings["start"] = time.monotonic() - t0
        say(
            f"{target.name} cluster of {members} up ({timings['start']:.1f}s), "
            f"traffic + faults for {duration:.0f}s"
        )
        tr = Traffic(cluster.endpoints, traffic, seed)
        await tr.start()
        stop = asyncio.Event()
        nem_task = asyncio.create_task(nem.run(stop)) if nem else None
        await asyncio.sleep(duration)
        stop.set()
        if nem_task:
            await nem_task
        await tr.stop()
        history.operations = tr.operations
        history.watchers = tr.watchers
        t1 = time.monotonic()
        timings["traffic"] = t1 - t0 - timings["start"]
        if nem:
            await nem.heal_all()
        try:
            await cluster.wait_healthy(timeout=60)
        except TimeoutError as e:
            failures.append(f"cluster did not recover: {e}")
            raise
        final_rev = await cluster.settle()
        await tr.final_reads(cluster.endpoints)
        stragglers = await tr.finish_watchers(final_rev)
        for w in stragglers:
            failures.append(f"watcher {w} did not deliver up to the final revision {final_rev}")
        eps = {n: m.endpoint for n, m in cluster.members.items()}
        history.logs = await collect_logs(eps, final_rev)
        history.final_state = await final_state(eps, final_rev)
        history.hash_kv = await cluster.hash_kv(final_rev)
        assert cluster.proxy is not None
        history.meta["peer_proxy"] = await cluster.proxy.call(cmd="stats")
        history.final_revision = final_rev
        timings["collect"] = time.monotonic() - t1
    except Exception as e:  # noqa: BLE001 - the run failed; report it, keep the directory
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        await cluster.stop()
    fault_desc = [f.describe() for f in nem.injected] if nem else []
    history.meta["faults_injected"] = fault_desc
    for f in nem.injected if nem else []:
        if f.error:
            failures.append(f"fault {f.describe()}")
    t2 = time.monotonic()
    report = checker.check(history)
    timings["check"] = time.monotonic() - t2
    timings["total"] = time.monotonic() - t0
    history.save(str(base / "history.json"))
    return RunResult(
        seed, report, fault_desc, failures, timings, str(base), history.meta.get("peer_proxy", {})
    )


def format_result(r: RunResult) -> str:
    rep = r.report
    kinds: dict[str, int] = {}
    for f in r.faults:
        k = f.split("(", 1)[0]
        kinds[k] = kinds.get(k, 0) + 1
    lines = [
        f"=== run seed {r.seed}: {'PASS' if r.ok else 'FAIL'}   ({r.directory})",
        f"faults injected   {len(r.faults)}: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())),
    ]
    lines += [f"  - {f}" for f in r.faults]
    lines.append(rep.format())
    px = r.proxy
    if px:
        lines.append(
            f"peer proxy        {px.get('connections')} connections ({px.get('unidentified')} live ones not "
            f"attributed to a member, {px.get('closed_early')} closed before), "
            f"{px.get('bytes', 0) / 1e6:.1f} MB"
        )
    if r.failures:
        lines.append("run failures:")
        lines += [f"  - {f}" for f in r.failures]
    lines.append("timings           " + ", ".join(f"{k} {v:.1f}s" for k, v in r.timings.items()))
    return "\n".join(lines)


def summary_table(results: list[RunResult]) -> str:
    head = (
        f"{'seed':>6} {'ops':>7} {'ok':>7} {'failed':>7} {'indet.':>7} {'faults':>7} "
        f"{'anomalies':>9} {'lost':>5} {'check s':>8}  result"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        o = r.report.operations
        rows.append(
            f"{r.seed:>6} {sum(o.values()):>7} {o['ok']:>7} {o['failed']:>7} {o['indeterminate']:>7} "
            f"{len(r.faults):>7} {r.report.anomaly_count():>9} {r.report.lost_writes:>5} "
            f"{r.report.lin_seconds:>8.2f}  {'PASS' if r.ok else 'FAIL'}"
        )
    return "\n".join(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run-robustness", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("etcd", "etcdstore"), default="etcd")
    p.add_argument("--members", type=int, default=3, choices=(3, 5))
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic and faults per run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--faults", default=",".join(DEFAULT_FAULTS), help=f"comma list of: {', '.join(FAULTS)} (or 'none')"
    )
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--rate", type=float, default=150.0, help="target requests per second, all clients")
    p.add_argument("--clients-per-member", type=int, default=2)
    p.add_argument("--keys", type=int, default=12)
    p.add_argument("--timeout", type=float, default=1.0, help="per-request timeout (seconds)")
    p.add_argument(
        "--serializable-reads",
        action="store_true",
        help="negative control: serializable (stale-capable) reads; the checker must then fail",
    )
    p.add_argument("--out", default=None, help="directory for run directories (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep run directories of passing runs too")
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    target = Target.get(args.target)
    ok, why = target.ready()
    if not ok:
        print(f"{target.name} ({target.binary}) does not run: {why}", file=sys.stderr)
        return 2
    faults = [] if args.faults in ("", "none") else [f.strip() for f in args.faults.split(",") if f.strip()]
    seed0 = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 30)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="robustness-"))
    root.mkdir(parents=True, exist_ok=True)
    tc = TrafficConfig(
        clients_per_member=args.clients_per_member,
        keys=args.keys,
        rate=args.rate,
        timeout=args.timeout,
        serializable_reads=args.serializable_reads,
    )
    results = []
    for i in range(args.runs):
        seed = seed0 + i
        base = root / f"run-{seed}"
        r = await run_once(
            target,
            members=args.members,
            duration=args.duration,
            seed=seed,
            faults=faults,
            base=base,
            traffic=tc,
        )
        print(format_result(r), flush=True)
        if r.ok and not args.keep:
            for sub in base.iterdir():
                if sub.is_dir():
                    shutil.rmtree(sub, ignore_errors=True)  # member data; logs and history stay small
        results.append(r)
    print()
    print(summary_table(results))
    (root / "summary.json").write_text(
        json.dumps(
            [
                {
                    "seed": r.seed,
                    "ok": r.ok,
                    "faults": r.faults,
                    "failures": r.failures,
                    "timings": r.timings,
                    "report": checker.report_json(r.report),
                }
                for r in results
            ],
            indent=1,
        )
    )
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
