"""Command line: parse, run every requested configuration, print plain tables."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import TYPE_CHECKING, TextIO

from etcdstore.bench.config import WORKLOADS, BenchConfig

if TYPE_CHECKING:
    # Imported where used: the runner pulls in gRPC and the client (about a second on a loaded machine),
    # which `bench compare` does not need before it has installed its Ctrl-C handler.
    from etcdstore.bench.runner import Summary

_EPILOG = """\
examples:
  etcdstore bench put --endpoints 127.0.0.1:2379 --clients 1,10,100 --duration 10
  etcdstore bench range --consistency s --clients 100 --conns 10 --procs 2 --key-space 10000
  etcdstore bench delete --clients 100 --total 20000   # deletes keys 0..19999, written first by the prefill
  etcdstore bench watch --watchers 100 --watch-streams 10 --clients 10 --total 20000
  etcdstore bench put --compare etcd=127.0.0.1:2379 --compare etcdstore=127.0.0.1:3379 --clients 1,100
  etcdstore bench put --compare etcd=127.0.0.1:2379 --compare etcdstore=127.0.0.1:3379 --clients 100 --repeat 5
  etcdstore bench compare --rounds 5    # starts etcd 3.4 and etcdstore itself, measures with etcd's Go tool
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdstore bench",
        description="Load an etcd v3 endpoint set and report throughput and latency.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "workload",
        choices=WORKLOADS,
        help="put, range, txn (--txn-ops puts): random keys of --key-space; delete: a DeleteRange of one "
        "key, op i deleting key i (needs --total; the prefill writes keys 0..total-1 first); watch: puts "
        "under --watchers watchers",
    )
    p.add_argument("--endpoints", default="127.0.0.1:2379", help="comma-separated host:port list")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=EP1,EP2",
        help="run the same workload against each labeled endpoint set (repeat); one table",
    )
    p.add_argument("--clients", default="1", help="concurrent clients; a comma list runs each in turn")
    p.add_argument(
        "--conns", type=int, default=0, help="gRPC connections in all (default: 1 per 100 clients)"
    )
    p.add_argument("--procs", type=int, default=1, help="processes the clients are spread over")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--total", type=int, default=0, help="requests in all (delete: required)")
    amount.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    p.add_argument("--key-size", type=int, default=8)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument(
        "--key-space", type=int, default=10_000, help="number of distinct keys (delete: --total, always)"
    )
    p.add_argument(
        "--consistency", choices=("l", "s"), default="l", help="range: linearizable or serializable"
    )
    p.add_argument("--txn-ops", type=int, default=1, help="txn: puts per transaction")
    p.add_argument("--rate", type=float, default=0.0, help="cap on requests/s in all (0: no cap)")
    p.add_argument("--watchers", type=int, default=100, help="watch: watchers on the benchmark prefix")
    p.add_argument("--watch-streams", type=int, default=10, help="watch: gRPC streams the watchers share")
    p.add_argument(
        "--prefill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the whole key space first (default: on for range and delete; delete needs it)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, seconds")
    p.add_argument("--cacert", help="TLS: CA file")
    p.add_argument("--cert", help="TLS: client certificate")
    p.add_argument("--key", help="TLS: client key")
    p.add_argument("--json", metavar="PATH", help="also append one JSON line per run to PATH")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each configuration N times, the --compare sets taking turns (first one first, then "
        "last one first, ...); the table shows medians and the range of the per-round ratio",
    )
    return p


def _endpoint_sets(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...]]]:
    if not args.compare:
        return [("", tuple(e.strip() for e in args.endpoints.split(",") if e.strip()))]
    sets = []
    for item in args.compare:
        label, sep, eps = item.partition("=")
        if not sep or not label or not eps:
            raise SystemExit(f"--compare wants LABEL=EP1,EP2, got {item!r}")
        sets.append((label, tuple(e.strip() for e in eps.split(",") if e.strip())))
    return sets


def configs(args: argparse.Namespace) -> list[BenchConfig]:
    tls = (args.cacert, args.cert, args.key) if (args.cacert or args.cert or args.key) else None
    prefill = args.prefill if args.prefill is not None else args.workload in ("range", "delete")
    key_space = args.key_space
    if args.workload == "delete":
        if args.total < 1:
            raise SystemExit("delete needs --total: op i deletes key i, which the prefill wrote")
        key_space = args.total  # exactly the keys the run deletes
    clients = [int(c) for c in str(args.clients).split(",") if c.strip()]
    out = []
    for n in clients:
        for label, eps in _endpoint_sets(args):
            # No process without clients (watch processes also carry watchers).
            procs = max(1, args.procs if args.workload == "watch" else min(args.procs, n))
            out.append(
                BenchConfig(
                    workload=args.workload,
                    endpoints=eps,
                    clients=n,
                    conns=args.conns,
                    procs=procs,
                    total=args.total,
                    duration=args.duration,
                    key_size=args.key_size,
                    val_size=args.val_size,
                    key_space=key_space,
                    consistency=args.consistency,
                    txn_ops=args.txn_ops,
                    rate=args.rate,
                    watchers=args.watchers,
                    watch_streams=args.watch_streams,
                    prefill=prefill,
                    timeout=args.timeout,
                    tls=tls,
                    label=label,
                )
            )
    return out


