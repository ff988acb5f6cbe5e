"""The same operator against both member engines, whatever --member-binary says: real etcd 3.4 and
this project's store (skipped, with the reason, when `etcdstore` is not installed)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.etcd


@pytest.mark.parametrize("member_engine", ["etcd", "etcdstore"], indirect=True)
async def test_grow_write_shrink(world, member_engine):
    engine, _ = member_engine
    await world.operator.start()
    await world.create_cluster("duo", {"replicas": 3, "engine": engine})
    st = await world.wait_available("duo", 3)
    assert st["currentVersion"] == "3.4.23"
    async with world.client("duo") as c:
        await c.put("engine", engine)
    await world.patch_spec("duo", {"replicas": 1})
    await world.wait_available("duo", 1)
    async with world.client("duo") as c:
        assert (await c.get("engine")).kvs[0].value == engine.encode()
        assert len((await c.member_list()).members) == 1
    cmd = world.api.get_object("apps/v1/statefulsets", "default", "duo")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert cmd["command"] == [engine]
