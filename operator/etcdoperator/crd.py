"""The CustomResourceDefinitions (EtcdCluster, EtcdBackup) as data.

Kubernetes schemas cannot use `$ref`, so the shared pieces (backup destinations, results) are
built here once and inlined. `etcdoperator manifests sync` renders these into
`operator/etcdoperator/crds/`, `deploy/crds/` and the Helm chart; a test keeps them in sync.
"""

from __future__ import annotations

from typing import Any

from etcdstore import ETCD_VERSION as STORE_API_VERSION  # the etcd API version the store implements

GROUP = "etcdstore.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "EtcdCluster"
CLUSTER_PLURAL = "etcdclusters"
BACKUP_KIND = "EtcdBackup"
BACKUP_PLURAL = "etcdbackups"

Schema = dict[str, Any]

_STRING: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_INT64: Schema = {"type": "integer", "format": "int64"}
_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY: Schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
_FREE_OBJECT: Schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _obj(properties: Schema, *, required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema.update(extra)
    return schema


def _s3(object_field: str, object_description: str) -> Schema:
    return _obj(
        {
            "bucket": {"type": "string", "minLength": 3},
            object_field: {"type": "string", "description": object_description},
            "endpoint": {
                "type": "string",
                "description": "S3 API URL for S3-compatible stores (MinIO, Ceph...).",
            },
            "region": {"type": "string", "default": "us-east-1"},
            "forcePathStyle": {"type": "boolean", "default": True},
            "credentialsSecret": {
                "type": "string",
                "description": "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
            },
        },
        required=["bucket"],
    )


def destination_schema() -> Schema:
    """Where backups go: a directory on a PersistentVolumeClaim or an S3-compatible bucket."""
    return _obj(
        {
            "pvc": _obj(
                {
                    "claimName": {"type": "string", "minLength": 1},
                    "path": {"type": "string", "description": "Directory inside the volume.", "default": ""},
                },
                required=["claimName"],
            ),
            "s3": _s3("prefix", "Key prefix; backups go under PREFIX/NAMESPACE/CLUSTER/."),
        },
        oneOf=[{"required": ["pvc"]}, {"required": ["s3"]}],
        description="Exactly one of pvc or s3.",
    )


def source_schema() -> Schema:
    """One snapshot file to restore from."""
    return _obj(
        {
            "pvc": _obj(
                {
                    "claimName": {"type": "string", "minLength": 1},
                    "path": {"type": "string", "minLength": 1, "description": "File path inside the volume."},
                },
                required=["claimName", "path"],
            ),
            "s3": _s3("key", "Object key of the snapshot."),
        },
        oneOf=[{"required": ["pvc"]}, {"required": ["s3"]}],
        description="Exactly one of pvc or s3.",
    )


def backup_result_schema() -> Schema:
    return _obj(
        {
            "time": {"type": "string", "format": "date-time"},
            "revision": _INT64,
            "size": _INT64,
            "sha256": _STRING,
            "location": _STRING,
            "backup": {"type": "string", "description": "The EtcdBackup or Job that made it."},
        }
    )


def _tls_side(*, client: bool) -> Schema:
    props: Schema = {
        "mode": {
            "type": "string",
            "enum": ["none", "auto", "secret"],
            "default": "none",
            "description": "none, auto (operator-managed CA and certificates), or secret (user Secrets).",
        },
        "secretName": {
            "type": "string",
            "description": "kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (mode secret).",
        },
    }
    if client:
        props["operatorSecretName"] = {
            "type": "string",
            "description": "Client certificate for the operator and backup jobs (mode secret).",
        }
        props["clientCertAuth"] = {
            "type": "boolean",
            "default": True,
            "description": "Refuse clients without a certificate signed by the CA.",
        }
    rules = [
        {
            "rule": "(has(self.mode) ? self.mode : 'none') != 'secret' || has(self.secretName)",
            "message": "secretName is required when mode is secret",
        }
    ]
    if client:
        rules.append(
            {
                "rule": "(has(self.mode) ? self.mode : 'none') != 'secret' || (has(self.clientCertAuth) && !self.clientCertAuth)"
                " || has(self.operatorSecretName)",
                "message": "operatorSecretName is required when mode is secret and clientCertAuth is on",
            }
        )
    return _obj(props, default={}, **{"x-kubernetes-validations": rules})


def cluster_spec_schema() -> Schema:
    return _obj(
        {
            "replicas": {
                "type": "integer",
                "minimum": 1,
                "maximum": 9,
                "default": 3,
                "description": "Number of voting members.",
            },
            "engine": {
                "type": "string",
                "enum": ["etcdstore", "etcd"],
                "default": "etcdstore",
                "description": "What member pods run: this project's store or etcd itself. Immutable (their data "
                "dirs differ).",
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "engine is immutable"}],
            },
            "version": {
                "type": "string",
                "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$",
                "maxLength": 32,
                "default": STORE_API_VERSION,
                "description": "etcd version the members run; changes roll one member at a time, minor skips are "
                f"refused. engine etcdstore: the etcd API version of the store ({STORE_API_VERSION}), "
                "nothing else.",
            },
            "image": {
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "description": "Member image (default: from engine and version). engine etcd: its tag names "
                "spec.version (vX.Y.Z or X.Y.Z, optionally @sha256:...), so an image change "
                "goes through the version rules.",
            },
            "imagePullPolicy": {
                "type": "string",
                "enum": ["Always", "IfNotPresent", "Never"],
                "default": "IfNotPresent",
            },
            "imagePullSecrets": {"type": "array", "items": _obj({"name": _STRING}, required=["name"])},
            "paused": {
                "type": "boolean",
                "default": False,
                "description": "Stop all changes; status is still refreshed.",
            },
            "storage": _obj(
                {
                    "size": {"type": "string", "pattern": _SIZE_PATTERN, "default": "1Gi", "maxLength": 32},
                    "storageClassName": {"type": "string", "maxLength": 253},
                    "ephemeral": {
                        "type": "boolean",
                        "default": False,
                        "description": "emptyDir instead of a PersistentVolumeClaim: data dies with the pod.",
                    },
                    "reclaimPolicy": {
                        "type": "string",
                        "enum": ["Delete", "Retain"],
                        "default": "Delete",
                        "description": "Whether member volumes are deleted with the EtcdCluster.",
                    },
                },
                default={},
                description="size may grow (member volumes are expanded where the StorageClass allows it; never "
                "shrunk); reclaimPolicy may change; the rest is immutable.",
                **{
                    "x-kubernetes-validations": [
                        {
                            "rule": "(has(self.ephemeral) && self.ephemeral) == (has(oldSelf.ephemeral) && oldSelf.ephemeral) && "
                            "(has(self.storageClassName) ? "
                            "(has(oldSelf.storageClassName) && self.storageClassName == oldSelf.storageClassName) : "
                            "!has(oldSelf.storageClassName))",
                            "message": "storage is immutable except size (to grow the volumes) and reclaimPolicy",
                        }
                    ]
                },
            ),
            "resources": _obj(
                {
                    "limits": {"type": "object", "additionalProperties": _QUANTITY},
                    "requests": {"type": "object", "additionalProperties": _QUANTITY},
                }
            ),
            "pod": _obj(
                {
                    "labels": _STRING_MAP,
                    "annotations": _STRING_MAP,
                    "nodeSelector": _STRING_MAP,
                    "affinity": _FREE_OBJECT,
                    "tolerations": {"type": "array", "items": _FREE_OBJECT},
                    "topologySpreadConstraints": {"type": "array", "items": _FREE_OBJECT},
                    "priorityClassName": _STRING,
                    "serviceAccountName": _STRING,
                    "startupTimeoutSeconds": {
                        "type": "integer",
                        "minimum": 10,
                        "maximum": 86400,
                        "description": "How long a member may take to start (replaying a large log) before its "
                        "liveness probe counts (default 600).",
                    },
                },
                description="Overrides applied to every member pod.",
            ),
            "options": _obj(
                {
                    "quotaBackendBytes": {
                        "type": "integer",
                        "format": "int64",
                        "minimum": 0,
                        "maximum": 8 * 1024**3,
                    },
                    "autoCompactionMode": {"type": "string", "enum": ["periodic", "revision"]},
                    "autoCompactionRetention": {
                        "type": "string",
                        "pattern": r"^(([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+|[0-9]+)$",
                        "description": "A duration (periodic mode, e.g. 1h) or a revision count (revision mode).",
                    },
                    "snapshotCount": {"type": "integer", "format": "int64", "minimum": 1},
                    "heartbeatIntervalMs": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "electionTimeoutMs": {"type": "integer", "minimum": 5, "maximum": 50000},
                },
                description="Store options, passed to every member as etcd flags.",
                **{
                    "x-kubernetes-validations": [
                        {
                            "rule": "!has(self.heartbeatIntervalMs) || !has(self.electionTimeoutMs)"
                            " || self.electionTimeoutMs >= 5 * self.heartbeatIntervalMs",
                            "message": "electionTimeoutMs must be at least 5 times heartbeatIntervalMs",
                        }
                    ]
                },
            ),
            "tls": _obj(
                {
                    "client": _tls_side(client=True),
                    "peer": _tls_side(client=False),
                    "auto": _obj(
                        {
                            "caValidityDays": {"type": "integer", "minimum": 1, "default": 3650},
                            "certificateValidityDays": {"type": "integer", "minimum": 1, "default": 365},
                            "renewBeforeDays": {"type": "integer", "minimum": 0, "default": 30},
                        },
                        default={},
                        description="Lifetimes of operator-managed certificates; renewed renewBeforeDays early.",
                        **{
                            "x-kubernetes-validations": [
                                {
                                    "rule": "(has(self.renewBeforeDays) ? self.renewBeforeDays : 30)"
                                    " < (has(self.certificateValidityDays) ? self.certificateValidityDays : 365)",
                                    "message": "renewBeforeDays must be shorter than certificateValidityDays",
                                }
                            ]
                        },
                    ),
                },
                default={},
                description="TLS modes cannot change in place (members would stop understanding each other).",
                **{
                    "x-kubernetes-validations": [
                        {
                            "rule": "(has(self.client) && has(self.client.mode) ? self.client.mode : 'none')"
                            " == (has(oldSelf.client) && has(oldSelf.client.mode) ? oldSelf.client.mode : 'none')"
                            " && (has(self.peer) && has(self.peer.mode) ? self.peer.mode : 'none')"
                            " == (has(oldSelf.peer) && has(oldSelf.peer.mode) ? oldSelf.peer.mode : 'none')",
                            "message": "tls.client.mode and tls.peer.mode are immutable",
                        }
                    ]
                },
            ),
            "auth": _obj(
                {
                    "rootPasswordSecret": _obj(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "key": {"type": "string", "default": "password"},
                        },
                        required=["name"],
                    )
                },
                required=["rootPasswordSecret"],
                description="Turn on etcd authentication with user root, password from a Secret.",
            ),
            "backup": _obj(
                {
                    "schedule": {
                        "type": "string",
                        "description": "Cron schedule: 5 fields, or 6 with seconds as the sixth. Empty: on demand only.",
                    },
                    "suspend": {"type": "boolean", "default": False},
                    "retention": {
                        "type": "integer",
                        "minimum": 1,
                        "default": 7,
                        "description": "How many scheduled backups to keep at the destination.",
                    },
                    "destination": destination_schema(),
                },
                required=["destination"],
            ),
            "restore": _obj(
                {
                    "source": source_schema(),
                    "sha256": {
                        "type": "string",
                        "pattern": "^[0-9a-f]{64}$",
                        "description": "Expected checksum.",
                    },
                },
                required=["source"],
                description="Bootstrap from this snapshot when the cluster is created. Immutable.",
                **{
                    "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "restore is immutable"}
                    ]
                },
            ),
        },
        **{"x-kubernetes-validations": SPEC_RULES},
    )


