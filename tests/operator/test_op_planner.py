"""The decision logic: which single action comes next, given the live state."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from etcdoperator import planner as P
from etcdoperator.model import BootstrapState, EtcdView, KubeView, MemberState, Observed, PodState, PVCState
from etcdoperator.naming import ClusterRef
from etcdoperator.spec import parse_cluster_spec
from etcdoperator.versions import decide_version

REF = ClusterRef("ns", "c", "uid-1")


def peer(k: int) -> str:
    return f"http://c-{k}.c.ns.svc:2380"


def member(
    k: int,
    *,
    id: int | None = None,
    learner: bool = False,
    healthy: bool = True,
    started: bool = True,
    raft: int = 100,
    version: str = "3.4.23",
) -> MemberState:
    return MemberState(
        id=id if id is not None else 0x100 + k,
        name=f"c-{k}" if started else "",
        peer_urls=(peer(k),),
        learner=learner,
        ordinal=k,
        healthy=healthy and started,
        raft_index=raft,
        version=version if healthy and started else None,
    )


def etcd(*members: MemberState, leader: int | None = 0) -> EtcdView:
    lid = next((m.id for m in members if m.ordinal == leader), None) if leader is not None else None
    return EtcdView(reachable=True, members=tuple(members), leader_id=lid, cluster_id=1)


def pods(*ks: int, ready: bool = True, rev: str | None = "r1", **kw) -> dict[int, PodState]:
    return {
        k: PodState(name=f"c-{k}", ordinal=k, uid=f"pod-{k}", ready=ready, revision=rev, **kw) for k in ks
    }


def pvcs(annotated: dict[int, str | None]) -> dict[int, PVCState]:
    return {
        k: PVCState(name=f"data-c-{k}", ordinal=k, uid=f"pvc-{k}", member_id=v) for k, v in annotated.items()
    }


def ic(view: EtcdView) -> str:
    return P.initial_cluster(REF, view.members)


def obs(
    spec: dict | None = None,
    *,
    view: EtcdView | None = None,
    replicas: int = 0,
    pod_map=None,
    pvc_map=None,
    state: str | None = "existing",
    joining=None,
    boot_ic: str | None = None,
    rev: str | None = "r1",
    synced: bool = True,
    spec_errors=(),
    tickets=None,
) -> Observed:
    view = view or EtcdView(reachable=False, error="down")
    boot = None
    if state is not None:
        boot = BootstrapState(
            state=state,
            initial_cluster=ic(view) if boot_ic is None else boot_ic,
            token="t",
            joining=joining or {},
            tickets=tickets or {},
        )
    kube = KubeView(
        statefulset_exists=replicas > 0,
        statefulset_replicas=replicas,
        update_revision=rev,
        statefulset_synced=synced,
        pods=pod_map or {},
        pvcs=pvc_map or {},
        bootstrap=boot,
    )
    return Observed(
        spec=parse_cluster_spec(spec or {"replicas": 3}), kube=kube, etcd=view, spec_errors=tuple(spec_errors)
    )


def decide(o: Observed) -> P.Action:
    return P.plan(o, REF).action


RECORDED3 = {0: "100", 1: "101", 2: "102"}  # each volume annotated with its member's ID


def obs3(spec: dict | None = None, **kw) -> Observed:
    """`obs` of a StatefulSet of three: pods c-0..c-2 and volumes recorded as members 0x100-0x102,
    unless `kw` says otherwise."""
    return obs(spec, **{"replicas": 3, "pod_map": pods(0, 1, 2), "pvc_map": pvcs(RECORDED3), **kw})


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
    for o in (
        obs(state=None, pvc_map=pvcs({0: "100"})),
        obs(state=None, pod_map=pods(0)),
        obs(state="existing", replicas=3, pvc_map=pvcs({0: "1", 1: "2", 2: "3"})),
    ):
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
    assert decide(
        obs(view=view, replicas=1, pod_map=pm, pvc_map=vm, joining={1: frozenset()})
    ) == P.AddLearner(1)


def test_learner_gets_its_pod_then_volume_then_promotion():
    lrn = member(1, id=0x999, learner=True, started=False)
    view = etcd(member(0), lrn)
    a = decide(
        obs(view=view, joining={1: frozenset()}, replicas=1, pod_map=pods(0), pvc_map=pvcs({0: "100"}))
    )
    assert a == P.IssueTicket(1, "999", frozenset()), "the ticket comes before any pod of the learner"
    base = {"view": view, "joining": {1: frozenset()}, "tickets": {1: "999"}}
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
    a = decide(
        obs(
            view=view,
            replicas=2,
            pod_map=pods(0, 1),
            pvc_map=pvcs({0: "100", 1: "999"}),
            joining={1: frozenset({"old"})},
        )
    )
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
    p = P.plan(obs3({"replicas": 5}, view=view), REF)
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
    p = P.plan(obs3({"replicas": 2}, view=view), REF)
    assert isinstance(p.action, P.Wait) and p.action.reason == "ScaleDownBlocked"
    assert "ScaleDownBlocked" in dict(p.degraded)


def test_pending_learner_beyond_desired_size_is_removed():
    view = etcd(member(0), member(1), member(2), member(3, learner=True, started=False))
    a = decide(obs3({"replicas": 3}, view=view, replicas=4))
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
    p = P.plan(obs3(view=view, pvc_map=pvcs({**RECORDED3, 1: None})), REF)
    assert p.action == P.RemoveMember(0x101, 1, "DataLost")
    assert "DataLost" in dict(p.degraded)


def test_member_answering_as_itself_through_the_gate_keeps_its_volume():
    view, _, _ = healthy_cluster(3)
    pm = pods(0, 1, 2, gated=True)
    a = decide(obs3(view=view, pod_map=pm, pvc_map=pvcs({**RECORDED3, 1: None})))
    assert a == P.AdoptHolder(1, "101")


def test_unrecorded_volume_of_an_ungated_member_is_data_lost_not_adopted():
    """Issue 14 item 2: without the gate an empty volume may have started under the old ID and
    answer Status as it: stamping it with that ID would hide the loss. It is replaced."""
    view, pm, _ = healthy_cluster(3)
    p = P.plan(obs3(view=view, pod_map=pm, pvc_map=pvcs({**RECORDED3, 1: None})), REF)
    assert p.action == P.RemoveMember(0x101, 1, "DataLost")


def test_ticket_is_revoked_unless_it_names_a_never_started_learner_at_its_ordinal():
    view, pm, vm = healthy_cluster(3)
    for tickets in ({1: "101"}, {3: "abc"}):  # a voter's ordinal; an ordinal without a member
        assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm, tickets=tickets)) == P.RevokeTicket(
            next(iter(tickets))
        )
    learner_volume = pvcs({**RECORDED3, 2: "999"})
    started = etcd(member(0), member(1), member(2, id=0x999, learner=True))
    a = decide(obs3(view=started, pvc_map=learner_volume, tickets={2: "999"}))
    assert a == P.RevokeTicket(2)
    pending = etcd(member(0), member(1), member(2, id=0x999, learner=True, started=False))
    a = decide(obs3(view=pending, pvc_map=learner_volume, tickets={2: "888"}))
    assert a == P.RevokeTicket(2)


def test_ticket_replaces_the_learners_pod_that_started_without_it():
    view = etcd(member(0), member(1), member(2, id=0x999, learner=True, started=False))
    fresh = pvcs({**RECORDED3, 2: None})
    a = decide(obs3(view=view, pvc_map=fresh, joining={2: frozenset()}))
    assert a == P.IssueTicket(2, "999", frozenset({"pod-2"}))
    a = decide(obs3(view=view, pvc_map=fresh, joining={2: frozenset({"pod-2"})}, tickets={2: "999"}))
    assert a == P.DeleteStale(2, pod=True, pvc=False)


def test_replacement_waits_for_quorum():
    view = etcd(member(0), member(1, healthy=False), member(2, healthy=False))
    p = P.plan(obs3(view=view, pvc_map=pvcs({**RECORDED3, 1: None})), REF)
    assert isinstance(p.action, P.Wait) and p.action.reason == "ReplaceBlocked"


def test_deleted_pod_is_not_a_repair():
    view = etcd(member(0), member(1, healthy=False), member(2))
    a = decide(obs3(view=view, pod_map=pods(0, 2)))
    assert isinstance(a, (P.Wait, P.Converged)) and not isinstance(a, P.RemoveMember)


def test_hole_is_refilled_with_fresh_pod_and_volume():
    view = etcd(member(0), member(2))
    pm, vm = pods(0, 1, 2), pvcs({0: "100", 1: None, 2: "102"})
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm)) == P.PrepareJoin(
        1, frozenset({"pod-1", "pvc-1"})
    )
    joining = {1: frozenset({"pod-1", "pvc-1"})}
    assert decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm, joining=joining)) == P.AddLearner(1)
    view2 = etcd(member(0), member(1, id=0x777, learner=True, started=False), member(2))
    a = decide(obs(view=view2, replicas=3, pod_map=pm, pvc_map=vm, joining=joining))
    assert a == P.IssueTicket(1, "777", frozenset({"pod-1", "pvc-1"}))
    a = decide(obs(view=view2, replicas=3, pod_map=pm, pvc_map=vm, joining=joining, tickets={1: "777"}))
    assert a == P.DeleteStale(1, pod=True, pvc=True)


CORRUPT_LOG = (
    "panic: tocommit(42) is out of range [lastIndex(0)]. Was the raft log corrupted, truncated, or lost?"
)


def _crashing(rev: str = "r1", **kw) -> PodState:
    base = {
        "restarts": 7,
        "waiting_reason": "CrashLoopBackOff",
        "last_exit_reason": "Error",
        "last_message": CORRUPT_LOG,
        "revision": rev,
    }
    base.update(kw)
    return PodState(name="c-1", ordinal=1, uid="p1", ready=False, **base)


def test_crashlooping_member_with_bad_data_is_replaced():
    view = etcd(member(0), member(1, healthy=False), member(2))
    pm = {**pods(0, 2), 1: _crashing()}
    p = P.plan(obs3(view=view, pod_map=pm), REF)
    assert p.action == P.RemoveMember(0x101, 1, "Corrupted")


@pytest.mark.parametrize("case", ["oom", "new-revision", "no-evidence", "template-unproven"])
def test_crash_loop_is_not_called_corruption_without_evidence(case):
    """Issue 14 item 3: never wipe a member's data for a bad image, a bad flag or memory."""
    view = etcd(member(0), member(1, healthy=False), member(2))
    pm = {**pods(0, 2), 1: _crashing()}
    rev = "r1"
    if case == "oom":
        pm[1] = _crashing(last_exit_reason="OOMKilled", last_message="")
    elif case == "new-revision":  # the others still run the previous template: the new one is suspect
        pm = {**pods(0, 2, rev="r0"), 1: _crashing(rev="r1")}
    elif case == "no-evidence":
        pm[1] = _crashing(last_message="flag provided but not defined: -experimental-foo")
    elif case == "template-unproven":  # only the crashing member runs the current template
        pm = {**pods(0, 2, rev="r0"), 1: _crashing(rev="r1")}
    p = P.plan(obs3(view=view, pod_map=pm, rev=rev), REF)
    assert not isinstance(p.action, P.RemoveMember), p.action
    assert "MemberCrashLooping" in dict(p.degraded) or isinstance(p.action, P.RestartMember)


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
    a = decide(
        obs(view=view, replicas=3, pod_map=pods(0, 1, 2, rev="old"), pvc_map=vm, rev="new", synced=False)
    )
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
        members.append(
            member(
                k,
                learner=learner,
                healthy=rng.random() < 0.8,
                started=rng.random() < 0.9,
                raft=rng.randint(0, 100),
            )
        )
    leader = rng.choice([m.ordinal for m in members if not m.learner] or [None])
    view = etcd(*members, leader=leader) if members and rng.random() < 0.9 else EtcdView(reachable=False)
    if view.reachable and rng.random() < 0.05:
        view = replace(view, nospace=rng.random() < 0.5, corrupt=rng.random() < 0.5, alarms=("X",))
    pm = {
        k: PodState(
            name=f"c-{k}",
            ordinal=k,
            uid=f"pod-{k}",
            ready=rng.random() < 0.8,
            revision=rng.choice(["r1", "r2"]),
            deleting=rng.random() < 0.1,
            gated=rng.random() < 0.7,
            phase=rng.choice(["Running", "Running", "Pending"]),
            restarts=rng.choice([0, 0, 9]),
            waiting_reason=rng.choice([None, None, "CrashLoopBackOff", "ImagePullBackOff"]),
            last_exit_reason=rng.choice([None, "Error", "OOMKilled"]),
            last_message=rng.choice([None, "", CORRUPT_LOG]),
        )
        for k in range(n + 1)
        if rng.random() < 0.8
    }
    vm = {
        k: PVCState(
            name=f"data-c-{k}",
            ordinal=k,
            uid=f"pvc-{k}",
            deleting=rng.random() < 0.05,
            member_id=rng.choice([None, f"{0x100 + k:x}", "dead"]),
        )
        for k in range(n + 1)
        if rng.random() < 0.85
    }
    state = rng.choice([None, "new", "existing", "existing", "existing"])
    joining = {k: frozenset({f"pod-{k}"}) for k in range(n + 1) if rng.random() < 0.1}
    tickets = {k: rng.choice([f"{0x100 + k:x}", "dead"]) for k in range(n + 1) if rng.random() < 0.15}
    return obs(
        {"replicas": rng.randint(1, 7)},
        view=view,
        replicas=rng.randint(0, n + 1),
        pod_map=pm,
        pvc_map=vm,
        state=state,
        joining=joining,
        rev=rng.choice(["r1", "r2"]),
        tickets=tickets,
        synced=rng.random() < 0.9,
    )


