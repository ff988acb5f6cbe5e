"""The decision logic: which single action comes next, given the live state."""

from __future__ import annotations

import random

import pytest
from etcdoperator import planner as P
from etcdoperator.model import BootstrapState, EtcdView, KubeView, MemberState, Observed, PodState, PVCState
from etcdoperator.naming import ClusterRef
from etcdoperator.spec import parse_cluster_spec
from etcdoperator.versions import decide_version

REF = ClusterRef("ns", "c", "uid-1")


def peer(k: int) -> str:
    return f"http://c-{k}.c.ns.svc:2380"


def member(k: int, *, id: int | None = None, learner: bool = False, healthy: bool = True, started: bool = True,
           raft: int = 100, version: str = "3.4.23") -> MemberState:
    return MemberState(id=id if id is not None else 0x100 + k, name=f"c-{k}" if started else "", peer_urls=(peer(k),),
                       learner=learner, ordinal=k, healthy=healthy and started, raft_index=raft,
                       version=version if healthy and started else None)


def etcd(*members: MemberState, leader: int | None = 0) -> EtcdView:
    lid = next((m.id for m in members if m.ordinal == leader), None) if leader is not None else None
    return EtcdView(reachable=True, members=tuple(members), leader_id=lid, cluster_id=1)


def pods(*ks: int, ready: bool = True, rev: str = "r1", **kw) -> dict[int, PodState]:
    return {k: PodState(name=f"c-{k}", ordinal=k, uid=f"pod-{k}", ready=ready, revision=rev, **kw) for k in ks}


def pvcs(annotated: dict[int, str | None]) -> dict[int, PVCState]:
    return {k: PVCState(name=f"data-c-{k}", ordinal=k, uid=f"pvc-{k}", member_id=v) for k, v in annotated.items()}


def ic(view: EtcdView) -> str:
    return P.initial_cluster(REF, view.members)


def obs(spec: dict | None = None, *, view: EtcdView | None = None, replicas: int = 0, pod_map=None, pvc_map=None,
        state: str | None = "existing", joining=None, boot_ic: str | None = None, rev: str | None = "r1",
        synced: bool = True, spec_errors=()) -> Observed:
    view = view or EtcdView(reachable=False, error="down")
    boot = None
    if state is not None:
        boot = BootstrapState(state=state, initial_cluster=ic(view) if boot_ic is None else boot_ic, token="t",
                              joining=joining or {})
    kube = KubeView(statefulset_exists=replicas > 0, statefulset_replicas=replicas, update_revision=rev,
                    statefulset_synced=synced, pods=pod_map or {}, pvcs=pvc_map or {}, bootstrap=boot)
    return Observed(spec=parse_cluster_spec(spec or {"replicas": 3}), kube=kube, etcd=view, spec_errors=tuple(spec_errors))


def decide(o: Observed) -> P.Action:
    return P.plan(o, REF).action


def healthy_cluster(n: int, *, leader: int = 0) -> tuple[EtcdView, dict, dict]:
    view = etcd(*(member(k) for k in range(n)), leader=leader)
    return view, pods(*range(n)), pvcs({k: f"{0x100 + k:x}" for k in range(n)})


# -- bootstrap ---------------------------------------------------------------------------------

def test_empty_world_bootstraps():
    assert isinstance(decide(obs(state=None)), P.Bootstrap)


def test_waits_for_seed_while_bootstrapping():
    a = decide(obs(state="new", replicas=1, boot_ic="c-0=" + peer(0)))
    assert isinstance(a, P.Wait) and a.reason == "Bootstrapping"


def test_bootstrap_configmap_without_pods_scales_to_one():
    assert decide(obs(state="new", replicas=0, boot_ic="x")) == P.ScaleStatefulSet(1)


def test_seed_volume_is_adopted_then_cluster_marked_formed():
    view = etcd(member(0))
    o = obs(view=view, state="new", replicas=1, pod_map=pods(0), pvc_map=pvcs({0: None}))
    assert decide(o) == P.AdoptHolder(0, "100")
    o = obs(view=view, state="new", replicas=1, pod_map=pods(0), pvc_map=pvcs({0: "100"}))
    a = decide(o)
    assert isinstance(a, P.MarkFormed) and a.initial_cluster == "c-0=" + peer(0)


def test_never_bootstraps_once_something_exists():
    for o in (obs(state=None, pvc_map=pvcs({0: "100"})), obs(state=None, pod_map=pods(0)),
              obs(state="existing", replicas=3, pvc_map=pvcs({0: "1", 1: "2", 2: "3"}))):
        assert not isinstance(decide(o), P.Bootstrap)


