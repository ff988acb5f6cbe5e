"""PodDisruptionBudget: voluntary evictions (drains) never take the cluster below quorum."""

from __future__ import annotations

from etcdoperator.build.common import Manifest, metadata
from etcdoperator.naming import ClusterRef, quorum


def pod_disruption_budget(ref: ClusterRef, voters: int) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ref, ref.pdb, "disruption-budget"),
        "spec": {"minAvailable": quorum(max(voters, 1)), "selector": {"matchLabels": ref.member_selector()}},
    }