def _valid_ticket(e: EtcdView, k: int, mid: str) -> bool:
    m = e.by_ordinal().get(k)
    return m is not None and m.learner and not m.started and m.hex_id == mid


# Actions that start a pod, change membership or delete data: none may happen while a ticket
# could let an empty data dir start under a member ID that is not a never-started learner's.
_STARTS_OR_CHANGES = (
    P.ScaleStatefulSet,
    P.DeleteStale,
    P.RestartMember,
    P.AddLearner,
    P.PrepareJoin,
    P.RemoveMember,
    P.Promote,
    P.DeletePVC,
    P.IssueTicket,
    P.MoveLeader,
    P.RecoverSpace,
    P.AdoptHolder,
)


def test_safety_invariants_hold_for_random_states():
    rng = random.Random(20261121)
    seen: set[str] = set()
    for _ in range(12000):
        o = _random_obs(rng)
        a = decide(o)
        seen.add(a.kind)
        e, kube = o.etcd, o.kube
        by_ord = e.by_ordinal()
        if isinstance(a, P.Bootstrap):
            assert kube.bootstrap is None and not kube.pods and not kube.pvcs and not e.reachable
        if isinstance(a, P.AddLearner):
            assert e.reachable and not e.learners and all(v.healthy for v in e.voters)
            assert a.ordinal not in by_ord
        if isinstance(a, P.RemoveMember):
            assert P.removal_keeps_quorum(e, a.member_id)
            assert a.member_id != e.leader_id or len(e.voters) == 1
        if isinstance(a, P.Promote):
            assert any(m.id == a.member_id and m.learner and m.healthy for m in e.members)
        if isinstance(a, (P.DeletePVC,)):
            assert a.ordinal not in by_ord and a.ordinal not in kube.pods
        if isinstance(a, P.RestartMember):
            m = by_ord.get(a.ordinal)
            pod = kube.pods[a.ordinal]
            if not e.reachable:  # nobody answers: only outdated pods that are not ready
                assert not pod.ready and pod.revision != kube.update_revision
            elif m is not None and not m.learner and m.healthy:
                assert P.restart_keeps_quorum(e, m.id) or (
                    not e.learners and all(v.healthy for v in e.voters)
                )
        if isinstance(a, P.MarkFormed):
            assert e.reachable
        if isinstance(a, P.DeleteStale):
            m = by_ord.get(a.ordinal)
            assert m is not None and m.learner, "only a learner's data may be thrown away"
        # -- issue 14 item 2: an empty data dir only ever starts as a member just added ---------
        if isinstance(a, P.IssueTicket):
            assert e.reachable and _valid_ticket(e, a.ordinal, a.member_id), (
                "tickets name a never-started learner"
            )
            pod = kube.pods.get(a.ordinal)
            assert pod is None or pod.deleting or pod.uid in a.stale_uids, (
                "pods that predate the ticket are replaced"
            )
        if isinstance(a, P.AdoptHolder):
            m = by_ord.get(a.ordinal)
            assert m is not None and m.hex_id == a.member_id
            if not m.learner and kube.bootstrap is not None and kube.bootstrap.state == "existing":
                pod = kube.pods[a.ordinal]
                assert m.healthy and pod.gated and not pod.deleting, (
                    "a voter's volume is recorded only through the gate"
                )
        boot = kube.bootstrap
        if (
            e.reachable
            and boot is not None
            and boot.state == "existing"
            and isinstance(a, _STARTS_OR_CHANGES)
        ):
            bad = [k for k, mid in boot.tickets.items() if not _valid_ticket(e, k, mid)]
            assert not bad, f"{a} while tickets {bad} are invalid"
        if isinstance(a, P.RecoverSpace):
            assert not e.corrupt
        if isinstance(a, P.WriteBootstrap) and kube.bootstrap is None and not e.reachable:
            assert not any(v.deleting for v in kube.pvcs.values()), (
                "members brought back from volumes being deleted"
            )
    assert {
        "AddLearner",
        "RemoveMember",
        "Promote",
        "DeletePVC",
        "RestartMember",
        "MoveLeader",
        "IssueTicket",
        "RevokeTicket",
        "AdoptHolder",
        "DeleteStale",
    } <= seen, seen


