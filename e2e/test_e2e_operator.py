"""End-to-end on kind: the operator installed by Helm, members in real pods and volumes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time

import pytest
from etcdstore.client import Client


def wait(what: str, check, timeout: float = 300.0, period: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as e:
            last = e
        time.sleep(period)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def cluster(kubectl, name: str) -> dict:
    return json.loads(kubectl("get", "etcdcluster", name, "-o", "json"))


def available(kubectl, name: str, replicas: int):
    def check():
        st = cluster(kubectl, name).get("status") or {}
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        ok = conds.get("Available") == "True" and conds.get("Progressing") == "False" \
            and st.get("readyReplicas") == replicas and len(st.get("members") or []) == replicas
        return st if ok else None
    return wait(f"{name} available with {replicas}", check)


def apply(kubectl, manifest: dict) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def etcd_cluster(name: str, engine: str, **spec) -> dict:
    return {"apiVersion": "etcdstore.io/v1alpha1", "kind": "EtcdCluster", "metadata": {"name": name},
            "spec": {"engine": engine, "storage": {"size": "256Mi"}, **spec}}


@contextlib.contextmanager
def port_forward(kubectl, target: str, port: int = 2379):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    cmd = ["kubectl", f"--kubeconfig={kubectl.kubeconfig}", f"--namespace={kubectl.namespace}", "port-forward",
           target, f"{local}:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait("port-forward", lambda: socket.create_connection(("127.0.0.1", local), 1).close() or True, 30, 0.5)
        yield f"127.0.0.1:{local}"
    finally:
        proc.terminate()


def test_create_scale_heal_and_delete(kubectl, engine):
    apply(kubectl, etcd_cluster("e2e", engine, replicas=3))
    st = available(kubectl, "e2e", 3)
    first = {m["name"]: m["id"] for m in st["members"]}
    with port_forward(kubectl, "svc/e2e-client") as ep:
        async def write():
            async with Client([ep], timeout=10) as c:
                for i in range(100):
                    await c.put(f"k{i}", f"v{i}")
        asyncio.run(write())

    kubectl("patch", "etcdcluster", "e2e", "--type=merge", "-p", '{"spec":{"replicas":5}}')
    available(kubectl, "e2e", 5)
    kubectl("scale", "etcdcluster", "e2e", "--replicas=3")  # the scale subresource
    st = available(kubectl, "e2e", 3)
    assert {m["name"]: m["id"] for m in st["members"]} == first
    wait("removed members' volumes deleted", lambda: len(json.loads(kubectl(
        "get", "pvc", "-l", "app.kubernetes.io/instance=e2e", "-o", "json"))["items"]) == 3)

    kubectl("delete", "pod", "e2e-1", "--wait=false")
    st = available(kubectl, "e2e", 3)
    assert {m["name"]: m["id"] for m in st["members"]} == first

    pdb = json.loads(kubectl("get", "pdb", "e2e", "-o", "json"))
    assert pdb["spec"]["minAvailable"] == 2

    kubectl("delete", "etcdcluster", "e2e")
    wait("everything deleted", lambda: kubectl("get", "statefulset,pvc,pod", "-l",
                                               "app.kubernetes.io/instance=e2e", "-o", "name").strip() == "")


def test_auto_tls(kubectl, engine):
    apply(kubectl, etcd_cluster("sec", engine, replicas=3, tls={"client": {"mode": "auto"}, "peer": {"mode": "auto"}}))
    available(kubectl, "sec", 3)
    secret = json.loads(kubectl("get", "secret", "sec-client-tls", "-o", "json"))
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])


@pytest.mark.parametrize("destination", ["pvc"])
def test_backup_and_restore(kubectl, engine, destination):
    apply(kubectl, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "backups"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    apply(kubectl, etcd_cluster("src", engine, replicas=1,
                                backup={"destination": {"pvc": {"claimName": "backups", "path": "b"}}}))
    available(kubectl, "src", 1)
    apply(kubectl, {"apiVersion": "etcdstore.io/v1alpha1", "kind": "EtcdBackup", "metadata": {"name": "now"},
                    "spec": {"clusterName": "src"}})
    done = wait("backup", lambda: (json.loads(kubectl("get", "etcdbackup", "now", "-o", "json")).get("status") or {})
                .get("phase") in ("Succeeded", "Failed") and json.loads(kubectl("get", "etcdbackup", "now", "-o", "json")))
    assert done["status"]["phase"] == "Succeeded"
    kubectl("delete", "etcdcluster", "src")
    path = done["status"]["location"].split("pvc://backups/", 1)[1]
    apply(kubectl, etcd_cluster("src", engine, replicas=3, restore={
        "source": {"pvc": {"claimName": "backups", "path": path}}, "sha256": done["status"]["sha256"]}))
    available(kubectl, "src", 3)
