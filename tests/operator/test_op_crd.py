"""The CRDs: structural, in sync with the tree's copies, accepting the samples, rejecting bad specs."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from etcdoperator import crd, manifests
from etcdoperator.spec import parse_cluster_spec, validate_cluster_spec
from kubeharness.crdschema import cel_errors, default_and_validate, structural_errors, version_schema

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
    bad = {
        "type": "object",
        "properties": {
            "a": {"description": "no type"},
            "b": {"$ref": "#/definitions/x", "type": "object"},
            "c": {"type": "object", "oneOf": [{"type": "object", "required": ["x"]}]},
            "d": {"type": "integer", "minimum": 1, "default": 0},
        },
    }
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
    body, errors = default_and_validate(
        crd.cluster_crd(),
        {"apiVersion": crd.API_VERSION, "kind": "EtcdCluster", "metadata": {"name": "x"}, "spec": {}},
    )
    assert errors == []
    s = body["spec"]
    assert (
        s["replicas"] == 3
        and s["engine"] == "etcdstore"
        and s["version"] == "3.4.23"
        and s["paused"] is False
    )
    assert s["storage"] == {"size": "1Gi", "ephemeral": False, "reclaimPolicy": "Delete"}
    assert s["tls"]["client"] == {"mode": "none", "clientCertAuth": True}
    assert s["tls"]["auto"] == {"caValidityDays": 3650, "certificateValidityDays": 365, "renewBeforeDays": 30}


def _minimal() -> dict:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": "EtcdCluster",
        "metadata": {"name": "x"},
        "spec": {"replicas": 3},
    }


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
    "backup-two-destinations": (
        {"backup": {"destination": {"pvc": {"claimName": "a"}, "s3": {"bucket": "bkt"}}}},
        "destination",
    ),
    "backup-zero-retention": (
        {"backup": {"retention": 0, "destination": {"pvc": {"claimName": "a"}}}},
        "retention",
    ),
    "restore-no-source": ({"restore": {}}, "source"),
    "restore-bad-sha": (
        {"restore": {"source": {"pvc": {"claimName": "a", "path": "x.db"}}, "sha256": "xyz"}},
        "sha256",
    ),
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
    if case != "bad-cron":  # cron syntax is the operator's alone
        assert cel_errors(crd.cluster_crd(), body), f"{case} passed the CRD's CEL rules"


def test_backup_crd_accepts_and_rejects():
    ok = {
        "apiVersion": crd.API_VERSION,
        "kind": "EtcdBackup",
        "metadata": {"name": "b"},
        "spec": {"clusterName": "c", "destination": {"s3": {"bucket": "bkt", "prefix": "p"}}},
    }
    assert default_and_validate(crd.backup_crd(), ok)[1] == []
    for bad in ({}, {"clusterName": "Bad_Name"}, {"clusterName": "c", "destination": {}}):
        obj = dict(ok, spec=bad)
        assert default_and_validate(crd.backup_crd(), obj)[1], bad


# -- issue 14 item 4: CEL rules, evaluated (cel-python) as the API server would --------------------


def _created(spec: dict) -> dict:
    obj = _minimal()
    obj["spec"] = copy.deepcopy(spec)
    body, errors = default_and_validate(crd.cluster_crd(), obj)
    assert errors == []
    return body


def _update_errors(old_spec: dict, new_spec: dict) -> list[str]:
    old, new = _created(old_spec), _created(new_spec)
    assert cel_errors(crd.cluster_crd(), old) == [], "the old object must be valid"
    return cel_errors(crd.cluster_crd(), new, old)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_pass_the_cel_rules_on_create_and_unchanged_update(path):
    for doc in _docs(path):
        if doc.get("kind") in (crd.CLUSTER_KIND, crd.BACKUP_KIND):
            body, _ = default_and_validate(_crd_for(doc["kind"]), doc)
            assert cel_errors(_crd_for(doc["kind"]), body) == []
            assert cel_errors(_crd_for(doc["kind"]), body, copy.deepcopy(body)) == []


IMMUTABLE_UPDATES = {
    "tls-client-mode": ({}, {"tls": {"client": {"mode": "auto"}}}, "tls.client.mode"),
    "tls-peer-mode": ({"tls": {"peer": {"mode": "auto"}}}, {}, "tls.client.mode and tls.peer.mode"),
    "tls-auto-to-secret": (
        {"tls": {"peer": {"mode": "auto"}}},
        {"tls": {"peer": {"mode": "secret", "secretName": "p"}}},
        "immutable",
    ),
    "engine": ({"engine": "etcd"}, {}, "engine is immutable"),
    "restore-added": (
        {},
        {"restore": {"source": {"pvc": {"claimName": "a", "path": "x.db"}}}},
        "restore can only",
    ),
    "restore-removed": (
        {"restore": {"source": {"pvc": {"claimName": "a", "path": "x.db"}}}},
        {},
        "restore can only",
    ),
    "restore-changed": (
        {"restore": {"source": {"pvc": {"claimName": "a", "path": "x.db"}}}},
        {"restore": {"source": {"pvc": {"claimName": "a", "path": "y.db"}}}},
        "restore is immutable",
    ),
    "storage-class": ({}, {"storage": {"storageClassName": "fast"}}, "storage is immutable except size"),
    "storage-class-changed": (
        {"storage": {"storageClassName": "a"}},
        {"storage": {"storageClassName": "b"}},
        "storage is immutable except size",
    ),
    "storage-ephemeral": ({}, {"storage": {"ephemeral": True}}, "storage is immutable except size"),
}


@pytest.mark.parametrize("case", sorted(IMMUTABLE_UPDATES), ids=str)
def test_fields_that_cannot_change_in_place_are_refused_on_update(case):
    old, new, fragment = IMMUTABLE_UPDATES[case]
    errors = _update_errors(old, new)
    assert any(fragment in e for e in errors), errors
    assert _update_errors(old, copy.deepcopy(old)) == []  # the same spec again is fine


def test_allowed_updates_pass():
    assert _update_errors({"replicas": 3}, {"replicas": 5, "paused": True}) == []
    assert (
        _update_errors({"engine": "etcd", "version": "3.4.23"}, {"engine": "etcd", "version": "3.5.9"}) == []
    )
    assert (
        _update_errors(
            {"tls": {"client": {"mode": "auto"}}},
            {"tls": {"client": {"mode": "auto"}, "auto": {"renewBeforeDays": 10}}},
        )
        == []
    )
    # volumes grow (the operator expands the claims; it refuses to shrink them), reclaimPolicy may change
    assert (
        _update_errors(
            {"storage": {"size": "1Gi", "storageClassName": "a"}},
            {"storage": {"size": "5Gi", "storageClassName": "a", "reclaimPolicy": "Retain"}},
        )
        == []
    )


@pytest.mark.parametrize(
    ("image", "version", "ok"),
    [
        ("quay.io/coreos/etcd:v3.5.9", "3.5.9", True),
        ("registry.local:5000/etcd:3.5.9", "3.5.9", True),
        ("quay.io/coreos/etcd:v3.5.9@sha256:" + "a" * 64, "3.5.9", True),
        ("quay.io/coreos/etcd:v3.6.0", "3.4.23", False),  # the version rules cannot be bypassed with an image
        ("quay.io/coreos/etcd@sha256:" + "a" * 64, "3.4.23", False),  # a bare digest says no version
        ("quay.io/coreos/etcd:latest", "3.4.23", False),
        ("registry.local:3.4.23/etcd:v3.6.0", "3.4.23", False),
    ],
)
def test_etcd_image_must_name_the_version(image, version, ok):
    body = _created({"engine": "etcd", "version": version, "image": image})
    assert (cel_errors(crd.cluster_crd(), body) == []) is ok
    assert (validate_cluster_spec(body["spec"]) == []) is ok, "the operator checks the same rule"


def test_etcdstore_version_is_its_api_version_or_rejected():
    assert cel_errors(crd.cluster_crd(), _created({"engine": "etcdstore"})) == []
    body = _created({"engine": "etcdstore", "version": "3.5.0"})
    assert any("engine etcdstore" in e for e in cel_errors(crd.cluster_crd(), body))
    assert any("engine etcdstore" in e for e in validate_cluster_spec(body["spec"]))
    assert (
        cel_errors(crd.cluster_crd(), _created({"engine": "etcdstore", "image": "mine/etcdstore:dev"})) == []
    )


def test_cel_rules_are_bounded_for_the_api_servers_cost_estimate():
    spec = version_schema(crd.cluster_crd())["properties"]["spec"]["properties"]
    assert spec["image"]["maxLength"] <= 1024 and spec["version"]["maxLength"] <= 64
