"""The `etcdstore` command.

    etcdstore [etcd flags]                 run a member (flags and ETCD_* variables as etcd's)
    etcdstore snapshot restore FILE ...    build a member data dir from a snapshot (as etcdutl)
    etcdstore snapshot status FILE         hash, revision, total keys, size of a snapshot
    etcdstore bench put|range|txn|watch    drive any etcd endpoint and print throughput/latency
    etcdstore grpc-proxy start [flags]     etcd's gRPC proxy: coalesced watches, range cache (etcd 3.4 flags)
    etcdstore local-cluster [flags]        three members and a grpc-proxy on this machine (etcd's Procfile)
    etcdstore --version
"""

from __future__ import annotations

import sys

from etcdstore import ETCD_VERSION, __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "snapshot":
        from etcdstore.snapshot.cli import main as snapshot_main

        return snapshot_main(argv[1:])
    if argv and argv[0] == "bench":
        from etcdstore.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip() + "\n\nEach subcommand takes --help. A member's flags (as etcd's):\n", flush=True)
        argv = ["--help"]
    if argv and argv[0] == "grpc-proxy":
        from etcdstore.proxy.server import main as proxy_main

        return proxy_main(argv[1:])
    if argv and argv[0] == "local-cluster":
        from etcdstore.localcluster import main as local_cluster_main

        return local_cluster_main(argv[1:])
    if argv and argv[0] in ("version", "--version", "-version"):
        print(f"etcdstore Version: {__version__}\netcd API Version: {ETCD_VERSION}")
        return 0
    return _serve(argv)


def _serve(argv: list[str]) -> int:
    from etcdstore.config import ConfigError, parse_args

    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"etcdstore: error verifying flags, {e}. See 'etcdstore --help'.", file=sys.stderr)
        return 1
    from etcdstore.server.main import run

    return run(cfg)
