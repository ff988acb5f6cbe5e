"""Issue 14 item 13: the operator killed at every failpoint (os._exit right after the step, no
status written) converges when restarted. after-member-add and after-member-remove are in
test_op_scenario_basic.py; this walks one cluster through the other four."""

from __future__ import annotations

import pytest
from etcdoperator import failpoints

pytestmark = pytest.mark.etcd


async def _crash_at(world, failpoint: str) -> None:
    await world.operator.start(ETCDOPERATOR_FAILPOINTS=failpoint)
    assert await world.operator.wait_exit(90) == failpoints.EXIT_CODE, world.operator.tail(40)
    await world.operator.start()


async def test_crash_at_bootstrap_promote_move_leader_and_pvc_delete_converges(world):
    # after-bootstrap: the ConfigMap says "new" for the seed alone, the StatefulSet runs one pod
    await world.create_cluster("delta", {"replicas": 1})
    await _crash_at(world, "after-bootstrap")
    await world.wait_available("delta", 1)
    async with world.client("delta") as c:
        await c.put("k", "v")

    # after-promote: the learner was just promoted
    await world.operator.stop()
    await world.patch_spec("delta", {"replicas": 2})
    await _crash_at(world, "after-promote")
    await world.wait_available("delta", 2)

    # after-move-leader: a rolling change moves leadership off the leader before restarting it
    await world.operator.stop()
    await world.patch_spec("delta", {"options": {"snapshotCount": 5000}})
    await _crash_at(world, "after-move-leader")
    await world.wait_for(
        "rolled",
        lambda: (
            all(
                "--snapshot-count=5000" in p["spec"]["containers"][0]["args"]
                for p in world.pods("delta").values()
            )
            and len(world.pods("delta")) == 2
        ),
        timeout=120,
    )
    await world.wait_available("delta", 2)

    # after-pvc-delete: scale-down deleted the removed member's volume
    await world.operator.stop()
    await world.patch_spec("delta", {"replicas": 1})
    await _crash_at(world, "after-pvc-delete")
    await world.wait_available("delta", 1)
    await world.wait_for(
        "one pod, one volume",
        lambda: (
            sorted(world.claims("delta")) == ["data-delta-0"] and sorted(world.pods("delta")) == ["delta-0"]
        ),
    )
    async with world.client("delta") as c:
        assert (await c.get("k")).kvs[0].value == b"v"
        assert len((await c.member_list()).members) == 1


def test_every_failpoint_is_exercised_by_a_scenario():
    from pathlib import Path

    text = "".join(p.read_text() for p in Path(__file__).parent.glob("test_op_scenario_*.py"))
    missing = [f for f in sorted(failpoints.KNOWN) if f'"{f}"' not in text]
    assert not missing, missing
