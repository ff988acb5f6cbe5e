"""Issue 14 item 10: server-side apply. The pure parts (field ownership, migrating objects of the
pre-server-side-apply operator) and the operator's requests against the harness API server. The
real kube-apiserver's behaviour is checked in tests/k8s/test_operator_apply.py."""

from __future__ import annotations

import copy

import kmock
from etcdoperator import kube as kube_mod
from etcdoperator.kube import (
    ANNOTATION_LAST_APPLIED,
    FIELD_MANAGER,
    REPLICAS_MANAGER,
    SERVICES,
    STATEFULSETS,
    ApiError,
    Kube,
    fields_owned,
    legacy_upgrade_patch,
    merge_fieldsets,
)
from kubeharness.apiserver import ApiServer, apply_merge

T = "2026-12-03T00:00:00Z"


def _sts_made_by_the_old_operator() -> dict:
    """A StatefulSet as kube-apiserver returns it after the pre-SSA operator created it and
    merge-patched spec.replicas (no fieldManager: named "Python" after aiohttp's User-Agent)."""
    python = {
        "f:metadata": {
            "f:annotations": {".": {}, f"f:{ANNOTATION_LAST_APPLIED}": {}},
            "f:labels": {".": {}, "f:app": {}},
        },
        "f:spec": {
            "f:replicas": {},
            "f:serviceName": {},
            "f:template": {
                "f:spec": {"f:initContainers": {'k:{"name":"restore"}': {".": {}, "f:image": {}}}}
            },
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "resourceVersion": "42",
            "annotations": {ANNOTATION_LAST_APPLIED: "{}", "user": "x"},
            "managedFields": [
                {
                    "manager": "Python",
                    "operation": "Update",
                    "apiVersion": "apps/v1",
                    "time": T,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": python,
                },
                {
                    "manager": "kubectl-annotate",
                    "operation": "Update",
                    "apiVersion": "apps/v1",
                    "time": T,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:annotations": {"f:user": {}}}},
                },
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "apps/v1",
                    "time": T,
                    "subresource": "status",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:replicas": {}}},
                },
                {
                    "manager": FIELD_MANAGER,
                    "operation": "Apply",
                    "apiVersion": "apps/v1",
                    "time": T,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:serviceName": {}}},
                },
            ],
        },
        "spec": {"replicas": 3, "serviceName": "c-peer"},
    }


def test_legacy_fields_move_to_the_operator_and_replicas_to_its_own_manager():
    live = _sts_made_by_the_old_operator()
    before = copy.deepcopy(live)
    patch = legacy_upgrade_patch(live, now=T)
    assert live == before  # pure
    assert patch is not None
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    assert patch[1]["op"] == "replace" and patch[1]["path"] == "/metadata/managedFields"
    entries = {(e["manager"], e["operation"], e.get("subresource")): e for e in patch[1]["value"]}
    assert ("Python", "Update", None) not in entries
    # other writers keep what they own
    assert entries[("kubectl-annotate", "Update", None)] == before["metadata"]["managedFields"][1]
    assert ("kube-controller-manager", "Update", "status") in entries
    ours = entries[(FIELD_MANAGER, "Apply", None)]["fieldsV1"]
    assert f"f:{ANNOTATION_LAST_APPLIED}" in ours["f:metadata"]["f:annotations"]  # so the next apply drops it
    assert "f:serviceName" in ours["f:spec"] and "f:template" in ours["f:spec"]
    assert "f:replicas" not in ours["f:spec"]
    side = entries[(REPLICAS_MANAGER, "Apply", None)]
    assert side["fieldsV1"] == {"f:spec": {"f:replicas": {}}} and side["apiVersion"] == "apps/v1"
    migrated = {**live, "metadata": {**live["metadata"], "managedFields": patch[1]["value"]}}
    assert fields_owned(migrated, REPLICAS_MANAGER, ("spec", "replicas"))
    assert not fields_owned(migrated, FIELD_MANAGER, ("spec", "replicas"))
    assert legacy_upgrade_patch(migrated) is None  # once


