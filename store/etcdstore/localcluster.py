"""`etcdstore local-cluster`: etcd's documented local cluster (its Procfile: three members
infra1..3 and a grpc-proxy) in one command, with no process manager to install.

    etcdstore local-cluster [--data-dir DIR] [--port-offset N] [--no-proxy] [--logs]

Members: infra1..3, clients on 127.0.0.1:2379 / 22379 / 32379, peers on 2380 / 22380 / 32380,
data in DIR/infra1.etcd ... (kept between runs, as with the Procfile); the grpc-proxy on
127.0.0.1:23790 in front of all three. Each process logs to DIR/<name>.log (or, with --logs,
to this terminal, each line prefixed with its name as goreman/honcho do). The endpoints are printed
once every member has a leader and the proxy answers. Ctrl-C (SIGINT) or SIGTERM stops all four
and waits for them; if one of them exits the others are stopped too; the children are also told
by the kernel to stop if this process dies (PR_SET_PDEATHSIG via setpriv), so none is left behind.

The repo's top-level Procfile is `procfile()` below (a test keeps the two the same), so
`honcho start` / `goreman start` run exactly these processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
MEMBERS = (("infra1", 2379, 2380), ("infra2", 22379, 22380), ("infra3", 32379, 32380))
PROXY_PORT = 23790
TOKEN = "etcd-cluster-1"


@dataclass
class Proc:
    name: str
    args: list[str]
    client: str
    peer: str = ""
    popen: subprocess.Popen | None = None


def commands(offset: int = 0, exe: list[str] | None = None, proxy: bool = True) -> list[Proc]:
    """The four processes of etcd's Procfile (ports shifted by `offset`)."""
    exe = exe or ["etcdstore"]
    cluster = ",".join(f"{n}=http://{HOST}:{p + offset}" for n, _, p in MEMBERS)
    procs = []
    for name, client, peer in MEMBERS:
        c, p = f"http://{HOST}:{client + offset}", f"http://{HOST}:{peer + offset}"
        procs.append(
            Proc(
                name,
                exe
                + [
                    "--name",
                    name,
                    "--listen-client-urls",
                    c,
                    "--advertise-client-urls",
                    c,
                    "--listen-peer-urls",
                    p,
                    "--initial-advertise-peer-urls",
                    p,
                    "--initial-cluster-token",
                    TOKEN,
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                    "--enable-pprof",
                    "--logger=zap",
                    "--log-outputs=stderr",
                ],
                c,
                p,
            )
        )
    if proxy:
        eps = ",".join(f"{HOST}:{c + offset}" for _, c, _ in MEMBERS)
        addr = f"{HOST}:{PROXY_PORT + offset}"
        procs.append(
            Proc(
                "proxy",
                exe
                + [
                    "grpc-proxy",
                    "start",
                    f"--endpoints={eps}",
                    f"--listen-addr={addr}",
                    f"--advertise-client-url={addr}",
                    "--enable-pprof",
                ],
                f"http://{addr}",
            )
        )
    return procs


def procfile(offset: int = 0, exe: str = ".venv/bin/etcdstore") -> str:
    """The text of the repo's Procfile (etcd's, with etcdstore; ports shifted by `offset`)."""
    lines = [
        "# etcd's local cluster (etcd's own Procfile, run by etcdstore): three members and a grpc-proxy.",
        "# Start it with a goreman-compatible runner from the repo top: `honcho start` (pip install honcho)",
        "# or `goreman start`; or without any runner: `.venv/bin/etcdstore local-cluster`.",
    ]
    for i, proc in enumerate(commands(offset, [exe])):
        label = f"etcd{i + 1}" if proc.name != "proxy" else "proxy"
        args = [a if "," not in a or a.startswith("--") else f"'{a}'" for a in proc.args]
        lines.append(f"{label}: " + " ".join(args))
    return "\n".join(lines) + "\n"


