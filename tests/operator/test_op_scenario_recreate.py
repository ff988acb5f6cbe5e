"""Issue 14 item 6: delete an EtcdCluster and create it again under the same name.

reclaimPolicy Retain: the volumes outlive the cluster (the StatefulSet's retention policy is
Retain too); the new EtcdCluster (another UID) waits for the old objects to go, never bootstraps
next to the volumes, and its members come back with their data; the volumes are reported as
retained. reclaimPolicy Delete: the finalizer deletes the volumes and the new cluster starts
fresh."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.etcd


async def _delete_and_wait(world, name: str) -> None:
    await world.harness.delete("etcdstore.io/v1alpha1/etcdclusters", "default", name)
    await world.wait_for(
        f"{name} gone",
        lambda: (
            world.cluster(name) is None
            and not world.pods(name)
            and world.api.get_object("apps/v1/statefulsets", "default", name) is None
        ),
        timeout=60,
    )


async def test_recreate_with_retained_volumes_brings_the_data_back_and_with_delete_starts_fresh(world):
    await world.operator.start()
    await world.create_cluster("eps", {"replicas": 3, "storage": {"reclaimPolicy": "Retain"}})
    await world.wait_available("eps", 3)
    old_uid = world.cluster("eps")["metadata"]["uid"]
    async with world.client("eps") as c:
        await c.put("kept", "yes")

    await _delete_and_wait(world, "eps")
    assert sorted(world.claims("eps")) == ["data-eps-0", "data-eps-1", "data-eps-2"], (
        "Retain keeps the volumes"
    )

    await world.create_cluster("eps", {"replicas": 3, "storage": {"reclaimPolicy": "Delete"}})
    st = await world.wait_available("eps", 3, timeout=120)
    assert world.cluster("eps")["metadata"]["uid"] != old_uid
    assert st["retainedVolumes"] == ["data-eps-0", "data-eps-1", "data-eps-2"]
    async with world.client("eps") as c:
        assert (await c.get("kept")).kvs[0].value == b"yes"
        await c.put("second", "life")

    # now Delete: the finalizer removes the volumes; the next cluster of that name starts empty
    await _delete_and_wait(world, "eps")
    await world.wait_for("volumes deleted", lambda: not world.claims("eps"), timeout=60)
    await world.create_cluster("eps", {"replicas": 1})
    st = await world.wait_available("eps", 1)
    assert st["retainedVolumes"] == []
    async with world.client("eps") as c:
        assert not (await c.get("kept")).kvs