def schedule(cfgs: list[BenchConfig], repeat: int) -> list[BenchConfig]:
    """The order to run `cfgs` in, `repeat` rounds of each client count.

    On a shared machine throughput drifts by tens of percent within minutes, so one run per set
    compares moments as much as servers. Rounds interleave the sets and alternate which goes
    first, so that drift and run order weigh on every set alike."""
    groups: dict[int, list[BenchConfig]] = {}
    for cfg in cfgs:
        groups.setdefault(cfg.clients, []).append(cfg)
    out: list[BenchConfig] = []
    for group in groups.values():
        for r in range(max(1, repeat)):
            out.extend(group if r % 2 == 0 else reversed(group))
    return out


def _name(cfg: BenchConfig) -> str:
    if cfg.workload == "range":
        return f"range-{cfg.consistency}"
    if cfg.workload == "txn" and cfg.txn_ops > 1:
        return f"txn-{cfg.txn_ops}"
    return cfg.workload


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_table(results: list[Summary], out: TextIO) -> None:
    """One row per run; with --compare, one row per workload/clients and a column group per label."""
    labels = list(dict.fromkeys(r.cfg.label for r in results))
    watch = any(r.cfg.workload == "watch" for r in results)
    if labels == [""]:
        head = [
            "workload",
            "clients",
            "conns",
            "procs",
            "ops",
            "errors",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "client cpu",
        ]
        if watch:
            head += ["events", "events/s", "ev p50 ms", "ev p99 ms"]
        rows = []
        for r in results:
            lat = r.latency_ms
            row = [
                _name(r.cfg),
                str(r.cfg.clients),
                str(r.cfg.effective_conns),
                str(r.cfg.procs),
                str(r.ops),
                str(sum(r.errors.values())),
                _fmt(r.throughput, 1),
                _fmt(lat.get("p50")),
                _fmt(lat.get("p90")),
                _fmt(lat.get("p99")),
                _fmt(lat.get("max")),
                _fmt(r.client_cpu),
            ]
            if watch:
                ev = r.event_latency_ms
                row += [str(r.events), _fmt(r.event_throughput, 1), _fmt(ev.get("p50")), _fmt(ev.get("p99"))]
            rows.append(row)
    else:
        head = ["workload", "clients"]
        for label in labels:
            head += [f"{label} ops/s", f"{label} p50", f"{label} p99", f"{label} err"]
        if len(labels) == 2:
            head.append(f"{labels[1]}/{labels[0]}")
        # Each label's runs of a cell, in the order they ran: run k of every label is round k.
        by_key: dict[tuple[str, int], dict[str, list[Summary]]] = {}
        for r in results:
            by_key.setdefault((_name(r.cfg), r.cfg.clients), {}).setdefault(r.cfg.label, []).append(r)
        rows = []
        for (name, clients), runs in by_key.items():
            row = [name, str(clients)]
            # A label's cell shows its median run (with an even count, the lower middle one).
            group = {
                label: sorted(rs, key=lambda x: x.throughput)[(len(rs) - 1) // 2]
                for label, rs in runs.items()
            }
            for label in labels:
                r = group.get(label)
                row += (
                    [
                        _fmt(r.throughput, 1),
                        _fmt(r.latency_ms.get("p50")),
                        _fmt(r.latency_ms.get("p99")),
                        str(sum(r.errors.values())),
                    ]
                    if r
                    else ["-"] * 4
                )
            if len(labels) == 2:
                pairs = zip(runs.get(labels[0], []), runs.get(labels[1], []))
                ratios = [b.throughput / a.throughput for a, b in pairs if a.throughput]
                if not ratios:
                    row.append("-")
                elif len(ratios) == 1:
                    row.append(_fmt(ratios[0], 2))
                else:  # the median of the rounds' ratios, and their range
                    row.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
            rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line, file=out)
    print("-" * len(line), file=out)
    for row in rows:
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))), file=out
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":  # etcd and etcdstore side by side with etcd's own Go benchmark tool
        from etcdstore.bench.compare import main as compare_main

        return compare_main(argv[1:])
    from etcdstore.bench.runner import run

    args = _parser().parse_args(argv)
    out = sys.stdout
    results: list[Summary] = []
    failed = False
    if args.repeat < 1:
        raise SystemExit("--repeat wants a count of at least 1")
    for cfg in schedule(configs(args), args.repeat):
        label = f"[{cfg.label}] " if cfg.label else ""
        print(f"# {label}{cfg.describe()}", file=out, flush=True)
        try:
            summary = run(cfg)
        except (RuntimeError, ValueError, OSError, TimeoutError) as e:
            print(f"#   failed: {type(e).__name__}: {e}", file=out, flush=True)
            failed = True
            continue
        results.append(summary)
        if summary.errors:
            print(f"#   errors: {summary.errors}", file=out, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(summary.as_dict()) + "\n")
    if results:
        print(file=out)
        print_table(results, out)
    return 1 if failed or not results else 0