def test_unreachable_formed_cluster_is_reported_not_touched():
    o = obs(replicas=3, pvc_map=pvcs({0: "1", 1: "2", 2: "3"}), pod_map=pods(0, 1, 2, ready=False))
    p = P.plan(o, REF)
    assert isinstance(p.action, P.Wait) and ("QuorumLost" in dict(p.degraded))


def test_unreachable_cluster_gets_all_members_with_data_back():
    o = obs(replicas=1, pvc_map=pvcs({0: "1", 1: "2", 2: "3"}))
    assert decide(o) == P.ScaleStatefulSet(3)


# -- scale up ----------------------------------------------------------------------------------

def test_scale_up_prepares_then_adds_one_learner():
    view, pm, vm = healthy_cluster(1)
    assert decide(obs(view=view, replicas=1, pod_map=pm, pvc_map=vm)) == P.PrepareJoin(1, frozenset())
    assert decide(obs(view=view, replicas=1, pod_map=pm, pvc_map=vm, joining={1: frozenset()})) == P.AddLearner(1)


def test_learner_gets_its_pod_then_volume_then_promotion():
    lrn = member(1, id=0x999, learner=True, started=False)
    view = etcd(member(0), lrn)
    base = {"view": view, "joining": {1: frozenset()}}
    assert decide(obs(**base, replicas=1, pod_map=pods(0), pvc_map=pvcs({0: "100"}))) == P.ScaleStatefulSet(2)
    a = decide(obs(**base, replicas=2, pod_map=pods(0, 1), pvc_map=pvcs({0: "100", 1: None})))
    assert a == P.AdoptHolder(1, "999")
    a = decide(obs(**base, replicas=2, pod_map=pods(0, 1), pvc_map=pvcs({0: "100", 1: "999"})))
    assert isinstance(a, P.Wait) and "start" in a.message
    started = etcd(member(0), member(1, id=0x999, learner=True))
    a = decide(obs(view=started, replicas=2, pod_map=pods(0, 1), pvc_map=pvcs({0: "100", 1: "999"})))
    assert a == P.Promote(0x999, 1)


def test_learner_behind_is_not_promoted():
    view = etcd(member(0, raft=1000), member(1, id=0x999, learner=True, raft=10))
    a = decide(obs(view=view, replicas=2, pod_map=pods(0, 1), pvc_map=pvcs({0: "100", 1: "999"})))
    assert isinstance(a, P.Wait) and "catching up" in a.message


def test_started_joiner_clears_its_joining_record():
    view = etcd(member(0), member(1, id=0x999, learner=True))
    a = decide(obs(view=view, replicas=2, pod_map=pods(0, 1), pvc_map=pvcs({0: "100", 1: "999"}),
                   joining={1: frozenset({"old"})}))
    assert a == P.ClearJoining(1)


def test_initial_cluster_follows_membership():
    view, pm, vm = healthy_cluster(2)
    a = decide(obs(view=view, replicas=2, pod_map=pm, pvc_map=vm, boot_ic="c-0=" + peer(0)))
    assert a == P.SyncInitialCluster(f"c-0={peer(0)},c-1={peer(1)}")


def test_no_growth_while_a_member_is_unhealthy():
    view = etcd(member(0), member(1, healthy=False))
    a = decide(obs(view=view, replicas=2, pod_map=pods(0, 1), pvc_map=pvcs({0: "100", 1: "101"})))
    assert isinstance(a, P.Wait) and "unhealthy" in a.message


def test_no_second_learner():
    view = etcd(member(0), member(1), member(2, learner=True, started=False))
    p = P.plan(obs({"replicas": 5}, view=view, replicas=3, pod_map=pods(0, 1, 2),
                   pvc_map=pvcs({0: "100", 1: "101", 2: "102"})), REF)
    assert not isinstance(p.action, (P.AddLearner, P.PrepareJoin))


# -- scale down --------------------------------------------------------------------------------

def test_scale_down_removes_highest_ordinal_follower():
    view, pm, vm = healthy_cluster(5)
    assert decide(obs(view=view, replicas=5, pod_map=pm, pvc_map=vm)) == P.RemoveMember(0x104, 4, "ScaleDown")


def test_scale_down_moves_leadership_off_first():
    view, pm, vm = healthy_cluster(5, leader=4)
    a = decide(obs(view=view, replicas=5, pod_map=pm, pvc_map=vm))
    assert a == P.MoveLeader(0x104, 0x100)


