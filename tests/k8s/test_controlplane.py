"""The real control plane (kube-apiserver, kube-controller-manager, kube-scheduler v1.34) stored in
etcdstore: what the operator and the e2e suite rely on works, judged by the real kubectl."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from localkube.controlplane import ControlPlane
from localkube.stores import etcd_command

pytestmark = pytest.mark.timeout(600)


def apply(cp: ControlPlane, obj: dict, *extra: str, check: bool = True):
    return cp.kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump(obj), check=check)


def test_namespaces_and_version(control_plane: ControlPlane) -> None:
    names = control_plane.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {
        "namespace/default",
        "namespace/kube-system",
        "namespace/kube-public",
        "namespace/kube-node-lease",
    } <= set(names)
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"
    svc = json.loads(control_plane.kubectl("get", "svc", "kubernetes", "-n", "default", "-o", "json").stdout)
    assert svc["spec"]["clusterIP"] == control_plane.service_ip == "127.96.0.1"


def test_crd_cel_rule_rejects_bad_object(control_plane: ControlPlane) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.test.example.com"},
        "spec": {
            "group": "test.example.com",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.size <= self.limit",
                                            "message": "size must not exceed limit",
                                        }
                                    ],
                                    "properties": {"size": {"type": "integer"}, "limit": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    apply(control_plane, crd)
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/gadgets.test.example.com", "--timeout=60s"
    )

    def gadget(name: str, size: int) -> dict:
        return {
            "apiVersion": "test.example.com/v1",
            "kind": "Gadget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"size": size, "limit": 3},
        }

    deadline = time.monotonic() + 30  # the resource is served a moment after Established
    while (
        r := apply(control_plane, gadget("good", 2), check=False)
    ).returncode and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.returncode == 0, r.stderr
    bad = apply(control_plane, gadget("bad", 5), check=False)
    assert bad.returncode != 0
    assert "size must not exceed limit" in bad.stderr
    assert control_plane.kubectl("get", "gadget", "bad", check=False).returncode != 0


def test_server_side_apply(control_plane: ControlPlane) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa", "namespace": "default"},
        "data": {"k": "one"},
    }
    out = apply(control_plane, cm, "--server-side", "--field-manager=alpha").stdout
    assert "serverside-applied" in out
    other = {**cm, "data": {"k": "two"}}
    conflict = apply(control_plane, other, "--server-side", "--field-manager=beta", check=False)
    assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower()
    apply(control_plane, other, "--server-side", "--field-manager=beta", "--force-conflicts")
    obj = json.loads(control_plane.kubectl("get", "cm", "ssa", "-o", "json", "--show-managed-fields").stdout)
    assert obj["data"] == {"k": "two"}
    assert [(f["manager"], f["operation"]) for f in obj["metadata"]["managedFields"]] == [("beta", "Apply")]


def test_leases_of_controller_manager_and_scheduler(control_plane: ControlPlane) -> None:
    for name in ("kube-controller-manager", "kube-scheduler"):
        first = control_plane.lease(name)
        assert first and first["spec"]["holderIdentity"]
        deadline = time.monotonic() + 30  # renewed every 2 s by default
        while (now := control_plane.lease(name))["spec"]["renewTime"] == first["spec"]["renewTime"]:
            assert time.monotonic() < deadline, f"{name} lease not renewed"
            time.sleep(0.5)
        assert now["spec"]["holderIdentity"] == first["spec"]["holderIdentity"]


def test_pod_security_restricted_refuses_privileged_pod(control_plane: ControlPlane) -> None:
    control_plane.kubectl("create", "namespace", "psa-restricted")
    control_plane.kubectl(
        "label", "namespace", "psa-restricted", "pod-security.kubernetes.io/enforce=restricted"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "priv", "namespace": "psa-restricted"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    r = apply(control_plane, pod, check=False)
    assert r.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in r.stderr and "privileged" in r.stderr
    # The same pod is admitted where no level is enforced (the namespace's default SA must exist first).
    control_plane.kubectl("create", "namespace", "psa-open")
    deadline = time.monotonic() + 30
    while control_plane.kubectl("get", "sa", "default", "-n", "psa-open", check=False).returncode:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    apply(control_plane, {**pod, "metadata": {"name": "priv", "namespace": "psa-open"}})


def test_node_credentials_are_under_node_authorizer(control_plane: ControlPlane) -> None:
    kc = control_plane.node_kubeconfig("node-a")
    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kc).stdout
    user = json.loads(who)["status"]["userInfo"]
    assert user["username"] == "system:node:node-a" and "system:nodes" in user["groups"]
    node = lambda name: {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    # NodeRestriction: a node may create its own Node object, not another's.
    assert (
        control_plane.kubectl(
            "create", "-f", "-", input=yaml.safe_dump(node("node-a")), kubeconfig=kc, check=False
        ).returncode
        == 0
    )
    other = control_plane.kubectl(
        "create", "-f", "-", input=yaml.safe_dump(node("node-b")), kubeconfig=kc, check=False
    )
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()
    # Node authorizer: secrets only of pods bound to the node.
    control_plane.kubectl("create", "secret", "generic", "s1", "-n", "default", "--from-literal=a=b")
    denied = control_plane.kubectl("get", "secret", "s1", "-n", "default", kubeconfig=kc, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    control_plane.kubectl("delete", "node", "node-a")


@pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="real etcd 3.4 not installed")
def test_etcd_backed_control_plane_stops_everything(k8s_bin: Path, tmp_path: Path) -> None:
    etcd_command()
    cp = ControlPlane(tmp_path / "cp", store="etcd", members=1, bin_dir=k8s_bin)
    with cp:
        assert cp.kubectl("get", "--raw", "/readyz/etcd").stdout.strip() == "ok"
        pids = [p.pid for p in cp.processes()]
        assert len(pids) == 4 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z", f"{pid} still runs"
    assert not (tmp_path / "cp" / "localkube.pids").exists()
