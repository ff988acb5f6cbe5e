"""What the end-to-end tests share: waiting on conditions, kubectl, the providers, and the data checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator


def wait(what: str, check, timeout: float = 300.0, period: float = 1.0):
    """Polls `check` until it returns something truthy; its last result or error is in the timeout message."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
        time.sleep(period)


class Kubectl:
    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300) -> str:
        cmd = ["kubectl", f"--kubeconfig={self.kubeconfig}", f"--namespace={self.namespace}", *args]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self("get", *args, "-o", "json"))

    def apply(self, manifest: dict) -> None:
        self("apply", "-f", "-", input=json.dumps(manifest))


def namespace_name(test_name: str) -> str:
    """A valid namespace name (RFC 1123 label, at most 63) from a test's name, parameters included."""
    name = re.sub(r"[^a-z0-9-]+", "-", test_name.lower().removeprefix("test_")).strip("-")
    return f"e2e-{name}"[:63].rstrip("-")


class Provider:
    """How the tests reach what runs in the cluster."""

    name = ""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    def check_reachable(self) -> None:
        p = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if p.returncode != 0 or p.stdout.strip() != "ok":
            raise RuntimeError(f"provider {self.name}: the API server is not reachable: {p.stderr.strip()}")

    @contextlib.contextmanager
    def endpoint(self, kubectl: Kubectl, target: str, port: int = 2379) -> Iterator[str]:
        """host:port reaching `pod/NAME` or `svc/NAME` at `port`, for as long as the context lasts."""
        raise NotImplementedError

    @contextlib.contextmanager
    def s3(self, kubectl: Kubectl) -> Iterator[tuple[str, str]]:
        """An S3-compatible server (moto) for the test: (URL the cluster's pods use, URL the test uses)."""
        raise NotImplementedError


class LocalProvider(Provider):
    name = "local"

    @contextlib.contextmanager
    def endpoint(self, kubectl: Kubectl, target: str, port: int = 2379) -> Iterator[str]:
        kind, name = target.split("/", 1)
        if kind == "pod":
            ip = wait(
                f"{target} has an IP", lambda: kubectl.json("pod", name).get("status", {}).get("podIP"), 120
            )
        else:
            ip = kubectl.json("service", name)["spec"].get("clusterIP")
            if not ip or ip == "None":
                raise AssertionError(f"{target} has no ClusterIP to reach")
        yield f"{ip}:{port}"

    @contextlib.contextmanager
    def s3(self, kubectl: Kubectl) -> Iterator[tuple[str, str]]:
        # Pods run as processes on this machine: a moto server on loopback is reachable from them as is.
        import sys

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait("moto", lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, 60, 0.3)
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


class KindProvider(Provider):
    name = "kind"

    @contextlib.contextmanager
    def endpoint(self, kubectl: Kubectl, target: str, port: int = 2379) -> Iterator[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local = s.getsockname()[1]
        cmd = [
            "kubectl",
            f"--kubeconfig={kubectl.kubeconfig}",
            f"--namespace={kubectl.namespace}",
            "port-forward",
            target,
            f"{local}:{port}",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(
                "port-forward",
                lambda: socket.create_connection(("127.0.0.1", local), 1).close() or True,
                30,
                0.5,
            )
            yield f"127.0.0.1:{local}"
        finally:
            proc.terminate()
            proc.wait(10)

    @contextlib.contextmanager
    def s3(self, kubectl: Kubectl) -> Iterator[tuple[str, str]]:
        labels = {"app": "moto"}
        kubectl.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "moto"},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "moto",
                                    "image": "motoserver/moto:5.1.4",
                                    "ports": [{"containerPort": 5000}],
                                }
                            ]
                        },
                    },
                },
            }
        )
        kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "moto"},
                "spec": {"selector": labels, "ports": [{"port": 5000}]},
            }
        )
        kubectl("rollout", "status", "deployment/moto", "--timeout=300s")
        with self.endpoint(kubectl, "svc/moto", 5000) as ep:
            yield f"http://moto.{kubectl.namespace}.svc:5000", f"http://{ep}"


