"""Which single step to take next, given only what was observed (pure; no I/O).

The reconciler calls `plan()` after every observation and performs exactly one returned
action, then observes again. Because every decision is taken from the live member list and the
live objects, an operator that crashes between any two steps (for instance right after
MemberAdd or MemberRemove) simply decides the next step again from what it sees.

Safety rules encoded here:
  * only the seed bootstraps (state "new"); once the cluster has formed the bootstrap ConfigMap
    says "existing", so an empty data dir can never start a second cluster;
  * one membership change at a time: nothing is added while a learner exists or a voting
    member is unhealthy, and a member is removed only when the others keep quorum;
  * members are added as learners and promoted once they are caught up;
  * scale-down removes the highest ordinal, moving leadership away first, and only then
    shrinks the StatefulSet and deletes the volume;
  * a volume that does not carry its member's ID (recreated, i.e. the data is gone) makes the
    member be removed and re-added with a fresh volume, while the rest keep quorum;
  * an empty data dir starts only as a member just added: every member pod starts through the
    member gate (gate.py), which refuses an empty data dir unless the bootstrap ConfigMap holds a
    join ticket for that pod, and tickets exist only for a learner that has never started, at
    its own ordinal; a volume is recorded as a voter's only when its pod passed the gate;
  * rolling restarts replace outdated members that are down first (when the rest keep quorum),
    then followers, the leader last after moving leadership; a crash loop removes a member as
    corrupted only on evidence that its data is bad.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etcdoperator.model import EtcdView, MemberState, Observed, PodState, PVCState
from etcdoperator.naming import ClusterRef, quorum
from etcdoperator.spec import effective_quota, parse_quantity
from etcdoperator.versions import VersionDecision, decide_version

# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def mutating(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Bootstrap(Action):
    """Write the bootstrap ConfigMap for the seed alone (state `new`) and start one pod."""


@dataclass(frozen=True, slots=True)
class WriteBootstrap(Action):
    """(Re)write the bootstrap ConfigMap of a formed cluster."""

    initial_cluster: str


@dataclass(frozen=True, slots=True)
class MarkFormed(Action):
    """The seed is up: from now on an empty data dir joins, never bootstraps."""

    initial_cluster: str


@dataclass(frozen=True, slots=True)
class SyncInitialCluster(Action):
    initial_cluster: str


@dataclass(frozen=True, slots=True)
class ScaleStatefulSet(Action):
    replicas: int


@dataclass(frozen=True, slots=True)
class AdoptHolder(Action):
    """Mark member `ordinal`'s volume (or pod, for ephemeral storage) as holding `member_id`'s data."""

    ordinal: int
    member_id: str


@dataclass(frozen=True, slots=True)
class PrepareJoin(Action):
    """Record which pod/volume of `ordinal` predate the coming MemberAdd (they will be replaced)."""

    ordinal: int
    stale_uids: frozenset[str]


@dataclass(frozen=True, slots=True)
class ClearJoining(Action):
    """Drop the join record of `ordinal` (and its ticket)."""

    ordinal: int


@dataclass(frozen=True, slots=True)
class IssueTicket(Action):
    """Let pod `ordinal` start on an empty data dir as learner `member_id` (never started yet), and
    record the pods/volumes that predate the ticket (`stale_uids`): they are replaced."""

    ordinal: int
    member_id: str
    stale_uids: frozenset[str]


@dataclass(frozen=True, slots=True)
class RevokeTicket(Action):
    """A ticket that no longer names a never-started learner at its ordinal."""

    ordinal: int


@dataclass(frozen=True, slots=True)
class AddLearner(Action):
    ordinal: int


@dataclass(frozen=True, slots=True)
class DeleteStale(Action):
    """Delete member `ordinal`'s pod and/or volume so that it starts fresh."""

    ordinal: int
    pod: bool
    pvc: bool


@dataclass(frozen=True, slots=True)
class Promote(Action):
    member_id: int
    ordinal: int


@dataclass(frozen=True, slots=True)
class MoveLeader(Action):
    from_id: int
    to_id: int


@dataclass(frozen=True, slots=True)
class RemoveMember(Action):
    member_id: int
    ordinal: int | None
    why: str  # ScaleDown | DataLost | Corrupted | CancelJoin


