"""The CRDs: structural, in sync with the tree's copies, accepting the samples, rejecting bad specs."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from etcdoperator import crd, manifests
from etcdoperator.spec import parse_cluster_spec, validate_cluster_spec
from kubeharness.crdschema import default_and_validate, structural_errors, version_schema

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "deploy" / "samples").glob("*.yaml"))
K8S_VERSIONS = ["1.30", "1.37"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _crd_for(kind: str) -> dict:
    return crd.cluster_crd() if kind == crd.CLUSTER_KIND else crd.backup_crd()


@pytest.mark.parametrize("c", crd.all_crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_structural(c):
    assert structural_errors(version_schema(c)) == []


@pytest.mark.parametrize("c", crd.all_crds(), ids=lambda c: c["metadata"]["name"])
@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_crd_object_validates_against_apiextensions_schema(c, k8s):
    kubernetes_validate.validate(c, k8s, strict=True)


def test_structural_checker_catches_violations():
    bad = {"type": "object", "properties": {
        "a": {"description": "no type"},
        "b": {"$ref": "#/definitions/x", "type": "object"},
        "c": {"type": "object", "oneOf": [{"type": "object", "required": ["x"]}]},
        "d": {"type": "integer", "minimum": 1, "default": 0},
    }}
    errs = "\n".join(structural_errors(bad))
    assert "/a: type is required" in errs
    assert "$ref is not allowed" in errs
    assert "type must not be inside" in errs
    assert "/d: default does not validate" in errs


@pytest.mark.parametrize("directory", manifests.CRD_DIRS)
def test_crd_files_are_in_sync(directory):
    files = manifests.crd_files()
    for name, text in files.items():
        path = ROOT / directory / name
        assert path.exists(), f"{path} missing: run `etcdoperator manifests sync`"
        assert path.read_text() == text, f"{path} is stale: run `etcdoperator manifests sync`"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_are_accepted(path):
    found = False
    for doc in _docs(path):
        if doc["apiVersion"].startswith(crd.GROUP + "/"):
            found = True
            body, errors = default_and_validate(_crd_for(doc["kind"]), doc)
            assert errors == []
            if doc["kind"] == crd.CLUSTER_KIND:
                assert validate_cluster_spec(body["spec"]) == []
                parse_cluster_spec(body["spec"])
        else:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    assert found


def test_defaults_are_applied_like_the_api_server():
    body, errors = default_and_validate(crd.cluster_crd(), {
        "apiVersion": crd.API_VERSION, "kind": "EtcdCluster", "metadata": {"name": "x"}, "spec": {}})
    assert errors == []
    s = body["spec"]
    assert s["replicas"] == 3 and s["engine"] == "etcdstore" and s["version"] == "3.4.23" and s["paused"] is False
    assert s["storage"] == {"size": "1Gi", "ephemeral": False, "reclaimPolicy": "Delete"}
    assert s["tls"]["client"] == {"mode": "none", "clientCertAuth": True}
    assert s["tls"]["auto"] == {"caValidityDays": 3650, "certificateValidityDays": 365, "renewBeforeDays": 30}


def _minimal() -> dict:
    return {"apiVersion": crd.API_VERSION, "kind": "EtcdCluster", "metadata": {"name": "x"}, "spec": {"replicas": 3}}


BAD_SPECS = {
    "replicas-zero": ({"replicas": 0}, "replicas"),
    "replicas-ten": ({"replicas": 10}, "replicas"),
    "replicas-string": ({"replicas": "3"}, "replicas"),
    "unknown-engine": ({"engine": "zookeeper"}, "engine"),
    "bad-version": ({"version": "v3.4"}, "version"),
    "unknown-field": ({"replica": 3}, "Additional properties"),
    "bad-size": ({"storage": {"size": "lots"}}, "size"),
    "bad-reclaim": ({"storage": {"reclaimPolicy": "Recycle"}}, "reclaimPolicy"),
    "heartbeat-too-big": ({"options": {"heartbeatIntervalMs": 20000}}, "heartbeatIntervalMs"),
    "bad-retention": ({"options": {"autoCompactionRetention": "1 hour"}}, "autoCompactionRetention"),
    "tls-mode": ({"tls": {"client": {"mode": "mtls"}}}, "mode"),
    "backup-no-destination": ({"backup": {"schedule": "@daily"}}, "destination"),
    "backup-two-destinations": ({"backup": {"destination": {"pvc": {"claimName": "a"}, "s3": {"bucket": "bkt"}}}},
                                "destination"),
    "backup-zero-retention": ({"backup": {"retention": 0, "destination": {"pvc": {"claimName": "a"}}}}, "retention"),
    "restore-no-source": ({"restore": {}}, "source"),
    "restore-bad-sha": ({"restore": {"source": {"pvc": {"claimName": "a", "path": "x.db"}}, "sha256": "xyz"}}, "sha256"),
    "auth-no-secret": ({"auth": {}}, "rootPasswordSecret"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS), ids=str)
def test_bad_specs_are_rejected_by_the_schema(case):
    patch, fragment = BAD_SPECS[case]
    obj = _minimal()
    obj["spec"].update(copy.deepcopy(patch))
    _, errors = default_and_validate(crd.cluster_crd(), obj)
    assert errors, f"{case} was accepted"
    assert any(fragment in e for e in errors), errors


CEL_ONLY = {
    "election-vs-heartbeat": {"options": {"heartbeatIntervalMs": 100, "electionTimeoutMs": 400}},
    "secret-mode-without-secret": {"tls": {"client": {"mode": "secret", "clientCertAuth": False}}},
    "secret-mode-without-operator-cert": {"tls": {"client": {"mode": "secret", "secretName": "s"}}},
    "renew-after-expiry": {"tls": {"auto": {"certificateValidityDays": 10, "renewBeforeDays": 10}}},
    "bad-cron": {"backup": {"schedule": "every day", "destination": {"pvc": {"claimName": "a"}}}},
}


@pytest.mark.parametrize("case", sorted(CEL_ONLY), ids=str)
def test_rules_beyond_the_structural_schema_are_enforced_by_the_operator(case):
    """CEL rules in the CRD need a real API server; the operator checks them again."""
    obj = _minimal()
    obj["spec"].update(copy.deepcopy(CEL_ONLY[case]))
    body, errors = default_and_validate(crd.cluster_crd(), obj)
    assert errors == []
    assert validate_cluster_spec(body["spec"]), f"{case} passed the operator's checks"


def test_backup_crd_accepts_and_rejects():
    ok = {"apiVersion": crd.API_VERSION, "kind": "EtcdBackup", "metadata": {"name": "b"},
          "spec": {"clusterName": "c", "destination": {"s3": {"bucket": "bkt", "prefix": "p"}}}}
    assert default_and_validate(crd.backup_crd(), ok)[1] == []
    for bad in ({}, {"clusterName": "Bad_Name"}, {"clusterName": "c", "destination": {}}):
        obj = dict(ok, spec=bad)
        assert default_and_validate(crd.backup_crd(), obj)[1], bad
