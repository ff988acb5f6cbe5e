"""The Helm chart and the deploy/ manifests.

The real helm (built by e2e/toolchain/build.sh, on PATH under tests/run) lints the chart and renders
it; every rendered object is validated against the official schemas. The static checks (RBAC rules
shared with deploy/, CRD copies, deploy/ objects valid) need no helm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from etcdoperator import crd

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
        assert (
            "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule.get("apiGroups", [])
        )
    secrets = next(r for r in role["rules"] if "secrets" in r["resources"])
    assert set(secrets["verbs"]) == {"get", "create", "patch"}
    finalizers = next(r for r in role["rules"] if "etcdclusters/finalizers" in r["resources"])
    assert "etcdbackups/finalizers" in finalizers["resources"] and finalizers["verbs"] == ["update"]
    kustom = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    for res in kustom["resources"]:
        assert (ROOT / "deploy" / res).exists(), res


def _grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples: rule layouts differ, what they grant must not."""
    return {
        (g, r, v)
        for rule in rules
        for g in rule.get("apiGroups", [])
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def _chart_rules() -> tuple[list[dict], list[dict]]:
    return (
        yaml.safe_load((CHART / "files" / "rules.yaml").read_text()),
        yaml.safe_load((CHART / "files" / "cluster-rules.yaml").read_text()),
    )


def test_chart_rbac_rules_equal_deploy_rules():
    deploy_role = next(d for d in _docs(ROOT / "deploy" / "rbac.yaml") if d["kind"] == "ClusterRole")
    namespaced, cluster = _chart_rules()
    assert _grants(namespaced) | _grants(cluster) == _grants(deploy_role["rules"])
    assert all(r["resources"] == ["customresourcedefinitions"] for r in cluster), "only cluster-scoped rules"


# What the code calls (etcdoperator.kube verbs; `apply` is get + create + patch), and what kopf
# needs for the resources it serves or watches (list, watch; patch for its annotations/finalizer).
_RESOURCES = {
    "PODS": ("", "pods"),
    "SERVICES": ("", "services"),
    "CONFIGMAPS": ("", "configmaps"),
    "SECRETS": ("", "secrets"),
    "PVCS": ("", "persistentvolumeclaims"),
    "EVENTS": ("", "events"),
    "STATEFULSETS": ("apps", "statefulsets"),
    "JOBS": ("batch", "jobs"),
    "PDBS": ("policy", "poddisruptionbudgets"),
    "ETCDCLUSTERS": ("etcdstore.io", "etcdclusters"),
    "ETCDBACKUPS": ("etcdstore.io", "etcdbackups"),
}
_APPLIED = {
    "peer_service": "SERVICES",
    "client_service": "SERVICES",
    "pod_disruption_budget": "PDBS",
    "desired": "STATEFULSETS",
    "tls_secret": "SECRETS",
}


def _calls(text: str) -> list[tuple[str, str, bool]]:
    """(verb, resource constant, on the status subresource) of every `kube.<verb>(RESOURCE, ...)` call, also
    when the formatter spread it over several lines."""
    import re

    calls = []
    for m in re.finditer(r"kube\.(get|list|create|patch|delete)\(\s*(\w+),", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append((m.group(1), m.group(2), 'sub="status"' in text[m.end() : i]))
    return calls


def _code_grants() -> set[tuple[str, str, str]]:
    import re

    used: set[tuple[str, str, str]] = set()
    for path in (ROOT / "operator" / "etcdoperator").glob("*.py"):
        text = path.read_text()
        for verb, res, sub in _calls(text):
            if res == "res":  # AdoptHolder: PODS (ephemeral storage) or PVCS
                for r in ("PODS", "PVCS"):
                    used.add((*_RESOURCES[r], verb))
                continue
            g, r = _RESOURCES[res]
            used.add((g, r + ("/status" if sub else ""), verb))
        for arg in re.findall(r"kube\.apply\((\w+)", text):
            g, r = _RESOURCES[_APPLIED[arg]]
            used |= {(g, r, "get"), (g, r, "create"), (g, r, "patch")}
    for g, r in (
        ("etcdstore.io", "etcdclusters"),
        ("etcdstore.io", "etcdbackups"),
        ("", "pods"),
        ("apps", "statefulsets"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    ):
        used |= {(g, r, "list"), (g, r, "watch")}  # kopf watches them
    for r in ("etcdclusters", "etcdbackups"):
        used |= {
            ("etcdstore.io", r, "patch"),
            ("etcdstore.io", f"{r}/status", "patch"),
            ("etcdstore.io", f"{r}/finalizers", "update"),
        }  # kopf; owner references (blockOwnerDeletion)
    used.add(("events.k8s.io", "events", "create"))  # kopf posts through either group
    return used


def test_rbac_grants_exactly_what_the_code_uses():
    """Issue 14 item 8: complete (every call is allowed) and least privilege (nothing else)."""
    namespaced, cluster = _chart_rules()
    granted = _grants(namespaced) | _grants(cluster)
    used = _code_grants()
    assert (
        ("", "secrets", "get") in used
        and ("", "pods", "patch") in used
        and ("", "persistentvolumeclaims", "delete") in used
    )
    missing = used - granted
    assert not missing, f"the code calls what RBAC does not grant: {sorted(missing)}"
    # get on status subresources is what kubectl and kopf read; nothing else beyond the code
    extra = {g for g in granted - used if not (g[1].endswith("/status") and g[2] == "get") and g[2] != "get"}
    assert not extra, f"granted but never used: {sorted(extra)}"
    assert not {("", "secrets", v) for v in ("list", "watch", "delete")} & granted


def test_chart_grants_roles_in_watched_namespaces_not_a_cluster_role():
    """Without Helm (the template test below renders it for real): the
    template puts the namespaced rules in a Role per watched namespace, and in the ClusterRole
    only when every namespace is served."""
    text = (CHART / "templates" / "rbac.yaml").read_text()
    cluster_part, _, per_namespace = text.partition("{{- range .Values.watchNamespaces }}")
    assert 'Files.Get "files/cluster-rules.yaml"' in cluster_part
    assert '{{- if not .Values.watchNamespaces }}\n{{ .Files.Get "files/rules.yaml"' in cluster_part
    assert "kind: Role\n" in per_namespace and "kind: RoleBinding" in per_namespace
    assert "namespace: {{ . }}" in per_namespace and '$.Files.Get "files/rules.yaml"' in per_namespace


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "etcd-operator"
    # The CRDs are templates (templates/crds.yaml renders files/crds/), so `helm upgrade` upgrades them; a crds/
    # folder would be installed once and never upgraded, and would collide with the templates.
    assert not (CHART / "crds").exists()
    assert sorted(p.name for p in (CHART / "files" / "crds").iterdir()) == sorted(
        f"{c['metadata']['name']}.yaml" for c in crd.all_crds()
    )
    template = (CHART / "templates" / "crds.yaml").read_text()
    assert '.Files.Glob "files/crds/*.yaml"' in template and "helm.sh/resource-policy: keep" in template
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["crds"]["install"] is True and values["crds"]["keep"] is True


def _helm() -> str | None:
    """The real helm (e2e/toolchain/build.sh builds it; tests/run puts it on PATH). Under
    ETCDSTORE_REQUIRE_K8S=1 (tests/run, CI) its absence is a failure, never a skip."""
    import shutil

    found = shutil.which("helm")
    if found is None and os.environ.get("ETCDSTORE_REQUIRE_K8S") == "1":
        pytest.fail("helm not on PATH, but ETCDSTORE_REQUIRE_K8S=1 (e2e/toolchain/build.sh builds it)")
    return found


def _run_helm(*args: str) -> str:
    import subprocess

    helm = _helm()
    if helm is None:
        pytest.skip("helm not on PATH (e2e/toolchain/build.sh builds it; tests/run puts it on PATH)")
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_helm_lint():
    out = _run_helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "watchNamespaces": ["team-a", "team-b"],
            "logLevel": "debug",
            "image": {"repository": "registry.local/etcd-operator", "tag": "1.2.3"},
            "metrics": {"enabled": False},
        },
    ],
    ids=["defaults", "namespaced"],
)
def test_helm_template_renders_valid_objects(values, tmp_path):
    """The chart rendered by the real helm: every object valid against the official schemas, the
    CRDs equal to the operator's, RBAC as deploy/ (or per watched namespace). A real install on a
    real kube-apiserver is e2e/run.sh's (tests/k8s/test_e2e_smoke.py)."""
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    out = _run_helm("template", "rel", str(CHART), "--namespace", "ops", "--values", str(values_file))
    rendered = [d for d in yaml.safe_load_all(out) if d]
    objects = {(d["kind"].lower() + "s", d["metadata"]["name"]): d for d in rendered if d["kind"] != "Role"}
    kinds = {k for k, _ in objects}
    assert {
        "customresourcedefinitions",
        "serviceaccounts",
        "clusterroles",
        "clusterrolebindings",
        "deployments",
    } <= kinds
    assert ("services", "rel-etcd-operator-metrics") in objects or values.get("metrics") == {"enabled": False}
    for obj in objects.values():
        clean = {k: v for k, v in obj.items() if k != "status"}
        clean["metadata"] = {
            k: v
            for k, v in obj["metadata"].items()
            if k not in ("uid", "resourceVersion", "generation", "creationTimestamp")
        }
        kubernetes_validate.validate(clean, K8S, strict=True)
    installed_crds = {n: o for (k, n), o in objects.items() if k == "customresourcedefinitions"}
    for c in crd.all_crds():
        assert installed_crds[c["metadata"]["name"]]["spec"] == c["spec"]
    role = objects[("clusterroles", "rel-etcd-operator")]
    deploy_role = next(d for d in _docs(ROOT / "deploy" / "rbac.yaml") if d["kind"] == "ClusterRole")
    namespaced, cluster = _chart_rules()
    if values.get("watchNamespaces"):
        assert _grants(role["rules"]) == _grants(cluster)
        roles = [d for d in rendered if d["kind"] == "Role"]
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
        assert all(_grants(r["rules"]) == _grants(namespaced) for r in roles)
    else:
        assert _grants(role["rules"]) == _grants(deploy_role["rules"])
    dep = objects[("deployments", "rel-etcd-operator")]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["etcdoperator", "run"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    if values.get("watchNamespaces"):
        assert (
            "--namespace=team-a" in c["args"]
            and "--namespace=team-b" in c["args"]
            and "--verbose" in c["args"]
        )
        assert c["image"] == "registry.local/etcd-operator:1.2.3" == env["ETCDOPERATOR_IMAGE"]
        assert not any(a.startswith("--metrics-port") for a in c["args"])
    else:
        assert "--all-namespaces" in c["args"] and "--metrics-port=9090" in c["args"]
        assert c["image"] == "etcd-operator:0.1.0" and env["ETCDOPERATOR_STORE_IMAGE"] == "etcdstore:0.1.0"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


def test_image_names_agree_in_chart_manifests_and_defaults():
    """Issue 14 item 12: one set of image names - the Helm values (with the chart's appVersion),
    deploy/operator.yaml and the operator's own defaults say the same."""
    from etcdoperator import __version__
    from etcdoperator.build.common import Images

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    tag = lambda v: v.get("tag") or chart["appVersion"]
    d = Images.defaults()
    assert f"{values['image']['repository']}:{tag(values['image'])}" == d.operator
    assert f"{values['storeImage']['repository']}:{tag(values['storeImage'])}" == d.store
    assert values["etcdImage"]["repository"] == d.etcd_repository
    dep = next(x for x in _docs(ROOT / "deploy" / "operator.yaml") if x["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["image"] == env["ETCDOPERATOR_IMAGE"] == d.operator
    assert (
        env["ETCDOPERATOR_STORE_IMAGE"] == d.store
        and env["ETCDOPERATOR_ETCD_IMAGE_REPOSITORY"] == d.etcd_repository
    )
    template = (CHART / "templates" / "deployment.yaml").read_text()
    for name in ("ETCDOPERATOR_IMAGE", "ETCDOPERATOR_STORE_IMAGE", "ETCDOPERATOR_ETCD_IMAGE_REPOSITORY"):
        assert f"name: {name}" in template