@pytest.mark.parametrize("k", [0, 3])
def test_initial_cluster_names_members_by_ordinal(k):
    view = etcd(member(k, started=False, learner=True), member(k + 1))
    assert P.initial_cluster(REF, view.members) == f"c-{k}={peer(k)},c-{k + 1}={peer(k + 1)}"


def test_no_re_add_while_the_pod_still_answers_as_an_unlisted_member():
    """A stale member list (or a member being removed) must never trigger a replacement."""
    view = etcd(member(0), member(2))
    stale = replace(view, unlisted=(1,))
    p = P.plan(obs3(view=stale), REF)
    assert isinstance(p.action, P.Wait) and "MembershipInconsistent" in dict(p.degraded)


def test_nospace_alarm_defragments_followers_first_leader_last():
    view, pm, vm = healthy_cluster(3, leader=1)
    nospace = replace(view, alarms=("NOSPACE on 101",), nospace=True)
    p = P.plan(obs(view=nospace, replicas=3, pod_map=pm, pvc_map=vm), REF)
    assert p.action == P.RecoverSpace((2, 0, 1), 256 * 2**20)  # 1Gi volume: the derived quota
    sick = EtcdView(
        reachable=True,
        members=(member(0), member(1), member(2, healthy=False)),
        leader_id=0x101,
        cluster_id=1,
        nospace=True,
    )
    assert isinstance(decide(obs(view=sick, replicas=3, pod_map=pm, pvc_map=vm)), P.Wait)