PROVIDERS = {"local": LocalProvider, "kind": KindProvider}


# -- EtcdCluster state ---------------------------------------------------------------------------------------


def etcd_cluster(name: str, engine: str, **spec) -> dict:
    return {
        "apiVersion": "etcdstore.io/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": name},
        "spec": {"engine": engine, "storage": {"size": "256Mi"}, **spec},
    }


def cluster_status(kubectl: Kubectl, name: str) -> dict:
    return kubectl.json("etcdcluster", name).get("status") or {}


def available(kubectl: Kubectl, name: str, replicas: int, timeout: float = 600.0) -> dict:
    """Waits until the cluster is Available, not Progressing, with `replicas` ready voting members."""

    def check():
        st = cluster_status(kubectl, name)
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        voters = [m for m in st.get("members") or [] if not m.get("learner")]
        ok = (
            conds.get("Available") == "True"
            and conds.get("Progressing") == "False"
            and st.get("readyReplicas") == replicas
            and len(voters) == replicas
            and len(st.get("members") or []) == replicas
        )
        return st if ok else None

    return wait(f"{name} available with {replicas} members", check, timeout, 2.0)


def members_gone(kubectl: Kubectl, name: str) -> bool:
    """The cluster's StatefulSet and member pods are gone. Selecting on `app.kubernetes.io/instance` alone is not
    enough: the pods of an on-demand backup's Job carry it too (component `backup`), and they belong to the
    EtcdBackup, which outlives the cluster."""
    return (
        kubectl("get", "statefulset", name, "--ignore-not-found", "-o", "name").strip() == ""
        and kubectl(
            "get",
            "pod",
            "-l",
            f"app.kubernetes.io/instance={name},app.kubernetes.io/component=member",
            "-o",
            "name",
        ).strip()
        == ""
    )


def assert_pod_security_restricted(kubectl: Kubectl) -> None:
    """The test's namespace carries `pod-security.kubernetes.io/enforce: restricted` and the API server
    enforces it: a pod that may run as root, with no security context, is refused (a server-side dry run goes
    through admission)."""
    ns = kubectl.namespace
    labels = kubectl.json("namespace", ns)["metadata"].get("labels") or {}
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", f"namespace {ns}: {labels}"
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "psa-probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }

    def refused() -> bool:
        try:
            kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(probe))
        except AssertionError as e:
            if "violates PodSecurity" in str(e):
                return True
            raise
        return False  # admitted: the namespace's labels may not have reached the admission plugin yet

    wait(f"namespace {ns} to refuse a pod that violates Pod Security restricted", refused, 30, 1.0)


def refused_update(kubectl: Kubectl, target: str, patch: dict) -> str:
    """The API server's refusal of a merge patch (server-side dry run: nothing changes either way)."""
    try:
        kubectl("patch", target, "--type=merge", "--dry-run=server", "-p", json.dumps(patch))
    except AssertionError as e:
        return str(e)
    raise AssertionError(f"the API server accepted {patch} on {target}")


