"""The node agent (e2e/localkube/nodeagent.py) on the real control plane: pods scheduled by kube-scheduler onto
its Nodes run as local processes, judged through the API (pod status) and from inside the pods."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from localkube.controlplane import ControlPlane
from localkube.nodeagent import NodeAgent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the node agent runs as root")
NODES = ["node-1", "node-2", "node-3"]


@pytest.fixture(scope="module")
def agent(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    a = NodeAgent(
        control_plane,
        nodes=NODES,
        root=tmp_path_factory.mktemp("nodeagent"),
        extra_args=("--backoff-initial", "1", "--backoff-max", "8"),
    )
    a.start()
    yield a
    a.stop()


class Ns:
    """kubectl in one namespace of the test's own."""

    def __init__(self, cp: ControlPlane, agent: NodeAgent, name: str) -> None:
        self.cp, self.agent, self.name = cp, agent, name

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cp.kubectl("-n", self.name, *args, input=input, check=check).stdout

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
        )

    def pod(self, name: str) -> dict[str, Any] | None:
        out = self.cp.kubectl(
            "-n", self.name, "get", "pod", name, "-o", "json", "--ignore-not-found", check=True
        )
        return json.loads(out.stdout) if out.stdout.strip() else None

    def exec(self, pod: str, *command: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "e2e")}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "localkube.nodeagent",
                "exec",
                f"{self.name}/{pod}",
                "--root",
                str(self.agent.root),
                "--",
                *command,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )


@pytest.fixture
def ns(request: pytest.FixtureRequest, control_plane: ControlPlane, agent: NodeAgent) -> Iterator[Ns]:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    control_plane.kubectl("create", "namespace", name)
    yield Ns(control_plane, agent, name)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def cstatus(pod: dict[str, Any] | None, i: int = 0) -> dict[str, Any]:
    return ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[i]


def condition(pod: dict[str, Any] | None, typ: str) -> str | None:
    for c in (pod or {}).get("status", {}).get("conditions") or []:
        if c["type"] == typ:
            return c["status"]
    return None


def pod_manifest(name: str, script: str, *, image: str = "busybox", **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {})},
        "spec": {"containers": [container], **spec},
    }


# -----------------------------------------------------------------------------------------------------------------
def test_nodes_registered_with_capacity_and_leases(control_plane: ControlPlane, agent: NodeAgent) -> None:
    nodes = json.loads(control_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ours = {n["metadata"]["name"]: n for n in nodes if n["metadata"]["name"] in NODES}
    assert sorted(ours) == NODES
    for n in ours.values():
        cap = n["status"]["capacity"]
        assert {"cpu", "memory", "pods", "ephemeral-storage"} <= set(cap)
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    renew = {}
    for name in NODES:
        lease = control_plane.lease(name, namespace="kube-node-lease")
        assert lease is not None and lease["spec"]["holderIdentity"] == name
        renew[name] = lease["spec"]["renewTime"]
    wait_for(
        "a renewed node lease",
        lambda: (
            control_plane.lease("node-1", namespace="kube-node-lease")["spec"]["renewTime"] != renew["node-1"]
        ),
        timeout=30,
    )


def test_secret_env_uid_and_pvc_needs_fs_group(ns: Ns) -> None:
    script = (
        '{ echo "uid=$(id -u) gid=$(id -g) pw=$PW secret=$(cat /etc/secret/password) greet=$GREETING"; '
        "if touch /data/probe 2>/dev/null; then echo WRITE_OK; else echo WRITE_DENIED; fi; "
        'stat -c "data=%u:%g:%a" /data; } > /dev/termination-log'
    )
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"password": "hunter2"},
        }
    )
    for name, sc in (
        ("no-fsgroup", {"runAsUser": 65532, "runAsGroup": 65532}),
        ("fsgroup", {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}),
    ):
        ns.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"data-{name}"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            },
            pod_manifest(
                name,
                script,
                restartPolicy="Never",
                securityContext=sc,
                container={
                    "env": [
                        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "GREETING", "value": "hello-$(ME)"},
                    ],
                    "volumeMounts": [
                        {"name": "secret", "mountPath": "/etc/secret", "readOnly": True},
                        {"name": "data", "mountPath": "/data"},
                    ],
                },
                volumes=[
                    {"name": "secret", "secret": {"secretName": "creds"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": f"data-{name}"}},
                ],
            ),
        )
    msgs = {}
    for name in ("no-fsgroup", "fsgroup"):
        pod = wait_for(
            f"{name} to finish",
            lambda n=name: (p := ns.pod(n)) and p["status"].get("phase") in ("Succeeded", "Failed") and p,
        )
        assert pod["status"]["phase"] == "Succeeded", pod["status"]
        msgs[name] = cstatus(pod)["state"]["terminated"]["message"]
    for name, msg in msgs.items():
        assert f"uid=65532 gid=65532 pw=hunter2 secret=hunter2 greet=hello-{name}" in msg, msg
    assert "WRITE_DENIED" in msgs["no-fsgroup"] and "data=0:0:755" in msgs["no-fsgroup"]
    assert "WRITE_OK" in msgs["fsgroup"] and "data=0:65532:2775" in msgs["fsgroup"]
    pvs = json.loads(ns.cp.kubectl("get", "pv", "-o", "json").stdout)["items"]
    mine = [pv for pv in pvs if pv["spec"]["claimRef"]["namespace"] == ns.name]
    assert len(mine) == 2 and all(pv["spec"]["storageClassName"] == "standard" for pv in mine)


