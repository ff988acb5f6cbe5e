"""The localkube node agent: kubelets without a container runtime, for a real kube-apiserver.

    PYTHONPATH=e2e python -m localkube.nodeagent --kubeconfig-dir WORKDIR --nodes node-1,node-2,node-3 --root DIR
    PYTHONPATH=e2e python -m localkube.nodeagent logs NAMESPACE/POD [-c CONTAINER] [-p] [--root DIR]
    PYTHONPATH=e2e python -m localkube.nodeagent exec NAMESPACE/POD [-c CONTAINER] -- COMMAND...

WORKDIR is a localkube control plane's directory: `admin.kubeconfig` (cluster add-ons: service proxy, names,
volume provisioner) and `node-<name>.kubeconfig` per node (made from the control plane's PKI when missing),
whose client certificate is system:node:<name> in system:nodes: each node's kubelet work (Node, Lease, its
pods, their Secrets/ConfigMaps/claims/tokens, pods/status, deletes) goes through the Node authorizer and
NodeRestriction like a real kubelet's. One process serves all nodes (run as root: containers get their own
mount/UTS namespaces and users). From Python: `NodeAgent(control_plane, nodes=[...], root=Path).start()` runs
it as a subprocess. Behaviour and limits: e2e/README.md, section "Node agent".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import dns
from .nodeagent_images import masks
from .nodeagent_kube import ApiError, Informer, Kube, now_iso, now_micro
from .nodeagent_pod import PODEXEC, PodRuntime
from .nodeagent_server import PORT as KUBELET_PORT
from .nodeagent_server import KubeletServer
from .provisioner import Provisioner
from .svcproxy import ServiceProxy

log = logging.getLogger("localkube.nodeagent")
Obj = dict[str, Any]
KUBELET_VERSION = "v1.34.4"
READY_FILE = "agent.ready"
LEASE_SECONDS = 40


class ClusterView:
    """What CoreDNS and kube-proxy watch (with the admin identity): Services, pods, EndpointSlices."""

    def __init__(self, kube: Kube, on_change: Any) -> None:
        self.svc = Informer(kube, "/api/v1/services", on_change=on_change, name="services")
        self.pod = Informer(kube, "/api/v1/pods", on_change=on_change, name="pods")
        self.eps = Informer(
            kube, "/apis/discovery.k8s.io/v1/endpointslices", on_change=on_change, name="endpointslices"
        )

    def start(self) -> None:
        for i in (self.svc, self.pod, self.eps):
            i.start()

    async def wait_synced(self) -> None:
        for i in (self.svc, self.pod, self.eps):
            await i.synced.wait()

    async def stop(self) -> None:
        for i in (self.svc, self.pod, self.eps):
            await i.stop()

    def services(self) -> list[Obj]:
        return self.svc.list()

    def service(self, ns: str, name: str) -> Obj | None:
        return self.svc.get(ns, name)

    def pods(self) -> list[Obj]:
        return self.pod.list()

    def slices(self, ns: str, name: str) -> list[Obj]:
        return [
            s
            for s in self.eps.list(ns)
            if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
        ]


def _meminfo_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 8 * 1024 * 1024


class NodeKubelet:
    """One Node: registration, heartbeats (status and Lease), and the pods bound to it."""

    def __init__(self, agent: Agent, name: str, index: int, kubeconfig: Path) -> None:
        self.agent, self.name, self.index = agent, name, index
        self.kube = Kube(kubeconfig, user_agent=f"localkube-nodeagent/{name}")
        self.allocatable = {
            "cpu": str(agent.cpu),
            "memory": agent.memory,
            "pods": str(agent.max_pods),
            "ephemeral-storage": agent.ephemeral,
        }
        self.pods: dict[str, PodRuntime] = {}  # by uid
        self._ips: dict[str, str] = {}  # uid -> ip
        self._next_ip = 2
        self.informer = Informer(
            self.kube,
            "/api/v1/pods",
            params={"fieldSelector": f"spec.nodeName={name}"},
            on_change=self._on_pod,
            name=f"pods@{name}",
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.node_uid = ""
        self.server = KubeletServer(self)

    @property
    def ip(self) -> str:
        """The node's InternalIP: 127.<block + i>.0.1 (pods get 127.<block + i>.x.y)."""
        return f"127.{self.agent.block + self.index}.0.1"

    # -- pod IPs ---------------------------------------------------------------------------------------------
    def allocate_ip(self, uid: str, previous: str | None) -> str:
        prefix = f"127.{self.agent.block + self.index}."
        if uid in self._ips:
            return self._ips[uid]
        used = set(self._ips.values())
        if previous and previous.startswith(prefix) and previous not in used:
            self._ips[uid] = previous
            return previous
        for _ in range(65000):
            n = self._next_ip
            self._next_ip = 2 if n >= 65000 else n + 1
            ip = f"{prefix}{n >> 8}.{n & 255}"
            if ip not in used and (n & 255) not in (0, 255):
                self._ips[uid] = ip
                return ip
        raise RuntimeError("no pod IP left")

    def release_ip(self, uid: str) -> None:
        self._ips.pop(uid, None)

    # -- the Node ----------------------------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        now = now_iso()
        conds = [
            {
                "type": "MemoryPressure",
                "status": "False",
                "reason": "KubeletHasSufficientMemory",
                "message": "kubelet has sufficient memory available",
            },
            {
                "type": "DiskPressure",
                "status": "False",
                "reason": "KubeletHasNoDiskPressure",
                "message": "kubelet has no disk pressure",
            },
            {
                "type": "PIDPressure",
                "status": "False",
                "reason": "KubeletHasSufficientPID",
                "message": "kubelet has sufficient PID available",
            },
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "localkube node agent is posting ready status",
            },
        ]
        for c in conds:
            c["lastHeartbeatTime"] = now
            c.setdefault("lastTransitionTime", self.agent.started_iso)
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": conds,
            "addresses": [
                {"type": "InternalIP", "address": self.ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "machineID": f"localkube-{self.name}",
                "systemUUID": f"localkube-{self.name}",
                "bootID": self.agent.boot_id,
                "kernelVersion": os.uname().release,
                "osImage": "localkube node agent (processes)",
                "containerRuntimeVersion": "localkube://0.1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                },
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {},
        }
        try:
            out = await self.kube.create("/api/v1/nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
            out = await self.kube.get(f"/api/v1/nodes/{self.name}")
        self.node_uid = out["metadata"]["uid"]
        await self._post_status()
        await self._renew_lease()

    async def _post_status(self) -> None:
        await self.kube.strategic_patch(f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()})

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        try:
            await self.kube.merge_patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            await self.kube.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.node_uid}
                        ],
                    },
                    "spec": spec,
                },
            )

    async def _heartbeat(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(10)
            n += 1
            try:
                await self._renew_lease()
                if n % 3 == 0:
                    await self._post_status()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.warning("node %s heartbeat: %s", self.name, e)

    async def start(self) -> None:
        await self.server.start()
        await self.register()
        self._tasks.append(asyncio.create_task(self._heartbeat(), name=f"heartbeat {self.name}"))
        self.informer.start()
        await self.informer.synced.wait()

    # -- pods ------------------------------------------------------------------------------------------------
    async def _on_pod(self, typ: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        rt = self.pods.get(uid)
        if typ == "DELETED":
            if rt is not None:  # deleted without us (force delete): kill at once
                rt.gone = True
                self._tasks.append(asyncio.create_task(self._finish(rt, grace=0.0, delete=False)))
            return
        if rt is None:
            if meta.get("deletionTimestamp"):
                await self._delete_pod(pod)
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            rt = PodRuntime(self, pod)
            self.pods[uid] = rt
            self.agent.runtimes[uid] = rt
            rt.start()
            return
        rt.update(pod)
        if meta.get("deletionTimestamp") and not rt.terminating:
            grace = float(
                meta.get("deletionGracePeriodSeconds")
                if meta.get("deletionGracePeriodSeconds") is not None
                else pod["spec"].get("terminationGracePeriodSeconds", 30)
            )
            self._tasks.append(asyncio.create_task(self._finish(rt, grace=grace, delete=True)))

    async def _finish(self, rt: PodRuntime, *, grace: float, delete: bool) -> None:
        try:
            await rt.terminate(grace)
            if delete:
                with contextlib.suppress(Exception):
                    await rt.flush_status()
                await self._delete_pod(rt.pod)
        finally:
            await rt.close()
            self.pods.pop(rt.uid, None)
            self.agent.runtimes.pop(rt.uid, None)
            shutil.rmtree(rt.dir / "volumes", ignore_errors=True)
            self.agent.schedule_refresh()

    async def _delete_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.kube.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("delete pod %s/%s: %s", meta["namespace"], meta["name"], e)

    async def stop(self, grace: float) -> None:
        await self.informer.stop()
        await self.server.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(
            *(
                rt.terminate(min(grace, float(rt.pod["spec"].get("terminationGracePeriodSeconds", 30))))
                for rt in self.pods.values()
            ),
            return_exceptions=True,
        )
        await asyncio.gather(*(rt.close() for rt in self.pods.values()), return_exceptions=True)
        await self.kube.close()


class Agent:
    def __init__(
        self,
        *,
        admin_kubeconfig: Path,
        nodes: list[tuple[str, Path]],
        root: Path,
        domain: str = "cluster.local",
        backoff_initial: float = 2.0,
        backoff_max: float = 60.0,
        volume_sync_period: float = 10.0,
        binding_mode: str = "WaitForFirstConsumer",
        cpu: int | None = None,
        memory: str | None = None,
        max_pods: int = 110,
        shutdown_grace: float = 10.0,
        block: int | None = None,
    ) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.domain = domain
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.volume_sync_period = volume_sync_period
        self.cpu = cpu or os.cpu_count() or 2
        self.memory = memory or f"{_meminfo_kib()}Ki"
        st = os.statvfs(self.root)
        self.ephemeral = f"{st.f_frsize * st.f_blocks // 1024}Ki"
        self.max_pods = max_pods
        self.shutdown_grace = shutdown_grace
        self.started_iso = now_iso()
        self.boot_id = f"{os.getpid()}-{int(time.time())}"
        self.admin = Kube(admin_kubeconfig, user_agent="localkube-nodeagent/addons")
        self.cluster = ClusterView(self.admin, lambda *_: self.schedule_refresh())
        self.proxy = ServiceProxy(self.cluster, self.admin.server)
        self.provisioner = Provisioner(self.admin, self.root, binding_mode)
        self.nodes = [NodeKubelet(self, n, i + 1, kc) for i, (n, kc) in enumerate(nodes)]
        self.runtimes: dict[str, PodRuntime] = {}
        if len(nodes) > 9:
            raise ValueError("at most 9 nodes per agent (one address block)")
        self.block = block or 0  # second octet of the agent's addresses, chosen in run() when not given
        self._fixed_block = block
        self.dns: dns.DnsServer | None = None
        self.masks = masks()
        self._refresh = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]  # set in run()
        self._events = asyncio.Semaphore(4)

    # -- names and the service proxy follow the cluster ------------------------------------------------------
    def schedule_refresh(self) -> None:
        self._refresh.set()

    def refresh_hosts(self, rt: PodRuntime) -> None:
        dns.write_in_place(rt.files / "hosts", dns.hosts_file(rt.pod, rt.ip, self.domain))

    async def _refresher(self) -> None:
        while True:
            await self._refresh.wait()
            await asyncio.sleep(0.1)  # coalesce a burst of changes
            self._refresh.clear()
            if self.dns is not None:
                self.dns.records = dns.Records.build(
                    self.cluster.services(), self.cluster.pods(), self.domain
                )
            try:
                await self.proxy.sync()
            except Exception:
                log.exception("service proxy sync")

    @property
    def dns_address(self) -> str:
        return f"127.{self.block}.0.53"

    async def _claim_block(self) -> dns.DnsServer:
        """Take an address block: the DNS server's UDP port 53 on 127.B.0.53 is the lock, so that several agents
        (several clusters) can run on one machine without sharing pod or node addresses."""
        blocks = [self._fixed_block] if self._fixed_block else list(range(100, 250, 10))
        for b in blocks:
            try:
                server = await dns.DnsServer.serve(f"127.{b}.0.53", 53)
            except OSError as e:
                if self._fixed_block:
                    raise
                log.info("address block 127.%d/16 is taken (%s)", b, e)
                continue
            self.block = b
            return server
        raise RuntimeError("no free address block")

    # -- events ----------------------------------------------------------------------------------------------
    def event(self, kube: Kube, pod: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        async def post() -> None:
            meta = pod["metadata"]
            async with self._events:
                with contextlib.suppress(Exception):
                    await kube.create(
                        f"/api/v1/namespaces/{meta['namespace']}/events",
                        {
                            "apiVersion": "v1",
                            "kind": "Event",
                            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                            "involvedObject": {
                                "apiVersion": "v1",
                                "kind": "Pod",
                                "name": meta["name"],
                                "namespace": meta["namespace"],
                                "uid": meta["uid"],
                            },
                            "reason": reason,
                            "message": message[:1024],
                            "type": "Warning" if warning else "Normal",
                            "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
                            "firstTimestamp": now_iso(),
                            "lastTimestamp": now_iso(),
                            "count": 1,
                            "reportingComponent": "kubelet",
                            "reportingInstance": pod["spec"].get("nodeName", ""),
                        },
                    )

        t = asyncio.create_task(post())
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # -- life cycle ------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, force_close=True))
        try:
            self.dns = await self._claim_block()
            self.cluster.start()
            await self.cluster.wait_synced()
            self.dns.records = dns.Records.build(self.cluster.services(), self.cluster.pods(), self.domain)
            await self.provisioner.start()
            await self.proxy.sync()
            self._tasks.append(asyncio.create_task(self._refresher(), name="refresher"))
            await asyncio.gather(*(n.start() for n in self.nodes))
            (self.root / READY_FILE).write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "nodes": [n.name for n in self.nodes],
                        "ips": {n.name: n.ip for n in self.nodes},
                        "dns": self.dns_address,
                    }
                )
            )
            log.info("node agent ready: %s", ", ".join(f"{n.name} ({n.ip})" for n in self.nodes))
            await stop.wait()
        finally:
            (self.root / READY_FILE).unlink(missing_ok=True)
            log.info("node agent stopping")
            await asyncio.gather(*(n.stop(self.shutdown_grace) for n in self.nodes), return_exceptions=True)
            for t in list(self._tasks):
                t.cancel()
            await self.proxy.close()
            if self.dns is not None:
                self.dns.close()
            await self.provisioner.stop()
            await self.cluster.stop()
            await self.http.close()
            await self.admin.close()
            remove_mount_points(self.root / "mountpoints.log")


