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
    REJOIN_DEADLINE,
    ContinuousClient,
    DataCheck,
    available,
    cluster_status,
    etcd_cluster,
    evict,
    member_endpoints,
    member_ids,
    refused_update,
    rejoin_seconds,
    wait,
)
from etcdoperator.spec import parse_quantity
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
    """The smoke run: a cluster of 3 forms, serves, and a deleted pod returns with its identity and data. The
    recreated pod has a new IP under the same DNS name and rejoins in about a second (issue 14 item 14: the
    leader redials it by name with a fresh lookup; gRPC's channels took 20-30 s)."""
    name = "smoke"
    kubectl.apply(etcd_cluster(name, engine, replicas=3))
    first = member_ids(available(kubectl, name, 3))
    data = DataCheck()
    step(kubectl, provider, data, name, "created")
    old = kubectl.json("pod", f"{name}-1")
    kubectl("delete", "pod", f"{name}-1", "--wait=false")
    took = rejoin_seconds(provider, kubectl, f"{name}-1", old)
    print(f"{name}-1 rejoined {took:.2f} s after serving at its new address")
    if engine == "etcdstore":  # etcd 3.4's own transport is not what this is about
        assert took < REJOIN_DEADLINE, f"{name}-1 rejoined {took:.1f} s after serving at its new address"
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

    # Deleted (reclaimPolicy Delete) and created again at once, while the garbage collector is still removing
    # the old StatefulSet, pods and ConfigMap and the old volumes are terminating: the new cluster waits for them
    # (never brings members back from volumes being deleted) and starts empty.
    kubectl("delete", "etcdcluster", name)
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
    forms (the stale volumes are reported, not a reason to hang) and serves. Also (issue 14 items 7 and 9): the
    only member of a cluster of 1 can be evicted (a drain is not blocked), and growing `storage` expands its
    volume."""
    name = "keep"
    spec = etcd_cluster(name, engine, replicas=1)
    spec["spec"]["storage"]["reclaimPolicy"] = "Retain"
    kubectl.apply(spec)
    available(kubectl, name, 1)
    data = DataCheck()
    step(kubectl, provider, data, name, "created")
    # One voter: the disruption budget lets a drain evict it (a budget of 1 would block every drain forever).
    pod = kubectl.json("pod", f"{name}-0")
    wait(
        "the disruption budget to allow one disruption",
        lambda: (kubectl.json("pdb", name).get("status") or {}).get("disruptionsAllowed") == 1,
        60,
    )
    allowed, message = evict(kubectl, f"{name}-0")
    assert allowed, f"evicting the only member of a cluster of 1 was refused: {message}"
    wait(
        "the evicted member recreated",
        lambda: kubectl.json("pod", f"{name}-0")["metadata"]["uid"] != pod["metadata"]["uid"],
    )
    available(kubectl, name, 1)
    step(kubectl, provider, data, name, "evicted")

    old_uid = kubectl.json("etcdcluster", name)["metadata"]["uid"]
    kubectl("delete", "etcdcluster", name)
    assert pvcs(kubectl, name) == [f"data-{name}-0"], "reclaimPolicy Retain must keep the member volume"
    # Created again at once, while the old StatefulSet, pod and ConfigMap are still being garbage collected:
    # the new cluster waits for them, then brings the member back from its retained volume (what Retain
    # promises), reports the volume, and does not hang in Bootstrapping.
    kubectl.apply(spec)
    st = available(kubectl, name, 1)
    assert kubectl.json("etcdcluster", name)["metadata"]["uid"] != old_uid
    assert st.get("retainedVolumes") == [f"data-{name}-0"], st
    with member_endpoints(provider, kubectl, name) as eps:
        data.verify(eps)  # the data written before the delete is back
    step(kubectl, provider, data, name, "recreated")

    # Growing `storage` expands the member volume (the StorageClass allows expansion).
    kubectl(
        "patch",
        f"etcdcluster/{name}",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"storage": {"size": "512Mi"}}}),
    )

    def expanded() -> bool:
        pvc = kubectl.json("pvc", f"data-{name}-0")
        capacity = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
        return (
            parse_quantity(pvc["spec"]["resources"]["requests"]["storage"]) == 512 << 20
            and capacity is not None
            and parse_quantity(capacity) == 512 << 20
        )

    wait("the member volume expanded to 512Mi", expanded, 300, 2.0)
    available(kubectl, name, 1)
    step(kubectl, provider, data, name, "expanded")


def test_auto_tls(kubectl, provider, engine):
    """Certificates made by the operator: members form over TLS and the client Secret holds what a client needs."""
    kubectl.apply(
        etcd_cluster("sec", engine, replicas=3, tls={"client": {"mode": "auto"}, "peer": {"mode": "auto"}})
    )
    available(kubectl, "sec", 3)
    secret = kubectl.json("secret", "sec-client-tls")
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])


def test_bad_image_rollout_is_fixed_by_correcting_the_spec(kubectl, provider, engine):
    """Issue 14 items 3, 4, 6 and 9 on the real API server and controllers.

    Fields that cannot change in place are refused by the API server (CEL transition rules), and so is a
    `version` that means nothing for engine etcdstore. A rollout to an image that cannot be pulled stops with one
    member down (ImagePullBackOff); the disruption budget then refuses to evict another voter; correcting the spec
    replaces the member that is down first (it does not wait for every member to be healthy) and the cluster
    comes back whole, with the same members and every acknowledged key. Then the StatefulSet alone is deleted:
    no volume goes with it, and the members come back on their data."""
    name = "roll"
    kubectl.apply(etcd_cluster(name, engine, replicas=3))
    first = member_ids(available(kubectl, name, 3))
    data = DataCheck()
    step(kubectl, provider, data, name, "created")

    target = f"etcdcluster/{name}"
    other = "etcdstore" if engine == "etcd" else "etcd"
    for patch, message in [
        ({"spec": {"engine": other}}, "engine is immutable"),
        ({"spec": {"tls": {"client": {"mode": "auto"}}}}, "tls.client.mode and tls.peer.mode are immutable"),
        (
            {"spec": {"restore": {"source": {"pvc": {"claimName": "b", "path": "p"}}}}},
            "restore can only be set when the cluster is created",
        ),
    ]:
        refusal = refused_update(kubectl, target, patch)
        assert message in refusal, refusal
    if engine == "etcdstore":
        assert "engine etcdstore implements etcd API" in refused_update(
            kubectl, target, {"spec": {"version": "3.5.0"}}
        )

    revision = kubectl.json("statefulset", name)["status"]["updateRevision"]
    version = kubectl.json("etcdcluster", name)["spec"]["version"]  # engine etcd: the tag must name it
    bad = {"spec": {"image": f"example.invalid/no-such-image:v{version}"}}
    kubectl("patch", target, "--type=merge", "-p", json.dumps(bad))

    def pulling() -> list[str]:
        stuck = []
        for p in kubectl.json(
            "pod", "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/component=member"
        )["items"]:
            for c in (p.get("status") or {}).get("containerStatuses") or []:
                reason = ((c.get("state") or {}).get("waiting") or {}).get("reason")
                if reason in ("ErrImagePull", "ImagePullBackOff"):
                    stuck.append(p["metadata"]["name"])
        return stuck

    down = wait("a member on the image that cannot be pulled", pulling, 300, 2.0)
    assert len(down) == 1, down
    # One voter down: the budget (minAvailable 2 of 3) lets no other voter go.
    wait(
        "the disruption budget to allow nothing",
        lambda: (kubectl.json("pdb", name).get("status") or {}).get("disruptionsAllowed") == 0,
        120,
    )
    healthy = next(k for k in first if k not in down)
    allowed, message = evict(kubectl, healthy)
    assert not allowed and "disruption budget" in message, message

    # The fix: the image dropped again. The member that is down is replaced first.
    kubectl("patch", target, "--type=json", "-p", json.dumps([{"op": "remove", "path": "/spec/image"}]))
    wait("no member left on the bad image", lambda: not pulling(), 300, 2.0)
    wait(
        "every pod on the corrected template",
        lambda: all(
            p["metadata"]["labels"].get("controller-revision-hash")
            == kubectl.json("statefulset", name)["status"].get("updateRevision")
            for p in kubectl.json(
                "pod", "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/component=member"
            )["items"]
        ),
        300,
        2.0,
    )
    assert member_ids(available(kubectl, name, 3)) == first
    assert (
        kubectl.json("statefulset", name)["status"]["updateRevision"] == revision
    )  # back to the first template
    step(kubectl, provider, data, name, "corrected")

    # Item 6: deleting only the StatefulSet (its pods go with it) deletes no member data, also with reclaimPolicy
    # Delete (persistentVolumeClaimRetentionPolicy Retain): the operator makes it again and every member comes back
    # on its own volume, under its ID.
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=member"
    claims = {
        c["metadata"]["name"]: c["metadata"]["uid"] for c in kubectl.json("pvc", "-l", selector)["items"]
    }
    assert len(claims) == 3, claims
    pod_uids = {p["metadata"]["uid"] for p in kubectl.json("pod", "-l", selector)["items"]}
    kubectl("delete", "statefulset", name)

    def recreated() -> bool:
        pods = kubectl.json("pod", "-l", selector)["items"]
        return len(pods) == 3 and not {p["metadata"]["uid"] for p in pods} & pod_uids

    wait("the StatefulSet and its pods made again", recreated, 300, 2.0)
    assert member_ids(available(kubectl, name, 3)) == first
    after = {
        c["metadata"]["name"]: c["metadata"]["uid"] for c in kubectl.json("pvc", "-l", selector)["items"]
    }
    assert after == claims, "deleting the StatefulSet replaced member volumes"
    step(kubectl, provider, data, name, "statefulset-deleted")