# Cross-field rules of the spec (CEL, evaluated by the API server; the operator checks the
# non-transition ones again in spec.validate_cluster_spec).
SPEC_RULES: list[Schema] = [
    {
        "rule": "has(oldSelf.restore) == has(self.restore)",
        "message": "restore can only be set when the cluster is created, and not removed",
    },
    {
        "rule": "self.engine != 'etcd' || !has(self.image) || self.image.endsWith(':v' + self.version)"
        " || self.image.endsWith(':' + self.version) || self.image.contains(':v' + self.version + '@sha256:')"
        " || self.image.contains(':' + self.version + '@sha256:')",
        "message": "image must be tagged with spec.version (vX.Y.Z or X.Y.Z): change both together, so that the "
        "version rules (one minor at a time, no downgrade) apply to image changes",
    },
    {
        "rule": f"self.engine != 'etcdstore' || self.version == '{STORE_API_VERSION}'",
        "message": f"engine etcdstore implements etcd API {STORE_API_VERSION}: version must be {STORE_API_VERSION}",
    },
]


def cluster_status_schema() -> Schema:
    condition = _obj(
        {
            "type": _STRING,
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": _STRING,
            "message": _STRING,
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": _INT64,
        },
        required=["type", "status"],
    )
    member = _obj(
        {
            "name": _STRING,
            "id": _STRING,
            "healthy": _BOOL,
            "learner": _BOOL,
            "leader": _BOOL,
            "revision": _INT64,
            "version": _STRING,
            "dbSize": _INT64,
            "errors": {"type": "array", "items": _STRING},
        }
    )
    return _obj(
        {
            "observedGeneration": _INT64,
            "phase": _STRING,
            "message": _STRING,
            "replicas": {"type": "integer"},
            "readyReplicas": {"type": "integer"},
            "desiredReplicas": {"type": "integer"},
            "learners": {"type": "integer"},
            "selector": _STRING,
            "clusterID": _STRING,
            "leader": _STRING,
            "currentVersion": _STRING,
            "targetVersion": _STRING,
            "lastScheduledBackup": {"type": "string", "format": "date-time"},
            "certificatesNotAfter": {"type": "string", "format": "date-time"},
            "conditions": {"type": "array", "items": condition},
            "members": {"type": "array", "items": member},
            "retainedVolumes": {
                "type": "array",
                "items": _STRING,
                "description": "Volumes of a previous EtcdCluster of this name in use (reclaimPolicy Retain).",
            },
            "lastSuccessfulBackup": backup_result_schema(),
        },
        # kopf keeps its own progress under status.kopf
        **{"x-kubernetes-preserve-unknown-fields": True},
    )


