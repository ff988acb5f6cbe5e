"""The EtcdCluster status written after every step: phase, conditions, members (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from etcdoperator.model import Observed
from etcdoperator.naming import ClusterRef, quorum
from etcdoperator.planner import Converged, Plan, Wait, cluster_version

_PHASE_BY_PROGRESS = {
    "Bootstrapping": "Creating",
    "ScalingUp": "Scaling",
    "ScalingDown": "Scaling",
    "Joining": "Scaling",
    "RollingUpdate": "Updating",
    "ReplacingMember": "Repairing",
    "Recovering": "Repairing",
    "NoSpace": "Repairing",
    "Resizing": "Updating",
}


def _condition(
    prev: Mapping[str, Mapping[str, Any]],
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int,
) -> dict[str, Any]:
    value = "True" if status else "False"
    old = prev.get(ctype)
    changed = old is None or old.get("status") != value
    return {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def _age(since: str | None, now: str) -> float:
    if not since:
        return 0.0
    try:
        return (dt.datetime.fromisoformat(now) - dt.datetime.fromisoformat(since)).total_seconds()
    except ValueError:
        return 0.0


def build_status(
    ref: ClusterRef,
    obs: Observed,
    plan: Plan,
    prev: Mapping[str, Any],
    *,
    now: str,
    progress_deadline: float = 600.0,
) -> dict[str, Any]:
    """`progress_deadline`: seconds a change may stay in progress before it is reported as stuck."""
    etcd = obs.etcd
    voters = etcd.voters
    healthy_voters = [m for m in voters if m.healthy]
    quorate = etcd.reachable and bool(voters) and len(healthy_voters) >= quorum(len(voters))
    available = quorate and etcd.leader is not None  # no leader: no member serves a write
    prev_conds = {c.get("type"): c for c in prev.get("conditions") or [] if isinstance(c, dict)}
    gen = obs.generation

    if available:
        avail = ("QuorumHealthy", f"{len(healthy_voters)}/{len(voters)} voting members healthy")
    elif plan.progressing == "Bootstrapping":
        avail = ("Bootstrapping", plan.message)
    elif quorate:
        avail = ("NoLeader", f"{len(healthy_voters)}/{len(voters)} voting members healthy, but no leader")
    elif etcd.reachable:
        avail = ("QuorumLost", f"only {len(healthy_voters)}/{len(voters)} voting members healthy")
    else:
        avail = ("QuorumLost", etcd.error or "no member answers")

    action = plan.action
    progressing = plan.progressing is not None and not isinstance(action, Converged)
    if progressing:
        prog = (plan.progressing or "Progressing", plan.message)
    elif isinstance(action, Wait):
        prog = (action.reason, action.message)
    else:
        prog = ("Converged", plan.message or "cluster matches its spec")
    problems = list(plan.degraded)
    if progressing:
        old = prev_conds.get("Progressing") or {}
        age = _age(old.get("lastTransitionTime"), now) if old.get("status") == "True" else 0.0
        if age > progress_deadline:
            problems.append(
                (
                    "ProgressDeadlineExceeded",
                    f"in progress for {int(age)}s (deadline {int(progress_deadline)}s): {plan.message}",
                )
            )
    degraded = bool(problems)
    deg = (problems[0][0], "; ".join(m for _, m in problems)) if degraded else ("AsExpected", "")

    if obs.spec.paused:
        phase = "Paused"
    elif obs.spec_errors:
        phase = "Invalid"
    elif not available and plan.progressing != "Bootstrapping":
        phase = (
            "Unavailable" if not progressing else _PHASE_BY_PROGRESS.get(plan.progressing or "", "Degraded")
        )
    elif progressing:
        phase = _PHASE_BY_PROGRESS.get(plan.progressing or "", "Progressing")
    elif degraded:
        phase = "Degraded"
    else:
        phase = "Running"

    leader = etcd.leader
    members = []
    for m in sorted(etcd.members, key=lambda m: (m.ordinal is None, m.ordinal or 0, m.id)):
        entry: dict[str, Any] = {
            "name": ref.pod(m.ordinal) if m.ordinal is not None else (m.name or m.hex_id),
            "id": m.hex_id,
            "healthy": m.healthy,
            "learner": m.learner,
            "leader": m.id == etcd.leader_id,
        }
        if m.revision is not None:
            entry["revision"] = m.revision
        if m.version:
            entry["version"] = m.version
        if m.db_size is not None:
            entry["dbSize"] = m.db_size
        if m.errors:
            entry["errors"] = list(m.errors)
        members.append(entry)

    status: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "message": plan.message,
        "replicas": len(voters),
        "readyReplicas": len(healthy_voters),
        "desiredReplicas": obs.spec.replicas,
        "learners": len(etcd.learners),
        "selector": ref.member_selector_string(),
        "members": members,
        "conditions": [
            _condition(prev_conds, "Available", available, avail[0], avail[1], now, gen),
            _condition(prev_conds, "Progressing", progressing, prog[0], prog[1], now, gen),
            _condition(prev_conds, "Degraded", degraded, deg[0], deg[1], now, gen),
        ],
    }
    if etcd.cluster_id is not None:
        status["clusterID"] = f"{etcd.cluster_id:x}"
    status["leader"] = (
        (ref.pod(leader.ordinal) if leader.ordinal is not None else leader.hex_id) if leader else None
    )
    version = cluster_version(etcd)
    if version:
        status["currentVersion"] = version
    if plan.version is not None:
        status["targetVersion"] = plan.version.target
    status["retainedVolumes"] = list(obs.kube.retained)
    return status
