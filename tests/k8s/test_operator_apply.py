"""Issue 14 item 10 on the real kube-apiserver: the operator's objects are written by server-side
apply. The reconciler's own object pass (`ClusterReconciler._ensure_objects`, the code the
operator runs every step) creates them, updates them, leaves fields of other writers alone
(a user's annotation, `kubectl rollout restart`), takes back a field it owns, never drops or
defaults `spec.replicas`, and migrates objects written by the operator before server-side apply
(plain POST + merge patches with no field manager, the `etcdstore.io/last-applied` annotation)."""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from etcdoperator.build.common import Images
from etcdoperator.build.services import client_service
from etcdoperator.build.statefulset import statefulset
from etcdoperator.kube import (
    ANNOTATION_LAST_APPLIED,
    FIELD_MANAGER,
    REPLICAS_MANAGER,
    SERVICES,
    STATEFULSETS,
    Kube,
)
from etcdoperator.model import EtcdView
from etcdoperator.naming import ClusterRef
from etcdoperator.reconciler import ClusterReconciler, Settings
from etcdoperator.spec import parse_cluster_spec

IMAGES = Images(operator="etcd-operator:test", store="etcdstore:test")
NOBODY = {"nodeSelector": {"etcdstore.io/no-such-node": "true"}}  # pods stay Pending: nothing runs
TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}
# What the pre-Job operator put in the template while a restore bootstrapped.
OLD_RESTORE_STEP = {
    "name": "restore",
    "image": "etcd-operator:old",
    "command": ["etcdoperator", "restore-member"],
    "env": [
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "s3creds", "key": "AWS_ACCESS_KEY_ID"}},
        }
    ],
}


def _spec(**extra):
    return parse_cluster_spec(
        {
            "replicas": 3,
            "engine": "etcdstore",
            "storage": {"ephemeral": True},
            "pod": {**NOBODY, **extra.pop("pod", {})},
            **extra,
        }
    )


def _managers(obj: dict) -> dict[tuple[str, str], dict]:
    return {
        (e["manager"], e["operation"]): e.get("fieldsV1") or {}
        for e in obj["metadata"].get("managedFields") or []
        if not e.get("subresource")
    }


