"""The `etcdstore` command: a member (etcd's flags), and the subcommands in USAGE."""

from __future__ import annotations

import sys

from etcdstore import ETCD_VERSION, __version__

USAGE = """\
Usage:

  etcdstore [flags]
    Start an etcd-compatible member (flags and ETCD_* environment variables as etcd's; below).

  etcdstore --version
    Show the version of etcdstore and of the etcd API it serves.

  etcdstore -h | --help
    Show this help.

  etcdstore snapshot restore FILE [flags]
    Build a member's data dir from a snapshot (etcd's or etcdstore's), as etcdctl snapshot restore.

  etcdstore snapshot status FILE
    Show the hash, revision, total keys and size of a snapshot.

  etcdstore grpc-proxy start [flags]
    Run etcd's v3 gRPC L7 reverse proxy (coalesced watches, range cache; etcd 3.4's flags).

  etcdstore local-cluster [flags]
    Run three members and a grpc-proxy on this machine (etcd's Procfile), print the endpoints.

  etcdstore bench put|range|txn|delete|watch [flags]
    Drive any etcd endpoint and print throughput and latency.

  etcdstore bench compare [flags]
    Real etcd 3.4 and etcdstore side by side, measured with etcd's own benchmark tool.

Each subcommand takes --help. Environment variables etcdstore reads: docs/configuration.md.

"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "snapshot":
        from etcdstore.snapshot.cli import main as snapshot_main

        return snapshot_main(argv[1:])
    if argv and argv[0] == "bench":
        from etcdstore.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] in ("-h", "-help", "--help", "help"):
        from etcdstore.config import flags_help

        print(USAGE + flags_help(), end="", flush=True)
        return 0
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
    # --discovery / --discovery-srv: the initial cluster, before the member starts.
    from etcdstore import discovery, logs

    logs.setup(cfg.log_level)
    try:
        discovery.resolve(cfg)
    except ConfigError as e:
        print(f"etcdstore: {e}", file=sys.stderr)
        return 1
    from etcdstore.member import run

    return run(cfg)
