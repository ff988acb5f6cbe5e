"""The status written after each step: phase, conditions (with stable transition times), members."""

from __future__ import annotations

from etcdoperator import planner as P
from etcdoperator.model import EtcdView, KubeView, MemberState, Observed
from etcdoperator.naming import ClusterRef
from etcdoperator.spec import parse_cluster_spec
from etcdoperator.status import build_status

REF = ClusterRef("ns", "c", "u")
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"
T2 = "2026-01-01T01:00:00Z"


def m(k: int, *, healthy: bool = True, learner: bool = False) -> MemberState:
    return MemberState(
        id=0x10 + k,
        name=f"c-{k}",
        peer_urls=(f"p{k}",),
        ordinal=k,
        healthy=healthy,
        learner=learner,
        revision=7 if healthy else None,
        version="3.4.23" if healthy else None,
        db_size=4096,
    )


def obs(*members: MemberState, leader: int = 0, reachable: bool = True, spec=None) -> Observed:
    view = EtcdView(reachable=reachable, members=tuple(members), leader_id=0x10 + leader, cluster_id=0xABC)
    return Observed(
        spec=parse_cluster_spec(spec or {"replicas": 3}), kube=KubeView(), etcd=view, generation=4
    )


def cond(st: dict, t: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == t)


def test_running_cluster():
    st = build_status(REF, obs(m(0), m(1), m(2)), P.Plan(P.Converged(), message="ok"), {}, now=T0)
    assert st["phase"] == "Running" and st["observedGeneration"] == 4
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"], st["learners"]) == (3, 3, 3, 0)
    assert st["leader"] == "c-0" and st["clusterID"] == "abc" and st["currentVersion"] == "3.4.23"
    assert [x["name"] for x in st["members"]] == ["c-0", "c-1", "c-2"]
    assert st["members"][0] == {
        "name": "c-0",
        "id": "10",
        "healthy": True,
        "learner": False,
        "leader": True,
        "revision": 7,
        "version": "3.4.23",
        "dbSize": 4096,
    }
    assert cond(st, "Available")["status"] == "True" and cond(st, "Progressing")["status"] == "False"
    assert cond(st, "Degraded")["status"] == "False"
    assert (
        st["selector"]
        == "app.kubernetes.io/name=etcd,app.kubernetes.io/instance=c,app.kubernetes.io/managed-by=etcd-operator,app.kubernetes.io/component=member"
    )


def test_transition_times_are_kept_until_the_status_changes():
    first = build_status(REF, obs(m(0), m(1), m(2)), P.Plan(P.Converged()), {}, now=T0)
    again = build_status(REF, obs(m(0), m(1), m(2)), P.Plan(P.Converged()), first, now=T1)
    assert cond(again, "Available")["lastTransitionTime"] == T0
    lost = build_status(
        REF,
        obs(m(0), m(1, healthy=False), m(2, healthy=False)),
        P.Plan(P.Wait("x", "y"), degraded=(("MemberUnhealthy", "c-1 down"),)),
        again,
        now=T1,
    )
    assert (
        cond(lost, "Available")["status"] == "False" and cond(lost, "Available")["lastTransitionTime"] == T1
    )
    assert cond(lost, "Available")["reason"] == "QuorumLost" and lost["phase"] == "Unavailable"
    assert cond(lost, "Degraded")["reason"] == "MemberUnhealthy"


def test_scaling_phase_and_stuck_progress_is_reported():
    plan = P.Plan(
        P.Wait("Joining", "waiting for learner c-3"), progressing="Joining", message="waiting for learner c-3"
    )
    st = build_status(REF, obs(m(0), m(1), m(2), m(3, learner=True)), plan, {}, now=T0)
    assert st["phase"] == "Scaling" and st["learners"] == 1 and cond(st, "Progressing")["reason"] == "Joining"
    later = build_status(REF, obs(m(0), m(1), m(2), m(3, learner=True)), plan, st, now=T1)
    assert cond(later, "Degraded")["status"] == "False"
    stuck = build_status(REF, obs(m(0), m(1), m(2), m(3, learner=True)), plan, later, now=T2)
    assert cond(stuck, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert "waiting for learner c-3" in cond(stuck, "Degraded")["message"]


def test_paused_and_bootstrapping():
    st = build_status(REF, obs(m(0), spec={"paused": True}), P.Plan(P.Wait("Paused", "paused")), {}, now=T0)
    assert st["phase"] == "Paused"
    boot = build_status(
        REF,
        obs(reachable=False),
        P.Plan(P.Wait("Bootstrapping", "seed"), progressing="Bootstrapping", message="seed"),
        {},
        now=T0,
    )
    assert boot["phase"] == "Creating" and cond(boot, "Available")["reason"] == "Bootstrapping"


def test_no_leader_is_not_available():
    """Issue 14 item 9: a quorum of healthy voters without a leader serves no writes."""
    view = EtcdView(reachable=True, members=(m(0), m(1), m(2)), leader_id=None, cluster_id=0xABC)
    o = Observed(spec=parse_cluster_spec({"replicas": 3}), kube=KubeView(), etcd=view, generation=1)
    st = build_status(REF, o, P.Plan(P.Converged()), {}, now=T0)
    assert cond(st, "Available")["status"] == "False" and cond(st, "Available")["reason"] == "NoLeader"
    assert st["leader"] is None


def test_retained_volumes_are_reported():
    from dataclasses import replace

    o = obs(m(0), m(1), m(2))
    o = replace(o, kube=replace(o.kube, retained=("data-c-0",)))
    st = build_status(REF, o, P.Plan(P.Converged()), {}, now=T0)
    assert st["retainedVolumes"] == ["data-c-0"]
