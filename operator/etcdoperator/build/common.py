"""Pieces shared by the builders: ownership, images, the operator's own image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from etcdoperator import __version__, crd
from etcdoperator.naming import ClusterRef
from etcdoperator.spec import ClusterSpec

ETCD_IMAGE_REPOSITORY = "quay.io/coreos/etcd"

Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Images:
    """Images the operator does not read from a spec: its own (for init and backup containers)
    and our store's default. The Deployment sets them from the Helm values."""

    operator: str
    store: str

    @classmethod
    def from_env(cls) -> "Images":
        return cls(
            operator=os.environ.get("ETCDOPERATOR_IMAGE", f"etcd-operator:{__version__}"),
            store=os.environ.get("ETCDOPERATOR_STORE_IMAGE", f"etcdstore:{__version__}"),
        )


def member_image(spec: ClusterSpec, images: Images, version: str) -> str:
    if spec.image:
        return spec.image
    if spec.engine == "etcd":
        return f"{ETCD_IMAGE_REPOSITORY}:v{version}"
    return images.store


def member_command(spec: ClusterSpec) -> list[str]:
    return ["etcd"] if spec.engine == "etcd" else ["etcdstore"]


def owner_reference(ref: ClusterRef) -> Manifest:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.CLUSTER_KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(ref: ClusterRef, name: str, component: str, *, owned: bool = True, **extra: Any) -> Manifest:
    meta: Manifest = {"name": name, "namespace": ref.namespace, "labels": ref.labels(component)}
    if owned and ref.uid:
        meta["ownerReferences"] = [owner_reference(ref)]
    meta.update(extra)
    return meta