def test_nothing_to_migrate_without_the_old_manager():
    live = _sts_made_by_the_old_operator()
    live["metadata"]["managedFields"] = [
        e for e in live["metadata"]["managedFields"] if e["manager"] != "Python"
    ]
    assert legacy_upgrade_patch(live) is None
    assert legacy_upgrade_patch({"metadata": {}}) is None
    # a status-subresource entry of the old manager is not the operator's configuration
    live["metadata"]["managedFields"].append(
        {"manager": "Python", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}}
    )
    assert legacy_upgrade_patch(live) is None


def test_field_ownership_and_fieldset_union():
    live = _sts_made_by_the_old_operator()
    assert fields_owned(live, "Python", ("spec", "replicas"), operation="Update")
    assert not fields_owned(live, REPLICAS_MANAGER, ("spec", "replicas"))
    assert fields_owned({"metadata": {}}, REPLICAS_MANAGER, ("spec", "replicas"))  # no managedFields tracked
    a = {"f:spec": {"f:a": {}, "f:b": {"f:c": {}}}}
    b = {"f:spec": {"f:b": {"f:d": {}}, "f:e": {}}, "f:metadata": {}}
    assert merge_fieldsets(a, b) == {
        "f:spec": {"f:a": {}, "f:b": {"f:c": {}, "f:d": {}}, "f:e": {}},
        "f:metadata": {},
    }
    assert a == {"f:spec": {"f:a": {}, "f:b": {"f:c": {}}}}


def test_harness_apply_merge_removes_only_what_this_manager_dropped():
    live = {"spec": {"replicas": 3, "image": "a", "restore": 1}, "metadata": {"annotations": {"user": "x"}}}
    prev = {"spec": {"replicas": 0, "image": "a", "restore": 1}}
    others = [{"spec": {"replicas": 3}}]
    assert apply_merge(live, {"spec": {"image": "b"}}, prev, others) == {
        "spec": {"replicas": 3, "image": "b"},
        "metadata": {"annotations": {"user": "x"}},
    }


def _svc(**annotations: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "ns", "annotations": annotations},
        "spec": {"ports": [{"port": 1}], "selector": {"a": "b"}},
    }


async def test_operator_applies_with_its_field_manager():
    seen: list[tuple[str, str | None, str | None]] = []
    api = ApiServer()

    async with api, kmock.Server(api) as srv:
        original = ApiServer._admit

        def spy(self, request):
            ctype = next((v for k, v in request.headers.items() if k.lower() == "content-type"), None)
            seen.append((request.method.value, ctype, request.params.get("fieldManager")))
            return original(self, request)

        ApiServer._admit = spy  # type: ignore[method-assign]  # a spy
        kube = Kube(str(srv.url).rstrip("/"))
        try:
            created = await kube.apply(_svc(a="1", b="2"))
            assert created["metadata"]["annotations"] == {"a": "1", "b": "2"}
            updated = await kube.apply(_svc(a="1"))
            assert updated["metadata"]["annotations"] == {"a": "1"}
            try:  # never creates a StatefulSet (as on kube-apiserver: a partial one is invalid)
                await kube.apply_replicas(
                    STATEFULSETS, "ns", "missing", 2, api_version="apps/v1", kind="StatefulSet"
                )
                raise AssertionError("created")
            except ApiError as e:
                assert e.status == 422
        finally:
            ApiServer._admit = original  # type: ignore[method-assign]  # restores the spied method
            await kube.close()
    assert seen[0] == ("PATCH", kube_mod.APPLY_PATCH, FIELD_MANAGER)
    assert all(m == "PATCH" and c == kube_mod.APPLY_PATCH for m, c, _ in seen)
    assert SERVICES.plural == "services"