def test_malformed_spec_is_reported_not_fatal():
    from etcdoperator.naming import ClusterRef as Ref
    from etcdoperator.spec import validate_cluster_spec

    assert validate_cluster_spec({"backup": {"schedule": "* * * * *", "destination": {}}})
    with pytest.raises(KeyError):
        parse_cluster_spec({"auth": {"rootPasswordSecret": {}}})  # the reconciler reports it as InvalidSpec
    assert Ref("a", "b").ordinal_of("b-3") == 3 and Ref("a", "b").ordinal_of("bb-3") is None


# -- issue 14 item 7: space ----------------------------------------------------------------------


def test_corrupt_alarm_stops_everything_and_is_never_disarmed():
    view, pm, vm = healthy_cluster(3, leader=1)
    both = replace(view, alarms=("NOSPACE on 101", "CORRUPT on 102"), nospace=True, corrupt=True)
    p = P.plan(obs(view=both, replicas=3, pod_map=pm, pvc_map=vm), REF)
    assert isinstance(p.action, P.Wait) and "CorruptAlarm" in dict(p.degraded)


def test_space_is_recovered_only_when_defragmentation_frees_enough():
    quota = 100
    assert P.space_recoverable(50, quota) and P.space_recoverable(80, quota)
    assert not P.space_recoverable(81, quota) and not P.space_recoverable(100, quota)


