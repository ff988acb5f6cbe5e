"""The one-shot Job that seeds a new cluster's first volume from a backup (`spec.restore`).

It runs before the StatefulSet scales up, on the seed's volume `data-<name>-0` (the operator
creates that claim from the StatefulSet's claim template; the StatefulSet adopts it by name):

  fetch    (operator image)  check the volume is empty, fetch + verify the snapshot
  restore  (member image)    the engine's own tool at the target version (restore_runner.restore_tool)
  finish   (operator image)  remove the snapshot copy

The backup volume and the S3 credentials are mounted here only: member pods never refer to them,
so an RWO backup claim cannot pin members to a node and deleting the credentials later stops
nothing. The pod gets the members' scheduling constraints (node selector, tolerations,
affinity), so a volume bound where the Job ran (WaitForFirstConsumer) is where a member may run.
The operator deletes the Job once the cluster has formed.
"""

from __future__ import annotations

from etcdoperator.build.bootstrap import cluster_token
from etcdoperator.build.common import Images, Manifest, member_image, metadata
from etcdoperator.build.statefulset import (
    container_security_context,
    location_args,
    location_env,
    location_volume,
    pod_security_context,
)
from etcdoperator.build.volumes import DATA_VOLUME, claim_template
from etcdoperator.naming import DATA_DIR, DATA_MOUNT, PEER_PORT, ClusterRef
from etcdoperator.restore_runner import restore_args, restore_tool
from etcdoperator.spec import ClusterSpec

SCRATCH = f"{DATA_MOUNT}/.restore"
COMPONENT = "restore"
ANNOTATION_RESTORED = "etcdstore.io/restored-from"  # on the seed's volume once the Job has completed


def restore_job_name(ref: ClusterRef) -> str:
    return f"{ref.name}-restore"


def seed_claim(ref: ClusterRef, spec: ClusterSpec) -> Manifest:
    """The seed's volume as the StatefulSet would create it (same name, labels, spec)."""
    claim = claim_template(ref, spec)
    meta = dict(claim["metadata"])
    meta.update(name=ref.pvc(0), namespace=ref.namespace)
    return {**claim, "metadata": meta}


def restore_job(ref: ClusterRef, spec: ClusterSpec, *, images: Images, version: str) -> Manifest:
    assert spec.restore is not None
    src = spec.restore.source
    peer_url = f"{'https' if spec.tls.peer.enabled else 'http'}://{ref.pod_host(0)}:{PEER_PORT}"
    fetch_args = [f"--data-dir={DATA_DIR}", f"--scratch={SCRATCH}", *location_args(src, is_source=True)]
    if spec.restore.sha256:
        fetch_args.append(f"--sha256={spec.restore.sha256}")
    volumes, backup_mounts = location_volume(src, read_only=True)
    volumes.append({"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": ref.pvc(0)}})
    data_mount = {"name": DATA_VOLUME, "mountPath": DATA_MOUNT}
    tool = restore_tool(spec.engine, version)

    def step(name: str, image: str, command: list[str], args: list[str], **extra: object) -> Manifest:
        return {
            "name": name,
            "image": image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": command,
            "args": args,
            "volumeMounts": [data_mount],
            "securityContext": container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
            **extra,
        }

    fetch = step(
        "fetch",
        images.operator,
        ["etcdoperator", "restore-member", "fetch"],
        fetch_args,
        env=location_env(src),
    )
    fetch["volumeMounts"] = [data_mount, *backup_mounts]
    restore = step(
        "restore",
        member_image(spec, images, version),
        tool[:1],
        tool[1:]
        + restore_args(
            snapshot=f"{SCRATCH}/snapshot.db",
            name=ref.pod(0),
            peer_url=peer_url,
            token=cluster_token(ref),
            data_dir=DATA_DIR,
        ),
        env=[{"name": "ETCDCTL_API", "value": "3"}],
    )
    finish = step(
        "finish",
        images.operator,
        ["etcdoperator", "restore-member", "finish"],
        [f"--data-dir={DATA_DIR}", f"--scratch={SCRATCH}"],
    )

    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(),
        "initContainers": [fetch, restore],
        "containers": [finish],
        "volumes": volumes,
    }
    if spec.pod.node_selector:
        pod_spec["nodeSelector"] = dict(spec.pod.node_selector)
    if spec.pod.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.pod.tolerations]
    if spec.pod.affinity:
        pod_spec["affinity"] = dict(spec.pod.affinity)
    if spec.pod.priority_class_name:
        pod_spec["priorityClassName"] = spec.pod.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    labels = ref.labels(COMPONENT)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(ref, restore_job_name(ref), COMPONENT),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