def remove_mount_points(log_file: Path) -> None:
    """Remove the empty mount points the containers created on the host (deepest first)."""
    try:
        paths = set(log_file.read_text().split())
    except FileNotFoundError:
        return
    for p in sorted(paths, key=lambda p: p.count("/"), reverse=True):
        for _ in range(20):  # EBUSY while a dying container's mount namespace still holds it
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    os.rmdir(p)  # only if empty
                elif os.path.isfile(p) and os.path.getsize(p) == 0:
                    os.unlink(p)
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    break
                time.sleep(0.1)
    log_file.unlink(missing_ok=True)


# -- the command line ------------------------------------------------------------------------------------------
def node_kubeconfig(workdir: Path, node: str) -> Path:
    path = workdir / f"node-{node}.kubeconfig"
    if not path.exists():
        from .controlplane import write_kubeconfig
        from .pki import PKI

        pki = PKI(workdir / "pki")
        server = json.loads((workdir / "localkube.json").read_text())["server"]
        write_kubeconfig(path, server, pki.ca.cert_pem(), pki.node_client(node), f"system:node:{node}")
    return path


def _pod_dir(root: Path, ref: str) -> Path:
    ns, _, name = ref.partition("/")
    if not name:
        ns, name = "default", ns
    dirs = sorted((root / "pods").glob(f"{ns}_{name}_*"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        raise SystemExit(f"no pod {ns}/{name} under {root}/pods")
    return dirs[-1]


def _container(d: Path, name: str | None) -> str:
    names = sorted(p.name for p in (d / "logs").iterdir()) if (d / "logs").is_dir() else []
    if name:
        return name
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        return json.loads((d / "pod.json").read_text())["spec"]["containers"][0]["name"]  # kubectl's default
    if len(names) != 1:
        raise SystemExit(f"choose a container with -c: {' '.join(names) or '(none started)'}")
    return names[0]


def cmd_logs(args: argparse.Namespace) -> int:
    d = _pod_dir(Path(args.root), args.pod)
    c = _container(d, args.container)
    logs = sorted((d / "logs" / c).glob("*.log"), key=lambda p: (p.stat().st_mtime, int(p.stem)))
    if not logs:
        raise SystemExit(f"no logs of container {c}")
    if args.previous:
        if len(logs) < 2:
            raise SystemExit(f"previous terminated container {c!r} not found")
        target = logs[-2]
    else:
        target = logs[-1]
    with open(target, "rb") as f:
        sys.stdout.buffer.write(f.read())
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    d = _pod_dir(Path(args.root), args.pod)
    c = _container(d, args.container)
    spec = json.loads((d / "specs" / f"{c}.json").read_text())
    pid = int((d / "specs" / f"{c}.pid").read_text())
    command = list(args.command)
    prog = shutil.which(command[0], path=spec["env"].get("PATH")) or command[0]
    spec.update({"argv": [prog, *command[1:]], "enter_pid": pid, "mounts": [], "die_with_parent": False})
    tmp = d / "specs" / f"exec-{os.getpid()}.json"
    tmp.write_text(json.dumps(spec))
    try:
        return subprocess.call([sys.executable, "-I", "-S", PODEXEC, str(tmp)])
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    default_root = os.environ.get("LOCALKUBE_NODEAGENT_ROOT", "")
    if argv and argv[0] in ("logs", "exec"):
        p = argparse.ArgumentParser(prog=f"python -m localkube.nodeagent {argv[0]}")
        p.add_argument("pod", help="NAMESPACE/POD")
        p.add_argument("-c", "--container")
        p.add_argument("--root", default=default_root, required=not default_root)
        if argv[0] == "logs":
            p.add_argument("-p", "--previous", action="store_true")
            p.add_argument("-f", "--follow", action="store_true")
            return cmd_logs(p.parse_args(argv[1:]))
        rest = argv[1:]
        cut = rest.index("--") if "--" in rest else len(rest)
        a = p.parse_args(rest[:cut])
        a.command = rest[cut + 1 :]
        if not a.command:
            raise SystemExit("usage: ... exec NAMESPACE/POD [-c CONTAINER] -- COMMAND...")
        return cmd_exec(a)
    p = argparse.ArgumentParser(
        prog="python -m localkube.nodeagent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kubeconfig-dir",
        required=True,
        type=Path,
        help="control plane workdir: admin.kubeconfig and node-<name>.kubeconfig",
    )
    p.add_argument("--nodes", default="node-1", help="comma-separated node names")
    p.add_argument(
        "--root",
        required=not default_root,
        default=default_root,
        type=Path,
        help="the agent's directory (pods, volumes, logs)",
    )
    p.add_argument("--domain", default="cluster.local")
    p.add_argument(
        "--backoff-initial", type=float, default=2.0, help="first CrashLoopBackOff delay (kubelet: 10)"
    )
    p.add_argument("--backoff-max", type=float, default=60.0, help="back-off cap (kubelet: 300)")
    p.add_argument(
        "--volume-binding-mode", default="WaitForFirstConsumer", choices=["WaitForFirstConsumer", "Immediate"]
    )
    p.add_argument(
        "--block",
        type=int,
        default=None,
        help="second octet of the agent's addresses: DNS 127.B.0.53, node i 127.(B+i).0.1 and its pods "
        "127.(B+i).x.y (default: the first free one of 100, 110, ..., 240)",
    )
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--memory", default=None)
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--die-with-parent", action="store_true", help="stop (SIGTERM) when the parent process dies"
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if os.geteuid() != 0:
        raise SystemExit("the node agent runs as root (namespaces, mounts, container users)")
    if a.die_with_parent:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    workdir = a.kubeconfig_dir.resolve()
    names = [n for n in a.nodes.split(",") if n]
    agent_kw = {
        "admin_kubeconfig": workdir / "admin.kubeconfig",
        "nodes": [(n, node_kubeconfig(workdir, n)) for n in names],
        "root": a.root,
        "domain": a.domain,
        "backoff_initial": a.backoff_initial,
        "backoff_max": a.backoff_max,
        "binding_mode": a.volume_binding_mode,
        "cpu": a.cpu,
        "memory": a.memory,
        "block": a.block,
    }

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(**agent_kw).run(stop)

    asyncio.run(run())
    return 0


# -- for pytest and `localkube up` -----------------------------------------------------------------------------
def stop_recorded(root: Path | str, timeout: float = 30.0) -> bool:
    """Stop the agent whose ready file is in `root` (e.g. one `localkube up` left running): SIGTERM, then
    SIGKILL after `timeout`. False when none runs there."""
    ready = Path(root) / READY_FILE
    try:
        pid = int(json.loads(ready.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        ready.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    ready.unlink(missing_ok=True)
    return True


class NodeAgent:
    """The agent as a subprocess: `NodeAgent(cp, nodes=["node-1"], root=dir).start()` ... `.stop()`."""

    def __init__(
        self,
        control_plane: Any,
        nodes: list[str] | tuple[str, ...] = ("node-1",),
        root: Path | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = True,
    ) -> None:
        self.cp = control_plane
        self.workdir = Path(control_plane.workdir if hasattr(control_plane, "workdir") else control_plane)
        self.nodes = list(nodes)
        self.root = Path(root) if root else self.workdir / "nodeagent"
        self.extra_args = extra_args
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = self.root.parent / f"{self.root.name}.log"

    def start(self, timeout: float = 60.0) -> NodeAgent:
        if hasattr(self.cp, "node_kubeconfig"):
            for n in self.nodes:
                self.cp.node_kubeconfig(n)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / READY_FILE).unlink(missing_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
            ),
        }
        argv = [
            sys.executable,
            "-m",
            "localkube.nodeagent",
            "--kubeconfig-dir",
            str(self.workdir),
            "--nodes",
            ",".join(self.nodes),
            "--root",
            str(self.root),
            *self.extra_args,
        ]
        if self.die_with_parent:
            argv.append("--die-with-parent")
        with open(self.log_file, "ab") as logf:
            self.proc = subprocess.Popen(
                argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not (self.root / READY_FILE).exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"node agent exited ({self.proc.returncode}); see {self.log_file}:\n"
                    + self.log_file.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"node agent not ready after {timeout}s; see {self.log_file}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def info(self) -> dict[str, Any]:
        """The ready file: pid, nodes, node IPs, the cluster DNS address."""
        return json.loads((self.root / READY_FILE).read_text())

    def logs(self, pod: str, container: str | None = None, previous: bool = False) -> str:
        argv = [sys.executable, "-m", "localkube.nodeagent", "logs", pod, "--root", str(self.root)]
        if container:
            argv += ["-c", container]
        if previous:
            argv.append("-p")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout

    def __enter__(self) -> NodeAgent:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