def test_readiness_probe_gates_ready_and_listen_address_is_the_pod_ip(ns: Ns) -> None:
    script = (
        "until [ -f /scratch/go ]; do sleep 0.2; done; "
        "exec python3 -m http.server 8080 --bind 0.0.0.0 --directory /scratch"
    )
    ns.apply(
        pod_manifest(
            "web",
            script,
            image="python:3.11",
            container={
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {
                    "httpGet": {"path": "/", "port": "http"},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
                "volumeMounts": [{"name": "work", "mountPath": "/scratch"}],
            },
            volumes=[{"name": "work", "emptyDir": {}}],
        )
    )
    pod = wait_for(
        "the container to run",
        lambda: (p := ns.pod("web")) and "running" in cstatus(p).get("state", {}) and p,
    )
    # it runs but does not serve: the probe fails (an Unhealthy event), so the pod is not Ready
    wait_for(
        "a failed readiness probe",
        lambda: (
            "Readiness probe failed"
            in ns.kubectl("get", "events", "--field-selector", "involvedObject.name=web", "-o", "json")
        ),
    )
    pod = ns.pod("web")
    assert condition(pod, "Ready") == "False" and cstatus(pod)["ready"] is False
    assert pod["status"]["phase"] == "Running"
    assert ns.exec("web", "touch", "/scratch/go").returncode == 0
    pod = wait_for("Ready", lambda: (p := ns.pod("web")) and condition(p, "Ready") == "True" and p)
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.") and ip != pod["status"]["hostIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/go", timeout=5) as r:  # 0.0.0.0 became the pod IP
        assert r.status == 200


def test_crash_loop_back_off(ns: Ns) -> None:
    ns.apply(pod_manifest("crash", "echo boom; exit 3"))
    seen: list[tuple[int, str]] = []

    def progressed() -> bool:
        st = cstatus(ns.pod("crash"))
        reason = (st.get("state", {}).get("waiting") or {}).get("reason", "")
        seen.append((st.get("restartCount", 0), reason))
        return st.get("restartCount", 0) >= 3 and any(r == "CrashLoopBackOff" for _, r in seen)

    wait_for("3 restarts in CrashLoopBackOff", progressed, timeout=90)
    counts = [c for c, _ in seen]
    assert counts == sorted(counts), counts  # restartCount never goes back
    st = cstatus(ns.pod("crash"))
    assert st["lastState"]["terminated"]["exitCode"] == 3
    wait_for("its log", lambda: _logs(ns, "crash").strip().endswith("boom"))
    assert "boom" in ns.agent.logs(f"{ns.name}/crash", previous=True)
    # kubectl logs: kube-apiserver -> the agent's kubelet API (/containerLogs) on the node's IP
    assert ns.kubectl("logs", "crash", "--previous").strip() == "boom"


def test_unknown_image_gets_image_pull_back_off(ns: Ns) -> None:
    ns.apply(pod_manifest("nope", "true", image="registry.invalid/nothing:1"))
    reasons: set[str] = set()

    def both() -> bool:
        w = cstatus(ns.pod("nope")).get("state", {}).get("waiting") or {}
        reasons.add(w.get("reason", ""))
        return {"ErrImagePull", "ImagePullBackOff"} <= reasons

    wait_for("ErrImagePull then ImagePullBackOff", both, timeout=30)
    assert ns.pod("nope")["status"]["phase"] == "Pending"


def test_statefulset_pods_resolve_each_other(ns: Ns) -> None:
    names = [f"db-{i}" for i in range(3)]
    fqdn = f"db-2.db.{ns.name}.svc.cluster.local"
    check = f"getent hosts db-0.db && getent hosts db-1.db.{ns.name} && getent hosts {fqdn} && getent hosts db-client"
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"app": "db"},
                "ports": [{"name": "http", "port": 8080}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db-client"},
            "spec": {
                "selector": {"app": "db"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 3,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {
                        "securityContext": {"runAsUser": 65532, "fsGroup": 65532},
                        "containers": [
                            {
                                "name": "main",
                                "image": "python:3.11",
                                "command": [
                                    "sh",
                                    "-c",
                                    (
                                        "hostname > /data/hostname && exec python3 -m "
                                        "http.server 8080 --bind 0.0.0.0 --directory /data"
                                    ),
                                ],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {
                                    "exec": {"command": ["sh", "-c", check]},
                                    "periodSeconds": 1,
                                },
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
    )
    # Ready means the readiness probe, run inside each pod, resolved the others' names
    wait_for(
        "3 ready replicas",
        lambda: (
            json.loads(ns.kubectl("get", "sts", "db", "-o", "json")).get("status", {}).get("readyReplicas")
            == 3
        ),
        timeout=120,
    )
    pods = {n: ns.pod(n) for n in names}
    ips = {n: p["status"]["podIP"] for n, p in pods.items()}
    assert len(set(ips.values())) == 3
    out = ns.exec("db-0", "getent", "hosts", fqdn)
    assert out.returncode == 0 and out.stdout.split()[0] == ips["db-2"], out
    assert ns.exec("db-1", "hostname").stdout.strip() == "db-1"
    # the ClusterIP Service reaches a ready pod through the service proxy, by its short name
    fetch = (
        "import urllib.request as u; print(u.urlopen('http://db-client/hostname', timeout=5).read().decode())"
    )
    out = ns.exec("db-0", "python3", "-c", fetch)
    assert out.returncode == 0 and out.stdout.strip() in names, out
    nodes = {p["spec"]["nodeName"] for p in pods.values()}
    assert nodes <= set(NODES)


def test_delete_waits_for_sigterm_handler_then_kills_after_grace(ns: Ns) -> None:
    graceful = (
        "trap 'echo got TERM; until [ -f /scratch/release ]; do sleep 0.1; done; echo bye; exit 0' TERM; "
        "echo started; while true; do sleep 0.2; done"
    )
    stubborn = "trap '' TERM; echo started; while true; do sleep 0.2; done"
    ns.apply(
        pod_manifest(
            "graceful",
            graceful,
            terminationGracePeriodSeconds=60,
            container={"volumeMounts": [{"name": "work", "mountPath": "/scratch"}]},
            volumes=[{"name": "work", "emptyDir": {}}],
        ),
        pod_manifest("stubborn", stubborn, terminationGracePeriodSeconds=1),
    )
    for name in ("graceful", "stubborn"):
        wait_for(f"{name} running", lambda n=name: "started" in _logs(ns, n))
    ns.kubectl("delete", "pod", "graceful", "stubborn", "--wait=false")
    wait_for("SIGTERM handled", lambda: "got TERM" in _logs(ns, "graceful"))
    pod = ns.pod("graceful")
    assert pod is not None and pod["metadata"].get("deletionTimestamp")  # still there: its handler runs
    # stubborn ignores SIGTERM: SIGKILL after its 1 s grace period, then the agent deletes the object
    wait_for("stubborn gone", lambda: ns.pod("stubborn") is None, timeout=30)
    assert ns.pod("graceful") is not None
    assert ns.exec("graceful", "touch", "/scratch/release").returncode == 0
    wait_for("graceful gone", lambda: ns.pod("graceful") is None, timeout=30)
    assert _logs(ns, "graceful").rstrip().endswith("bye")


def _logs(ns: Ns, pod: str) -> str:
    try:
        return ns.agent.logs(f"{ns.name}/{pod}")
    except subprocess.CalledProcessError:
        return ""


def test_init_containers_in_order_then_startup_probe_gates_started(ns: Ns) -> None:
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    pod = pod_manifest(
        "ordered",
        "echo main >> /scratch/order; while true; do sleep 0.2; done",
        container={
            "volumeMounts": mount,
            "startupProbe": {
                "exec": {"command": ["test", "-f", "/scratch/started"]},
                "periodSeconds": 1,
                "failureThreshold": 120,
            },
        },
        volumes=[{"name": "scratch", "emptyDir": {}}],
        initContainers=[
            {
                "name": f"init-{i}",
                "image": "busybox",
                "command": ["sh", "-c", f"echo init-{i} >> /scratch/order"],
                "volumeMounts": mount,
            }
            for i in (1, 2)
        ],
    )
    ns.apply(pod)
    p = wait_for(
        "main running", lambda: (p := ns.pod("ordered")) and "running" in cstatus(p).get("state", {}) and p
    )
    assert condition(p, "Initialized") == "True"
    assert [s["state"]["terminated"]["reason"] for s in p["status"]["initContainerStatuses"]] == [
        "Completed"
    ] * 2
    assert ns.exec("ordered", "cat", "/scratch/order").stdout.split() == ["init-1", "init-2", "main"]
    p = ns.pod("ordered")
    assert (
        cstatus(p)["started"] is False and condition(p, "Ready") == "False"
    )  # the startup probe has not passed
    assert ns.exec("ordered", "touch", "/scratch/started").returncode == 0
    p = wait_for(
        "started and Ready",
        lambda: (
            (p := ns.pod("ordered")) and cstatus(p).get("started") and condition(p, "Ready") == "True" and p
        ),
    )


def test_job_retries_on_failure_then_succeeds(ns: Ns) -> None:
    script = (
        "if [ -f /scratch/tried ]; then echo second; exit 0; fi; touch /scratch/tried; echo first; exit 1"
    )
    ns.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 3,
                "template": {
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "containers": [
                            {
                                "name": "main",
                                "image": "busybox",
                                "command": ["sh", "-c", script],
                                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                            }
                        ],
                        "volumes": [{"name": "scratch", "emptyDir": {}}],
                    }
                },
            },
        }
    )
    job = wait_for(
        "the Job to succeed",
        lambda: (
            (j := json.loads(ns.kubectl("get", "job", "once", "-o", "json")))
            .get("status", {})
            .get("succeeded")
            == 1
            and j
        ),
        timeout=90,
    )
    assert job["status"].get("failed") in (None, 0)
    pods = json.loads(ns.kubectl("get", "pods", "-l", "job-name=once", "-o", "json"))["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Succeeded"
    st = pods[0]["status"]["containerStatuses"][0]
    assert st["restartCount"] == 1 and st["state"]["terminated"]["exitCode"] == 0
    assert st["lastState"]["terminated"]["exitCode"] == 1


def test_pvc_waits_for_consumer_expands_and_is_reclaimed(ns: Ns) -> None:
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "grow"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    claim = json.loads(ns.kubectl("get", "pvc", "grow", "-o", "json"))
    assert (
        claim["spec"]["storageClassName"] == "standard" and claim["status"]["phase"] == "Pending"
    )  # no consumer
    ns.apply(
        pod_manifest(
            "user",
            "while true; do sleep 0.2; done",
            terminationGracePeriodSeconds=1,
            container={"volumeMounts": [{"name": "v", "mountPath": "/scratch"}]},
            volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "grow"}}],
        )
    )
    claim = wait_for(
        "Bound",
        lambda: (
            (c := json.loads(ns.kubectl("get", "pvc", "grow", "-o", "json")))["status"].get("phase")
            == "Bound"
            and c
        ),
    )
    pv = json.loads(ns.cp.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    node = wait_for("the pod bound to a node", lambda: ns.pod("user")["spec"].get("nodeName"))
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [node]  # provisioned where the scheduler put the pod
    path = Path(pv["spec"]["hostPath"]["path"])
    assert path.is_dir() and oct(path.stat().st_mode & 0o7777) == "0o755" and path.stat().st_uid == 0
    ns.kubectl("patch", "pvc", "grow", "-p", '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}')
    wait_for(
        "expanded",
        lambda: (
            json.loads(ns.kubectl("get", "pvc", "grow", "-o", "json"))["status"]
            .get("capacity", {})
            .get("storage")
            == "2Gi"
        ),
    )
    ns.kubectl("delete", "pod", "user")
    ns.kubectl("delete", "pvc", "grow")
    wait_for(
        "the PV and its directory deleted (reclaimPolicy Delete)",
        lambda: (
            not path.exists()
            and not ns.cp.kubectl(
                "get", "pv", pv["metadata"]["name"], "--ignore-not-found", "-o", "name"
            ).stdout.strip()
        ),
    )


def test_failing_liveness_probe_restarts_the_container(ns: Ns) -> None:
    ns.apply(
        pod_manifest(
            "unlive",
            "echo up; while true; do sleep 0.2; done",
            terminationGracePeriodSeconds=1,
            container={
                "ports": [{"name": "nothing", "containerPort": 9}],
                "livenessProbe": {
                    "tcpSocket": {"port": "nothing"},
                    "periodSeconds": 1,
                    "failureThreshold": 2,
                },
            },
        )
    )
    st = wait_for(
        "a restart", lambda: (s := cstatus(ns.pod("unlive"))).get("restartCount", 0) >= 1 and s, timeout=60
    )
    assert st["lastState"]["terminated"]["exitCode"] in (137, 143)  # SIGTERM, or SIGKILL after the grace
    events = ns.kubectl("get", "events", "--field-selector", "involvedObject.name=unlive", "-o", "json")
    assert "Liveness probe failed" in events and "will be restarted" in events


def test_images_map_to_local_programs(ns: Ns) -> None:
    # the store image: ENTRYPOINT etcdstore, args only, its USER 65532; the etcd image: Debian's etcd as root
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "store"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "etcdstore:0.1.0", "args": ["--version"]}],
            },
        },
        pod_manifest(
            "etcd",
            "etcd --version; etcdctl version; id -u",
            image="quay.io/coreos/etcd:v3.4.23",
            restartPolicy="Never",
        ),
    )
    for name in ("store", "etcd"):
        wait_for(
            f"{name} done", lambda n=name: (ns.pod(n) or {}).get("status", {}).get("phase") == "Succeeded"
        )
    assert "etcd API Version: 3.4.23" in _logs(ns, "store")
    assert cstatus(ns.pod("store"))["user"]["linux"]["uid"] == 65532
    out = _logs(ns, "etcd")
    assert "etcd Version: 3.4.23" in out and "etcdctl version: 3.4.23" in out and out.rstrip().endswith("0")


