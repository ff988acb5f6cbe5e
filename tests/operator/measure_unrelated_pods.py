"""Issue 14 item 11, measured: the operator's memory and CPU with and without 2,000 unrelated pods.

    .venv/bin/python tests/operator/measure_unrelated_pods.py [--pods 2000] [--seconds 60] [--workdir DIR]

Starts a real control plane (e2e/localkube: kube-apiserver, controller-manager, scheduler on an
etcdstore member; no node agent, so every pod stays Pending), installs the CRDs, runs the
operator (`python -m etcdoperator run --standalone -A`) with one EtcdCluster to reconcile, and
samples the operator process's RSS and CPU time (/proc) once a second:
  baseline   --seconds with only the cluster's own objects;
  creating   while --pods unrelated pods are created (half in the cluster's namespace);
  after      --seconds with them in place.
The same is sampled for a control process, started next to the operator: an unfiltered list +
watch of every pod, parsing each event and keeping nothing (what a client-side label filter, such
as kopf's `labels=`, costs before it can drop an object). It shows the method sees that cost.
Prints one JSON document. Not a test (no thresholds): numbers for docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "e2e"))

from etcdoperator.kube import PODS, Kube
from localkube.controlplane import ControlPlane

CLK = os.sysconf("SC_CLK_TCK")
NS = "measure"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def sample(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    rss: dict[str, list[int]] = {k: [] for k in pids}
    c0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    while time.monotonic() - t0 < seconds:
        for k, p in pids.items():
            rss[k].append(rss_bytes(p))
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    return {k: summary(rss[k], cpu_seconds(p) - c0[k], elapsed) for k, p in pids.items()}


def summary(rss: list[int], cpu: float, elapsed: float) -> dict[str, float]:
    mib = [r / 2**20 for r in rss]
    return {
        "seconds": round(elapsed, 1),
        "rss_mib_mean": round(statistics.mean(mib), 1),
        "rss_mib_max": round(max(mib), 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_percent_of_one_core": round(100 * cpu / elapsed, 2),
    }


CONTROL = """
import asyncio, sys
from etcdoperator.kube import PODS, Kube

async def main():
    kube = Kube.from_kubeconfig(sys.argv[1])
    n = 0
    async for _event in kube.watch(PODS, None, labels={}):
        n += 1

asyncio.run(main())
"""


def unrelated_pod(i: int, ns: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"unrelated-{i:04d}", "namespace": ns, "labels": {"app": "unrelated"}},
        "spec": {
            "nodeSelector": {"etcdstore.io/no-such-node": "true"},
            "containers": [{"name": "c", "image": "registry.invalid/none:1"}],
        },
    }


async def create_pods(kubeconfig: Path, n: int) -> None:
    kube = Kube.from_kubeconfig(str(kubeconfig))
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        ns = NS if i % 2 == 0 else "unrelated"
        async with sem:
            await kube.create(PODS, ns, unrelated_pod(i, ns))

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await kube.close()


def list_bytes(cp: ControlPlane, *args: str) -> int:
    return len(cp.kubectl("get", "pods", *args, "-o", "json").stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--service-cidr", default="127.98.0.0/16")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="measure-op-"))
    cp = ControlPlane(workdir / "cp", service_cidr=args.service_cidr)
    op = None
    result: dict = {"pods": args.pods}
    try:
        cp.start()
        for f in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
            cp.kubectl("apply", "--server-side", "-f", str(f))
        cp.kubectl("wait", "--for=condition=Established", "crd/etcdclusters.etcdstore.io", "--timeout=60s")
        cp.kubectl("create", "namespace", NS)
        cp.kubectl("create", "namespace", "unrelated")
        cluster = {
            "apiVersion": "etcdstore.io/v1alpha1",
            "kind": "EtcdCluster",
            "metadata": {"name": "c", "namespace": NS},
            "spec": {"replicas": 1},
        }
        cp.kubectl("apply", "-f", "-", input=json.dumps(cluster))
        env = {**cp.env(), "PYTHONUNBUFFERED": "1"}
        log = open(workdir / "operator.log", "w")  # noqa: SIM115
        op = subprocess.Popen(
            [sys.executable, "-m", "etcdoperator", "run", "--standalone", "-A"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        control = subprocess.Popen(
            [sys.executable, "-c", CONTROL, str(cp.kubeconfig)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "control.log", "w"),  # noqa: SIM115 - the child keeps it
        )
        time.sleep(args.warmup)  # startup, first reconcile steps (measurement, not a test)
        assert op.poll() is None, (workdir / "operator.log").read_text()[-3000:]
        assert control.poll() is None, (workdir / "control.log").read_text()[-3000:]
        pids = {"operator": op.pid, "control_unfiltered_watch": control.pid}
        result["baseline"] = sample(pids, args.seconds)
        rss = {k: [rss_bytes(p)] for k, p in pids.items()}
        c0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        asyncio.run(create_pods(cp.kubeconfig, args.pods))
        time.sleep(2.0)
        for k, p in pids.items():
            rss[k].append(rss_bytes(p))
        result["creating"] = {
            k: summary(rss[k], cpu_seconds(p) - c0[k], time.monotonic() - t0) for k, p in pids.items()
        }
        result["after"] = sample(pids, args.seconds)
        assert op.poll() is None, (workdir / "operator.log").read_text()[-3000:]
        control.terminate()
        sel = "app.kubernetes.io/managed-by=etcd-operator,app.kubernetes.io/component=member"
        result["pods_list_bytes_all"] = list_bytes(cp, "-A")
        result["pods_list_bytes_member_selector"] = list_bytes(cp, "-A", "-l", sel)
        result["pods_total"] = len(json.loads(cp.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"])
        status = (
            json.loads(cp.kubectl("get", "etcdcluster", "c", "-n", NS, "-o", "json").stdout).get("status")
            or {}
        )
        result["cluster_phase"] = status.get("phase")
        result["operator_log_lines"] = len((workdir / "operator.log").read_text().splitlines())
    finally:
        if op is not None and op.poll() is None:
            op.terminate()
            try:
                op.wait(timeout=30)
            except subprocess.TimeoutExpired:
                op.kill()
        cp.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
