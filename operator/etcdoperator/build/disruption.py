"""PodDisruptionBudget: voluntary evictions (drains) never take the voting members below quorum.

It selects voters only (the operator labels member pods voter/learner): a learner neither votes
nor serves, so evicting it costs nothing and it must not count as available. Not-ready members
may always be evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`): they serve nothing already.

By etcd's quorum math a cluster of n voters tolerates n - quorum(n) members down: 1 of 3, 2 of
5. A single member tolerates none, and a budget that forbade its eviction would block every
node drain forever; a one-member cluster has no availability to protect, so its budget allows
the eviction (`maxUnavailable: 1`): the member is down until its pod runs again elsewhere. Two
members also tolerate none, but there the eviction would take down a cluster that a third member
would have kept up: the budget keeps both (minAvailable 2), and a drain waits until the cluster
is scaled to 3 (or 1).
"""

from __future__ import annotations

from etcdoperator.build.common import Manifest, metadata
from etcdoperator.naming import ClusterRef, quorum


def pod_disruption_budget(ref: ClusterRef, voters: int) -> Manifest:
    spec: Manifest = {
        "selector": {"matchLabels": ref.voter_selector()},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    if voters <= 1:
        spec["maxUnavailable"] = 1
    else:
        spec["minAvailable"] = quorum(voters)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ref, ref.pdb, "disruption-budget"),
        "spec": spec,
    }
