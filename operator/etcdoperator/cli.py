"""The `etcdoperator` command.

etcdoperator run [--namespace NS ... | --all-namespaces] [--standalone] [--liveness URL]
                 [--metrics-port PORT] [--verbose]        run the operator (kopf)
etcdoperator backup ...                                   take one backup (backup Jobs run this)
etcdoperator restore-member fetch|finish ...              steps of the restore Job (seed from a backup)
etcdoperator member-gate ...                              refuse an empty data dir without a join ticket (init container)
etcdoperator manifests crds | sync [ROOT]                 print the CRDs / write them into the tree
etcdoperator version
"""

from __future__ import annotations

import argparse
import logging
import sys

from etcdoperator import __version__

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class NoCluster(Exception):
    """No Kubernetes API to talk to: said in one line, not a traceback."""


def find_cluster(env: dict[str, str], home: str, token_file: str = SERVICE_ACCOUNT_TOKEN) -> tuple[str, str]:
    """(API server URL, where it came from): the pod's service account, else the kubeconfig
    (KUBECONFIG, else ~/.kube/config) - the places kopf logs in from."""
    import os

    import yaml

    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if host and os.path.exists(token_file):
        return f"https://{host}:{port}", "the pod's service account"
    paths = [p for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p] or [
        os.path.join(home, ".kube", "config")
    ]
    existing = [p for p in paths if os.path.isfile(p)]
    if not existing:
        raise NoCluster(
            "no Kubernetes cluster configured: not in a pod (no service account) and no kubeconfig "
            f"({', '.join(paths)} not found; set KUBECONFIG)"
        )
    try:
        config = yaml.safe_load(open(existing[0]).read()) or {}  # noqa: SIM115
        context = next(
            c["context"] for c in config.get("contexts") or [] if c["name"] == config.get("current-context")
        )
        cluster = next(c["cluster"] for c in config.get("clusters") or [] if c["name"] == context["cluster"])
        return str(cluster["server"]), existing[0]
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError) as e:
        raise NoCluster(
            f"kubeconfig {existing[0]} has no usable current context ({type(e).__name__}: {e})"
        ) from None


def check_reachable(server: str, source: str, *, attempts: int = 3, timeout: float = 5.0) -> None:
    """Any HTTP answer from the API server will do (kopf authenticates later)."""
    import asyncio
    import time

    import aiohttp

    async def probe() -> None:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(server.rstrip("/") + "/version", ssl=False),
        ):
            pass

    error: Exception | None = None
    for attempt in range(attempts):
        try:
            asyncio.run(probe())
            return
        except (TimeoutError, OSError, aiohttp.ClientError) as e:
            error = e
            if attempt + 1 < attempts:
                time.sleep(2.0)
    raise NoCluster(f"cannot reach the Kubernetes API server {server} (from {source}): {error}")


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="etcdoperator run")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="serve this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    p.add_argument("--standalone", action="store_true", help="no kopf peering (run exactly one replica)")
    p.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)"
    )
    p.add_argument(
        "--metrics-address", default="0.0.0.0", help="address the metrics port listens on (default 0.0.0.0)"
    )
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)

    import os

    try:
        server, source = find_cluster(dict(os.environ), os.path.expanduser("~"))
        check_reachable(server, source)
    except NoCluster as e:
        print(f"etcdoperator: {e}", file=sys.stderr)
        return 2

    import kopf
    from prometheus_client import start_http_server

    from etcdoperator import handlers  # registers the handlers

    handlers.STATE.namespaces = list(args.namespace)

    kopf.configure(verbose=args.verbose)
    logging.getLogger("etcdoperator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("grpc").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
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
    if cmd == "member-gate":
        from etcdoperator.gate import main as gate_main

        return gate_main(rest)
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
