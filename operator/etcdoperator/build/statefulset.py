"""The members' StatefulSet: stable identities (pod N, volume N), etcd flags spelled out in full.

Pod management is Parallel (the operator, not the StatefulSet, orders member starts) and the
update strategy is OnDelete (the operator restarts members itself: followers first, the leader
last after moving leadership). The initial-cluster values come from the bootstrap ConfigMap
through env vars, so membership changes never change the template.

Every member starts through the member gate (an init container, `etcdoperator member-gate`):
an empty data dir starts only as the seed while bootstrapping, or as a learner the operator has
just added (a join ticket in the bootstrap ConfigMap) - never under an old member's ID.

Every pod runs as uid/gid 65532, non-root, no privilege escalation, all capabilities dropped,
seccomp RuntimeDefault (Pod Security `restricted`), with `fsGroup` 65532 so that a fresh volume
(root-owned) is writable; `fsGroupChangePolicy: OnRootMismatch` keeps restarts of a member with a
large data dir from walking it. This holds for `engine: etcd` too: the etcd images default to
root, but etcd needs no privilege - only its data dir, which fsGroup makes its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etcdoperator.build.bootstrap import KEY_INITIAL_CLUSTER, KEY_JOIN, KEY_STATE, KEY_TOKEN
from etcdoperator.build.common import Images, Manifest, member_command, member_image, metadata
from etcdoperator.build.volumes import DATA_VOLUME, claim_template
from etcdoperator.naming import (
    ANNOTATION_TLS_HASH,
    BACKUP_MOUNT,
    CLIENT_PORT,
    DATA_DIR,
    DATA_MOUNT,
    METRICS_PORT,
    PEER_PORT,
    RUN_AS,
    TLS_MOUNT,
    ClusterRef,
)
from etcdoperator.spec import ClusterSpec, Location, effective_quota

ANNOTATION_VERSION = "etcdstore.io/version"
STARTUP_PERIOD = 10
MEMBER_CONTAINER = "etcd"
GATE_CONTAINER = "gate"
# Readiness: /health without NOSPACE (reads still work under the alarm; etcd 3.4+ and the store).
READINESS_PATH = "/health?exclude=NOSPACE"
SERVER_TLS_DIR = f"{TLS_MOUNT}/server"
PEER_TLS_DIR = f"{TLS_MOUNT}/peer"


@dataclass(frozen=True, slots=True)
class TLSSecrets:
    """Secret names holding tls.crt / tls.key / ca.crt, resolved from auto or user mode."""

    server: str | None = None
    peer: str | None = None
    client: str | None = None  # what the operator and backup jobs present


def tls_secrets(ref: ClusterRef, spec: ClusterSpec) -> TLSSecrets:
    c, p = spec.tls.client, spec.tls.peer
    return TLSSecrets(
        server=ref.server_secret if c.mode == "auto" else c.secret_name if c.mode == "secret" else None,
        peer=ref.peer_secret if p.mode == "auto" else p.secret_name if p.mode == "secret" else None,
        client=ref.client_secret
        if c.mode == "auto"
        else c.operator_secret_name
        if c.mode == "secret"
        else None,
    )


def pod_security_context() -> Manifest:
    """Pod Security `restricted`, and a fresh volume made writable for the member's uid."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _env_from_bootstrap(ref: ClusterRef) -> list[Manifest]:
    def cm(name: str, key: str) -> Manifest:
        return {"name": name, "valueFrom": {"configMapKeyRef": {"name": ref.bootstrap_configmap, "key": key}}}

    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        cm("INITIAL_CLUSTER", KEY_INITIAL_CLUSTER),
        cm("INITIAL_CLUSTER_STATE", KEY_STATE),
        cm("INITIAL_CLUSTER_TOKEN", KEY_TOKEN),
    ]


