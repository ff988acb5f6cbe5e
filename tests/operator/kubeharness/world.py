"""A whole stand-in cluster for one test: API server, controllers+kubelet, the operator process.

The operator runs as a real subprocess (`python -m etcdoperator run`), configured by a kubeconfig
that points at the KMock server, so failpoints can crash it (os._exit) and a test can restart it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import kmock
from etcdoperator import crd
from etcdstore.client import Client, TLSConfig
from testlib import free_port

from kubeharness.apiserver import ApiServer
from kubeharness.cluster import Harness

VENV_BIN = Path(sys.executable).parent
ETCD_CLUSTERS = "etcdstore.io/v1alpha1/etcdclusters"
ETCD_BACKUPS = "etcdstore.io/v1alpha1/etcdbackups"


def member_binaries(member_binary: str) -> dict[str, list[str]]:
    etcdstore = shutil.which("etcdstore") or str(VENV_BIN / "etcdstore")
    return {
        "etcd": [member_binary if member_binary != "etcdstore" else shutil.which("etcd") or "/usr/bin/etcd"],
        "etcdstore": [etcdstore],
        "etcdctl": [shutil.which("etcdctl") or "/usr/bin/etcdctl"],
        "etcdoperator": [sys.executable, "-m", "etcdoperator"],
    }


class OperatorProcess:
    def __init__(self, world: World) -> None:
        self.world = world
        self.proc: asyncio.subprocess.Process | None = None
        self.log = world.root / "operator.log"
        self.starts = 0
        self.metrics_port = free_port()
        self.liveness_port = free_port()

    async def start(self, **extra_env: str) -> None:
        assert self.proc is None or self.proc.returncode is not None
        env = dict(self.world.base_env)
        env.update(
            {
                "KUBECONFIG": str(self.world.kubeconfig),
                "ETCDOPERATOR_ADDRESS_MAP": str(self.world.harness.addresses.path),
                "ETCDOPERATOR_SECRETS_DIR": str(self.world.root / "operator-secrets"),
                "ETCDOPERATOR_BUSY_INTERVAL": "0.2",
                "ETCDOPERATOR_IDLE_INTERVAL": "1",
                "ETCDOPERATOR_ERROR_INTERVAL": "1",
                "ETCDOPERATOR_BACKUP_TICK": "1",
                "ETCDOPERATOR_IMAGE": "etcd-operator:test",
                "ETCDOPERATOR_STORE_IMAGE": "etcdstore:test",
                "ETCDOPERATOR_CRASHLOOP_RESTARTS": "3",
            }
        )
        env.update(extra_env)
        self.starts += 1
        with open(self.log, "ab") as f:  # noqa: ASYNC230  (a local file, opened once per start)
            f.write(
                f"\n===== operator start #{self.starts} {time.strftime('%H:%M:%S')} {extra_env}\n".encode()
            )
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "etcdoperator",
                "run",
                "--all-namespaces",
                "--standalone",
                "--verbose",
                f"--metrics-port={self.metrics_port}",
                f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
                stdout=f,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(self.world.root),
            )

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def metrics(self) -> str:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return await r.text()

    async def alive(self) -> bool:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{self.liveness_port}/healthz") as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class World:
    def __init__(self, root: Path, engine: str, member_binary: str) -> None:
        self.root = root
        self.engine = engine
        self.api = ApiServer()
        for c in crd.all_crds():
            self.api.install_crd(c)
        self.server = kmock.Server(self.api)
        self.base_env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(root),
            "PYTHONUNBUFFERED": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "ETCDCTL_API": "3",
        }
        self.binaries = member_binaries(member_binary)
        self.harness: Harness | None = None
        self.operator: OperatorProcess | None = None
        self.kubeconfig = root / "kubeconfig"

    async def __aenter__(self) -> Self:
        await self.api.__aenter__()
        await self.server.__aenter__()
        url = str(self.server.url).rstrip("/")
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
            "users: [{name: operator, user: {token: test-token}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: operator, namespace: default}}]\n"
            "current-context: kmock\n"
        )
        self.harness = Harness(self.api, url, self.root, binaries=self.binaries, base_env=self.base_env)
        await self.harness.start()
        self.operator = OperatorProcess(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.operator is not None:
            await self.operator.stop()
        if self.harness is not None:
            await self.harness.close()
        await self.server.__aexit__(*exc)
        await self.api.__aexit__(*exc)

    # -- objects ------------------------------------------------------------------------------
    def cluster(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        return self.api.get_object(ETCD_CLUSTERS, ns, name)

    def status(self, name: str, ns: str = "default") -> dict[str, Any]:
        return (self.cluster(name, ns) or {}).get("status") or {}

    def condition(self, name: str, ctype: str, ns: str = "default") -> dict[str, Any]:
        return next((c for c in self.status(name, ns).get("conditions") or [] if c.get("type") == ctype), {})

    async def apply(self, resource: str, body: dict[str, Any], ns: str = "default") -> Any:
        body = dict(body)
        body.setdefault("metadata", {}).setdefault("namespace", ns)
        return await self.harness.create(resource, ns, body)

    async def create_cluster(self, name: str, spec: dict[str, Any], ns: str = "default") -> Any:
        spec = dict(spec)
        spec.setdefault("engine", self.engine)
        body = {
            "apiVersion": crd.API_VERSION,
            "kind": crd.CLUSTER_KIND,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
        created = await self.harness.create(ETCD_CLUSTERS, ns, body)
        assert created is not None, f"EtcdCluster {name} was refused"
        return created

    async def patch_spec(self, name: str, spec: dict[str, Any], ns: str = "default") -> Any:
        return await self.harness.patch(ETCD_CLUSTERS, ns, name, {"spec": spec})

    def pods(self, name: str, ns: str = "default") -> dict[str, dict[str, Any]]:
        sel = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=member"
        return {p["metadata"]["name"]: p for p in self.api.list_objects("v1/pods", ns, sel)}

    def claims(self, name: str, ns: str = "default") -> dict[str, dict[str, Any]]:
        sel = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=member"
        return {c["metadata"]["name"]: c for c in self.api.list_objects("v1/persistentvolumeclaims", ns, sel)}

    def events(self, name: str, ns: str = "default") -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.list_objects("v1/events", ns)
            if e.get("involvedObject", {}).get("name") == name
        ]

    # -- members ------------------------------------------------------------------------------
    def client_endpoint(self, pod: str, ns: str = "default", service: str | None = None) -> str:
        svc = service or pod.rsplit("-", 1)[0]
        hp = self.harness.addresses.lookup(f"{pod}.{svc}.{ns}.svc.cluster.local:2379")
        assert hp is not None, f"no address for {pod}"
        return hp

    def client(
        self,
        name: str,
        ns: str = "default",
        *,
        tls: TLSConfig | None = None,
        ordinals: range | None = None,
        **kw: Any,
    ) -> Client:
        pods = sorted(self.pods(name, ns)) if ordinals is None else [f"{name}-{k}" for k in ordinals]
        scheme = "https" if tls else "http"
        return Client(
            [f"{scheme}://{self.client_endpoint(p, ns, name)}" for p in pods], timeout=5, tls=tls, **kw
        )

    # -- waiting ------------------------------------------------------------------------------
    async def wait_for(
        self,
        what: str,
        check: Callable[[], Any | Awaitable[Any]],
        timeout: float = 60.0,
        period: float = 0.25,
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = check()
                if asyncio.iscoroutine(last):
                    last = await last
            except AssertionError as e:
                last = e
            if last and not isinstance(last, AssertionError):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; last: {last!r}\n"
                    f"--- operator log tail ---\n{self.operator.tail() if self.operator else ''}\n"
                    f"--- harness errors ---\n{self.harness.errors[-5:]}"
                )
            if (
                self.operator is not None
                and self.operator.proc is not None
                and self.operator.proc.returncode not in (None, 0)
            ):
                pass  # a crashed operator is what some tests want; they check it themselves
            await asyncio.sleep(period)

    async def wait_available(
        self, name: str, replicas: int, ns: str = "default", timeout: float = 90.0
    ) -> dict[str, Any]:
        def ok() -> Any:
            st = self.status(name, ns)
            avail = self.condition(name, "Available", ns).get("status") == "True"
            prog = self.condition(name, "Progressing", ns).get("status") == "False"
            members = st.get("members") or []
            good = (
                avail
                and prog
                and st.get("readyReplicas") == replicas
                and len(members) == replicas
                and all(m.get("healthy") and not m.get("learner") for m in members)
            )
            # The status can predate a pod restart: also require every member pod to be Ready now.
            pods = self.pods(name, ns)
            ready = len(pods) == replicas and all(
                not p["metadata"].get("deletionTimestamp")
                and any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
                for p in pods.values()
            )
            return st if good and ready else None

        return await self.wait_for(f"{name} Available with {replicas} members", ok, timeout)
