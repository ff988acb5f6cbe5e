"""Integration: the real operator (a kopf subprocess) against KMock + the harness, with real members.

Each test gets its own stand-in cluster (see kubeharness); members are real etcd 3.4 processes
by default (--member-binary).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.etcd


def member_ids(world, name: str) -> dict[str, str]:
    return {m["name"]: m["id"] for m in world.status(name).get("members") or []}


def event_reasons(world, name: str) -> list[str]:
    return [e["reason"] for e in sorted(world.events(name), key=lambda e: e["metadata"]["name"])]


async def read_all(world, name: str, ordinals, key: str) -> set[bytes]:
    """The value of `key` as each member serves it locally (serializable reads)."""
    seen = set()
    for k in ordinals:
        async with world.client(name, ordinals=range(k, k + 1)) as c:
            r = await c.get(key, serializable=True)
            seen.add(r.kvs[0].value if r.kvs else b"")
    return seen


async def test_create_write_scale_up_and_down_then_delete(world):
    await world.operator.start()
    await world.create_cluster("alpha", {"replicas": 3})
    st = await world.wait_available("alpha", 3)
    assert st["phase"] == "Running" and st["leader"] in {"alpha-0", "alpha-1", "alpha-2"}
    assert st["observedGeneration"] == 1 and st["clusterID"]
    assert world.condition("alpha", "Degraded")["status"] == "False"
    first_ids = member_ids(world, "alpha")
    async with world.client("alpha") as c:
        for i in range(50):
            await c.put(f"k/{i:03d}", f"v{i}")

    # the objects it made
    api = world.api
    assert api.get_object("v1/services", "default", "alpha")["spec"]["clusterIP"] == "None"
    assert api.get_object("v1/services", "default", "alpha-client") is not None
    assert api.get_object("policy/v1/poddisruptionbudgets", "default", "alpha")["spec"]["minAvailable"] == 2
    cm = api.get_object("v1/configmaps", "default", "alpha-bootstrap")
    assert cm["data"]["initial-cluster-state"] == "existing"
    claims = world.claims("alpha")
    assert sorted(claims) == ["data-alpha-0", "data-alpha-1", "data-alpha-2"]
    assert {c["metadata"]["annotations"]["etcdstore.io/member-id"] for c in claims.values()} == set(
        first_ids.values()
    )

    # 3 -> 5: learners, one at a time, then promoted
    await world.patch_spec("alpha", {"replicas": 5})
    await world.wait_available("alpha", 5)
    assert world.status("alpha")["observedGeneration"] == 2
    assert api.get_object("policy/v1/poddisruptionbudgets", "default", "alpha")["spec"]["minAvailable"] == 3
    ids5 = member_ids(world, "alpha")
    assert {k: ids5[k] for k in first_ids} == first_ids
    assert await read_all(world, "alpha", range(5), "k/049") == {b"v49"}
    reasons = event_reasons(world, "alpha")
    assert reasons.count("MemberAdded") == 4 and reasons.count("MemberPromoted") == 4

    # 5 -> 3 through the scale subresource (kubectl scale): highest ordinals removed, StatefulSet
    # shrunk, their volumes deleted
    await world.harness.patch(
        "etcdstore.io/v1alpha1/etcdclusters", "default", "alpha", {"spec": {"replicas": 3}}, sub="scale"
    )
    await world.wait_available("alpha", 3)
    await world.wait_for(
        "volumes of removed members deleted",
        lambda: sorted(world.claims("alpha")) == ["data-alpha-0", "data-alpha-1", "data-alpha-2"],
    )
    assert member_ids(world, "alpha") == first_ids
    assert sorted(world.pods("alpha")) == ["alpha-0", "alpha-1", "alpha-2"]
    assert api.get_object("apps/v1/statefulsets", "default", "alpha")["spec"]["replicas"] == 3
    async with world.client("alpha") as c:
        r = await c.get("k/", prefix=True, count_only=True)
        assert r.count == 50
        members = (await c.member_list()).members
        assert sorted(m.name for m in members) == ["alpha-0", "alpha-1", "alpha-2"]
    reasons = event_reasons(world, "alpha")
    assert reasons.count("MemberRemoved") == 2 and reasons.count("VolumeDeleted") == 2

    # Prometheus metrics and kopf's liveness endpoint
    metrics = await world.operator.metrics()
    ops = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("etcdoperator_member_operations_total{")
    }
    assert ops['cluster="alpha",namespace="default",operation="member-add",result="ok"'] == 4
    assert ops['cluster="alpha",namespace="default",operation="member-remove",result="ok"'] == 2
    assert 'etcdoperator_reconciles_total{action="Converged",cluster="alpha",namespace="default"}' in metrics
    assert await world.operator.alive()

    # delete: finalizer removes the volumes, owned objects are garbage-collected, members stop
    await world.harness.delete("etcdstore.io/v1alpha1/etcdclusters", "default", "alpha")
    await world.wait_for(
        "everything cleaned up",
        lambda: (
            world.cluster("alpha") is None
            and not world.claims("alpha")
            and not world.pods("alpha")
            and api.get_object("apps/v1/statefulsets", "default", "alpha") is None
            and api.get_object("v1/configmaps", "default", "alpha-bootstrap") is None
            and api.get_object("v1/services", "default", "alpha-client") is None
        ),
        timeout=60,
    )
    assert not world.harness.kubelet.pods, "member processes must be stopped"


async def test_pod_loss_keeps_identity_and_data_loss_replaces_member(world):
    await world.operator.start()
    await world.create_cluster("beta", {"replicas": 3})
    await world.wait_available("beta", 3)
    ids = member_ids(world, "beta")
    async with world.client("beta") as c:
        await c.put("before", "1")

    # a deleted pod comes back as the same member, with its data
    old_uid = world.pods("beta")["beta-1"]["metadata"]["uid"]
    await world.harness.delete("v1/pods", "default", "beta-1")
    await world.wait_for(
        "beta-1 recreated",
        lambda: world.pods("beta").get("beta-1", {}).get("metadata", {}).get("uid") not in (None, old_uid),
    )
    await world.wait_available("beta", 3)
    assert member_ids(world, "beta") == ids
    assert await read_all(world, "beta", [1], "before") == {b"1"}

    # a crash (SIGKILL) is a container restart: same pod, same member
    world.harness.kubelet.runtime("default", "beta-2").kill()
    await world.wait_for(
        "beta-2 restarted",
        lambda: world.pods("beta")["beta-2"]["status"]["containerStatuses"][0]["restartCount"] >= 1,
    )
    await world.wait_available("beta", 3)
    assert member_ids(world, "beta") == ids

    # the volume is lost (deleted with its pod): the member is removed and re-added fresh
    await world.harness.delete("v1/persistentvolumeclaims", "default", "data-beta-1")
    await world.harness.delete("v1/pods", "default", "beta-1")
    await world.wait_for(
        "beta-1 replaced by a new member",
        lambda: member_ids(world, "beta").get("beta-1") not in (None, ids["beta-1"]),
        timeout=90,
    )
    await world.wait_available("beta", 3)
    new_ids = member_ids(world, "beta")
    assert new_ids["beta-0"] == ids["beta-0"] and new_ids["beta-2"] == ids["beta-2"]
    assert new_ids["beta-1"] != ids["beta-1"]
    assert await read_all(world, "beta", [1], "before") == {b"1"}
    claim = world.claims("beta")["data-beta-1"]
    assert claim["metadata"]["annotations"]["etcdstore.io/member-id"] == new_ids["beta-1"]
    reasons = event_reasons(world, "beta")
    assert "MemberRemoved" in reasons and "MemberAdded" in reasons
    removed = [e for e in world.events("beta") if e["reason"] == "MemberRemoved"]
    assert removed[0]["type"] == "Warning" and "DataLost" in removed[0]["message"]


async def test_operator_crashes_after_member_add_and_remove_then_converges(world):
    await world.create_cluster("gamma", {"replicas": 1})
    await world.operator.start()
    await world.wait_available("gamma", 1)
    async with world.client("gamma") as c:
        await c.put("x", "1")

    # crash right after MemberAdd
    await world.operator.stop()
    await world.patch_spec("gamma", {"replicas": 2})
    await world.operator.start(ETCDOPERATOR_FAILPOINTS="after-member-add")
    assert await world.operator.wait_exit(60) == 86
    async with world.client("gamma", ordinals=range(1)) as c:
        members = (await c.member_list()).members
    assert len(members) == 2 and any(m.isLearner and not m.name for m in members), (
        "MemberAdd happened, nothing else"
    )
    await world.operator.start()
    await world.wait_available("gamma", 2)
    async with world.client("gamma", ordinals=range(1)) as c:
        assert len((await c.member_list()).members) == 2

    # crash right after MemberRemove
    await world.operator.stop()
    await world.patch_spec("gamma", {"replicas": 1})
    await world.operator.start(ETCDOPERATOR_FAILPOINTS="after-member-remove")
    assert await world.operator.wait_exit(60) == 86
    assert world.api.get_object("apps/v1/statefulsets", "default", "gamma")["spec"]["replicas"] == 2
    await world.operator.start()
    await world.wait_available("gamma", 1)
    await world.wait_for(
        "gamma-1 gone with its volume",
        lambda: (
            sorted(world.claims("gamma")) == ["data-gamma-0"] and sorted(world.pods("gamma")) == ["gamma-0"]
        ),
    )
    async with world.client("gamma") as c:
        assert (await c.get("x")).kvs[0].value == b"1"
        assert len((await c.member_list()).members) == 1