async def _legacy_write(cp, ns: str, desired: dict, replicas: int | None) -> None:
    """What the operator before server-side apply sent: POST with the last-applied annotation,
    then a merge patch of spec.replicas; aiohttp with only credentials (no fieldManager, no
    User-Agent of its own)."""
    body = json.loads(json.dumps(desired))
    body["metadata"].setdefault("annotations", {})[ANNOTATION_LAST_APPLIED] = json.dumps(
        desired, sort_keys=True, separators=(",", ":")
    )
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    pki = cp.pki.client("admin")
    ctx.load_cert_chain(str(pki.cert), str(pki.key))
    res = STATEFULSETS if desired["kind"] == "StatefulSet" else SERVICES
    async with aiohttp.ClientSession() as s:
        async with s.post(
            cp.server + res.path(ns),
            data=json.dumps(body),
            ssl=ctx,
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 201, await r.text()
        if replicas is not None:
            async with s.patch(
                cp.server + res.path(ns, desired["metadata"]["name"]),
                ssl=ctx,
                data=json.dumps({"spec": {"replicas": replicas}}),
                headers={"Content-Type": "application/merge-patch+json"},
            ) as r:
                assert r.status == 200, await r.text()


def test_server_side_apply_on_kube_apiserver(control_plane) -> None:
    asyncio.run(_scenario(control_plane))


async def _scenario(cp) -> None:
    ns = "ssa-test"
    cp.kubectl("create", "namespace", ns)
    kube = Kube.from_kubeconfig(str(cp.kubeconfig))
    secrets = Path(tempfile.mkdtemp(prefix="ssa-"))
    try:
        await _new_objects(cp, kube, ns, secrets)
        await _migration(cp, kube, ns, secrets)
    finally:
        await kube.close()
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


async def _ensure(kube: Kube, ref: ClusterRef, spec, secrets: Path) -> dict:
    rec = ClusterReconciler(kube, Settings(images=IMAGES, secrets_dir=secrets), ref)
    sts = await kube.get(STATEFULSETS, ref.namespace, ref.statefulset)
    await rec._ensure_objects(spec, SimpleNamespace(version=None), sts, EtcdView(reachable=False), "")
    live = await kube.get(STATEFULSETS, ref.namespace, ref.statefulset)
    assert live is not None
    return live


def _own_times(live: dict) -> list:
    """When the operator's own managers last wrote (the statefulset controller's status writes come and go)."""
    return [
        (e["manager"], e.get("time"))
        for e in live["metadata"]["managedFields"]
        if e["manager"] in (FIELD_MANAGER, REPLICAS_MANAGER)
    ]


async def _new_objects(cp, kube: Kube, ns: str, secrets: Path) -> None:
    ref = ClusterRef(ns, "fresh")
    rec = ClusterReconciler(kube, Settings(images=IMAGES, secrets_dir=secrets), ref)
    # create: replicas 0, then owned by the replicas manager alone
    live = await _ensure(kube, ref, _spec(), secrets)
    assert live["spec"]["replicas"] == 0
    m = _managers(live)
    assert "f:replicas" in m[(REPLICAS_MANAGER, "Apply")]["f:spec"]
    assert "f:template" in m[(FIELD_MANAGER, "Apply")]["f:spec"]
    assert await kube.get(SERVICES, ns, ref.client_service) is not None

    # the planner scales; the next template apply neither drops nor defaults replicas
    await rec._scale(3)
    live = await _ensure(kube, ref, _spec(), secrets)
    assert live["spec"]["replicas"] == 3
    assert "f:replicas" not in _managers(live)[(FIELD_MANAGER, "Apply")]["f:spec"]  # released to its manager
    generation, times = (
        live["metadata"]["generation"],
        _own_times(live),
    )
    live = await _ensure(kube, ref, _spec(), secrets)
    assert live["metadata"]["generation"] == generation  # nothing to change: no write
    assert _own_times(live) == times

    # other writers: a user's annotations, kubectl rollout restart; and a field the operator owns
    cp.kubectl("annotate", "statefulset", ref.statefulset, "-n", ns, "team=storage")
    cp.kubectl("annotate", "service", ref.client_service, "-n", ns, "lb.example.com/x=1")
    cp.kubectl("rollout", "restart", "statefulset", ref.statefulset, "-n", ns)
    cp.kubectl(
        "patch",
        "statefulset",
        ref.statefulset,
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps(
            [{"op": "replace", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 5}]
        ),
    )
    live = await _ensure(kube, ref, _spec(pod={"annotations": {"a": "2"}}), secrets)
    tmpl = live["spec"]["template"]
    assert live["metadata"]["annotations"]["team"] == "storage"
    assert "kubectl.kubernetes.io/restartedAt" in tmpl["metadata"]["annotations"]
    assert tmpl["metadata"]["annotations"]["a"] == "2"
    assert tmpl["spec"]["terminationGracePeriodSeconds"] == 30  # forced back: the operator's field
    assert live["spec"]["replicas"] == 3
    svc = await kube.get(SERVICES, ns, ref.client_service)
    assert svc is not None and svc["metadata"]["annotations"]["lb.example.com/x"] == "1"

    # a field the operator stops setting is removed; others' fields stay
    live = await _ensure(kube, ref, _spec(pod={"tolerations": [TOLERATION]}), secrets)
    assert live["spec"]["template"]["spec"]["tolerations"] == [TOLERATION]
    live = await _ensure(kube, ref, _spec(), secrets)
    assert "tolerations" not in live["spec"]["template"]["spec"]
    assert "kubectl.kubernetes.io/restartedAt" in live["spec"]["template"]["metadata"]["annotations"]


async def _migration(cp, kube: Kube, ns: str, secrets: Path) -> None:
    ref = ClusterRef(ns, "legacy")
    old_spec = _spec(pod={"annotations": {"old": "1"}})
    old = statefulset(ref, old_spec, images=IMAGES, version="3.4.23", replicas=0)
    old["spec"]["template"]["spec"]["initContainers"].insert(0, OLD_RESTORE_STEP)
    await _legacy_write(cp, ns, old, replicas=3)
    await _legacy_write(cp, ns, client_service(ref), replicas=None)
    cp.kubectl("annotate", "statefulset", ref.statefulset, "-n", ns, "team=storage")
    live = await kube.get(STATEFULSETS, ns, ref.statefulset)
    assert live is not None
    assert ("Python", "Update") in _managers(live), _managers(live)  # the old operator's manager name

    # the new operator: no restore step in the template, the pod annotation is gone
    live = await _ensure(kube, ref, _spec(), secrets)
    meta, tmpl = live["metadata"], live["spec"]["template"]
    assert ANNOTATION_LAST_APPLIED not in (meta.get("annotations") or {})
    assert meta["annotations"]["team"] == "storage"
    assert live["spec"]["replicas"] == 3  # kept: not dropped, not defaulted
    assert [c["name"] for c in tmpl["spec"]["initContainers"]] == ["gate"]
    assert "old" not in (tmpl["metadata"].get("annotations") or {})
    m = _managers(live)
    assert ("Python", "Update") not in m, m
    assert "f:replicas" in m[(REPLICAS_MANAGER, "Apply")]["f:spec"]
    svc = await kube.get(SERVICES, ns, ref.client_service)
    assert svc is not None and ANNOTATION_LAST_APPLIED not in (svc["metadata"].get("annotations") or {})
    assert ("Python", "Update") not in _managers(svc)
    # and from now on an ordinary object of the new operator
    await ClusterReconciler(kube, Settings(images=IMAGES, secrets_dir=secrets), ref)._scale(4)
    live = await _ensure(kube, ref, _spec(), secrets)
    assert live["spec"]["replicas"] == 4