def _die_with_parent() -> list[str]:
    """A command prefix that has the kernel SIGTERM the child when this process dies (Linux
    PR_SET_PDEATHSIG, set by util-linux's setpriv before exec; no Python code runs between fork and
    exec). The signal follows the spawning thread: spawn from the main thread."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _ready(procs: list[Proc], deadline: float) -> bool:
    import grpc

    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    pending = list(procs)
    while pending and time.monotonic() < deadline:
        p = pending[0]
        if p.popen is not None and p.popen.poll() is not None:
            return False
        try:
            with grpc.insecure_channel(p.client.split("://", 1)[1]) as ch:
                st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1.0)
            if st.leader:
                pending.pop(0)
                continue
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    return not pending


def _pump(name: str, stream, width: int) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{name:<{width}} | {line.decode('utf-8', 'replace')}")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="etcdstore local-cluster",
        description="Start etcd's documented local cluster (three members infra1..3 on client ports 2379, "
        "22379, 32379 and peer ports 2380, 22380, 32380, and a grpc-proxy on 23790), print the "
        "endpoints, and stop all of them on Ctrl-C or SIGTERM. The same processes as the repo's "
        "Procfile, without goreman or honcho.",
    )
    ap.add_argument(
        "--data-dir", default=".", help="directory for the members' data dirs and logs (default: .)"
    )
    ap.add_argument(
        "--port-offset", type=int, default=0, help="add N to every port (to run beside another cluster)"
    )
    ap.add_argument("--no-proxy", action="store_true", help="start the three members only")
    ap.add_argument(
        "--logs", action="store_true", help="print every process's log here instead of DIR/NAME.log"
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the cluster to serve")
    args = ap.parse_args(argv)

    os.makedirs(args.data_dir, exist_ok=True)
    procs = commands(args.port_offset, [sys.executable, "-m", "etcdstore"], proxy=not args.no_proxy)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    width = max(len(p.name) for p in procs)
    pumps = []
    try:
        for p in procs:
            if args.logs:
                out = subprocess.PIPE
            else:
                out = open(os.path.join(args.data_dir, f"{p.name}.log"), "ab")  # noqa: SIM115
            # Own session: a terminal's Ctrl-C reaches this process only, which stops the children in order.
            p.popen = subprocess.Popen(
                _die_with_parent() + p.args,
                cwd=args.data_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            if args.logs:
                t = threading.Thread(target=_pump, args=(p.name, p.popen.stdout, width), daemon=True)
                t.start()
                pumps.append(t)
            else:
                out.close()
        members = [p for p in procs if p.name != "proxy"]
        if not _ready(members, time.monotonic() + args.timeout) or not _ready(
            [p for p in procs if p.name == "proxy"], time.monotonic() + args.timeout
        ):
            if not stop.is_set():
                failed = [p.name for p in procs if p.popen is not None and p.popen.poll() is not None]
                print(
                    f"etcdstore local-cluster: not serving (exited: {', '.join(failed) or 'none'}); "
                    f"see the logs in {os.path.abspath(args.data_dir)}",
                    file=sys.stderr,
                )
                return 1
            return 0
        eps = ",".join(p.client.split("://", 1)[1] for p in members)
        print(
            f"etcdstore local cluster is serving ({len(members)} members"
            f"{' and a grpc-proxy' if len(procs) > len(members) else ''}; data and logs in "
            f"{os.path.abspath(args.data_dir)}):"
        )
        for p in procs:
            extra = f"  peer {p.peer}" if p.peer else ""
            print(f"  {p.name:<7} client {p.client}{extra}  pid {p.popen.pid if p.popen else '?'}")
        print(f"endpoints: {eps}")
        if len(procs) > len(members):
            print(f"proxy:     {procs[-1].client.split('://', 1)[1]}")
        print(f"try:       ETCDCTL_API=3 etcdctl --endpoints {eps} endpoint status -w table")
        print("Ctrl-C stops all.", flush=True)
        while not stop.is_set():
            if any(p.popen is not None and p.popen.poll() is not None for p in procs):
                gone = [p.name for p in procs if p.popen is not None and p.popen.poll() is not None]
                print(
                    f"etcdstore local-cluster: {', '.join(gone)} exited; stopping the others", file=sys.stderr
                )
                return 1
            stop.wait(0.2)
        return 0
    finally:
        _stop_all(procs)
        print("etcdstore local-cluster: stopped", flush=True)


def _stop_all(procs: list[Proc]) -> None:
    for p in reversed(procs):  # the proxy first, then the members
        if p.popen is not None and p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        if p.popen is None:
            continue
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