def member_args(ref: ClusterRef, spec: ClusterSpec) -> list[str]:
    cs = "https" if spec.tls.client.enabled else "http"
    ps = "https" if spec.tls.peer.enabled else "http"
    host = ref.pod_host_template()
    args = [
        "--name=$(POD_NAME)",
        f"--data-dir={DATA_DIR}",
        f"--listen-client-urls={cs}://0.0.0.0:{CLIENT_PORT}",
        f"--advertise-client-urls={cs}://{host}:{CLIENT_PORT}",
        f"--listen-peer-urls={ps}://0.0.0.0:{PEER_PORT}",
        f"--initial-advertise-peer-urls={ps}://{host}:{PEER_PORT}",
        "--initial-cluster=$(INITIAL_CLUSTER)",
        "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)",
        "--initial-cluster-token=$(INITIAL_CLUSTER_TOKEN)",
        f"--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}",
    ]
    o = spec.options
    options = (
        ("quota-backend-bytes", effective_quota(spec)),
        ("auto-compaction-mode", o.auto_compaction_mode),
        ("auto-compaction-retention", o.auto_compaction_retention),
        ("snapshot-count", o.snapshot_count),
        ("heartbeat-interval", o.heartbeat_interval_ms),
        ("election-timeout", o.election_timeout_ms),
    )
    args += [
        f"--{flag}={value}" for flag, value in options if value is not None
    ]  # unset: the store's default
    if spec.tls.client.enabled:
        args += [
            f"--cert-file={SERVER_TLS_DIR}/tls.crt",
            f"--key-file={SERVER_TLS_DIR}/tls.key",
            f"--trusted-ca-file={SERVER_TLS_DIR}/ca.crt",
        ]
        if spec.tls.client.client_cert_auth:
            args.append("--client-cert-auth")
    if spec.tls.peer.enabled:
        args += [
            f"--peer-cert-file={PEER_TLS_DIR}/tls.crt",
            f"--peer-key-file={PEER_TLS_DIR}/tls.key",
            f"--peer-trusted-ca-file={PEER_TLS_DIR}/ca.crt",
            "--peer-client-cert-auth",
        ]
    return args


def location_args(loc: Location, *, is_source: bool) -> list[str]:
    """Flags of `etcdoperator backup` / `restore-member` naming a PVC path or an S3 object."""
    if loc.pvc is not None:
        path = loc.pvc.path.strip("/")
        target = f"{BACKUP_MOUNT}/{path}" if path else BACKUP_MOUNT
        return [f"--{'source' if is_source else 'destination'}=file://{target}"]
    s3 = loc.s3
    assert s3 is not None
    key = s3.key.strip("/")
    args = [
        f"--{'source' if is_source else 'destination'}=s3://{s3.bucket}/{key}",
        f"--s3-region={s3.region}",
    ]
    if s3.endpoint:
        args.append(f"--s3-endpoint={s3.endpoint}")
    if s3.force_path_style:
        args.append("--s3-path-style")
    return args


def location_env(loc: Location) -> list[Manifest]:
    if loc.s3 is None or not loc.s3.credentials_secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": loc.s3.credentials_secret, "key": key}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def location_volume(loc: Location, *, read_only: bool) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts) that put a PVC location at BACKUP_MOUNT."""
    if loc.pvc is None:
        return [], []
    vol = {
        "name": "backup",
        "persistentVolumeClaim": {"claimName": loc.pvc.claim_name, "readOnly": read_only},
    }
    return [vol], [{"name": "backup", "mountPath": BACKUP_MOUNT, "readOnly": read_only}]


def _gate_container(ref: ClusterRef, spec: ClusterSpec, images: Images) -> Manifest:
    """The member gate (etcdoperator.gate): refuses an empty data dir without a join ticket."""
    return {
        "name": GATE_CONTAINER,
        "image": images.operator,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["etcdoperator", "member-gate"],
        "args": [
            f"--engine={spec.engine}",
            f"--data-dir={DATA_DIR}",
            "--name=$(POD_NAME)",
            f"--seed={ref.pod(0)}",
            "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)",
            "--join=$(JOIN_TICKETS)",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "INITIAL_CLUSTER_STATE",
                "valueFrom": {"configMapKeyRef": {"name": ref.bootstrap_configmap, "key": KEY_STATE}},
            },
            {
                "name": "JOIN_TICKETS",
                "valueFrom": {
                    "configMapKeyRef": {"name": ref.bootstrap_configmap, "key": KEY_JOIN, "optional": True}
                },
            },
        ],
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": DATA_MOUNT, "readOnly": True}],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _default_affinity(ref: ClusterRef) -> Manifest:
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": ref.member_selector()},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }


