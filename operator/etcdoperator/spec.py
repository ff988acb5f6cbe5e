"""The EtcdCluster spec as typed, immutable values (defaults applied, rules checked).

`parse_cluster_spec` never raises on a structurally valid spec; the cross-field rules that the
CRD states as CEL (which only a real API server evaluates) are checked again in
`validate_cluster_spec`, so a spec that slipped past them is reported in status, not acted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from etcdoperator import crd
from etcdoperator.defaults import apply_defaults

ENGINES = ("etcdstore", "etcd")
DEFAULT_VERSION = crd.STORE_API_VERSION
_SPEC_SCHEMA = crd.cluster_spec_schema()
_BACKUP_SPEC_SCHEMA = crd.backup_spec_schema()


@dataclass(frozen=True, slots=True)
class PVCLocation:
    claim_name: str
    path: str  # a directory (destinations) or a file (restore sources) inside the volume


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str  # the object key (sources) or key prefix (destinations)
    endpoint: str | None
    region: str
    force_path_style: bool
    credentials_secret: str | None


@dataclass(frozen=True, slots=True)
class Location:
    pvc: PVCLocation | None = None
    s3: S3Location | None = None

    def describe(self) -> str:
        if self.pvc is not None:
            return f"pvc://{self.pvc.claim_name}/{self.pvc.path.strip('/')}".rstrip("/")
        assert self.s3 is not None
        return f"s3://{self.s3.bucket}/{self.s3.key.strip('/')}".rstrip("/")


@dataclass(frozen=True, slots=True)
class StorageSpec:
    size: str = "1Gi"
    storage_class: str | None = None
    ephemeral: bool = False
    reclaim_policy: str = "Delete"


@dataclass(frozen=True, slots=True)
class PodOverrides:
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = ()
    priority_class_name: str | None = None
    service_account_name: str | None = None
    startup_timeout_seconds: int = 600  # how long a member may take to start (replaying its log)


@dataclass(frozen=True, slots=True)
class StoreOptions:
    quota_backend_bytes: int | None = None
    auto_compaction_mode: str | None = None
    auto_compaction_retention: str | None = None
    snapshot_count: int | None = None
    heartbeat_interval_ms: int | None = None
    election_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TLSSide:
    mode: str = "none"  # none | auto | secret
    secret_name: str | None = None
    operator_secret_name: str | None = None  # client side only
    client_cert_auth: bool = True  # client side only

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True, slots=True)
class TLSSpec:
    client: TLSSide = TLSSide()
    peer: TLSSide = TLSSide()
    ca_validity_days: int = 3650
    certificate_validity_days: int = 365
    renew_before_days: int = 30

    @property
    def auto(self) -> bool:
        return self.client.mode == "auto" or self.peer.mode == "auto"


@dataclass(frozen=True, slots=True)
class AuthSpec:
    secret_name: str
    secret_key: str = "password"


@dataclass(frozen=True, slots=True)
class BackupSpec:
    destination: Location
    schedule: str | None = None
    suspend: bool = False
    retention: int = 7


@dataclass(frozen=True, slots=True)
class RestoreSpec:
    source: Location
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    replicas: int = 3
    engine: str = "etcdstore"
    version: str = DEFAULT_VERSION
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    paused: bool = False
    storage: StorageSpec = StorageSpec()
    resources: Mapping[str, Any] = field(default_factory=dict)
    pod: PodOverrides = PodOverrides()
    options: StoreOptions = StoreOptions()
    tls: TLSSpec = TLSSpec()
    auth: AuthSpec | None = None
    backup: BackupSpec | None = None
    restore: RestoreSpec | None = None


def _location(raw: Mapping[str, Any] | None, *, object_field: str) -> Location | None:
    if not raw:
        return None
    if raw.get("pvc"):
        p = raw["pvc"]
        return Location(pvc=PVCLocation(claim_name=str(p["claimName"]), path=str(p.get("path") or "")))
    if raw.get("s3"):
        s = raw["s3"]
        return Location(
            s3=S3Location(
                bucket=str(s["bucket"]),
                key=str(s.get(object_field) or ""),
                endpoint=s.get("endpoint") or None,
                region=str(s.get("region") or "us-east-1"),
                force_path_style=bool(s.get("forcePathStyle", True)),
                credentials_secret=s.get("credentialsSecret") or None,
            )
        )
    return None


def destination_from(raw: Mapping[str, Any] | None) -> Location | None:
    return _location(raw, object_field="prefix")


def source_from(raw: Mapping[str, Any] | None) -> Location | None:
    return _location(raw, object_field="key")


def _tls_side(raw: Mapping[str, Any]) -> TLSSide:
    return TLSSide(
        mode=str(raw.get("mode", "none")),
        secret_name=raw.get("secretName") or None,
        operator_secret_name=raw.get("operatorSecretName") or None,
        client_cert_auth=bool(raw.get("clientCertAuth", True)),
    )


def parse_cluster_spec(raw: Mapping[str, Any] | None) -> ClusterSpec:
    s = apply_defaults(_SPEC_SCHEMA, dict(raw or {}))
    st = s["storage"]
    pod = s.get("pod") or {}
    opt = s.get("options") or {}
    tls = s["tls"]
    auto = tls["auto"]
    auth = s.get("auth")
    backup = s.get("backup")
    restore = s.get("restore")
    backup_dest = destination_from(backup.get("destination")) if backup else None
    restore_src = source_from(restore.get("source")) if restore else None
    return ClusterSpec(
        replicas=int(s["replicas"]),
        engine=str(s["engine"]),
        version=str(s["version"]),
        image=s.get("image") or None,
        image_pull_policy=str(s["imagePullPolicy"]),
        image_pull_secrets=tuple(str(x["name"]) for x in s.get("imagePullSecrets") or ()),
        paused=bool(s["paused"]),
        storage=StorageSpec(
            size=str(st["size"]),
            storage_class=st.get("storageClassName") or None,
            ephemeral=bool(st["ephemeral"]),
            reclaim_policy=str(st["reclaimPolicy"]),
        ),
        resources=dict(s.get("resources") or {}),
        pod=PodOverrides(
            labels=dict(pod.get("labels") or {}),
            annotations=dict(pod.get("annotations") or {}),
            node_selector=dict(pod.get("nodeSelector") or {}),
            affinity=pod.get("affinity") or None,
            tolerations=tuple(pod.get("tolerations") or ()),
            topology_spread_constraints=tuple(pod.get("topologySpreadConstraints") or ()),
            priority_class_name=pod.get("priorityClassName") or None,
            service_account_name=pod.get("serviceAccountName") or None,
            startup_timeout_seconds=int(pod.get("startupTimeoutSeconds") or 600),
        ),
        options=StoreOptions(
            quota_backend_bytes=opt.get("quotaBackendBytes"),
            auto_compaction_mode=opt.get("autoCompactionMode"),
            auto_compaction_retention=opt.get("autoCompactionRetention"),
            snapshot_count=opt.get("snapshotCount"),
            heartbeat_interval_ms=opt.get("heartbeatIntervalMs"),
            election_timeout_ms=opt.get("electionTimeoutMs"),
        ),
        tls=TLSSpec(
            client=_tls_side(tls["client"]),
            peer=_tls_side(tls["peer"]),
            ca_validity_days=int(auto["caValidityDays"]),
            certificate_validity_days=int(auto["certificateValidityDays"]),
            renew_before_days=int(auto["renewBeforeDays"]),
        ),
        auth=AuthSpec(
            secret_name=auth["rootPasswordSecret"]["name"], secret_key=auth["rootPasswordSecret"]["key"]
        )
        if auth
        else None,
        backup=BackupSpec(
            destination=backup_dest,
            schedule=(backup.get("schedule") or "").strip() or None,
            suspend=bool(backup["suspend"]),
            retention=int(backup["retention"]),
        )
        if backup and backup_dest
        else None,
        restore=RestoreSpec(source=restore_src, sha256=restore.get("sha256") or None)
        if restore and restore_src
        else None,
    )


def validate_cluster_spec(raw: Mapping[str, Any] | None) -> list[str]:
    """Rules a structural schema cannot express; an empty list means the spec is usable."""
    errors: list[str] = []
    s = apply_defaults(_SPEC_SCHEMA, dict(raw or {}))
    opt = s.get("options") or {}
    hb, el = opt.get("heartbeatIntervalMs"), opt.get("electionTimeoutMs")
    if hb is not None and el is not None and el < 5 * hb:
        errors.append("options.electionTimeoutMs must be at least 5 times options.heartbeatIntervalMs")
    tls = s["tls"]
    for side in ("client", "peer"):
        t = tls[side]
        if t.get("mode") == "secret" and not t.get("secretName"):
            errors.append(f"tls.{side}.secretName is required when tls.{side}.mode is secret")
    client = tls["client"]
    if (
        client.get("mode") == "secret"
        and client.get("clientCertAuth", True)
        and not client.get("operatorSecretName")
    ):
        errors.append(
            "tls.client.operatorSecretName is required when tls.client.mode is secret and clientCertAuth is on"
        )
    auto = tls["auto"]
    if auto["renewBeforeDays"] >= auto["certificateValidityDays"]:
        errors.append("tls.auto.renewBeforeDays must be shorter than tls.auto.certificateValidityDays")
    backup = s.get("backup")
    if backup:
        dest = backup.get("destination") or {}
        if bool(dest.get("pvc")) == bool(dest.get("s3")):
            errors.append("backup.destination needs exactly one of pvc or s3")
        schedule = (backup.get("schedule") or "").strip()
        if schedule and not cron_is_valid(schedule):
            errors.append(f"backup.schedule {schedule!r} is not a valid cron expression")
    engine, version, image = s["engine"], s["version"], s.get("image")
    if engine == "etcdstore" and version != crd.STORE_API_VERSION:
        errors.append(
            f"engine etcdstore implements etcd API {crd.STORE_API_VERSION}: version must be "
            f"{crd.STORE_API_VERSION}, not {version}"
        )
    if engine == "etcd" and image and not image_names_version(image, version):
        errors.append(
            f"image {image!r} must be tagged with version {version} (vX.Y.Z or X.Y.Z): change both together"
        )
    restore = s.get("restore")
    if restore:
        src = restore.get("source") or {}
        if bool(src.get("pvc")) == bool(src.get("s3")):
            errors.append("restore.source needs exactly one of pvc or s3")
        elif src.get("s3") and not src["s3"].get("key"):
            errors.append("restore.source.s3.key is required")
    return errors


_QUANTITY_SUFFIX = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
MiB = 2**20
GiB = 2**30
ETCD_DEFAULT_QUOTA = 2 * GiB  # etcd's own default (--quota-backend-bytes unset)
MAX_QUOTA = 8 * GiB  # etcd's suggested maximum
QUOTA_RESERVE = 512 * MiB  # WAL segments (5 x 64 MiB kept) and snapshot files


def parse_quantity(text: str) -> int:
    """A Kubernetes storage quantity ("1Gi", "500M", "1.5Gi") in bytes."""
    text = text.strip()
    for suffix in sorted(_QUANTITY_SUFFIX, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _QUANTITY_SUFFIX[suffix])
    return int(float(text))


def default_quota(storage: StorageSpec) -> int:
    """The backend quota for a volume of `storage.size`: NOSPACE must fire before the disk fills.

    Besides the backend file (up to the quota) a member's volume holds the WAL and snapshot files
    (QUOTA_RESERVE) and, while it defragments or receives a snapshot, a second copy of the
    backend: so the quota is half of what is left after the reserve (at least a quarter of the
    volume, at most etcd's suggested 8 GiB). 1Gi -> 256 MiB, 10Gi -> 4.75 GiB, 20Gi+ -> 8 GiB.
    An emptyDir has no size: etcd's default (2 GiB)."""
    if storage.ephemeral:
        return ETCD_DEFAULT_QUOTA
    size = parse_quantity(storage.size)
    quota = max(size // 4, (size - QUOTA_RESERVE) // 2)
    return min(MAX_QUOTA, quota // MiB * MiB)


def effective_quota(spec: ClusterSpec) -> int:
    return spec.options.quota_backend_bytes or default_quota(spec.storage)


def image_names_version(image: str, version: str) -> bool:
    """The CRD's CEL rule for engine etcd: the image's tag is the version (a digest may follow)."""
    name = image.split("@sha256:", 1)[0] if "@sha256:" in image else image
    return name.endswith((f":v{version}", f":{version}"))


def cron_is_valid(expr: str) -> bool:
    fields = expr.split()
    return len(fields) in (5, 6) and croniter.is_valid(expr)


@dataclass(frozen=True, slots=True)
class BackupRequest:
    """An EtcdBackup: one backup of one cluster, now."""

    cluster_name: str
    destination: Location | None


def parse_backup_spec(raw: Mapping[str, Any] | None) -> BackupRequest:
    s = apply_defaults(_BACKUP_SPEC_SCHEMA, dict(raw or {}))
    return BackupRequest(
        cluster_name=str(s["clusterName"]), destination=destination_from(s.get("destination"))
    )
