"""The Job that takes one backup: `etcdoperator backup` in the operator's image.

A Job (rather than the operator process) does the I/O so that a PVC destination can be mounted
and a large snapshot never passes through the operator. The result (revision, size, sha256,
location) comes back as the container's termination message.
"""

from __future__ import annotations

from etcdoperator.build.common import Images, Manifest, metadata
from etcdoperator.build.statefulset import (
    container_security_context,
    location_args,
    location_env,
    location_volume,
    pod_security_context,
    tls_secrets,
)
from etcdoperator.naming import (
    CLIENT_PORT,
    LABEL_BACKUP,
    LABEL_BACKUP_KIND,
    TERMINATION_LOG,
    TLS_MOUNT,
    ClusterRef,
)
from etcdoperator.spec import ClusterSpec, Location

CLIENT_TLS_DIR = f"{TLS_MOUNT}/client"
PASSWORD_ENV = "ETCDOPERATOR_PASSWORD"


def backup_job(
    ref: ClusterRef,
    spec: ClusterSpec,
    *,
    job_name: str,
    kind: str,  # scheduled | on-demand
    backup_name: str,
    destination: Location,
    keep: int,
    images: Images,
    owner: Manifest | None = None,
    annotations: dict[str, str] | None = None,
    backup_object: str | None = None,
) -> Manifest:
    scheme = "https" if spec.tls.client.enabled else "http"
    args = [
        f"--cluster={ref.namespace}/{ref.name}",
        f"--endpoints={scheme}://{ref.client_host()}:{CLIENT_PORT}",
        f"--kind={kind}",
        f"--name={backup_name}",
        f"--keep={keep}",
        f"--result-file={TERMINATION_LOG}",
        *location_args(destination, is_source=False),
    ]
    if destination.pvc is not None:
        args.append(f"--location-base={destination.describe()}")
    env = location_env(destination)
    volumes, mounts = location_volume(destination, read_only=False)
    secrets = tls_secrets(ref, spec)
    if spec.tls.client.enabled:
        if secrets.client:
            volumes.append(
                {"name": "tls-client", "secret": {"secretName": secrets.client, "defaultMode": 0o400}}
            )
            args += [f"--cert={CLIENT_TLS_DIR}/tls.crt", f"--key={CLIENT_TLS_DIR}/tls.key"]
        else:  # no client certificate: only the CA, projected out of the server Secret
            volumes.append(
                {
                    "name": "tls-client",
                    "secret": {
                        "secretName": secrets.server,
                        "defaultMode": 0o400,
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    },
                }
            )
        mounts.append({"name": "tls-client", "mountPath": CLIENT_TLS_DIR, "readOnly": True})
        args.append(f"--cacert={CLIENT_TLS_DIR}/ca.crt")
    if spec.auth is not None:
        args.append("--user=root")
        env.append(
            {
                "name": PASSWORD_ENV,
                "valueFrom": {"secretKeyRef": {"name": spec.auth.secret_name, "key": spec.auth.secret_key}},
            }
        )
    labels = ref.labels("backup")
    labels[LABEL_BACKUP_KIND] = kind
    if backup_object:
        labels[LABEL_BACKUP] = backup_object
    meta = metadata(ref, job_name, "backup")
    meta["labels"] = labels
    if owner is not None:
        meta["ownerReferences"] = [owner]
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 1800,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": pod_security_context(),
                    **(
                        {"imagePullSecrets": [{"name": n} for n in spec.image_pull_secrets]}
                        if spec.image_pull_secrets
                        else {}
                    ),
                    "containers": [
                        {
                            "name": "backup",
                            "image": images.operator,
                            "imagePullPolicy": spec.image_pull_policy,
                            "command": ["etcdoperator", "backup"],
                            "args": args,
                            "env": env,
                            "volumeMounts": mounts,
                            "terminationMessagePath": TERMINATION_LOG,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": container_security_context(),
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
