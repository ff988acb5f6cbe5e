"""Integration: scheduled and on-demand backups (PVC and S3), and restoring a new cluster from one."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from kubeharness.s3 import ACCESS_KEY, SECRET_KEY, MotoS3

pytestmark = pytest.mark.etcd

BACKUPS = "etcdstore.io/v1alpha1/etcdbackups"


async def make_claim(world, name: str) -> None:
    await world.apply(
        "v1/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def claim_dir(world, name: str):
    return world.harness.kubelet.claim_dir(world.api.get_object("v1/persistentvolumeclaims", "default", name))


def scheduled_jobs(world, cluster: str) -> list[dict]:
    return world.api.list_objects(
        "batch/v1/jobs", "default", f"app.kubernetes.io/instance={cluster},etcdstore.io/backup-kind=scheduled"
    )


async def test_scheduled_backups_to_a_volume_with_retention_then_restore(world):
    await make_claim(world, "backups")
    await world.operator.start()
    await world.create_cluster(
        "src",
        {
            "replicas": 3,
            "backup": {
                "schedule": "* * * * * */4",
                "retention": 2,
                "destination": {"pvc": {"claimName": "backups", "path": "etcd"}},
            },
        },
    )
    await world.wait_available("src", 3)
    async with world.client("src") as c:
        for i in range(30):
            await c.put(f"orders/{i:02d}", f"order-{i}")

    root = claim_dir(world, "backups") / "etcd" / "default" / "src" / "scheduled"
    succeeded = lambda: [e for e in world.events("src") if e["reason"] == "BackupSucceeded"]
    # Backups run from the moment the cluster is Available (also while it grows): wait for four,
    # and for one taken after the writes.
    after_writes = lambda: (world.status("src").get("lastSuccessfulBackup") or {}).get("revision", 0) >= 31
    await world.wait_for(
        "four scheduled backups, the last after the writes",
        lambda: len(succeeded()) >= 4 and after_writes(),
        timeout=90,
    )
    files = sorted(p.name for p in root.iterdir())
    assert len([f for f in files if f.endswith(".db")]) == 2, files  # retention: newest 2
    assert len([f for f in files if f.endswith(".json")]) == 2
    last = world.status("src")["lastSuccessfulBackup"]
    assert last["location"].endswith(".db") and last["size"] > 0 and last["revision"] >= 31
    assert last["location"].startswith("pvc://backups/etcd/default/src/scheduled/src-")
    recorded = claim_dir(world, "backups") / last["location"][len("pvc://backups/") :]
    assert recorded.exists(), "the last successful backup is kept by retention"
    assert hashlib.sha256(recorded.read_bytes()).hexdigest() == last["sha256"]
    newest = root / max(f for f in files if f.endswith(".db"))
    assert world.status("src")["lastScheduledBackup"]
    await world.wait_for("finished backup jobs pruned", lambda: len(scheduled_jobs(world, "src")) <= 4)

    # restore a new cluster from the newest backup, then check it is a different cluster with the data
    record = json.loads(newest.with_suffix(".json").read_text())
    await world.create_cluster(
        "copy",
        {
            "replicas": 3,
            "restore": {
                "source": {
                    "pvc": {"claimName": "backups", "path": f"etcd/default/src/scheduled/{newest.name}"}
                },
                "sha256": record["sha256"],
            },
        },
    )
    st = await world.wait_available("copy", 3)
    assert st["clusterID"] != world.status("src")["clusterID"]
    # issue 14 item 5: the restore was a one-shot Job, gone once the cluster formed; no member
    # pod refers to the backup volume, and the snapshot copy is not left on the seed's volume
    await world.wait_for(
        "restore Job deleted",
        lambda: world.api.get_object("batch/v1/jobs", "default", "copy-restore") is None,
    )
    for pod in world.pods("copy").values():
        assert "backups" not in str(pod["spec"]), pod["metadata"]["name"]
    assert not (claim_dir(world, "data-copy-0") / ".restore").exists()
    async with world.client("copy") as c:
        r = await c.get("orders/", prefix=True)
        assert len(r.kvs) >= 1 and all(kv.value.startswith(b"order-") for kv in r.kvs)
        assert len(r.kvs) == 30
    # idempotent: the seed restarting (data dir present, cluster formed) does not restore again
    ids = {m["name"]: m["id"] for m in world.status("copy")["members"]}
    async with world.client("copy") as c:
        await c.put("after-restore", "yes")
    old = world.pods("copy")["copy-0"]["metadata"]["uid"]
    await world.harness.delete("v1/pods", "default", "copy-0")
    await world.wait_for(
        "copy-0 back",
        lambda: world.pods("copy").get("copy-0", {}).get("metadata", {}).get("uid") not in (None, old),
    )
    await world.wait_available("copy", 3)
    assert {m["name"]: m["id"] for m in world.status("copy")["members"]} == ids
    async with world.client("copy", ordinals=range(1)) as c:
        assert (await c.get("after-restore", serializable=True)).kvs[0].value == b"yes"


async def test_backups_to_s3_scheduled_and_on_demand(world):
    s3 = MotoS3(world.root / "moto.log").start()
    try:
        s3.client().create_bucket(Bucket="etcd")
        await world.apply(
            "v1/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3creds"},
                "data": {
                    "AWS_ACCESS_KEY_ID": base64.b64encode(ACCESS_KEY.encode()).decode(),
                    "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_KEY.encode()).decode(),
                },
            },
        )
        await world.operator.start()
        await world.create_cluster(
            "s3c",
            {
                "replicas": 1,
                "backup": {
                    "schedule": "* * * * * */4",
                    "retention": 1,
                    "destination": {
                        "s3": {
                            "bucket": "etcd",
                            "prefix": "prod",
                            "endpoint": s3.endpoint,
                            "credentialsSecret": "s3creds",
                        }
                    },
                },
            },
        )
        await world.wait_available("s3c", 1)
        async with world.client("s3c") as c:
            await c.put("k", "v")

        def keys() -> list[str]:
            return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket="etcd").get("Contents", []))

        await world.wait_for(
            "two scheduled backups done",
            lambda: len([e for e in world.events("s3c") if e["reason"] == "BackupSucceeded"]) >= 2,
            timeout=60,
        )
        scheduled = [k for k in keys() if "/scheduled/" in k]
        assert len(scheduled) == 2 and all(
            k.startswith("prod/default/s3c/scheduled/") for k in scheduled
        )  # keep 1
        last = world.status("s3c")["lastSuccessfulBackup"]
        assert last["location"].startswith("s3://etcd/prod/default/s3c/scheduled/")
        body = s3.client().get_object(Bucket="etcd", Key=last["location"][len("s3://etcd/") :])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == last["sha256"] and len(body) == last["size"]

        # on demand: an EtcdBackup object
        await world.apply(
            BACKUPS,
            {
                "apiVersion": "etcdstore.io/v1alpha1",
                "kind": "EtcdBackup",
                "metadata": {"name": "before-upgrade"},
                "spec": {"clusterName": "s3c"},
            },
        )
        backup = await world.wait_for(
            "EtcdBackup succeeded",
            lambda: (
                (world.api.get_object(BACKUPS, "default", "before-upgrade") or {})
                .get("status", {})
                .get("phase")
                in ("Succeeded", "Failed")
                and world.api.get_object(BACKUPS, "default", "before-upgrade")
            ),
            timeout=60,
        )
        st = backup["status"]
        assert st["phase"] == "Succeeded", st
        assert st["location"] == "s3://etcd/prod/default/s3c/on-demand/before-upgrade.db"
        assert "prod/default/s3c/on-demand/before-upgrade.db" in keys()
        body = (
            s3.client()
            .get_object(Bucket="etcd", Key="prod/default/s3c/on-demand/before-upgrade.db")["Body"]
            .read()
        )
        assert hashlib.sha256(body).hexdigest() == st["sha256"]

        # a backup of a cluster that does not exist fails cleanly
        await world.apply(
            BACKUPS,
            {
                "apiVersion": "etcdstore.io/v1alpha1",
                "kind": "EtcdBackup",
                "metadata": {"name": "nowhere"},
                "spec": {"clusterName": "missing"},
            },
        )
        failed = await world.wait_for(
            "EtcdBackup failed",
            lambda: (
                (world.api.get_object(BACKUPS, "default", "nowhere") or {}).get("status", {}).get("phase")
                == "Failed"
                and world.api.get_object(BACKUPS, "default", "nowhere")
            ),
            timeout=30,
        )
        assert "not found" in failed["status"]["message"]
    finally:
        s3.stop()