@dataclass(frozen=True, slots=True)
class RecoverSpace(Action):
    """NOSPACE: compact, then - only if the data left fits under `quota` with headroom (see
    `space_recoverable`) - defragment each member (`order`: followers first, leader last) and
    disarm NOSPACE (never CORRUPT)."""

    order: tuple[int, ...]
    quota: int


@dataclass(frozen=True, slots=True)
class DeletePVC(Action):
    ordinal: int


@dataclass(frozen=True, slots=True)
class ExpandVolume(Action):
    """Grow member `ordinal`'s volume claim to `size` bytes (spec.storage.size grew)."""

    ordinal: int
    size: int


@dataclass(frozen=True, slots=True)
class RestartMember(Action):
    """Delete a member pod so the StatefulSet recreates it from the current template."""

    ordinal: int


@dataclass(frozen=True, slots=True)
class RunRestore(Action):
    """Create the seed's volume (if missing) and the one-shot restore Job (build/restorejob.py)."""


@dataclass(frozen=True, slots=True)
class MarkRestored(Action):
    """The restore Job completed: record it on the seed's volume (then the seed bootstraps on it)."""


@dataclass(frozen=True, slots=True)
class DeleteRestoreJob(Action):
    """The cluster has formed: the restore Job (and its pod, with the backup volume) goes."""


