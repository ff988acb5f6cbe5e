"""The Helm chart and the deploy/ manifests.

With helm-sdkpy (Helm's Go engine as a library; `pip install --ignore-requires-python helm-sdkpy`
on Python 3.11) the chart is linted and really installed - rendered by Helm and created through
the API - into the KMock API server, then every object is validated against the official schemas.
Without it those tests skip; the static checks (RBAC rules shared with deploy/, CRD copies,
deploy/ objects valid) always run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from etcdoperator import crd
from kubeharness.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "etcd-operator"
K8S = "1.30"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _rules_key(rules: list[dict]) -> set[tuple]:
    return {(tuple(r.get("apiGroups", [])), tuple(r.get("resources", [])), tuple(r["verbs"])) for r in rules}


def test_deploy_manifests_are_valid_and_least_privilege():
    for name in ("namespace.yaml", "rbac.yaml", "operator.yaml"):
        for doc in _docs(ROOT / "deploy" / name):
            kubernetes_validate.validate(doc, K8S, strict=True)
    role = next(d for d in _docs(ROOT / "deploy" / "rbac.yaml") if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule.get("apiGroups", [])
    secrets = next(r for r in role["rules"] if "secrets" in r["resources"])
    assert "delete" not in secrets["verbs"]
    kustom = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    for res in kustom["resources"]:
        assert (ROOT / "deploy" / res).exists(), res


def test_chart_rbac_rules_equal_deploy_rules():
    deploy_role = next(d for d in _docs(ROOT / "deploy" / "rbac.yaml") if d["kind"] == "ClusterRole")
    chart_rules = yaml.safe_load((CHART / "files" / "rules.yaml").read_text())
    assert _rules_key(chart_rules) == _rules_key(deploy_role["rules"])


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "etcd-operator"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(f"{c['metadata']['name']}.yaml"
                                                                       for c in crd.all_crds())


try:
    import helm_sdkpy as helm
except ImportError:  # its metadata asks for Python 3.12; it runs on 3.11 when installed anyway
    helm = None
needs_helm = pytest.mark.skipif(helm is None, reason="helm-sdkpy not installed "
                                "(pip install --ignore-requires-python helm-sdkpy)")

HELM_INSTALL = """
import asyncio, json, sys
import helm_sdkpy
cfg = helm_sdkpy.Configuration(namespace="ops", kubeconfig=sys.argv[1])
result = asyncio.run(helm_sdkpy.Install(cfg).run("rel", sys.argv[2], values=json.loads(sys.argv[3]), wait=False,
                                                 timeout=60))
print(json.dumps({"info": result["info"]}))
"""


@needs_helm
async def test_helm_lint():
    result = await helm.Lint(helm.Configuration()).run(str(CHART))
    assert not result.get("Errors"), result
    assert all(m["Severity"] < 2 for m in result.get("Messages") or []), result  # info only


@needs_helm
@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a", "team-b"], "logLevel": "debug",
                                          "image": {"repository": "registry.local/etcd-operator", "tag": "1.2.3"},
                                          "metrics": {"enabled": False}}], ids=["defaults", "namespaced"])
async def test_helm_install_renders_valid_objects(values, tmp_path):
    import kmock

    api = ApiServer()
    async with api, kmock.Server(api) as srv:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: k, cluster: {{server: '{str(srv.url).rstrip('/')}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: k, user: u, namespace: ops}}]\ncurrent-context: c\n")
        # Helm (Go) reads HELM_DRIVER once, when its library loads: run it in a child process with
        # in-memory release storage (Helm stores releases as protobuf Secrets; KMock speaks JSON).
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HELM_INSTALL, str(kubeconfig), str(CHART), json.dumps(values),
            env=dict(os.environ, HELM_DRIVER="memory"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert json.loads(out)["info"]["status"] == "deployed"
        objects = {(r.plural, o["metadata"]["name"]): o for r, o in api.all_objects()}
    kinds = {k for k, _ in objects}
    assert {"customresourcedefinitions", "serviceaccounts", "clusterroles", "clusterrolebindings", "deployments"} <= kinds
    assert ("services", "rel-etcd-operator-metrics") in objects or values.get("metrics") == {"enabled": False}
    for obj in objects.values():
        clean = {k: v for k, v in obj.items() if k != "status"}
        clean["metadata"] = {k: v for k, v in obj["metadata"].items()
                             if k not in ("uid", "resourceVersion", "generation", "creationTimestamp")}
        kubernetes_validate.validate(clean, K8S, strict=True)
    installed_crds = {n: o for (k, n), o in objects.items() if k == "customresourcedefinitions"}
    for c in crd.all_crds():
        assert installed_crds[c["metadata"]["name"]]["spec"] == c["spec"]
    role = objects[("clusterroles", "rel-etcd-operator")]
    deploy_role = next(d for d in _docs(ROOT / "deploy" / "rbac.yaml") if d["kind"] == "ClusterRole")
    assert _rules_key(role["rules"]) == _rules_key(deploy_role["rules"])
    dep = objects[("deployments", "rel-etcd-operator")]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["etcdoperator", "run"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    if values.get("watchNamespaces"):
        assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"] and "--verbose" in c["args"]
        assert c["image"] == "registry.local/etcd-operator:1.2.3" == env["ETCDOPERATOR_IMAGE"]
        assert not any(a.startswith("--metrics-port") for a in c["args"])
    else:
        assert "--all-namespaces" in c["args"] and "--metrics-port=9090" in c["args"]
        assert c["image"] == "etcd-operator:0.1.0" and env["ETCDOPERATOR_STORE_IMAGE"] == "etcdstore:0.1.0"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
