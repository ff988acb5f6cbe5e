"""A cluster's life on a real control plane, with its data checked after every step.

create 3 -> write -> scale 3->5->3 through the scale subresource -> delete a pod -> delete a member's volume
and pod -> rolling option change -> delete (reclaim Delete) -> recreate under the same name. Before every
step keys are written; after it, every member serves all acknowledged keys at one revision and HashKV agrees.
A continuous client runs through the client Service the whole time; its history must pass the
linearizability and watch checkers of tests/robustness.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from e2elib import (
    ContinuousClient,
    DataCheck,
    available,
    cluster_status,
    etcd_cluster,
    member_endpoints,
    member_ids,
    wait,
)
from etcdstore.client import Client


def pvcs(kubectl, name: str) -> list[str]:
    items = kubectl.json("pvc", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return sorted(i["metadata"]["name"] for i in items if not i["metadata"].get("deletionTimestamp"))


def step(
    kubectl, provider, data: DataCheck, name: str, label: str, recorder: ContinuousClient | None = None
) -> None:
    """Writes a batch named `label` (through `recorder` while one runs), then checks every member holds everything
    acknowledged so far."""
    with provider.endpoint(kubectl, f"svc/{name}-client") as ep:
        data.write(ep, label, recorder)
    with member_endpoints(provider, kubectl, name) as eps:
        data.verify(eps)


@pytest.mark.smoke
def test_create_write_delete_pod(kubectl, provider, engine):
    """The smoke run: a cluster of 3 forms, serves, and a deleted pod returns with its identity and data."""
    name = "smoke"
    kubectl.apply(etcd_cluster(name, engine, replicas=3))
    first = member_ids(available(kubectl, name, 3))
    data = DataCheck()
    step(kubectl, provider, data, name, "created")
    kubectl("delete", "pod", f"{name}-1", "--wait=false")
    wait(
        "the pod replaced",
        lambda: kubectl.json("pod", f"{name}-1")["metadata"].get("deletionTimestamp") is None,
    )
    assert member_ids(available(kubectl, name, 3)) == first
    step(kubectl, provider, data, name, "pod-deleted")


def test_lifecycle(kubectl, provider, engine):
    name = "life"
    kubectl.apply(etcd_cluster(name, engine, replicas=3))
    first = member_ids(available(kubectl, name, 3))
    data = DataCheck()
    step(kubectl, provider, data, name, "created")

    with provider.endpoint(kubectl, f"svc/{name}-client") as client_ep:
        traffic = ContinuousClient(client_ep)
        traffic.start()
        try:
            kubectl("scale", "etcdcluster", name, "--replicas=5")  # the scale subresource
            available(kubectl, name, 5)
            step(kubectl, provider, data, name, "scaled-to-5", traffic)

            kubectl("scale", "etcdcluster", name, "--replicas=3")
            assert member_ids(available(kubectl, name, 3)) == first
            wait("removed members' volumes deleted", lambda: len(pvcs(kubectl, name)) == 3)
            step(kubectl, provider, data, name, "scaled-to-3", traffic)

            kubectl("delete", "pod", f"{name}-1", "--wait=false")
            wait(
                "pod replaced",
                lambda: not kubectl.json("pod", f"{name}-1")["metadata"].get("deletionTimestamp"),
            )
            assert member_ids(available(kubectl, name, 3)) == first
            step(kubectl, provider, data, name, "pod-deleted", traffic)

            # A member whose volume is lost comes back under a new member ID (never its old identity with an
            # empty log), and nothing acknowledged is lost.
            lost = f"{name}-2"
            kubectl("delete", "pvc", f"data-{lost}", "--wait=false")
            kubectl("delete", "pod", lost, "--wait=false")
            # The status says Available with the old members until the operator has seen the loss: wait for the
            # member to change (it must come back under a new ID), then for the cluster to be whole again.
            wait(
                f"{lost} replaced by a new member",
                lambda: member_ids(cluster_status(kubectl, name)).get(lost) not in (None, first[lost]),
                600,
                2.0,
            )
            after = member_ids(available(kubectl, name, 3))
            assert after[lost] != first[lost], f"{lost} came back under its old ID with a new volume"
            assert {k: v for k, v in after.items() if k != lost} == {
                k: v for k, v in first.items() if k != lost
            }
            step(kubectl, provider, data, name, "volume-lost", traffic)

            revision = kubectl.json("statefulset", name)["status"].get("updateRevision")
            kubectl(
                "patch",
                "etcdcluster",
                name,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"options": {"snapshotCount": 5000}}}),
            )
            wait("rolling change applied to every pod", lambda: _rolled(kubectl, name, revision), 600, 2.0)
            available(kubectl, name, 3)
            step(kubectl, provider, data, name, "rolled", traffic)
        finally:
            traffic.stop()
        with member_endpoints(provider, kubectl, name) as eps:
            traffic.check(eps)

    kubectl("delete", "etcdcluster", name)
    wait(
        "everything deleted",
        lambda: (
            kubectl(
                "get", "statefulset,pvc,pod", "-l", f"app.kubernetes.io/instance={name}", "-o", "name"
            ).strip()
            == ""
        ),
    )
    kubectl.apply(etcd_cluster(name, engine, replicas=3))
    again = member_ids(available(kubectl, name, 3))
    assert not set(again.values()) & (set(first.values()) | set(after.values())), "recreated under old IDs"
    with member_endpoints(provider, kubectl, name) as eps:
        for prefix in (DataCheck.PREFIX, DataCheck.RECORDED_PREFIX):
            assert count_keys(next(iter(eps.values())), prefix) == 0, "the recreated cluster is not empty"
    step(kubectl, provider, DataCheck(), name, "recreated")


def count_keys(endpoint: str, prefix: str) -> int:
    async def count() -> int:
        async with Client([endpoint], timeout=10) as c:
            return (await c.get(prefix, prefix=True, count_only=True)).count

    return asyncio.run(count())


def _rolled(kubectl, name: str, old_revision: str | None) -> bool:
    sts = kubectl.json("statefulset", name)
    st = sts["status"]
    new = st.get("updateRevision")
    if not new or new == old_revision:
        return False
    pods = kubectl.json("pod", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return (
        bool(pods)
        and all(p["metadata"]["labels"].get("controller-revision-hash") == new for p in pods)
        and st.get("updatedReplicas") == st.get("replicas")
    )


def test_delete_with_retain_then_recreate(kubectl, provider, engine):
    """Reclaim Retain keeps the volumes when the cluster is deleted; a cluster recreated under the same name
    forms (the stale volumes are reported, not a reason to hang) and serves."""
    name = "keep"
    spec = etcd_cluster(name, engine, replicas=1)
    spec["spec"]["storage"]["reclaimPolicy"] = "Retain"
    kubectl.apply(spec)
    available(kubectl, name, 1)
    data = DataCheck()
    step(kubectl, provider, data, name, "created")
    kubectl("delete", "etcdcluster", name)
    wait(
        "the cluster's pods and StatefulSet gone",
        lambda: (
            kubectl(
                "get", "statefulset,pod", "-l", f"app.kubernetes.io/instance={name}", "-o", "name"
            ).strip()
            == ""
        ),
    )
    assert pvcs(kubectl, name) == [f"data-{name}-0"], "reclaimPolicy Retain must keep the member volume"
    kubectl.apply(spec)
    available(kubectl, name, 1)
    assert cluster_status(kubectl, name)
    step(kubectl, provider, DataCheck(), name, "recreated")


def test_auto_tls(kubectl, provider, engine):
    """Certificates made by the operator: members form over TLS and the client Secret holds what a client needs."""
    kubectl.apply(
        etcd_cluster("sec", engine, replicas=3, tls={"client": {"mode": "auto"}, "peer": {"mode": "auto"}})
    )
    available(kubectl, "sec", 3)
    secret = kubectl.json("secret", "sec-client-tls")
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])
