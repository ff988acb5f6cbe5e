"""A real Kubernetes control plane on loopback, as plain processes: the backing store (etcdstore
members by default, or real etcd 3.4), kube-apiserver, kube-controller-manager and kube-scheduler,
with generated certificates, RBAC + Node authorization and a production set of admission plugins.

    with ControlPlane(tmp_path) as cp:                 # etcdstore, one member
        cp.kubectl("get", "ns")
        cp.kubeconfig                                  # admin (system:masters) kubeconfig
        cp.node_kubeconfig("node-1")                   # system:node:node-1 (Node authorizer)

    ControlPlane(dir, store="etcd", members=3, compaction_interval="30s")

Shell: `e2e/localkube.sh up|down|env|status` (see __main__.py and e2e/localkube/README.md).
"""

from __future__ import annotations

import atexit
import base64
import http.client
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import yaml

from . import toolchain
from .pki import PKI, CertPair
from .procs import HOST, Proc, free_port, kill_recorded
from .stores import Store

# Production admission (kubeadm's defaults plus what the issue asks for; the order is not
# significant: kube-apiserver applies them in its own fixed order).
ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "DefaultStorageClass",
    "DefaultTolerationSeconds",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ResourceQuota",
    "PodSecurity",
    "NodeRestriction",
    "OwnerReferencesPermissionEnforcement",
    "StorageObjectInUseProtection",
    "PersistentVolumeClaimResize",
    "Priority",
    "RuntimeClass",
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "TaintNodesByCondition",
    "DefaultIngressClass",
    "ClusterTrustBundleAttest",
)

# kube-controller-manager: every controller enabled by default ("*": statefulset, garbage
# collector, disruption, job, cronjob, PV/PVC protection, namespace, serviceaccount(-token),
# root-ca-cert-publisher, endpoint(slice), replicaset, deployment, csrsigning/approving,
# ttl-after-finished, persistentvolume-expander, podgc, nodelifecycle, taint-eviction,
# resourcequota, ...), as kubeadm runs it; bootstrapsigner/tokencleaner stay off (no bootstrap tokens).
CONTROLLERS = "*"

STATE_FILE = "localkube.json"
PID_FILE = "localkube.pids"


class ControlPlaneError(RuntimeError):
    pass