def evict(kubectl: Kubectl, pod: str) -> tuple[bool, str]:
    """Ask for the eviction of `pod` through the Eviction API, as `kubectl drain` does: (allowed, message)."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": kubectl.namespace},
    }
    path = f"/api/v1/namespaces/{kubectl.namespace}/pods/{pod}/eviction"
    try:
        kubectl("create", "--raw", path, "-f", "-", input=json.dumps(body))
    except AssertionError as e:
        return False, str(e)
    return True, ""


REJOIN_DEADLINE = 5.0  # seconds; "about a second" (issue 14 item 14), with room for a shared 2-core machine


def rejoin_seconds(
    provider: Provider, kubectl: Kubectl, pod: str, old: dict, timeout: float = 300.0
) -> float:
    """After the member pod `old` (its object before deletion) was deleted: waits for its replacement and
    returns the seconds from the replacement member's first answer to Status until it knows the leader, i.e.
    until the leader's messages reach it at its new address under the old name. The replacement must have a
    new pod IP (what the measurement is about)."""
    import grpc
    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    def replaced() -> dict | None:
        p = kubectl.json("pod", pod)
        meta, st = p["metadata"], p.get("status") or {}
        if meta["uid"] == old["metadata"]["uid"] or meta.get("deletionTimestamp") or not st.get("podIP"):
            return None
        return p if provider.name == "local" or st.get("phase") == "Running" else None

    new = wait(f"{pod} recreated", replaced, timeout, 0.2)
    old_ip = (old.get("status") or {}).get("podIP")
    assert new["status"]["podIP"] != old_ip, f"{pod} came back at its old IP {old_ip}: nothing to show"
    with provider.endpoint(kubectl, f"pod/{pod}") as ep, grpc.insecure_channel(ep) as ch:
        stub = rpc_pb2_grpc.MaintenanceStub(ch)
        deadline = time.monotonic() + timeout
        serving: float | None = None
        while True:
            try:
                leader = stub.Status(rpc_pb2.StatusRequest(), timeout=1.0).leader
                now = time.monotonic()
                serving = serving or now
                if leader:
                    return now - serving
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pod} did not hear from the leader within {timeout:.0f}s (serving: {serving})"
                )
            time.sleep(0.05)


def member_ids(status: dict) -> dict[str, str]:
    return {m["name"]: m["id"] for m in status.get("members") or []}


@contextlib.contextmanager
def member_endpoints(provider, kubectl: Kubectl, name: str) -> Iterator[dict[str, str]]:
    """{member pod: host:port} for every member in the cluster's status."""
    with contextlib.ExitStack() as stack:
        pods = sorted(member_ids(cluster_status(kubectl, name)))
        yield {pod: stack.enter_context(provider.endpoint(kubectl, f"pod/{pod}")) for pod in pods}


# -- data checks --------------------------------------------------------------------------------------------


class DataCheck:
    """Keys written before every step are read back after it, from every member, at one revision.

    `write(step)` puts a batch of keys through the client Service; `verify(endpoints)` waits until every member
    serves the same revision, reads all keys written so far from each member (serializable, at that revision:
    what that member holds), compares them with what was acknowledged, and checks that HashKV agrees on all
    members at that revision."""

    PREFIX = "e2e-data/"
    # While a ContinuousClient runs, the batches are written through it (recorded in its history, under the
    # traffic's key prefix), so that its checker accounts for every revision; see `write`.
    RECORDED_PREFIX = "/rb/e2e-data/"

    def __init__(self, per_step: int = 20) -> None:
        self.per_step = per_step
        self.expected: dict[str, str] = {}

    def write(self, endpoint: str, step: str, recorder: ContinuousClient | None = None) -> None:
        """With `recorder`, the puts are operations of the continuous client's history: its checker requires
        every revision between the first and last it saw to hold one of its events (a put of another client
        is a gap it cannot explain), and checks these puts for linearizability with the rest."""
        if recorder is not None:
            items = [(f"{self.RECORDED_PREFIX}{step}/{i:03d}", f"{step}-{i}") for i in range(self.per_step)]
            recorder.put(endpoint, items)
            self.expected.update(items)
            return

        from etcdstore.client import Client

        async def put() -> None:
            async with Client([endpoint], timeout=15) as c:
                for i in range(self.per_step):
                    key, value = f"{self.PREFIX}{step}/{i:03d}", f"{step}-{i}"
                    await c.put(key, value)
                    self.expected[key] = value

        asyncio.run(put())

    def verify(self, endpoints: dict[str, str], timeout: float = 120.0) -> int:
        from etcdstore.client import Client

        async def snapshot(ep: str, revision: int | None) -> tuple[int, dict[str, str], int | None]:
            async with Client([ep], timeout=15) as c:
                status = await c.status()
                rev = revision or status.header.revision
                got = {}
                for prefix in (self.PREFIX, self.RECORDED_PREFIX):
                    r = await c.get(prefix, prefix=True, serializable=True, revision=rev)
                    got.update({kv.key.decode(): kv.value.decode() for kv in r.kvs})
                h = (await c.hash_kv(rev)).hash if revision else None
                return status.header.revision, got, h

        async def settle() -> int:
            revs = [(await snapshot(ep, None))[0] for ep in endpoints.values()]
            if len(set(revs)) != 1:
                raise AssertionError(f"members at different revisions: {dict(zip(endpoints, revs))}")
            return revs[0]

        revision = wait("members at one revision", lambda: asyncio.run(settle()), timeout, 1.0)
        results = {pod: asyncio.run(snapshot(ep, revision)) for pod, ep in endpoints.items()}
        for pod, (_, got, _) in results.items():
            missing = {k: v for k, v in self.expected.items() if got.get(k) != v}
            assert not missing, f"{pod} lost acknowledged keys at revision {revision}: {sorted(missing)[:10]}"
        hashes = {pod: h for pod, (_, _, h) in results.items()}
        assert len(set(hashes.values())) == 1, f"HashKV differs at revision {revision}: {hashes}"
        return revision