@dataclass(frozen=True, slots=True)
class Wait(Action):
    reason: str
    message: str

    @property
    def mutating(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Converged(Action):
    @property
    def mutating(self) -> bool:
        return False


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    progressing: str | None = None  # reason while work is under way (None: converged or waiting idle)
    message: str = ""
    degraded: tuple[tuple[str, str], ...] = ()  # (reason, message)
    version: VersionDecision | None = None


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    promote_min_progress: float = 0.9  # learner raft index / leader raft index before promoting
    crashloop_restarts: int = 5  # a voting member restarting this often while down is replaced (0: never)


@dataclass(slots=True)
class _Ctx:
    obs: Observed
    ref: ClusterRef
    cfg: PlannerConfig
    degraded: list[tuple[str, str]] = field(default_factory=list)


def initial_cluster(ref: ClusterRef, members: tuple[MemberState, ...]) -> str:
    """`--initial-cluster` for a member joining now: every current member, named by ordinal."""
    parts = []
    for m in sorted(members, key=lambda m: (m.ordinal is None, m.ordinal or 0, m.id)):
        name = ref.pod(m.ordinal) if m.ordinal is not None else (m.name or f"member-{m.hex_id}")
        for u in m.peer_urls:
            parts.append(f"{name}={u}")
    return ",".join(parts)


CORRUPTION_SIGNATURES = (
    # etcd 3.4/3.5 (bbolt, WAL, raft) and the store: messages a member dies with when its data is bad.
    "corrupt",  # "corrupted", "CORRUPT", "database file ... corrupted"
    "crc mismatch",
    "checksum mismatch",
    "checksum error",
    "invalid database",
    "file size too small",
    "failed to recover v3 backend",
    "failed to find database snapshot file",
    "was the raft log corrupted, truncated, or lost",
    "unexpected page type",
    "malformed",
)
SPACE_HEADROOM = 0.8  # after recovery the data must use at most this share of the quota


def data_corruption_evidence(message: str | None) -> bool:
    """True when a member's last words say its data is bad (not a bad image, flag, or memory)."""
    text = (message or "").lower()
    return any(sig in text for sig in CORRUPTION_SIGNATURES)


def space_recoverable(in_use: int, quota: int) -> bool:
    """Defragmenting shrinks the file to what is in use: worth disarming NOSPACE only when that
    leaves headroom under the quota (else the alarm is back at the next write)."""
    return in_use <= SPACE_HEADROOM * quota


def restart_keeps_quorum(etcd: EtcdView, member_id: int) -> bool:
    """True when the healthy voters other than `member_id` are a quorum of all voters (restarting
    it, or it being down, leaves the cluster writable)."""
    voters = etcd.voters
    if all(v.id != member_id for v in voters):
        return True
    healthy = sum(1 for v in voters if v.healthy and v.id != member_id)
    return healthy >= quorum(len(voters))


def pod_roles(etcd: EtcdView) -> dict[int, str]:
    """The role label each member pod should carry: the client Service and the disruption budget
    select voters only (a learner serves no clients and does not count for quorum)."""
    if not etcd.reachable:
        return {}
    return {m.ordinal: "learner" if m.learner else "voter" for m in etcd.members if m.ordinal is not None}


def removal_keeps_quorum(etcd: EtcdView, member_id: int) -> bool:
    """True when the voting members left after removing `member_id` still have a healthy quorum."""
    if all(v.id != member_id for v in etcd.voters):
        return True  # a learner: removing it does not change the voters
    remaining = [v for v in etcd.voters if v.id != member_id]
    if not remaining:
        return False
    healthy = sum(1 for v in remaining if v.healthy)
    return healthy >= quorum(len(remaining))


def plan(obs: Observed, ref: ClusterRef, cfg: PlannerConfig | None = None) -> Plan:
    ctx = _Ctx(obs=obs, ref=ref, cfg=cfg or PlannerConfig())
    version = decide_version(obs.spec.version, cluster_version(obs.etcd))
    if version.refused:
        ctx.degraded.append(("VersionChangeRefused", version.message))
    action, progressing, message = _decide(ctx)
    return Plan(
        action=action,
        progressing=progressing,
        message=message,
        degraded=tuple(ctx.degraded),
        version=version,
    )


def cluster_version(etcd: EtcdView) -> str | None:
    versions = [m.version for m in etcd.members if m.version]
    if not versions:
        return None
    return min(versions, key=lambda v: tuple(int(x) for x in v.split(".")[:3] if x.isdigit()))


def _holder(ctx: _Ctx, ordinal: int) -> PodState | PVCState | None:
    """The object whose lifetime is the data's: the PVC, or the pod itself for ephemeral storage."""
    if ctx.obs.spec.storage.ephemeral:
        return ctx.obs.kube.pods.get(ordinal)
    return ctx.obs.kube.pvcs.get(ordinal)


def _wait(reason: str, message: str, progressing: str | None = None) -> tuple[Wait, str | None, str]:
    return Wait(reason, message), progressing, message


def _decide(ctx: _Ctx) -> tuple[Action, str | None, str]:
    obs, ref = ctx.obs, ctx.ref
    spec, kube, etcd = obs.spec, obs.kube, obs.etcd
    if obs.spec_errors:
        msg = "; ".join(obs.spec_errors)
        ctx.degraded.append(("InvalidSpec", msg))
        return _wait("InvalidSpec", msg)
    if spec.paused:
        return _wait("Paused", "spec.paused is set: no changes are made")
    boot = kube.bootstrap
    if kube.foreign:
        msg = (
            f"objects of a previous EtcdCluster (or StatefulSet) named {ref.name} are still being deleted: "
            f"{', '.join(kube.foreign)}"
        )
        return _wait("Bootstrapping", msg, "Bootstrapping")

    if not etcd.reachable:
        deleting = sorted(v.name for v in kube.pvcs.values() if v.deleting)
        if boot is None and deleting:
            # Volumes of a previous EtcdCluster of this name (reclaimPolicy Delete) outlive its pods by a
            # moment: neither bring their members back nor bootstrap next to them (the StatefulSet
            # controller creates no pod on a terminating claim either). Wait for them to go.
            msg = f"volumes of a previous EtcdCluster named {ref.name} are still being deleted: {', '.join(deleting)}"
            return _wait("Bootstrapping", msg, "Bootstrapping")
        if boot is None and any(v.member_id for v in kube.pvcs.values()):
            # Volumes with member data and no bootstrap ConfigMap (a cluster recreated under the same
            # name over retained volumes): never bootstrap next to them; bring them back.
            return (
                WriteBootstrap(initial_cluster=""),
                "Recovering",
                "members with data exist: not bootstrapping",
            )
        if boot is None and spec.restore is not None:
            step = _restore_step(ctx)
            if step is not None:
                return step
        if boot is None and not kube.pods and all(k == 0 and kube.restored for k in kube.pvcs):
            seed_pod = ref.pod(0)
            return Bootstrap(), "Bootstrapping", f"starting seed member {seed_pod}"
        if boot is None or boot.state == "new":
            if kube.statefulset_replicas < 1:
                return ScaleStatefulSet(1), "Bootstrapping", "starting the seed member"
            return _wait("Bootstrapping", f"waiting for seed member {ref.pod(0)}", "Bootstrapping")
        # A formed cluster that does not answer: bring back every member that has data, change nothing else.
        want = max([k + 1 for k in kube.pvcs] + [1]) if not spec.storage.ephemeral else max(spec.replicas, 1)
        if kube.statefulset_replicas < want:
            return ScaleStatefulSet(want), "Recovering", "restarting members"
        if kube.statefulset_synced and kube.update_revision:
            # None answers: members on an outdated template that are not ready lose nothing by
            # restarting, and a corrected spec (image, flags) must be able to reach them.
            stuck = sorted(
                (
                    k
                    for k, p in kube.pods.items()
                    if p.revision and p.revision != kube.update_revision and not p.deleting and not p.ready
                ),
                reverse=True,
            )
            if stuck:
                return (
                    RestartMember(stuck[0]),
                    "Recovering",
                    f"restarting {ref.pod(stuck[0])} on the current template",
                )
        msg = f"no member answers: {etcd.error or 'unreachable'}"
        ctx.degraded.append(("QuorumLost", msg))
        return _wait("Unreachable", msg)

    if etcd.split_brain:
        msg = "members report different cluster IDs; refusing all changes"
        ctx.degraded.append(("SplitBrain", msg))
        return _wait("SplitBrain", msg)
    foreign = [m for m in etcd.members if m.ordinal is None]
    if foreign:
        ids = ", ".join(m.hex_id for m in foreign)
        ctx.degraded.append(("UnknownMembers", f"members not created by the operator: {ids}"))

    members = etcd.members
    by_ord = etcd.by_ordinal()
    ic = initial_cluster(ref, members)

    # -- bootstrap bookkeeping ---------------------------------------------------------------
    if boot is None:
        return WriteBootstrap(initial_cluster=ic), "Recovering", "rewriting the bootstrap ConfigMap"
    if boot.state == "new":
        seed = by_ord.get(0)
        holder = _holder(ctx, 0)
        if (
            seed is not None
            and holder is not None
            and not holder.deleting
            and holder.member_id != seed.hex_id
        ):
            return AdoptHolder(0, seed.hex_id), "Bootstrapping", "recording the seed's volume"
        return MarkFormed(initial_cluster=ic), "Bootstrapping", "the seed has formed the cluster"
    if kube.restore_job is not None:
        return DeleteRestoreJob(), None, "the cluster has formed: deleting the restore Job"
    if boot.initial_cluster != ic:
        return (
            SyncInitialCluster(initial_cluster=ic),
            None,
            "updating the initial cluster for joining members",
        )

    for k in sorted(boot.joining):
        m = by_ord.get(k)
        if m is not None and m.started:
            return ClearJoining(k), None, f"{ref.pod(k)} has joined"
    for k, mid in sorted(boot.tickets.items()):
        m = by_ord.get(k)
        if m is None or not m.learner or m.started or m.hex_id != mid:
            return RevokeTicket(k), None, f"revoking the join ticket of {ref.pod(k)}"

    unhealthy = [m for m in etcd.voters if not m.healthy]
    for m in unhealthy:
        ctx.degraded.append(("MemberUnhealthy", f"member {_label(ref, m)} is not healthy"))
    if etcd.alarms:
        ctx.degraded.append(("Alarm", ", ".join(etcd.alarms)))

    # -- a member's data differs from the others': a human must look -------------------------
    if etcd.corrupt:
        msg = (
            "CORRUPT alarm: a member's data differs from the others' (check with `etcdctl endpoint hashkv`); "
            "the operator changes nothing and never disarms it"
        )
        ctx.degraded.append(("CorruptAlarm", msg))
        return _wait("CorruptAlarm", msg)

    # -- out of space: every write fails until the alarm is disarmed --------------------------
    if etcd.nospace:
        if unhealthy or etcd.learners or any(m.ordinal is None for m in etcd.members):
            return _wait(
                "NoSpace", "NOSPACE alarm: waiting for every member to be healthy to defragment", "NoSpace"
            )
        leader = etcd.leader_id
        order = tuple(
            sorted((m.ordinal for m in etcd.voters if m.id != leader and m.ordinal is not None), reverse=True)
            + [m.ordinal for m in etcd.voters if m.id == leader and m.ordinal is not None]
        )
        return (
            RecoverSpace(order, effective_quota(spec)),
            "NoSpace",
            "NOSPACE alarm: compacting, then defragmenting and disarming if that frees space",
        )

    # -- a learner in progress ---------------------------------------------------------------
    learners = sorted(etcd.learners, key=lambda m: (m.ordinal is None, m.ordinal or 0))
    for learner in learners:
        if learner.ordinal is None:
            continue  # foreign learner: reported above, left alone
        k = learner.ordinal
        if k >= spec.replicas:
            return RemoveMember(learner.id, k, "CancelJoin"), "ScalingDown", f"removing learner {ref.pod(k)}"
        step = _learner_step(ctx, learner, k)
        if step is not None:
            return step

    # -- the StatefulSet must cover every member ---------------------------------------------
    ordinals = [m.ordinal for m in members if m.ordinal is not None]
    want = max(ordinals) + 1 if ordinals else 1
    if kube.statefulset_replicas < want:
        return ScaleStatefulSet(want), "Recovering", f"StatefulSet must run {want} pods"

    # -- outdated members that are down anyway: replaced first (a corrected spec must win) ------
    step = _restart_outdated_down(ctx)
    if step is not None:
        return step

    # -- voting members whose data is gone ----------------------------------------------------
    for m in sorted(etcd.voters, key=lambda m: -(m.ordinal or 0)):
        if m.ordinal is None:
            continue
        step = _data_step(ctx, m)
        if step is not None:
            return step

    # -- scale down: highest ordinal first ---------------------------------------------------
    extra = sorted(
        (m for m in etcd.voters if m.ordinal is not None and m.ordinal >= spec.replicas),
        key=lambda m: -(m.ordinal or 0),
    )
    if extra:
        victim = extra[0]
        if victim.id == etcd.leader_id:
            successor = _transferee(etcd, exclude={m.id for m in extra})
            if successor is None:
                return _wait("ScalingDown", "no healthy member to take over leadership", "ScalingDown")
            return (
                MoveLeader(victim.id, successor.id),
                "ScalingDown",
                f"moving leadership off {_label(ref, victim)}",
            )
        if not removal_keeps_quorum(etcd, victim.id):
            msg = f"removing {_label(ref, victim)} now would lose quorum; waiting for members to recover"
            ctx.degraded.append(("ScaleDownBlocked", msg))
            return _wait("ScaleDownBlocked", msg, "ScalingDown")
        return (
            RemoveMember(victim.id, victim.ordinal, "ScaleDown"),
            "ScalingDown",
            f"removing member {_label(ref, victim)}",
        )

    if kube.statefulset_replicas > want:
        return ScaleStatefulSet(want), "ScalingDown", f"shrinking the StatefulSet to {want}"

    # -- volumes of members that no longer exist ---------------------------------------------
    if not spec.storage.ephemeral:
        for k in sorted(kube.pvcs, reverse=True):
            old_pvc = kube.pvcs[k]
            if (
                k >= kube.statefulset_replicas
                and k not in by_ord
                and k not in kube.pods
                and not old_pvc.deleting
            ):
                return DeletePVC(k), "ScalingDown", f"deleting volume {old_pvc.name} of a removed member"

    # -- holes and growth: one learner at a time, only when everyone is healthy --------------
    holes = [k for k in range(want) if k not in by_ord]
    target: int | None = None
    why = ""
    if holes:
        target, why = holes[0], "ReplacingMember"
    elif len(etcd.voters) < spec.replicas:
        target, why = want, "ScalingUp"
    for k in sorted(boot.joining):
        if k not in by_ord and k != target:
            return ClearJoining(k), None, f"dropping an abandoned join of {ref.pod(k)}"
    if target is not None:
        if target in etcd.unlisted:
            msg = f"{ref.pod(target)} answers as a member the member list does not have; waiting"
            ctx.degraded.append(("MembershipInconsistent", msg))
            return _wait(why, msg, why)
        if etcd.learners:
            return _wait(why, "waiting for the current learner", why)
        if unhealthy:
            return _wait(why, f"not adding {ref.pod(target)} while a member is unhealthy", why)
        pvc = kube.pvcs.get(target)
        pod = kube.pods.get(target)
        if (pvc is not None and pvc.deleting) or (pod is not None and pod.deleting):
            return _wait(why, f"waiting for the old pod/volume of {ref.pod(target)} to go", why)
        if target not in boot.joining:
            stale = frozenset(o.uid for o in (pod, pvc) if o is not None)
            return PrepareJoin(target, stale), why, f"preparing {ref.pod(target)} to join"
        return AddLearner(target), why, f"adding {ref.pod(target)} as a learner"

    # -- rolling changes ---------------------------------------------------------------------
    step = _rolling_step(ctx)
    if step is not None:
        return step

    # -- volume growth: last, so that a StorageClass refusing expansion blocks nothing else ----
    if not spec.storage.ephemeral:
        want_size = parse_quantity(spec.storage.size)
        smaller = [
            k
            for k, v in sorted(kube.pvcs.items())
            if v.size is not None and v.size < want_size and not v.deleting
        ]
        larger = [
            v.name for v in kube.pvcs.values() if v.size is not None and v.size > want_size and not v.deleting
        ]
        if larger:
            ctx.degraded.append(
                (
                    "VolumeShrinkRefused",
                    (
                        f"storage.size {spec.storage.size} is smaller than volumes "
                        f"{', '.join(sorted(larger))}: volumes never shrink"
                    ),
                )
            )
        if smaller:
            k = smaller[0]
            return (
                ExpandVolume(k, want_size),
                "Resizing",
                f"growing volume {kube.pvcs[k].name} to {spec.storage.size}",
            )
    return Converged(), None, "cluster matches its spec"


def _restore_step(ctx: _Ctx) -> tuple[Action, str | None, str] | None:
    """spec.restore before the first bootstrap: the seed's volume is filled by the restore Job
    first; None when it is done (or cannot apply: then the ordinary bootstrap rules decide)."""
    obs, ref = ctx.obs, ctx.ref
    spec, kube = obs.spec, obs.kube
    if kube.restored or kube.pods or any(v.member_id for v in kube.pvcs.values()):
        return None  # done, or members/data exist already: never restore over them
    if spec.storage.ephemeral:
        msg = "spec.restore needs persistent storage (the restore Job fills the seed's volume)"
        ctx.degraded.append(("RestoreNeedsVolume", msg))
        return _wait("RestoreNeedsVolume", msg)
    source = spec.restore.source.describe() if spec.restore is not None else ""
    job = kube.restore_job
    if job is None:
        return RunRestore(), "Restoring", f"restoring {ref.pvc(0)} from {source}"
    if job == "Complete":
        return MarkRestored(), "Restoring", f"{ref.pvc(0)} restored from {source}"
    if job.startswith("Failed"):
        msg = f"the restore Job failed ({job}); fix spec.restore's source or delete the Job to retry"
        ctx.degraded.append(("RestoreFailed", msg))
        return _wait("RestoreFailed", msg)
    return _wait("Restoring", f"waiting for the restore Job ({source})", "Restoring")


def _learner_step(ctx: _Ctx, learner: MemberState, k: int) -> tuple[Action, str | None, str] | None:
    ref, kube, spec = ctx.ref, ctx.obs.kube, ctx.obs.spec
    boot = kube.bootstrap
    assert boot is not None
    why = "Joining"
    pod, pvc = kube.pods.get(k), kube.pvcs.get(k)
    if not learner.started and boot.tickets.get(k) != learner.hex_id:
        # The ticket first, then every pod that predates it is replaced (it started without it).
        stale_uids = set(boot.joining.get(k, frozenset()))
        if pod is not None and not pod.deleting:
            stale_uids.add(pod.uid)
        return (
            IssueTicket(k, learner.hex_id, frozenset(stale_uids)),
            why,
            f"letting {ref.pod(k)} start as the new member {learner.hex_id}",
        )
    stale = boot.joining.get(k, frozenset())
    stale_pod = pod is not None and not pod.deleting and pod.uid in stale
    stale_pvc = not spec.storage.ephemeral and pvc is not None and not pvc.deleting and pvc.uid in stale
    if stale_pod or stale_pvc:
        return (
            DeleteStale(k, pod=stale_pod or stale_pvc, pvc=stale_pvc),
            why,
            f"giving {ref.pod(k)} a fresh start",
        )
    holder = _holder(ctx, k)
    if holder is not None and not holder.deleting and holder.member_id and holder.member_id != learner.hex_id:
        # A volume that belonged to another member: never let the learner start on it.
        return (
            DeleteStale(k, pod=True, pvc=not spec.storage.ephemeral),
            why,
            f"replacing a foreign volume of {ref.pod(k)}",
        )
    if kube.statefulset_replicas <= k:
        return ScaleStatefulSet(k + 1), why, f"starting {ref.pod(k)}"
    if holder is not None and not holder.deleting and holder.member_id != learner.hex_id:
        return AdoptHolder(k, learner.hex_id), why, f"recording the volume of {ref.pod(k)}"
    if not learner.started or not learner.healthy:
        if (
            pod is not None
            and not pod.deleting
            and kube.statefulset_synced
            and kube.update_revision
            and pod.revision
            and pod.revision != kube.update_revision
        ):
            # A learner that cannot start (bad image, pending...) must not block correcting the spec.
            return RestartMember(k), why, f"restarting learner {ref.pod(k)} on the current template"
        return _wait(why, f"waiting for learner {ref.pod(k)} to start", why)
    leader = ctx.obs.etcd.leader
    if (
        leader is not None
        and leader.raft_index
        and learner.raft_index is not None
        and learner.raft_index < ctx.cfg.promote_min_progress * leader.raft_index
    ):
        return _wait(
            why, f"learner {ref.pod(k)} is catching up ({learner.raft_index}/{leader.raft_index})", why
        )
    return Promote(learner.id, k), why, f"promoting {ref.pod(k)}"


def _data_step(ctx: _Ctx, m: MemberState) -> tuple[Action, str | None, str] | None:
    ref, kube, etcd = ctx.ref, ctx.obs.kube, ctx.obs.etcd
    k = m.ordinal
    assert k is not None
    holder = _holder(ctx, k)
    if holder is None or holder.deleting:
        return None  # the StatefulSet is bringing it back; nothing to decide yet
    pod = kube.pods.get(k)
    if holder.member_id == m.hex_id:
        crashloop = (
            ctx.cfg.crashloop_restarts > 0
            and not m.healthy
            and pod is not None
            and pod.restarts >= ctx.cfg.crashloop_restarts
            and pod.waiting_reason == "CrashLoopBackOff"
        )
        if not crashloop:
            return None
        assert pod is not None
        if not _corruption_proven(ctx, m, pod):
            ctx.degraded.append(
                (
                    "MemberCrashLooping",
                    (
                        f"member {_label(ref, m)} keeps crashing "
                        f"(last exit: {pod.last_exit_reason or 'unknown'}); not "
                        "replacing it without evidence that its data is bad: "
                        "see its logs"
                    ),
                )
            )
            return None
        why, msg = "Corrupted", f"member {_label(ref, m)} keeps crashing on its data"
    elif m.healthy and pod is not None and pod.gated and not pod.deleting and not holder.member_id:
        # It serves as this member through the gate, which starts an empty data dir only as a new
        # learner: so this volume holds this member's data (its annotation was lost).
        return AdoptHolder(k, m.hex_id), None, f"recording the volume of {_label(ref, m)}"
    else:
        why, msg = "DataLost", f"member {_label(ref, m)} lost its data"
    if m.id == etcd.leader_id:
        target = _transferee(etcd, exclude={m.id})
        if target is not None:
            return MoveLeader(m.id, target.id), "ReplacingMember", msg
    if not removal_keeps_quorum(etcd, m.id):
        ctx.degraded.append(("ReplaceBlocked", f"{msg}; replacing it now would lose quorum"))
        return _wait(
            "ReplaceBlocked", f"{msg}; waiting: replacing it now would lose quorum", "ReplacingMember"
        )
    ctx.degraded.append((why, msg))
    return RemoveMember(m.id, k, why), "ReplacingMember", f"{msg}: removing it to re-add it fresh"


def _corruption_proven(ctx: _Ctx, m: MemberState, pod: PodState) -> bool:
    """A crash loop means bad data only if the template is proven (a healthy voter runs the same
    revision), the pod runs it, memory was not the cause, and the member's last words say so."""
    kube, etcd = ctx.obs.kube, ctx.obs.etcd
    rev = kube.update_revision
    if pod.last_exit_reason == "OOMKilled" or not rev or pod.revision != rev:
        return False
    proven = any(
        v.healthy
        and v.id != m.id
        and v.ordinal is not None
        and kube.pods.get(v.ordinal) is not None
        and kube.pods[v.ordinal].revision == rev
        for v in etcd.voters
    )
    return proven and data_corruption_evidence(pod.last_message)


def _restart_outdated_down(ctx: _Ctx) -> tuple[Action, str | None, str] | None:
    """Outdated member pods that serve nothing (crash-looping, image pull errors, pending, not
    ready) are recreated from the current template first, whenever the others keep quorum."""
    ref, kube, etcd = ctx.ref, ctx.obs.kube, ctx.obs.etcd
    rev = kube.update_revision
    if not kube.statefulset_synced or not rev:
        return None
    by_ord = etcd.by_ordinal()
    down = sorted(
        (
            k
            for k, p in kube.pods.items()
            if k in by_ord
            and p.revision
            and p.revision != rev
            and not p.deleting
            and (not by_ord[k].healthy or (not p.serving and by_ord[k].id != etcd.leader_id))
        ),
        reverse=True,
    )
    blocked = []
    for k in down:
        m = by_ord[k]
        # Down (not answering as itself): restarting it takes nothing away. Answering but not
        # ready: only while the others keep quorum.
        if m.learner or not m.healthy or restart_keeps_quorum(etcd, m.id):
            return (
                RestartMember(k),
                "RollingUpdate",
                f"restarting {ref.pod(k)} first: outdated and not serving",
            )
        blocked.append(ref.pod(k))
    if blocked:
        ctx.degraded.append(
            (
                "RollingUpdateBlocked",
                (
                    f"outdated members {', '.join(blocked)} are down, and "
                    "restarting them now would lose quorum"
                ),
            )
        )
    return None


def _rolling_step(ctx: _Ctx) -> tuple[Action, str | None, str] | None:
    ref, kube, etcd = ctx.ref, ctx.obs.kube, ctx.obs.etcd
    rev = kube.update_revision
    why = "RollingUpdate"
    if not kube.statefulset_synced:
        return _wait(why, "waiting for the StatefulSet controller to see the new template", why)
    if not rev:
        return None
    by_ord = etcd.by_ordinal()
    outdated = [
        k for k, p in kube.pods.items() if k in by_ord and p.revision and p.revision != rev and not p.deleting
    ]
    if not outdated:
        return None
    if etcd.learners or any(not v.healthy for v in etcd.voters):
        return _wait(why, "waiting for every member to be healthy before restarting the next", why)
    not_ready = [k for k in by_ord if k not in kube.pods or not kube.pods[k].ready or kube.pods[k].deleting]
    if not_ready:
        return _wait(why, f"waiting for {ref.pod(min(not_ready))} to be ready", why)
    followers = sorted((k for k in outdated if by_ord[k].id != etcd.leader_id), reverse=True)
    if followers:
        k = followers[0]
        return RestartMember(k), why, f"restarting follower {ref.pod(k)}"
    k = outdated[0]
    leader = by_ord[k]
    if len(etcd.voters) > 1:
        updated = {kk for kk in by_ord if kk not in outdated}
        target = _transferee(etcd, exclude={leader.id}, prefer={by_ord[kk].id for kk in updated})
        if target is None:
            return _wait(why, "no healthy member to take over leadership", why)
        return (
            MoveLeader(leader.id, target.id),
            why,
            f"moving leadership off {ref.pod(k)} before restarting it",
        )
    return RestartMember(k), why, f"restarting {ref.pod(k)}"


def _transferee(etcd: EtcdView, *, exclude: set[int], prefer: set[int] | None = None) -> MemberState | None:
    candidates = [v for v in etcd.voters if v.healthy and v.started and v.id not in exclude]
    if not candidates:
        return None
    candidates.sort(
        key=lambda v: (prefer is not None and v.id not in prefer, v.ordinal if v.ordinal is not None else 99)
    )
    return candidates[0]


def _label(ref: ClusterRef, m: MemberState) -> str:
    return f"{ref.pod(m.ordinal)} ({m.hex_id})" if m.ordinal is not None else m.hex_id
