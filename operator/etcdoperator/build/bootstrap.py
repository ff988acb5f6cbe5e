"""The bootstrap ConfigMap: the --initial-cluster* values a member with an empty data dir starts with.

Pods read it through env vars (configMapKeyRef) when they are created, so the StatefulSet's
template never changes when membership does. Members with data ignore these flags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from etcdoperator.build.common import Manifest, metadata
from etcdoperator.naming import ANNOTATION_MEMBERSHIP_TIME, ClusterRef

KEY_INITIAL_CLUSTER = "initial-cluster"
KEY_STATE = "initial-cluster-state"
KEY_TOKEN = "initial-cluster-token"
KEY_JOIN = "join"  # join tickets: pod-name=member-hex-id,... (see etcdoperator.gate)
ANNOTATION_JOINING = "etcdstore.io/joining"


def cluster_token(ref: ClusterRef) -> str:
    """Unique per EtcdCluster object, so a recreated cluster of the same name never merges with old members."""
    return f"{ref.name}-{ref.uid[:8]}" if ref.uid else ref.name


def bootstrap_configmap(
    ref: ClusterRef,
    *,
    initial_cluster: str,
    state: str,
    token: str,
    joining: Mapping[int, frozenset[str]] | None = None,
    updated: str | None = None,
) -> Manifest:
    annotations = {ANNOTATION_JOINING: encode_joining(joining or {})}
    if updated:
        annotations[ANNOTATION_MEMBERSHIP_TIME] = updated
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ref, ref.bootstrap_configmap, "bootstrap", annotations=annotations),
        # KEY_JOIN is always there (empty: no tickets), so the gate's $(JOIN_TICKETS) always expands.
        "data": {KEY_INITIAL_CLUSTER: initial_cluster, KEY_STATE: state, KEY_TOKEN: token, KEY_JOIN: ""},
    }


def encode_joining(joining: Mapping[int, frozenset[str]]) -> str:
    return json.dumps({str(k): sorted(v) for k, v in sorted(joining.items())}, separators=(",", ":"))


def decode_joining(text: str | None) -> dict[int, frozenset[str]]:
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {int(k): frozenset(v) for k, v in raw.items() if str(k).isdigit()}