def test_recover_space_passes_the_users_quota():
    view, pm, vm = healthy_cluster(1)
    nospace = replace(view, nospace=True)
    a = decide(
        obs(
            {"replicas": 1, "options": {"quotaBackendBytes": 4096}},
            view=nospace,
            replicas=1,
            pod_map=pm,
            pvc_map=vm,
        )
    )
    assert a == P.RecoverSpace((0,), 4096)


# -- issue 14 item 3: rollouts that cannot wedge -------------------------------------------------


@pytest.mark.parametrize("why", ["CrashLoopBackOff", "ImagePullBackOff", "Pending"])
def test_outdated_member_that_is_down_is_replaced_first(why):
    """A bad template (image, flag) rolled onto c-2; the spec is corrected (revision r3): c-2 is
    recreated at once, without waiting for every member to be healthy."""
    view = etcd(member(0), member(1), member(2, healthy=False), leader=0)
    pm = pods(0, 1, rev="r1")
    pm[2] = PodState(
        name="c-2",
        ordinal=2,
        uid="pod-2",
        ready=False,
        revision="r2",
        phase="Pending" if why == "Pending" else "Running",
        waiting_reason=None if why == "Pending" else why,
        restarts=9 if why == "CrashLoopBackOff" else 0,
    )
    a = decide(obs3(view=view, pod_map=pm, rev="r3"))
    assert a == P.RestartMember(2)


