"""Multi-member clusters of real etcdstore processes, driven with the real etcdctl 3.4."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable

import grpc
import pytest
from etcdstore import errors
from etcdstore.client import Client
from testlib import Cluster, Member, etcdctl, eventually, have_etcd, wait_serving

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")

# Small snapshot settings so that log compaction, and catch-up by snapshot, happen in a test.
SNAP_ARGS = ["--snapshot-count", "200", "--experimental-snapshot-catchup-entries", "20"]


def members_json(endpoints: list[str]) -> list[dict]:
    return json.loads(etcdctl(endpoints, "member", "list", "-w", "json").stdout)["members"]


def status_json(endpoints: list[str]) -> list[dict]:
    return json.loads(etcdctl(endpoints, "endpoint", "status", "--cluster", "-w", "json").stdout)


def own_status(endpoint: str) -> dict:
    return json.loads(etcdctl([endpoint], "endpoint", "status", "-w", "json").stdout)[0]["Status"]


def hashes(endpoints: list[str]) -> set[int]:
    return {
        d["HashKV"]["hash"]
        for d in json.loads(etcdctl(endpoints, "endpoint", "hashkv", "--cluster", "-w", "json").stdout)
    }


def add_member(cluster: Cluster, name: str, *, learner: bool) -> Member:
    new = cluster.new_member(name)
    args = ["member", "add", name, "--peer-urls", new.peer_url] + (["--learner"] if learner else [])
    out = etcdctl(cluster.endpoints, *args).stdout
    new.initial_cluster = out.split('ETCD_INITIAL_CLUSTER="', 1)[1].split('"', 1)[0]
    new.spawn()
    cluster.members.append(new)
    return new


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    # members may be restarting: etcdctl failures (RuntimeError) and unparsable output retry too
    retry = (AssertionError, RuntimeError, ValueError, LookupError, StopIteration, subprocess.TimeoutExpired)
    eventually(predicate, timeout, 0.2, ignoring=retry, message=what)


def member_id(members: list[dict], name: str) -> int:
    return next(m["ID"] for m in members if m.get("name") == name)


def test_grow_shrink_move_leader_and_replace(tmp_path):
    with Cluster.start(tmp_path, 3, binary="etcdstore", extra_args=SNAP_ARGS) as c:
        eps = c.endpoints
        assert len(members_json(eps)) == 3
        # Members publish their client URLs right after the first election (as etcd's do).
        wait_until(lambda: all(m.get("clientURLs") for m in members_json(eps)), what="members to publish")
        st = status_json(eps)
        assert len({s["Status"]["leader"] for s in st}) == 1 and len(st) == 3
        for i in range(50):
            etcdctl(eps, "put", f"k{i}", f"v{i}")

        # Grow to 4 and 5: each joins as a learner, catches up, is promoted.
        for name in ("m3", "m4"):
            new = add_member(c, name, learner=True)
            wait_serving([new])
            # The new member's name reaches the list once it has published itself (through Raft).
            wait_until(lambda name=name: member_id(members_json(eps), name), what=f"{name} published")
            mid = member_id(members_json(eps), name)
            assert next(m for m in members_json(eps) if m["ID"] == mid).get("isLearner") is True
            # A learner serves serializable reads only.
            assert etcdctl(new.endpoint, "get", "k1", "--consistency", "s").stdout == "k1\nv1\n"
            refused = etcdctl(new.endpoint, "put", "x", "y", check=False)
            assert refused.returncode != 0 and "rpc not supported for learner" in refused.stderr
            wait_until(
                lambda mid=mid: "promoted" in etcdctl(eps, "member", "promote", f"{mid:x}").stdout,
                what="promote",
            )
            assert not next(m for m in members_json(eps) if m["ID"] == mid).get("isLearner")
            # The member refuses writes (and `member add`) until it has applied its own promotion.
            wait_until(
                lambda new=new: not own_status(new.endpoint).get("isLearner"),
                what=f"{name} to apply its promotion",
            )
        eps = c.endpoints
        assert len(status_json(eps)) == 5

        # MoveLeader to a chosen follower.
        st = status_json(eps)
        leader = st[0]["Status"]["leader"]
        leader_ep = next(s["Endpoint"] for s in st if s["Status"]["header"]["member_id"] == leader)
        target = next(
            s["Status"]["header"]["member_id"] for s in st if s["Status"]["header"]["member_id"] != leader
        )
        out = etcdctl([leader_ep.split("//")[-1]], "move-leader", f"{target:x}").stdout
        assert "Leadership transferred" in out
        wait_until(lambda: all(s["Status"]["leader"] == target for s in status_json(eps)), what="new leader")

        # Shrink back to 3.
        for name in ("m4", "m3"):
            mid = member_id(members_json(eps), name)
            etcdctl(eps, "member", "remove", f"{mid:x}")
            gone = next(m for m in c.members if m.name == name)
            wait_until(lambda gone=gone: not gone.running, what=f"{name} to stop after its removal")
            c.members.remove(gone)
        eps = c.endpoints
        assert len(members_json(eps)) == 3
        etcdctl(eps, "put", "after-shrink", "ok")

        # A member that lost its data dir is removed and re-added with a fresh one; it catches up
        # by snapshot because the leader compacted its log meanwhile.
        victim = next(m for m in c.members if m.name == "m2")
        victim_id = member_id(members_json([c.members[0].endpoint]), "m2")
        victim.kill()
        shutil.rmtree(victim.data_dir)
        c.members.remove(victim)
        c.leader_index()  # if the victim led, wait for the survivors' new leader (as an operator would)
        etcdctl(c.endpoints, "member", "remove", f"{victim_id:x}")
        eps = c.endpoints
        for i in range(300):  # > snapshot-count: the log the newcomer would need is compacted
            etcdctl(eps, "put", f"later{i % 10}", str(i))
        fresh = add_member(c, "m2b", learner=False)
        wait_serving([fresh])
        eps = c.endpoints
        wait_until(lambda: len(hashes(eps)) == 1 and len(status_json(eps)) == 3, what="equal HashKV")
        assert "sent snapshot" in "".join(m.log_tail(400) for m in c.members)
        assert etcdctl(fresh.endpoint, "get", "later9", "--consistency", "s").stdout == "later9\n299\n"


def test_restart_ignores_initial_flags_and_bad_join_is_refused(tmp_path):
    with Cluster.start(tmp_path, 3, binary="etcdstore") as c:
        etcdctl(c.endpoints, "put", "a", "1")
        m = c.members[1]
        m.kill()
        # A restart with a data dir ignores --initial-cluster* (as etcd does): give it nonsense.
        m.initial_cluster = f"{m.name}={m.peer_url},ghost=http://127.0.0.1:1"
        m.cluster_token = "another-token"
        m.spawn()
        wait_serving([m])
        assert etcdctl([m.endpoint], "get", "a").stdout == "a\n1\n"

        # A member that was never added cannot join: a clear error and exit status 1.
        stranger = c.new_member("stranger")
        stranger.initial_cluster = (
            ",".join(f"{x.name}={x.peer_url}" for x in c.members) + f",stranger={stranger.peer_url}"
        )
        stranger.spawn()
        assert stranger.proc.wait(60) == 1
        assert "not in the cluster" in stranger.log_tail()


def test_quorum_loss_fails_fast_with_hasleader_and_times_out_without(tmp_path):
    with Cluster.start(
        tmp_path,
        3,
        binary="etcdstore",
        extra_args=["--heartbeat-interval", "50", "--election-timeout", "500"],
    ) as c:
        survivor = c.members[0]
        for m in c.members[1:]:
            m.kill()
        # CheckQuorum: a leader without a quorum steps down within an election timeout.
        eventually(
            lambda: survivor.status().leader == 0,
            10,
            ignoring=(AssertionError, grpc.RpcError),
            message="the survivor knows no leader",
        )

        async def check() -> None:
            async with Client([survivor.endpoint], timeout=30, require_leader=True) as cl:
                t = time.monotonic()
                with pytest.raises(errors.EtcdError) as e:
                    await cl.put("k", "v")
                assert e.value == errors.NO_LEADER and time.monotonic() - t < 2
            async with Client([survivor.endpoint], timeout=30) as cl:
                t = time.monotonic()
                with pytest.raises(errors.EtcdError) as e:
                    await cl.put("k", "v")
                assert e.value.code.name == "UNAVAILABLE" and "timed out" in e.value.message
                assert time.monotonic() - t < 10

        asyncio.run(check())


def test_lease_survives_leader_change_without_early_expiry(tmp_path):
    ttl = 6
    with Cluster.start(tmp_path, 3, binary="etcdstore") as c:

        async def run() -> None:
            async with Client(c.endpoints, timeout=10) as cl:
                lease = await cl.lease_grant(ttl)
                await cl.put("leased", "v", lease=lease.ID)
                granted_at = time.monotonic()
                old = c.leader_index()
                c.members[old].kill()  # the new leader must not expire the lease early
                new = c.leader_index()
                elected_at = time.monotonic()
                assert new != old
                await asyncio.sleep(max(0.0, granted_at + ttl - 1 - time.monotonic()))
                assert (await cl.get("leased", serializable=True)).count == 1, "lease expired early"
                # It does expire: a new leader restarts the TTL and adds an election timeout.
                deadline = elected_at + ttl + 1.0 + 4.0
                while (await cl.get("leased")).count:
                    assert time.monotonic() < deadline, "lease never expired after the leader change"
                    await asyncio.sleep(0.2)

        asyncio.run(run())