def test_after_remove_statefulset_shrinks_then_volume_is_deleted():
    view, pm, vm = healthy_cluster(3)
    vm = {**vm, **pvcs({3: "103", 4: "104"})}
    pm4 = {**pm, **pods(3, 4)}
    assert decide(obs(view=view, replicas=5, pod_map=pm4, pvc_map=vm)) == P.ScaleStatefulSet(3)
    # pod 4 still terminating: its volume stays
    pm_term = {**pm, **pods(4)}
    assert decide(obs(view=view, replicas=3, pod_map=pm_term, pvc_map=vm)) == P.DeletePVC(3)
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map={**vm})) == P.DeletePVC(4)


def test_scale_down_refused_when_quorum_would_be_lost():
    view = etcd(member(0), member(1, healthy=False), member(2))
    p = P.plan(obs({"replicas": 2}, view=view, replicas=3, pod_map=pods(0, 1, 2),
                   pvc_map=pvcs({0: "100", 1: "101", 2: "102"})), REF)
    assert isinstance(p.action, P.Wait) and p.action.reason == "ScaleDownBlocked"
    assert "ScaleDownBlocked" in dict(p.degraded)


def test_pending_learner_beyond_desired_size_is_removed():
    view = etcd(member(0), member(1), member(2), member(3, learner=True, started=False))
    a = decide(obs({"replicas": 3}, view=view, replicas=4, pod_map=pods(0, 1, 2),
                   pvc_map=pvcs({0: "100", 1: "101", 2: "102"})))
    assert a == P.RemoveMember(0x103, 3, "CancelJoin")


def test_removal_keeps_quorum_rule():
    assert P.removal_keeps_quorum(etcd(member(0), member(1), member(2)), 0x102)
    assert not P.removal_keeps_quorum(etcd(member(0), member(1, healthy=False), member(2)), 0x102)
    assert P.removal_keeps_quorum(etcd(member(0), member(1, healthy=False), member(2)), 0x101)
    assert not P.removal_keeps_quorum(etcd(member(0)), 0x100)
    assert P.removal_keeps_quorum(etcd(member(0), member(1, learner=True, healthy=False)), 0x101)


# -- repair ------------------------------------------------------------------------------------

def test_member_with_a_fresh_volume_is_removed_to_be_re_added():
    view = etcd(member(0), member(1, healthy=False), member(2))
    p = P.plan(obs(view=view, replicas=3, pod_map=pods(0, 1, 2), pvc_map=pvcs({0: "100", 1: None, 2: "102"})), REF)
    assert p.action == P.RemoveMember(0x101, 1, "DataLost")
    assert "DataLost" in dict(p.degraded)


def test_member_answering_as_itself_keeps_its_volume():
    view, pm, _ = healthy_cluster(3)
    a = decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=pvcs({0: "100", 1: None, 2: "102"})))
    assert a == P.AdoptHolder(1, "101")


def test_replacement_waits_for_quorum():
    view = etcd(member(0), member(1, healthy=False), member(2, healthy=False))
    p = P.plan(obs(view=view, replicas=3, pod_map=pods(0, 1, 2), pvc_map=pvcs({0: "100", 1: None, 2: "102"})), REF)
    assert isinstance(p.action, P.Wait) and p.action.reason == "ReplaceBlocked"


def test_deleted_pod_is_not_a_repair():
    view = etcd(member(0), member(1, healthy=False), member(2))
    a = decide(obs(view=view, replicas=3, pod_map=pods(0, 2), pvc_map=pvcs({0: "100", 1: "101", 2: "102"})))
    assert isinstance(a, (P.Wait, P.Converged)) and not isinstance(a, P.RemoveMember)


def test_hole_is_refilled_with_fresh_pod_and_volume():
    view = etcd(member(0), member(2))
    pm, vm = pods(0, 1, 2), pvcs({0: "100", 1: None, 2: "102"})
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm)) == P.PrepareJoin(1, frozenset({"pod-1", "pvc-1"}))
    joining = {1: frozenset({"pod-1", "pvc-1"})}
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm, joining=joining)) == P.AddLearner(1)
    view2 = etcd(member(0), member(1, id=0x777, learner=True, started=False), member(2))
    a = decide(obs(view=view2, replicas=3, pod_map=pm, pvc_map=vm, joining=joining))
    assert a == P.DeleteStale(1, pod=True, pvc=True)