def backup_spec_schema() -> Schema:
    return _obj(
        {
            "clusterName": {
                "type": "string",
                "pattern": _DNS_LABEL,
                "description": "EtcdCluster in this namespace.",
            },
            "destination": destination_schema(),
        },
        required=["clusterName"],
        description="Take one backup now; destination defaults to the cluster's spec.backup.destination.",
        **{
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "an EtcdBackup is immutable"}]
        },
    )


def backup_status_schema() -> Schema:
    status = backup_result_schema()
    status["properties"].update(
        {
            "phase": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
            "message": _STRING,
            "jobName": _STRING,
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
        }
    )
    status["x-kubernetes-preserve-unknown-fields"] = True
    return status


def _crd(
    kind: str, plural: str, short: list[str], spec: Schema, status: Schema, columns: list[Schema], scale: bool
) -> dict[str, Any]:
    subresources: Schema = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "etcd-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["etcdstore"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": _obj(
                            {
                                "apiVersion": _STRING,
                                "kind": _STRING,
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            required=["spec"],
                        )
                    },
                }
            ],
        },
    }


def cluster_crd() -> dict[str, Any]:
    columns = [
        {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Version", "type": "string", "jsonPath": ".status.currentVersion"},
        {"name": "Leader", "type": "string", "jsonPath": ".status.leader"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Available",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Available")].status',
        },
        {
            "name": "Last-Backup",
            "type": "date",
            "jsonPath": ".status.lastSuccessfulBackup.time",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        CLUSTER_KIND, CLUSTER_PLURAL, ["etcdc"], cluster_spec_schema(), cluster_status_schema(), columns, True
    )


def backup_crd() -> dict[str, Any]:
    columns = [
        {"name": "Cluster", "type": "string", "jsonPath": ".spec.clusterName"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Revision", "type": "integer", "jsonPath": ".status.revision"},
        {"name": "Size", "type": "integer", "jsonPath": ".status.size"},
        {"name": "Location", "type": "string", "jsonPath": ".status.location", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        BACKUP_KIND, BACKUP_PLURAL, ["etcdb"], backup_spec_schema(), backup_status_schema(), columns, False
    )


def all_crds() -> list[dict[str, Any]]:
    return [cluster_crd(), backup_crd()]