def write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, pair: CertPair, user: str, cluster: str = "localkube"
) -> Path:
    b64 = lambda b: base64.b64encode(b).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pair.cert_pem()),
                    "client-key-data": b64(pair.key_pem()),
                },
            }
        ],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class Api:
    """A tiny HTTPS client with the admin certificate (health polling, waits; not a k8s client)."""

    def __init__(self, port: int, ca: Path, pair: CertPair) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(pair.cert), str(pair.key))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(HOST, self.port, context=self.ctx, timeout=timeout)
        try:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            conn.request(method, path, body=data, headers={"Content-Type": content_type} if data else {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        return self.request("GET", path, timeout=timeout)

    def get_json(self, path: str, timeout: float = 10.0) -> dict | None:
        try:
            status, body = self.get(path, timeout)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None


class ControlPlane:
    def __init__(
        self,
        workdir: Path | str,
        store: str = "etcdstore",
        members: int = 1,
        compaction_interval: str | None = None,
        *,
        service_cidr: str = "127.96.0.0/16",
        advertise_address: str = "127.0.0.1",
        bin_dir: Path | None = None,
        die_with_parent: bool = True,
        watch_cache_sizes: tuple[str, ...] = (),
        apiserver_args: tuple[str, ...] = (),
        controller_manager_args: tuple[str, ...] = (),
        scheduler_args: tuple[str, ...] = (),
        store_args: tuple[str, ...] = (),
        node_monitor_grace_period: str = "20s",
        toleration_seconds: int = 60,
        verbosity: int = 2,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.store_kind = store
        self.members = members
        self.compaction_interval = compaction_interval
        self.service_cidr = service_cidr
        self.advertise_address = advertise_address
        self._bin_dir = bin_dir
        self.die_with_parent = die_with_parent
        self.watch_cache_sizes = watch_cache_sizes
        self.apiserver_args = apiserver_args
        self.controller_manager_args = controller_manager_args
        self.scheduler_args = scheduler_args
        self.store_args = store_args
        self.node_monitor_grace_period = node_monitor_grace_period
        self.toleration_seconds = toleration_seconds
        self.verbosity = verbosity
        self.store: Store | None = None
        self.apiserver: Proc | None = None
        self.controller_manager: Proc | None = None
        self.scheduler: Proc | None = None
        self.port: int | None = None
        self.pki: PKI | None = None
        self.api: Api | None = None
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._atexit = False

    # --- facts -----------------------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = toolchain.require_bin_dir()
        return self._bin_dir

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def pidfile(self) -> Path:
        return self.workdir / PID_FILE

    @property
    def service_ip(self) -> str:
        """The first address of the service range: the `kubernetes` Service's ClusterIP."""
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm/the operator: KUBECONFIG and the binaries on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # --- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> ControlPlane:
        t0 = time.monotonic()
        bins = self.bin_dir  # resolve (maybe build) before the clock matters
        self.workdir.mkdir(parents=True, exist_ok=True)
        kill_recorded(self.pidfile)  # whatever a crashed run left in this work dir
        if self.die_with_parent and not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self._start(bins, t0, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        self._write_state()
        return self

    def _mark(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)

    def _start(self, bins: Path, t0: float, timeout: float) -> None:
        deadline = t0 + timeout
        self.pki = PKI.create(self.workdir / "pki", service_ip=self.service_ip)
        self._mark("pki", t0)
        self.store = Store(
            self.store_kind,
            self.members,
            self.workdir,
            self.pidfile,
            die_with_parent=self.die_with_parent,
            extra_args=self.store_args,
        )
        self.store.start(timeout=max(5.0, deadline - time.monotonic()))
        self._mark("store healthy", t0)

        self.port = free_port()
        write_kubeconfig(
            self.kubeconfig, self.server, self.pki.ca.cert_pem(), self.pki.client("admin"), "admin"
        )
        kcm_kc = write_kubeconfig(
            self.workdir / "kube-controller-manager.kubeconfig",
            self.server,
            self.pki.ca.cert_pem(),
            self.pki.client("kube-controller-manager"),
            "system:kube-controller-manager",
        )
        sched_kc = write_kubeconfig(
            self.workdir / "kube-scheduler.kubeconfig",
            self.server,
            self.pki.ca.cert_pem(),
            self.pki.client("kube-scheduler"),
            "system:kube-scheduler",
        )
        self.api = Api(self.port, self.pki.ca.cert, self.pki.client("admin"))

        self.apiserver = Proc(
            "kube-apiserver",
            self._apiserver_argv(bins),
            self.logs / "kube-apiserver.log",
            self.pidfile,
            die_with_parent=self.die_with_parent,
        )
        self.apiserver.start()
        self._wait("kube-apiserver /readyz", deadline, lambda: self._ok("/readyz"))
        self._mark("apiserver ready", t0)
        # Started once the apiserver is ready: before its RBAC bootstrap, both exit at once on a
        # forbidden read of kube-system/extension-apiserver-authentication (a kubelet would restart them).
        self.controller_manager = Proc(
            "kube-controller-manager",
            self._kcm_argv(bins, kcm_kc),
            self.logs / "kube-controller-manager.log",
            self.pidfile,
            die_with_parent=self.die_with_parent,
        )
        self.controller_manager.start()
        self.scheduler = Proc(
            "kube-scheduler",
            self._scheduler_argv(bins, sched_kc),
            self.logs / "kube-scheduler.log",
            self.pidfile,
            die_with_parent=self.die_with_parent,
        )
        self.scheduler.start()
        self._wait(
            "Service default/kubernetes",
            deadline,
            lambda: self.api.get_json("/api/v1/namespaces/default/services/kubernetes") is not None,
        )
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._wait(f"Lease kube-system/{name}", deadline, lambda n=name: bool(self.lease_holder(n)))
        self._mark("leases held", t0)
        self._wait(
            "ServiceAccount default/default",
            deadline,
            lambda: self.api.get_json("/api/v1/namespaces/default/serviceaccounts/default") is not None,
        )
        self._mark("ready", t0)

    def _ok(self, path: str) -> bool:
        try:
            return self.api.get(path, timeout=5)[0] == 200
        except OSError:
            return False

    def _wait(self, what: str, deadline: float, cond) -> None:
        while True:
            for p in (self.apiserver, self.controller_manager, self.scheduler):
                if p is not None and p.popen is not None and not p.running:
                    raise ControlPlaneError(
                        f"{p.name} exited with {p.exit_code()} while waiting for {what}:\n{p.tail(40)}"
                    )
            if cond():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out waiting for {what}; logs in {self.logs}")
            time.sleep(0.2)

    def _apiserver_argv(self, bins: Path) -> list[str]:
        pki = self.pki
        assert pki is not None and self.store is not None
        argv = [
            str(bins / "kube-apiserver"),
            f"--v={self.verbosity}",
            f"--etcd-servers={','.join(self.store.client_urls)}",
            f"--bind-address={HOST}",
            f"--advertise-address={self.advertise_address}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--kubelet-client-certificate={pki.client('apiserver-kubelet-client').cert}",
            f"--kubelet-client-key={pki.client('apiserver-kubelet-client').key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
            "--allow-privileged=true",
            f"--default-not-ready-toleration-seconds={self.toleration_seconds}",
            f"--default-unreachable-toleration-seconds={self.toleration_seconds}",
            "--profiling=false",
            "--enable-bootstrap-token-auth=false",
            # The endpoint reconciler would write 127.0.0.1 into Endpoints/EndpointSlice
            # default/kubernetes, which validation refuses ("may not be in the loopback range"), every
            # 10 s. The Service (ClusterIP = first address of the range) is still created.
            "--endpoint-reconciler-type=none",
        ]
        if self.compaction_interval:
            argv.append(f"--etcd-compaction-interval={self.compaction_interval}")
        if self.watch_cache_sizes:
            argv.append(f"--watch-cache-sizes={','.join(self.watch_cache_sizes)}")
        return argv + list(self.apiserver_args)

    def _kcm_argv(self, bins: Path, kubeconfig: Path) -> list[str]:
        pki = self.pki
        assert pki is not None
        return [
            str(bins / "kube-controller-manager"),
            f"--v={self.verbosity}",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={free_port()}",
            "--leader-elect=true",
            f"--controllers={CONTROLLERS}",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--cluster-name=localkube",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--allocate-node-cidrs=false",
            "--node-monitor-period=5s",
            f"--node-monitor-grace-period={self.node_monitor_grace_period}",
            "--terminated-pod-gc-threshold=100",
            "--profiling=false",
        ] + list(self.controller_manager_args)

    def _scheduler_argv(self, bins: Path, kubeconfig: Path) -> list[str]:
        return [
            str(bins / "kube-scheduler"),
            f"--v={self.verbosity}",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={free_port()}",
            "--leader-elect=true",
            "--profiling=false",
        ] + list(self.scheduler_args)

    def stop(self) -> None:
        """Stop everything this control plane started (SIGTERM, then SIGKILL after 10 s)."""
        for p in (self.scheduler, self.controller_manager, self.apiserver):
            if p is not None:
                p.stop()
        if self.store is not None:
            self.store.stop()
        # Anything recorded that our handles do not cover (e.g. a member restarted by a test).
        kill_recorded(self.pidfile)
        state = self.workdir / STATE_FILE
        if state.exists():
            state.unlink()

    def _write_state(self) -> None:
        assert self.store is not None
        state = {
            "server": self.server,
            "port": self.port,
            "kubeconfig": str(self.kubeconfig),
            "ca": str(self.ca_file),
            "bin_dir": str(self.bin_dir),
            "store": self.store_kind,
            "members": self.members,
            "etcd_servers": self.store.client_urls,
            "service_cidr": self.service_cidr,
            "service_ip": self.service_ip,
            "startup_seconds": round(self.startup_seconds or 0, 2),
            "pids": {p.name: p.pid for p in self.processes() if p.pid},
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def processes(self) -> list[Proc]:
        procs = [m.proc for m in self.store.members] if self.store else []
        return procs + [p for p in (self.apiserver, self.controller_manager, self.scheduler) if p]

    # --- clients ---------------------------------------------------------------------------------
    def node_kubeconfig(self, name: str) -> Path:
        """A kubeconfig for a node agent: user system:node:<name> in group system:nodes, so its
        requests go through the Node authorizer and NodeRestriction admission as a kubelet's do."""
        assert self.pki is not None, "start() first"
        path = self.workdir / f"node-{name}.kubeconfig"
        if not path.exists():
            write_kubeconfig(
                path, self.server, self.pki.ca.cert_pem(), self.pki.node_client(name), f"system:node:{name}"
            )
        return path

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for any user and groups (e.g. to test RBAC as a non-admin)."""
        assert self.pki is not None, "start() first"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        path = self.workdir / f"user-{safe}.kubeconfig"
        write_kubeconfig(path, self.server, self.pki.ca.cert_pem(), self.pki.user_client(user, groups), user)
        return path

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess:
        argv = [self.binary("kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def lease(self, name: str, namespace: str = "kube-system") -> dict | None:
        assert self.api is not None
        return self.api.get_json(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")

    def lease_holder(self, name: str, namespace: str = "kube-system") -> str | None:
        lease = self.lease(name, namespace)
        return (lease or {}).get("spec", {}).get("holderIdentity") or None


def attach(workdir: Path | str) -> dict:
    """The state a running `localkube up` wrote (server, kubeconfig, pids, ...)."""
    return json.loads((Path(workdir) / STATE_FILE).read_text())


def down(workdir: Path | str) -> list[str]:
    """Stop what a `localkube up` (or a crashed test) started in `workdir`."""
    workdir = Path(workdir)
    stopped = kill_recorded(workdir / PID_FILE)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def remove(workdir: Path | str) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