def test_outdated_healthy_but_unready_member_is_not_restarted_when_quorum_would_go():
    view = etcd(member(0), member(1, healthy=False), member(2), leader=0)
    pm = {**pods(0, 1, rev="r3"), **pods(2, rev="r2", ready=False)}
    pm[1] = PodState(name="c-1", ordinal=1, uid="pod-1", ready=False, revision="r3")
    p = P.plan(obs3(view=view, pod_map=pm, rev="r3"), REF)
    assert p.action != P.RestartMember(2)
    assert "RollingUpdateBlocked" in dict(p.degraded)


def test_scale_up_waiting_on_an_unhealthy_member_does_not_block_the_fix():
    view = etcd(member(0), member(1), member(2, healthy=False), leader=0)
    pm = {**pods(0, 1, rev="r1"), **pods(2, rev="r2", ready=False)}
    a = decide(obs3({"replicas": 5}, view=view, pod_map=pm, rev="r3"))
    assert a == P.RestartMember(2)


def test_learner_that_cannot_start_is_restarted_on_the_corrected_template():
    view = etcd(member(0), member(1), member(2, id=0x999, learner=True, started=False))
    pm = {**pods(0, 1, rev="r1"), **pods(2, rev="r2", ready=False, waiting_reason="ImagePullBackOff")}
    base = {
        "view": view,
        "replicas": 3,
        "pod_map": pm,
        "pvc_map": pvcs({0: "100", 1: "101", 2: "999"}),
        "tickets": {2: "999"},
    }
    assert isinstance(decide(obs(**base, rev="r2")), P.Wait)  # nothing to correct yet: wait for it
    assert decide(obs(**base, rev="r3")) == P.RestartMember(2)