def test_crashlooping_member_is_replaced():
    view = etcd(member(0), member(1, healthy=False), member(2))
    pm = {**pods(0, 2), 1: PodState(name="c-1", ordinal=1, uid="p1", restarts=7, waiting_reason="CrashLoopBackOff")}
    a = decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=pvcs({0: "100", 1: "101", 2: "102"})))
    assert a == P.RemoveMember(0x101, 1, "Corrupted")


# -- rolling changes ---------------------------------------------------------------------------

def test_rolling_restart_followers_first_highest_ordinal():
    view, _, vm = healthy_cluster(3, leader=2)
    pm = pods(0, 1, 2, rev="old")
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm, rev="new")) == P.RestartMember(1)


def test_rolling_restart_leader_last_after_moving_leadership():
    view, _, vm = healthy_cluster(3, leader=2)
    pm = {**pods(0, 1, rev="new"), **pods(2, rev="old")}
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm, rev="new")) == P.MoveLeader(0x102, 0x100)
    view2, _, _ = healthy_cluster(3, leader=0)
    assert decide(obs(view=view2, replicas=3, pod_map=pm, pvc_map=vm, rev="new")) == P.RestartMember(2)


def test_rolling_restart_waits_for_readiness_and_controller():
    view, _, vm = healthy_cluster(3)
    pm = {**pods(0, rev="old"), **pods(1, rev="new", ready=False), **pods(2, rev="new")}
    a = decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm, rev="new"))
    assert isinstance(a, P.Wait) and "c-1" in a.message
    a = decide(obs(view=view, replicas=3, pod_map=pods(0, 1, 2, rev="old"), pvc_map=vm, rev="new", synced=False))
    assert isinstance(a, P.Wait) and "StatefulSet controller" in a.message


def test_converged():
    view, pm, vm = healthy_cluster(3)
    p = P.plan(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm), REF)
    assert isinstance(p.action, P.Converged) and p.degraded == ()


# -- guards ------------------------------------------------------------------------------------

def test_paused_and_invalid_specs_do_nothing():
    view, pm, vm = healthy_cluster(1)
    a = decide(obs({"replicas": 3, "paused": True}, view=view, replicas=1, pod_map=pm, pvc_map=vm))
    assert isinstance(a, P.Wait) and a.reason == "Paused"
    p = P.plan(obs(view=view, replicas=1, pod_map=pm, pvc_map=vm, spec_errors=["bad"]), REF)
    assert isinstance(p.action, P.Wait) and "InvalidSpec" in dict(p.degraded)


def test_split_brain_refuses_changes():
    view, pm, vm = healthy_cluster(1)
    sb = EtcdView(reachable=True, members=view.members, leader_id=view.leader_id, split_brain=True)
    p = P.plan(obs(view=sb, replicas=1, pod_map=pm, pvc_map=vm), REF)
    assert isinstance(p.action, P.Wait) and "SplitBrain" in dict(p.degraded)


def test_version_skips_are_refused():
    assert not decide_version("3.4.30", "3.4.23").refused
    assert not decide_version("3.5.0", "3.4.23").refused
    assert decide_version("3.6.0", "3.4.23").refused
    assert decide_version("3.3.0", "3.4.23").refused
    assert decide_version("4.0.0", "3.4.23").refused
    assert decide_version("3.6.0", None).target == "3.6.0"
    view, pm, vm = healthy_cluster(3)
    p = P.plan(obs({"replicas": 3, "version": "3.6.1"}, view=view, replicas=3, pod_map=pm, pvc_map=vm), REF)
    assert p.version is not None and p.version.refused and p.version.target == "3.4.23"
    assert "VersionChangeRefused" in dict(p.degraded)


# -- invariants over random states --------------------------------------------------------------

def _random_obs(rng: random.Random) -> Observed:
    n = rng.randint(1, 6)
    members = []
    for k in range(n):
        if rng.random() < 0.15:
            continue
        learner = rng.random() < 0.15
        members.append(member(k, learner=learner, healthy=rng.random() < 0.8, started=rng.random() < 0.9,
                              raft=rng.randint(0, 100)))
    leader = rng.choice([m.ordinal for m in members if not m.learner] or [None])
    view = etcd(*members, leader=leader) if members and rng.random() < 0.9 else EtcdView(reachable=False)
    pm = {k: PodState(name=f"c-{k}", ordinal=k, uid=f"pod-{k}", ready=rng.random() < 0.8,
                      revision=rng.choice(["r1", "r2"]), deleting=rng.random() < 0.1) for k in range(n + 1)
          if rng.random() < 0.8}
    vm = {k: PVCState(name=f"data-c-{k}", ordinal=k, uid=f"pvc-{k}", deleting=rng.random() < 0.05,
                      member_id=rng.choice([None, f"{0x100 + k:x}", "dead"])) for k in range(n + 1) if rng.random() < 0.85}
    state = rng.choice([None, "new", "existing", "existing", "existing"])
    joining = {k: frozenset({f"pod-{k}"}) for k in range(n + 1) if rng.random() < 0.1}
    return obs({"replicas": rng.randint(1, 7)}, view=view, replicas=rng.randint(0, n + 1), pod_map=pm, pvc_map=vm,
               state=state, joining=joining, rev=rng.choice(["r1", "r2"]))


