"""What the operator observed about one cluster: Kubernetes objects and live etcd members.

Plain immutable values, built fresh on every reconcile (nothing is remembered between steps:
an operator restarted at any point decides from these alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from etcdoperator.spec import ClusterSpec


@dataclass(frozen=True, slots=True)
class PodState:
    name: str
    ordinal: int
    uid: str
    phase: str = "Running"
    ready: bool = False
    deleting: bool = False
    revision: str | None = None  # controller-revision-hash: which StatefulSet template it runs
    restarts: int = 0
    waiting_reason: str | None = None  # e.g. CrashLoopBackOff, ImagePullBackOff (first waiting container)
    member_id: str | None = None  # holder annotation (ephemeral storage keeps data in the pod)
    gated: bool = False  # started through the member gate (it refuses an empty data dir without a ticket)
    last_exit_reason: str | None = None  # the member container's last termination: Error, OOMKilled...
    last_message: str | None = None  # ...and its termination message (or log tail)
    role: str | None = None  # the role label the operator put on it: voter | learner

    @property
    def serving(self) -> bool:
        """Running and ready: it serves clients and counts for the disruption budget."""
        return self.ready and not self.deleting and self.phase == "Running"


@dataclass(frozen=True, slots=True)
class PVCState:
    name: str
    ordinal: int
    uid: str
    deleting: bool = False
    member_id: str | None = None  # holder annotation: the etcd member whose data this volume holds
    size: int | None = None  # requested storage, bytes


@dataclass(frozen=True, slots=True)
class BootstrapState:
    """The bootstrap ConfigMap: what a member starting with an empty data dir is told."""

    state: str  # "new" until the seed has formed the cluster, then "existing"
    initial_cluster: str
    token: str
    joining: Mapping[int, frozenset[str]] = field(
        default_factory=dict
    )  # ordinal -> uids that predate MemberAdd
    # Join tickets: ordinal -> hex ID of the learner just added there. The member gate lets a pod
    # start on an empty data dir only with a ticket for its own name (see gate.py).
    tickets: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KubeView:
    statefulset_exists: bool = False
    statefulset_replicas: int = 0
    statefulset_synced: bool = True  # its controller has seen the latest template (observedGeneration)
    template_tls_hash: str = ""
    update_revision: str | None = None
    pods: Mapping[int, PodState] = field(default_factory=dict)
    pvcs: Mapping[int, PVCState] = field(default_factory=dict)
    bootstrap: BootstrapState | None = None
    # Objects of a previous EtcdCluster of the same name (another UID) still being deleted: wait.
    foreign: tuple[str, ...] = ()
    # Volumes labelled with another EtcdCluster's UID (kept by reclaimPolicy Retain): reported.
    retained: tuple[str, ...] = ()
    # spec.restore: the restore Job (None: absent; else Running | Complete | Failed: <reason>) and
    # whether the seed's volume records a completed restore (build/restorejob.ANNOTATION_RESTORED).
    restore_job: str | None = None
    restored: bool = False


@dataclass(frozen=True, slots=True)
class MemberState:
    id: int
    name: str  # empty until the member has started once
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    learner: bool = False
    ordinal: int | None = None  # None: a member this operator did not create
    healthy: bool = False  # its own endpoint answered Status as this member ID
    revision: int | None = None
    raft_index: int | None = None
    raft_applied_index: int | None = None
    version: str | None = None
    db_size: int | None = None
    db_size_in_use: int | None = None
    errors: tuple[str, ...] = ()
    cluster_id: int | None = None

    @property
    def started(self) -> bool:
        return bool(self.name)

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"


@dataclass(frozen=True, slots=True)
class EtcdView:
    reachable: bool = False
    members: tuple[MemberState, ...] = ()
    leader_id: int | None = None
    cluster_id: int | None = None
    error: str | None = None
    split_brain: bool = False  # members answered with different cluster IDs
    alarms: tuple[str, ...] = ()
    nospace: bool = False  # a NOSPACE alarm is raised: writes are refused cluster-wide
    corrupt: bool = False  # a CORRUPT alarm is raised: never disarmed by the operator
    unlisted: tuple[int, ...] = ()  # ordinals whose pod answers as a member missing from the list

    def by_ordinal(self) -> dict[int, MemberState]:
        return {m.ordinal: m for m in self.members if m.ordinal is not None}

    @property
    def voters(self) -> list[MemberState]:
        return [m for m in self.members if not m.learner]

    @property
    def learners(self) -> list[MemberState]:
        return [m for m in self.members if m.learner]

    @property
    def leader(self) -> MemberState | None:
        for m in self.members:
            if m.id == self.leader_id:
                return m
        return None


@dataclass(frozen=True, slots=True)
class Observed:
    spec: ClusterSpec
    kube: KubeView
    etcd: EtcdView
    spec_errors: tuple[str, ...] = ()
    generation: int = 0
