"""The `etcdoperator` command.

    etcdoperator run [--namespace NS ... | --all-namespaces] [--standalone] [--liveness URL]
                     [--metrics-port PORT] [--verbose]        run the operator (kopf)
    etcdoperator backup ...                                   take one backup (backup Jobs run this)
    etcdoperator restore-member ...                           seed a new cluster from a backup (init container)
    etcdoperator manifests crds | sync [ROOT]                 print the CRDs / write them into the tree
    etcdoperator version
"""

from __future__ import annotations

import argparse
import logging
import sys

from etcdoperator import __version__


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="etcdoperator run")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="serve this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    p.add_argument("--standalone", action="store_true", help="no kopf peering (run exactly one replica)")
    p.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)

    import kopf
    from prometheus_client import start_http_server

    from etcdoperator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    logging.getLogger("etcdoperator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("grpc").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    kopf.run(
        standalone=args.standalone,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _run(rest)
    if cmd == "backup":
        from etcdoperator.backup_runner import main as backup_main

        return backup_main(rest)
    if cmd == "restore-member":
        from etcdoperator.restore_runner import main as restore_main

        return restore_main(rest)
    if cmd == "manifests":
        from etcdoperator.manifests import main as manifests_main

        return manifests_main(rest)
    if cmd in ("version", "--version"):
        print(f"etcdoperator {__version__}")
        return 0
    print(f"etcdoperator: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
