"""Backups (on demand and scheduled, to a PVC and to S3) and restore into a new cluster, data checked."""

from __future__ import annotations

import contextlib
import json

import pytest
from e2elib import DataCheck, available, etcd_cluster, member_endpoints, members_gone, wait

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e-secret"}


def backup_done(kubectl, name: str) -> dict:
    def check():
        b = kubectl.json("etcdbackup", name)
        return b if (b.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    b = wait(f"backup {name}", check, 600, 2.0)
    assert b["status"]["phase"] == "Succeeded", b["status"]
    return b["status"]


def write_and_verify(kubectl, provider, data: DataCheck, name: str, label: str) -> None:
    with provider.endpoint(kubectl, f"svc/{name}-client") as ep:
        data.write(ep, label)
    with member_endpoints(provider, kubectl, name) as eps:
        data.verify(eps)


@pytest.mark.parametrize("destination", ["pvc", "s3"])
def test_backup_and_restore(kubectl, provider, engine, destination, tmp_path):
    with provider.s3(kubectl) if destination == "s3" else contextlib.nullcontext() as s3:
        if destination == "pvc":
            kubectl.apply(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "backups"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            )
            dest = {"pvc": {"claimName": "backups", "path": "b"}}
        else:
            pod_url, test_url = s3
            _create_bucket(test_url, "backups")
            kubectl.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "s3"},
                    "stringData": S3_CREDENTIALS,
                }
            )
            dest = {
                "s3": {"bucket": "backups", "prefix": "e2e", "endpoint": pod_url, "credentialsSecret": "s3"}
            }

        # Scheduled every minute, and one on demand.
        kubectl.apply(
            etcd_cluster("src", engine, replicas=1, backup={"destination": dest, "schedule": "* * * * *"})
        )
        available(kubectl, "src", 1)
        data = DataCheck()
        write_and_verify(kubectl, provider, data, "src", "before-backup")
        kubectl.apply(
            {
                "apiVersion": "etcdstore.io/v1alpha1",
                "kind": "EtcdBackup",
                "metadata": {"name": "now"},
                "spec": {"clusterName": "src"},
            }
        )
        done = backup_done(kubectl, "now")
        assert done["sha256"] and done["size"] > 0, done
        wait(
            "a scheduled backup",
            lambda: (kubectl.json("etcdcluster", "src").get("status") or {}).get("lastScheduledBackup"),
            300,
            2.0,
        )

        # Keys written after the backup must not be in the restored cluster.
        after = DataCheck()
        with provider.endpoint(kubectl, "svc/src-client") as ep:
            after.write(ep, "after-backup")
        kubectl("delete", "etcdcluster", "src")
        wait("src deleted", lambda: members_gone(kubectl, "src"))

        if destination == "pvc":
            source = {"pvc": {"claimName": "backups", "path": done["location"].split("pvc://backups/", 1)[1]}}
        else:
            bucket, key = done["location"].removeprefix("s3://").split("/", 1)
            source = {"s3": {"bucket": bucket, "key": key, "endpoint": pod_url, "credentialsSecret": "s3"}}
        kubectl.apply(
            etcd_cluster("restored", engine, replicas=3, restore={"source": source, "sha256": done["sha256"]})
        )
        available(kubectl, "restored", 3)
        with member_endpoints(provider, kubectl, "restored") as eps:
            data.verify(eps)
            from test_e2e_lifecycle import count_keys

            assert count_keys(next(iter(eps.values())), DataCheck.PREFIX + "after-backup/") == 0

        # Nothing of the restore is left in the member pods: no backup volume, no S3 credentials.
        for pod in kubectl.json("pod", "-l", "app.kubernetes.io/instance=restored")["items"]:
            text = json.dumps(pod["spec"])
            assert "backups" not in text and '"s3"' not in text, (
                f"{pod['metadata']['name']} keeps the restore source"
            )
        write_and_verify(kubectl, provider, data, "restored", "after-restore")


def _create_bucket(url: str, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