def statefulset(
    ref: ClusterRef,
    spec: ClusterSpec,
    *,
    images: Images,
    version: str,
    replicas: int,
    tls_hash: str = "",
) -> Manifest:
    """The members' StatefulSet. spec.restore is not here: a one-shot Job (build/restorejob.py)
    fills the seed's volume before the first member starts, so no member pod ever refers to the
    backup volume or its credentials."""
    secrets = tls_secrets(ref, spec)
    mounts: list[Manifest] = [{"name": DATA_VOLUME, "mountPath": DATA_MOUNT}]
    volumes: list[Manifest] = []
    if secrets.server:
        volumes.append({"name": "tls-server", "secret": {"secretName": secrets.server, "defaultMode": 0o400}})
        mounts.append({"name": "tls-server", "mountPath": SERVER_TLS_DIR, "readOnly": True})
    if secrets.peer:
        volumes.append({"name": "tls-peer", "secret": {"secretName": secrets.peer, "defaultMode": 0o400}})
        mounts.append({"name": "tls-peer", "mountPath": PEER_TLS_DIR, "readOnly": True})
    if spec.storage.ephemeral:
        volumes.append({"name": DATA_VOLUME, "emptyDir": {}})

    container: Manifest = {
        "name": MEMBER_CONTAINER,
        "image": member_image(spec, images, version),
        "imagePullPolicy": spec.image_pull_policy,
        "command": member_command(spec),
        "args": member_args(ref, spec),
        "env": _env_from_bootstrap(ref),
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # /health is false without a leader: such a member must not get client traffic (but a
        # NOSPACE alarm does not stop reads: excluded)...
        "readinessProbe": {
            "httpGet": {"path": READINESS_PATH, "port": "metrics", "scheme": "HTTP"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # ...nor be restarted for it (restarts do not bring quorum back): liveness is "listening".
        "livenessProbe": {
            "tcpSocket": {"port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        # A member replaying a long log opens its metrics port only afterwards: liveness waits
        # for this (generous, spec.pod.startupTimeoutSeconds).
        "startupProbe": {
            "tcpSocket": {"port": "metrics"},
            "periodSeconds": STARTUP_PERIOD,
            "failureThreshold": max(1, -(-spec.pod.startup_timeout_seconds // STARTUP_PERIOD)),
        },
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "resources": dict(spec.resources),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: Manifest = {
        "securityContext": pod_security_context(),
        "initContainers": [_gate_container(ref, spec, images)],
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
        "affinity": dict(spec.pod.affinity) if spec.pod.affinity else _default_affinity(ref),
    }
    if spec.pod.node_selector:
        pod_spec["nodeSelector"] = dict(spec.pod.node_selector)
    if spec.pod.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.pod.tolerations]
    if spec.pod.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = [dict(t) for t in spec.pod.topology_spread_constraints]
    if spec.pod.priority_class_name:
        pod_spec["priorityClassName"] = spec.pod.priority_class_name
    if spec.pod.service_account_name:
        pod_spec["serviceAccountName"] = spec.pod.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]

    annotations: dict[str, str] = {**spec.pod.annotations, ANNOTATION_VERSION: version}
    if tls_hash:
        annotations[ANNOTATION_TLS_HASH] = tls_hash
    sts_spec: dict[str, Any] = {
        "replicas": replicas,
        "serviceName": ref.peer_service,
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": ref.member_selector()},
        "template": {
            "metadata": {"labels": {**spec.pod.labels, **ref.member_selector()}, "annotations": annotations},
            "spec": pod_spec,
        },
    }
    if not spec.storage.ephemeral:
        sts_spec["volumeClaimTemplates"] = [claim_template(ref, spec)]
        # Volumes are the operator's to delete: after MemberRemove on scale-down, and by the
        # cluster's finalizer (reclaimPolicy) - deleting only the StatefulSet keeps member data.
        sts_spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(ref, ref.statefulset, "members"),
        "spec": sts_spec,
    }