def test_image_paths_stay_visible_under_a_volume_over_the_repository(ns: Ns) -> None:
    # The operator's pod mounts an emptyDir at /tmp; with the repository under /tmp that hid the venv and the
    # pod crash-looped. A real container always sees its image's files: the agent keeps them visible, for the
    # container and for exec probes / `nodeagent exec` entering it.
    repo = Path(__file__).resolve().parents[2]
    top = str(Path("/", repo.parts[1]))  # /tmp for a clone in /tmp, /work for /work/main
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hidden"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "etcdstore:0.1.0",
                        "command": ["python", "-c", "import etcdstore, time; time.sleep(3600)"],
                        "securityContext": {"readOnlyRootFilesystem": True},
                        "readinessProbe": {
                            "exec": {"command": ["etcdstore", "--version"]},
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": top}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }
    )
    wait_for("Ready", lambda: condition(ns.pod("hidden"), "Ready") == "True", timeout=90)
    assert cstatus(ns.pod("hidden"))["restartCount"] == 0
    out = ns.exec("hidden", "sh", "-c", f"etcdstore --version && touch {top}/{ns.name}")
    assert out.returncode == 0 and "etcdstore Version" in out.stdout, out.stdout + out.stderr
    assert not Path(top, ns.name).exists()  # written to the volume, not to the host's directory