def test_safety_invariants_hold_for_random_states():
    rng = random.Random(20261121)
    seen: set[str] = set()
    for _ in range(8000):
        o = _random_obs(rng)
        a = decide(o)
        seen.add(a.kind)
        e, kube = o.etcd, o.kube
        if isinstance(a, P.Bootstrap):
            assert kube.bootstrap is None and not kube.pods and not kube.pvcs and not e.reachable
        if isinstance(a, P.AddLearner):
            assert e.reachable and not e.learners and all(v.healthy for v in e.voters)
            assert a.ordinal not in e.by_ordinal()
        if isinstance(a, P.RemoveMember):
            assert P.removal_keeps_quorum(e, a.member_id)
            assert a.member_id != e.leader_id or len(e.voters) == 1
        if isinstance(a, P.Promote):
            assert any(m.id == a.member_id and m.learner and m.healthy for m in e.members)
        if isinstance(a, (P.DeletePVC,)):
            assert a.ordinal not in e.by_ordinal() and a.ordinal not in kube.pods
        if isinstance(a, P.RestartMember):
            assert not e.learners and all(v.healthy for v in e.voters)
        if isinstance(a, P.MarkFormed):
            assert e.reachable
        if isinstance(a, P.DeleteStale):
            m = e.by_ordinal().get(a.ordinal)
            assert m is not None and m.learner, "only a learner's data may be thrown away"
    assert {"AddLearner", "RemoveMember", "Promote", "DeletePVC", "RestartMember", "MoveLeader"} <= seen


@pytest.mark.parametrize("k", [0, 3])
def test_initial_cluster_names_members_by_ordinal(k):
    view = etcd(member(k, started=False, learner=True), member(k + 1))
    assert P.initial_cluster(REF, view.members) == f"c-{k}={peer(k)},c-{k + 1}={peer(k + 1)}"


def test_no_re_add_while_the_pod_still_answers_as_an_unlisted_member():
    """A stale member list (or a member being removed) must never trigger a replacement."""
    view = etcd(member(0), member(2))
    stale = EtcdView(reachable=True, members=view.members, leader_id=view.leader_id, cluster_id=1, unlisted=(1,))
    p = P.plan(obs(view=stale, replicas=3, pod_map=pods(0, 1, 2), pvc_map=pvcs({0: "100", 1: "101", 2: "102"})), REF)
    assert isinstance(p.action, P.Wait) and "MembershipInconsistent" in dict(p.degraded)


def test_nospace_alarm_defragments_followers_first_leader_last():
    view, pm, vm = healthy_cluster(3, leader=1)
    nospace = EtcdView(reachable=True, members=view.members, leader_id=view.leader_id, cluster_id=1,
                       alarms=("NOSPACE on 101",), nospace=True)
    p = P.plan(obs(view=nospace, replicas=3, pod_map=pm, pvc_map=vm), REF)
    assert p.action == P.RecoverSpace((2, 0, 1))
    sick = EtcdView(reachable=True, members=(member(0), member(1), member(2, healthy=False)), leader_id=0x101,
                    cluster_id=1, nospace=True)
    assert isinstance(decide(obs(view=sick, replicas=3, pod_map=pm, pvc_map=vm)), P.Wait)


def test_malformed_spec_is_reported_not_fatal():
    from etcdoperator.naming import ClusterRef as Ref
    from etcdoperator.spec import validate_cluster_spec

    assert validate_cluster_spec({"backup": {"schedule": "* * * * *", "destination": {}}})
    with pytest.raises(KeyError):
        parse_cluster_spec({"auth": {"rootPasswordSecret": {}}})  # the reconciler reports it as InvalidSpec
    assert Ref("a", "b").ordinal_of("b-3") == 3 and Ref("a", "b").ordinal_of("bb-3") is None
