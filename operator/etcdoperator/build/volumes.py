"""Member volumes: the StatefulSet's claim template and the claims it makes from it."""

from __future__ import annotations

from etcdoperator.build.common import Manifest
from etcdoperator.naming import LABEL_CLUSTER_UID, ClusterRef
from etcdoperator.spec import ClusterSpec

DATA_VOLUME = "data"


def claim_template(ref: ClusterRef, spec: ClusterSpec) -> Manifest:
    claim_spec: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class:
        claim_spec["storageClassName"] = spec.storage.storage_class
    labels = ref.member_selector()
    if ref.uid:  # which EtcdCluster made the volume: one kept (Retain) outlives it and is reported
        labels[LABEL_CLUSTER_UID] = ref.uid
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": DATA_VOLUME, "labels": labels},
        "spec": claim_spec,
    }
