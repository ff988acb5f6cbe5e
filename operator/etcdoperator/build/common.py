"""Pieces shared by the builders: ownership, images, the operator's own image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from etcdoperator import __version__, crd
from etcdoperator.naming import ClusterRef
from etcdoperator.spec import ClusterSpec

ETCD_IMAGE_REPOSITORY = "quay.io/coreos/etcd"
OPERATOR_IMAGE_REPOSITORY = "etcd-operator"  # built from Dockerfile.operator
STORE_IMAGE_REPOSITORY = "etcdstore"  # built from Dockerfile

Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Images:
    """Images the operator does not read from a spec: its own (gate, restore and backup
    containers), our store's default, and the repository of etcd's images (engine etcd: tag
    v<version>). One place: the Deployment sets them from the Helm values (image, storeImage,
    etcdImage) or deploy/operator.yaml; these defaults are the same (a test keeps them equal)."""

    operator: str
    store: str
    etcd_repository: str = ETCD_IMAGE_REPOSITORY

    @classmethod
    def defaults(cls) -> Images:
        return cls(
            operator=f"{OPERATOR_IMAGE_REPOSITORY}:{__version__}",
            store=f"{STORE_IMAGE_REPOSITORY}:{__version__}",
        )

    @classmethod
    def from_env(cls) -> Images:
        d = cls.defaults()
        return cls(
            operator=os.environ.get("ETCDOPERATOR_IMAGE") or d.operator,
            store=os.environ.get("ETCDOPERATOR_STORE_IMAGE") or d.store,
            etcd_repository=os.environ.get("ETCDOPERATOR_ETCD_IMAGE_REPOSITORY") or d.etcd_repository,
        )


def member_image(spec: ClusterSpec, images: Images, version: str) -> str:
    if spec.image:
        return spec.image
    if spec.engine == "etcd":
        return f"{images.etcd_repository}:v{version}"
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
