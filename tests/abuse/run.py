"""The long form: every attack (or those named) against etcd and etcdstore, then one table.

    python -m tests.abuse [--duration 20] [--profile long|short] [--targets etcd,etcdstore]
                          [--attacks rapid_reset,...] [--json FILE]

Exit status 1 when, for some attack, etcdstore's availability is below 90% of etcd's in this run
(the issue's bar), or `--max-rss-mb` is given and etcdstore's peak RSS exceeds it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time

from . import attacks as atk
from . import runner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.abuse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per attack (default 20)")
    ap.add_argument(
        "--profile",
        choices=sorted(atk.SIZES),
        default="long",
        help="count bounds of the attacks (connections, streams; default long)",
    )
    ap.add_argument("--targets", default="etcd,etcdstore", help="comma-separated: etcd, etcdstore")
    ap.add_argument(
        "--attacks",
        default="",
        help="comma-separated subset (default: all): " + ", ".join(a.name for a in atk.ATTACKS),
    )
    ap.add_argument("--json", help="write every result here as JSON")
    ap.add_argument(
        "--max-rss-mb", type=float, default=0.0, help="fail when etcdstore's peak RSS exceeds this"
    )
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ("etcd", "etcdstore"):
            ap.error(f"unknown target {t}")
    from testlib import have_etcd  # importable once runner has put tests/ on sys.path

    if "etcd" in targets and not have_etcd():
        ap.error("real etcd not found (apt-get install etcd-server etcd-client)")
    names = [n for n in args.attacks.split(",") if n] or [a.name for a in atk.ATTACKS]
    for n in names:
        if n not in atk.BY_NAME:
            ap.error(f"unknown attack {n}")
    # SIGTERM (timeout, kill) must still stop the members this run started: run the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = runner.default_base_dir()
    results = []
    started = time.monotonic()
    try:
        for n in names:
            for t in targets:
                results.append(runner.run_one(t, n, args.duration, args.profile, base, log=sys.stderr))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{len(names)} attacks x {len(targets)} targets, {args.duration:g} s each, profile {args.profile}, "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    print(runner.format_table(results, targets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=1)
    failed = []
    by = {(r.target, r.attack): r for r in results}
    for n in names:
        mine = by.get(("etcdstore", n))
        ref = by.get(("etcd", n))
        if mine is None:
            continue
        if ref is not None and mine.availability < 0.9 * ref.availability:
            failed.append(f"{n}: availability {mine.availability:.0%} < 90% of etcd's {ref.availability:.0%}")
        if args.max_rss_mb and mine.rss_peak > args.max_rss_mb * (1 << 20):
            failed.append(f"{n}: peak RSS {mine.rss_peak >> 20} MB > {args.max_rss_mb:g} MB")
    for line in failed:
        print("FAIL", line)
    return 1 if failed else 0