# -- a continuous client whose history is checked for linearizability ---------------------------------------


class ContinuousClient:
    """The robustness suite's recorded traffic, run in a thread against the client Service for the length of
    a scenario; `check(endpoints)` collects every member's event log and final state and runs the
    linearizability and watch checkers over the history."""

    def __init__(self, endpoint: str, seed: int = 1, rate: float = 30.0) -> None:
        import threading

        from robustness.traffic import Traffic, TrafficConfig

        self.traffic = Traffic(
            [endpoint],
            TrafficConfig(clients_per_member=3, rate=rate, timeout=5.0, watchers_per_member=1),
            seed,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="e2e-traffic")

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.traffic.start(), self.loop).result(60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.traffic.stop(), self.loop).result(120)

    def put(self, endpoint: str, items: list[tuple[str, str]]) -> None:
        """Puts `items` in order through `endpoint` as operations of the recorded history (one client of their
        own); each must be acknowledged."""
        from etcdstore.client import Client
        from robustness.history import OK, PUT, TXN, Request
        from robustness.traffic import execute

        async def run() -> None:
            async with Client([endpoint], timeout=15) as c:
                for key, value in items:
                    o = self.traffic._new(-100, TXN, "put")
                    o.success = (Request(PUT, key.encode(), value=value.encode()),)
                    await execute(c, o)
                    if o.status != OK:
                        raise AssertionError(f"put {key} ({o.status}): {o.error}")

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(120)

    def check(self, endpoints: dict[str, str]):
        from robustness import checker
        from robustness.history import History
        from robustness.traffic import collect_logs, final_state

        async def collect() -> History:
            tr = self.traffic
            final_rev = await _settled_revision(endpoints)
            await tr.final_reads(list(endpoints.values()))
            final_rev = await _settled_revision(endpoints)
            stragglers = await tr.finish_watchers(final_rev)
            assert not stragglers, f"watchers {stragglers} did not deliver up to revision {final_rev}"
            h = History(meta={"target": "e2e"})
            h.operations, h.watchers = tr.operations, tr.watchers
            h.logs = await collect_logs(endpoints, final_rev)
            h.final_state = await final_state(endpoints, final_rev)
            h.final_revision = final_rev
            return h

        history = asyncio.run_coroutine_threadsafe(collect(), self.loop).result(300)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        report = checker.check(history)
        ops = report.operations
        assert ops["ok"] > 0, f"the continuous client got no operation through: {ops}"
        assert report.ok, report.format()
        return report


async def _settled_revision(endpoints: dict[str, str], timeout: float = 60.0) -> int:
    from etcdstore.client import Client

    deadline = time.monotonic() + timeout
    while True:
        revs = []
        for ep in endpoints.values():
            async with Client([ep], timeout=10) as c:
                revs.append((await c.status()).header.revision)
        if len(set(revs)) == 1:
            return revs[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"members did not converge: {revs}")
        await asyncio.sleep(0.5)