def test_no_member_answers_outdated_pods_are_restarted_on_the_corrected_template():
    pm = {**pods(0, 1, 2, rev="r2", ready=False)}
    a = decide(obs3(pod_map=pm, rev="r3"))
    assert a == P.RestartMember(2)
    assert isinstance(decide(obs3(pod_map=pods(0, 1, 2, rev="r3", ready=False), rev="r3")), P.Wait)


# -- issue 14 item 9 / item 6 -------------------------------------------------------------------------


def test_pod_roles_label_voters_and_learners():
    view = etcd(member(0), member(1), member(2, learner=True, started=False))
    assert P.pod_roles(view) == {0: "voter", 1: "voter", 2: "learner"}
    assert P.pod_roles(EtcdView(reachable=False)) == {}


def test_retained_volumes_with_data_are_brought_back_not_bootstrapped_next_to():
    o = obs(state=None, pvc_map=pvcs(RECORDED3))
    a = decide(o)
    assert isinstance(a, P.WriteBootstrap)
    o = obs(state="existing", boot_ic="", replicas=0, pvc_map=pvcs(RECORDED3))
    assert decide(o) == P.ScaleStatefulSet(3)


def test_objects_of_a_previous_cluster_of_the_same_name_are_waited_for():
    o = obs(state=None)
    o = replace(o, kube=replace(o.kube, foreign=("statefulset/c",)))
    a = decide(o)
    assert isinstance(a, P.Wait) and "previous EtcdCluster" in a.message


def test_volumes_of_a_previous_cluster_still_being_deleted_are_waited_for():
    """Recreated right after a delete with reclaimPolicy Delete: the old pods are gone, their claims still
    terminating (pvc-protection lets go a moment later). Bringing their members back (the bootstrap ConfigMap
    as `existing`) would leave every new member refused by the gate once the volumes vanish; wait instead."""
    vm = {k: replace(v, deleting=True) for k, v in pvcs(RECORDED3).items()}
    p = P.plan(obs(state=None, pvc_map=vm), REF)
    assert (
        isinstance(p.action, P.Wait)
        and "still being deleted: data-c-0, data-c-1, data-c-2" in p.action.message
    )
    assert isinstance(decide(obs(state=None)), P.Bootstrap)  # once they are gone


# -- issue 14 item 7: growing storage expands the volumes --------------------------------------------


def test_grown_storage_expands_volumes_one_at_a_time_last():
    view, pm, vm = healthy_cluster(3)
    gi = 2**30
    vm = {k: replace(v, size=gi) for k, v in vm.items()}
    assert isinstance(decide(obs(view=view, replicas=3, pod_map=pm, pvc_map=vm)), P.Converged)
    grown = {"replicas": 3, "storage": {"size": "4Gi"}}
    assert decide(obs(grown, view=view, replicas=3, pod_map=pm, pvc_map=vm)) == P.ExpandVolume(0, 4 * gi)
    vm2 = {**vm, 0: replace(vm[0], size=4 * gi)}
    assert decide(obs(grown, view=view, replicas=3, pod_map=pm, pvc_map=vm2)) == P.ExpandVolume(1, 4 * gi)
    # a rolling change comes first: a StorageClass that refuses expansion must block nothing
    a = decide(obs(grown, view=view, replicas=3, pod_map=pods(0, 1, 2, rev="r0"), pvc_map=vm, rev="r1"))
    assert isinstance(a, (P.RestartMember, P.MoveLeader))
    p = P.plan(
        obs({"replicas": 3, "storage": {"size": "512Mi"}}, view=view, replicas=3, pod_map=pm, pvc_map=vm), REF
    )
    assert isinstance(p.action, P.Converged) and "VolumeShrinkRefused" in dict(p.degraded)
