"""python -m localkube up|down|env|status|node-kubeconfig   (PYTHONPATH=e2e; or e2e/localkube.sh)

up    start a control plane in --workdir and return, leaving it running (state in
      WORKDIR/localkube.json, pids in WORKDIR/localkube.pids)
env   print `export KUBECONFIG=...; export PATH=<k8s bin dir>:$PATH` for eval
down  stop everything recorded in WORKDIR (also what a crashed test left there)
status  print the state file and which recorded processes still run
node-kubeconfig NAME  print the path of a kubeconfig for system:node:NAME
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .controlplane import PID_FILE, STATE_FILE, ControlPlane, attach, down, write_kubeconfig
from .nodeagent import NodeAgent, stop_recorded
from .pki import PKI
from .procs import _start_time

DEFAULT_WORKDIR = Path(os.environ.get("LOCALKUBE_WORKDIR", "/tmp/localkube"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="localkube", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["up", "down", "env", "status", "node-kubeconfig"])
    ap.add_argument("name", nargs="?", help="node name (node-kubeconfig)")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"data, certificates, logs (default {DEFAULT_WORKDIR}, or $LOCALKUBE_WORKDIR)",
    )
    ap.add_argument("--store", choices=["etcdstore", "etcd"], default="etcdstore")
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--compaction-interval", default=None, help="kube-apiserver --etcd-compaction-interval")
    ap.add_argument("--service-cidr", default="127.96.0.0/16")
    ap.add_argument("--fresh", action="store_true", help="up: delete the work dir first")
    ap.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="up: also start the node agent with this many Nodes (node-1..N) that run pods as processes",
    )
    args = ap.parse_args(argv)
    workdir: Path = args.workdir.resolve()

    if args.command == "up":
        if (workdir / STATE_FILE).exists():
            print(f"localkube: stopping the control plane already recorded in {workdir}", file=sys.stderr)
            stop_recorded(workdir / "nodeagent")
            down(workdir)
        if args.fresh:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        cp = ControlPlane(
            workdir,
            store=args.store,
            members=args.members,
            compaction_interval=args.compaction_interval,
            service_cidr=args.service_cidr,
            die_with_parent=False,
        )
        cp.start()
        print(
            f"localkube: {args.store} x{args.members}, kube-apiserver at {cp.server}, "
            f"up in {cp.startup_seconds:.1f} s",
            file=sys.stderr,
        )
        if args.nodes:
            nodes = [f"node-{i}" for i in range(1, args.nodes + 1)]
            NodeAgent(cp, nodes, workdir / "nodeagent", die_with_parent=False).start()
            print(f"localkube: node agent running {', '.join(nodes)}", file=sys.stderr)
        print(f"export KUBECONFIG={shlex.quote(str(cp.kubeconfig))}")
        return 0
    if args.command == "down":
        stop_recorded(workdir / "nodeagent")
        stopped = down(workdir)
        print(f"localkube: stopped {', '.join(stopped) or 'nothing'}", file=sys.stderr)
        return 0
    if args.command == "env":
        state = attach(workdir)
        print(f"export KUBECONFIG={shlex.quote(state['kubeconfig'])}")
        print(f'export PATH={shlex.quote(state["bin_dir"])}:"$PATH"')
        return 0
    if args.command == "status":
        if not (workdir / STATE_FILE).exists():
            print(f"localkube: no control plane recorded in {workdir}")
            return 1
        state = attach(workdir)
        print(json.dumps(state, indent=2))
        records = [json.loads(line) for line in (workdir / PID_FILE).read_text().splitlines() if line.strip()]
        for r in records:
            alive = _start_time(r["pid"]) == r.get("start")
            print(f"{r['name']:28} pid {r['pid']:>7}  {'running' if alive else 'gone'}")
        return 0
    if args.command == "node-kubeconfig":
        if not args.name:
            ap.error("node-kubeconfig needs a node name")
        state = attach(workdir)
        path = workdir / f"node-{args.name}.kubeconfig"
        if not path.exists():
            pki = PKI(workdir / "pki")
            write_kubeconfig(
                path,
                state["server"],
                pki.ca.cert_pem(),
                pki.node_client(args.name),
                f"system:node:{args.name}",
            )
        print(path)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
