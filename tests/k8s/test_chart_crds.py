"""The chart's CRDs with the real helm (built by e2e/toolchain/build.sh): rendered as templates (so `helm upgrade`
upgrades them; Helm never upgrades a chart's crds/ folder), equal to etcdoperator.crd and to deploy/crds, annotated
`helm.sh/resource-policy: keep`; and on the real kube-apiserver an upgrade to a chart whose CRD changed changes the
live CRD, while an existing EtcdCluster survives the upgrade and `helm uninstall`. (e2e/run.sh does the same with the
operator running: e2e/helm-crd-upgrade.sh.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from etcdoperator import crd

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "etcd-operator"
KEEP = "helm.sh/resource-policy"
CLUSTERS, BACKUPS = "etcdclusters.etcdstore.io", "etcdbackups.etcdstore.io"


def _helm(k8s_bin: Path, home: Path, *args: str, kubeconfig: Path | None = None) -> str:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    p = subprocess.run(
        [str(k8s_bin / "helm"), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert p.returncode == 0, f"helm {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p.stdout


def _rendered_crds(k8s_bin: Path, home: Path, *sets: str) -> dict[str, dict]:
    out = _helm(k8s_bin, home, "template", "rel", str(CHART), "--namespace", "ops", *sets)
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}


def test_chart_renders_the_crds_as_templates(k8s_bin: Path, tmp_path: Path) -> None:
    got = _rendered_crds(k8s_bin, tmp_path)
    want = {c["metadata"]["name"]: c for c in crd.all_crds()}
    assert sorted(got) == sorted(want)
    for name, c in want.items():
        deployed = yaml.safe_load((ROOT / "deploy" / "crds" / f"{name}.yaml").read_text())
        assert got[name]["spec"] == c["spec"] == deployed["spec"], f"{name}: chart, crd.py and deploy/ differ"
        assert got[name]["metadata"]["labels"] == c["metadata"]["labels"]
        assert got[name]["metadata"]["annotations"] == {KEEP: "keep"}
    no_keep = _rendered_crds(
        k8s_bin, tmp_path, "--set", "crds.keep=false", "--set", "crds.annotations.example\\.com/owner=team a"
    )
    assert all(c["metadata"]["annotations"] == {"example.com/owner": "team a"} for c in no_keep.values())
    assert _rendered_crds(k8s_bin, tmp_path, "--set", "crds.install=false") == {}
    _helm(k8s_bin, tmp_path, "lint", str(CHART), "--set", "crds.install=false")


@contextlib.contextmanager
def _installed(cp: Any, k8s_bin: Path, home: Path, release: str, chart: Path) -> Iterator[None]:
    """`helm install` of `chart` as `release`, in a new namespace of the same name, until its CRDs are
    established; afterwards the namespace and the CRDs are deleted, leaving the control plane as found (other
    tests apply the CRDs themselves)."""
    install = ("install", release, str(chart), "--namespace", release, "--create-namespace")
    _helm(k8s_bin, home, *install, kubeconfig=cp.kubeconfig)
    try:
        cp.kubectl("wait", "--for=condition=Established", f"crd/{CLUSTERS}", "--timeout=60s")
        yield
    finally:
        gone = ("--ignore-not-found", "--wait=true", "--timeout=120s")
        cp.kubectl("delete", "namespace", release, *gone, check=False)
        cp.kubectl("delete", "crd", CLUSTERS, BACKUPS, *gone, check=False)


def _create_cluster(cp: Any, name: str, namespace: str) -> dict:
    """A one-member EtcdCluster, as the API server stored it."""
    cluster = {
        "apiVersion": "etcdstore.io/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1},
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(cluster))
    return json.loads(cp.kubectl("get", "etcdcluster", name, "-n", namespace, "-o", "json").stdout)


def test_helm_upgrade_changes_live_crds_and_keeps_clusters(
    control_plane, k8s_bin: Path, tmp_path: Path
) -> None:
    cp = control_plane
    kc = cp.kubeconfig

    def live(crd_name: str = CLUSTERS) -> dict:
        return json.loads(cp.kubectl("get", "crd", crd_name, "-o", "json").stdout)

    with _installed(cp, k8s_bin, tmp_path, "crdup", CHART):
        assert live()["metadata"]["annotations"][KEEP] == "keep"
        uid = _create_cluster(cp, "survivor", "crdup")["metadata"]["uid"]

        copy = tmp_path / "etcd-operator"
        shutil.copytree(CHART, copy)
        path = copy / "files" / "crds" / f"{CLUSTERS}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["labels"]["etcdstore.io/test"] = "v2"
        for v in doc["spec"]["versions"]:
            v["additionalPrinterColumns"].append(
                {"name": "Upgraded", "type": "string", "jsonPath": ".spec.engine"}
            )
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        _helm(k8s_bin, tmp_path, "upgrade", "crdup", str(copy), "--namespace", "crdup", kubeconfig=kc)
        after = live()
        assert after["metadata"]["labels"]["etcdstore.io/test"] == "v2"
        assert "Upgraded" in [c["name"] for c in after["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert (
            "UPGRADED" in cp.kubectl("get", "etcdcluster", "survivor", "-n", "crdup").stdout.splitlines()[0]
        )

        _helm(k8s_bin, tmp_path, "upgrade", "crdup", str(CHART), "--namespace", "crdup", kubeconfig=kc)
        back = live()
        assert "etcdstore.io/test" not in back["metadata"]["labels"]
        assert "Upgraded" not in [c["name"] for c in back["spec"]["versions"][0]["additionalPrinterColumns"]]

        _helm(k8s_bin, tmp_path, "uninstall", "crdup", "--namespace", "crdup", "--wait", kubeconfig=kc)
        assert live()["metadata"]["name"] == CLUSTERS and live(BACKUPS)
        got = json.loads(cp.kubectl("get", "etcdcluster", "survivor", "-n", "crdup", "-o", "json").stdout)
        assert got["metadata"]["uid"] == uid, "the EtcdCluster did not survive upgrade and uninstall"


def test_upgrade_from_a_chart_with_crds_folder_takes_ownership(
    control_plane, k8s_bin: Path, tmp_path: Path
) -> None:
    """A release installed from the earlier chart layout (CRDs in crds/, which Helm installs unowned) moves to the
    templated CRDs with `helm upgrade --take-ownership`, as docs/kubernetes.md says; existing clusters survive."""
    cp = control_plane
    old = tmp_path / "etcd-operator"
    shutil.copytree(CHART, old)
    (old / "templates" / "crds.yaml").unlink()
    shutil.move(old / "files" / "crds", old / "crds")
    with _installed(cp, k8s_bin, tmp_path, "crdold", old):
        before = json.loads(cp.kubectl("get", "crd", CLUSTERS, "-o", "json").stdout)["metadata"]
        assert KEEP not in (before.get("annotations") or {}), "crds/ CRDs are not the release's objects"
        _create_cluster(cp, "old", "crdold")
        upgrade = ("upgrade", "crdold", str(CHART), "--namespace", "crdold", "--take-ownership")
        _helm(k8s_bin, tmp_path, *upgrade, kubeconfig=cp.kubeconfig)
        after = json.loads(cp.kubectl("get", "crd", CLUSTERS, "-o", "json").stdout)["metadata"]
        assert after["uid"] == before["uid"]
        assert (
            after["annotations"][KEEP] == "keep"
            and after["annotations"]["meta.helm.sh/release-name"] == "crdold"
        )
        cp.kubectl("get", "etcdcluster", "old", "-n", "crdold")
