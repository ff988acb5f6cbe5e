"""Backups, operator side: schedule Jobs, read their results, report them.

Scheduled backups: a kopf timer per EtcdCluster with `spec.backup.schedule`. At each tick the
latest cron time T not later than now is computed; when T is newer than
`status.lastScheduledBackup` a Job named after T is created (a deterministic name, so a
restarted operator never starts the same backup twice) and T is recorded. Missed ticks while
the operator was down collapse into one backup. Retention (keep N) is applied by the Job at the
destination; finished scheduled Jobs beyond the last few are deleted.

On-demand backups: an `EtcdBackup` object (kind EtcdBackup: spec.clusterName, optional
destination). The operator creates one Job for it and copies the result into its status.

Either way the result (time, revision, size, sha256, location) lands in the EtcdCluster's
`status.lastSuccessfulBackup`, in Events, and in the metrics.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kopf
from croniter import croniter

from etcdoperator import crd, events, metrics
from etcdoperator.build.backupjob import backup_job
from etcdoperator.kube import ETCDBACKUPS, ETCDCLUSTERS, JOBS, PODS, ApiError, Kube
from etcdoperator.naming import ANNOTATION_SCHEDULED_TIME, LABEL_BACKUP_KIND, ClusterRef
from etcdoperator.spec import ClusterSpec, parse_backup_spec, parse_cluster_spec

if TYPE_CHECKING:
    from etcdoperator.handlers import OperatorState

log = logging.getLogger(__name__)
ANNOTATION_RECORDED = "etcdstore.io/result-recorded"
KEEP_FINISHED_JOBS = 3


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)  # 3.11 reads the Z suffix
    except ValueError:
        return None


def latest_due(schedule: str, now: dt.datetime, since: dt.datetime | None) -> dt.datetime | None:
    """The newest cron time <= now that is later than `since` (None: nothing due)."""
    prev = croniter(schedule, now).get_prev(dt.datetime)
    if prev.tzinfo is None:
        prev = prev.replace(tzinfo=dt.UTC)
    if since is not None and prev <= since:
        return None
    return prev


def _short(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[: limit - 7]}-{digest}"


def scheduled_job_name(ref: ClusterRef, due: dt.datetime) -> str:
    return f"{_short(ref.name, 40)}-backup-{due.astimezone(dt.UTC):%Y%m%d-%H%M%S}"


def scheduled_backup_name(ref: ClusterRef, due: dt.datetime) -> str:
    return f"{ref.name}-{due.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"


def job_finished(job: Mapping[str, Any]) -> bool | None:
    """True: succeeded, False: failed for good, None: still running."""
    st = job.get("status") or {}
    if int(st.get("succeeded") or 0) > 0:
        return True
    for c in st.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return True
        if c.get("status") == "True" and c.get("type") == "Failed":
            return False
    return None


async def job_result(kube: Kube, namespace: str, job_name: str) -> dict[str, Any]:
    """The JSON the backup container left as its termination message (newest pod first)."""
    pods = await kube.list(PODS, namespace, labels={"job-name": job_name})
    pods.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            msg = ((cs.get("state") or {}).get("terminated") or {}).get("message")
            if msg:
                try:
                    return json.loads(msg.strip().splitlines()[-1])
                except (json.JSONDecodeError, IndexError):
                    return {"error": msg.strip()[-500:]}
    return {}


async def record_result(
    kube: Kube,
    ref: ClusterRef,
    cluster: Mapping[str, Any] | None,
    job: Mapping[str, Any],
    ok: bool,
    result: Mapping[str, Any],
) -> None:
    kind = (job.get("metadata", {}).get("labels") or {}).get(LABEL_BACKUP_KIND, "scheduled")
    metrics.BACKUPS.labels(ref.namespace, ref.name, kind, "success" if ok else "failure").inc()
    job_name = job["metadata"]["name"]
    if ok:
        entry = {k: result[k] for k in ("time", "revision", "size", "sha256", "location") if k in result}
        entry["backup"] = job_name
        prev = ((cluster or {}).get("status") or {}).get("lastSuccessfulBackup") or {}
        if cluster is not None and (prev.get("time") or "") <= entry.get("time", ""):
            await kube.patch(
                ETCDCLUSTERS,
                ref.namespace,
                ref.name,
                {"status": {"lastSuccessfulBackup": entry}},
                sub="status",
            )
        t = parse_time(entry.get("time"))
        if t is not None:
            metrics.BACKUP_TIME.labels(ref.namespace, ref.name).set(t.timestamp())
        metrics.BACKUP_BYTES.labels(ref.namespace, ref.name).set(float(entry.get("size") or 0))
        if cluster is not None:
            await events.post(
                kube,
                cluster,
                "BackupSucceeded",
                f"{kind} backup {job_name}: revision {entry.get('revision')}, {entry.get('size')} bytes, "
                f"sha256 {entry.get('sha256')}, at {entry.get('location')}",
            )
    elif cluster is not None:
        await events.post(
            kube,
            cluster,
            "BackupFailed",
            f"{kind} backup {job_name} failed: {result.get('error', 'see the Job logs')}",
            warning=True,
        )
    await kube.patch(
        JOBS, ref.namespace, job_name, {"metadata": {"annotations": {ANNOTATION_RECORDED: "true"}}}
    )


async def collect_scheduled(kube: Kube, ref: ClusterRef, cluster: Mapping[str, Any]) -> None:
    jobs = await kube.list(
        JOBS, ref.namespace, labels={**ref.labels("backup"), LABEL_BACKUP_KIND: "scheduled"}
    )
    finished: list[Mapping[str, Any]] = []
    for job in jobs:
        ok = job_finished(job)
        if ok is None:
            continue
        finished.append(job)
        if (job["metadata"].get("annotations") or {}).get(ANNOTATION_RECORDED):
            continue
        await record_result(
            kube, ref, cluster, job, ok, await job_result(kube, ref.namespace, job["metadata"]["name"])
        )
    finished.sort(key=lambda j: j["metadata"]["name"])
    for job in finished[:-KEEP_FINISHED_JOBS]:
        if (job["metadata"].get("annotations") or {}).get(ANNOTATION_RECORDED):
            await kube.delete(JOBS, ref.namespace, job["metadata"]["name"])


async def schedule_tick(
    kube: Kube, state: OperatorState, cluster: Mapping[str, Any], *, now: dt.datetime | None = None
) -> str | None:
    """One tick of the scheduler for one cluster; returns the Job created, if any."""
    meta = cluster["metadata"]
    ref = ClusterRef(meta["namespace"], meta["name"], meta.get("uid", ""))
    spec: ClusterSpec = parse_cluster_spec(cluster.get("spec"))
    await collect_scheduled(kube, ref, cluster)
    b = spec.backup
    if b is None or not b.schedule or b.suspend or spec.paused:
        return None
    now = now or dt.datetime.now(dt.UTC)
    status = cluster.get("status") or {}
    available = any(
        c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    if not available:
        return None  # a Job now would only fail; the tick is taken when the cluster is back
    since = parse_time(status.get("lastScheduledBackup")) or parse_time(meta.get("creationTimestamp"))
    due = latest_due(b.schedule, now, since)
    if due is None:
        return None
    name = scheduled_job_name(ref, due)
    job = backup_job(
        ref,
        spec,
        job_name=name,
        kind="scheduled",
        backup_name=scheduled_backup_name(ref, due),
        destination=b.destination,
        keep=b.retention,
        images=state.settings.images,
        annotations={ANNOTATION_SCHEDULED_TIME: _iso(due)},
    )
    try:
        await kube.create(JOBS, ref.namespace, job)
    except ApiError as e:
        if e.status != 409:
            raise
    await kube.patch(
        ETCDCLUSTERS, ref.namespace, ref.name, {"status": {"lastScheduledBackup": _iso(due)}}, sub="status"
    )
    await events.post(
        kube, cluster, "BackupScheduled", f"started scheduled backup {name} to {b.destination.describe()}"
    )
    return name


def on_demand_job_name(backup_name: str) -> str:
    return f"{_short(backup_name, 50)}-backup"


def register(state: OperatorState) -> None:
    tick = float(os.environ.get("ETCDOPERATOR_BACKUP_TICK", "10"))

    @kopf.timer(
        crd.GROUP,
        crd.VERSION,
        crd.CLUSTER_PLURAL,
        interval=tick,
        initial_delay=min(tick, 5.0),
        when=lambda spec, **_: bool(spec.get("backup")),
    )
    async def backup_schedule(body: kopf.Body, **_: Any) -> None:
        await schedule_tick(state.kube(), state, dict(body))

    @kopf.on.create(crd.GROUP, crd.VERSION, crd.BACKUP_PLURAL)
    async def backup_requested(
        body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, uid: str, patch: kopf.Patch, **_: Any
    ) -> None:
        kube = state.kube()
        req = parse_backup_spec(dict(spec))
        cluster = await kube.get(ETCDCLUSTERS, namespace, req.cluster_name)
        if cluster is None:
            patch.status.update({"phase": "Failed", "message": f"EtcdCluster {req.cluster_name} not found"})
            return
        cspec = parse_cluster_spec(cluster.get("spec"))
        dest = req.destination or (cspec.backup.destination if cspec.backup else None)
        if dest is None:
            patch.status.update(
                {
                    "phase": "Failed",
                    "message": "no destination: set spec.destination or the "
                    "cluster's spec.backup.destination",
                }
            )
            return
        cmeta = cluster["metadata"]
        ref = ClusterRef(namespace, req.cluster_name, cmeta.get("uid", ""))
        owner = {
            "apiVersion": crd.API_VERSION,
            "kind": crd.BACKUP_KIND,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        job_name = on_demand_job_name(name)
        job = backup_job(
            ref,
            cspec,
            job_name=job_name,
            kind="on-demand",
            backup_name=name,
            destination=dest,
            keep=0,
            images=state.settings.images,
            owner=owner,
            backup_object=name,
        )
        try:
            await kube.create(JOBS, namespace, job)
        except ApiError as e:
            if e.status != 409:
                raise
        patch.status.update(
            {"phase": "Running", "jobName": job_name, "startTime": _iso(dt.datetime.now(dt.UTC))}
        )
        await events.post(kube, body, "BackupStarted", f"backing up {req.cluster_name} to {dest.describe()}")

    @kopf.timer(
        crd.GROUP,
        crd.VERSION,
        crd.BACKUP_PLURAL,
        interval=max(tick / 2, 0.5),
        when=lambda status, **_: status.get("phase") == "Running",
    )
    async def backup_progress(
        body: kopf.Body, spec: kopf.Spec, status: kopf.Status, name: str, namespace: str, **_: Any
    ) -> None:
        kube = state.kube()
        job_name = status.get("jobName") or on_demand_job_name(name)
        job = await kube.get(JOBS, namespace, job_name)
        if job is None:
            await kube.patch(
                ETCDBACKUPS,
                namespace,
                name,
                {"status": {"phase": "Failed", "message": "Job is gone"}},
                sub="status",
            )
            return
        ok = job_finished(job)
        if ok is None:
            return
        result = await job_result(kube, namespace, job_name)
        now = _iso(dt.datetime.now(dt.UTC))
        new: dict[str, Any] = {"phase": "Succeeded" if ok else "Failed", "completionTime": now}
        if ok:
            new.update(
                {k: result[k] for k in ("time", "revision", "size", "sha256", "location") if k in result}
            )
            new["message"] = "backup complete"
        else:
            new["message"] = str(result.get("error") or "the backup Job failed")
        await kube.patch(ETCDBACKUPS, namespace, name, {"status": new}, sub="status")
        cluster_name = spec.get("clusterName")
        cluster = await kube.get(ETCDCLUSTERS, namespace, cluster_name) if cluster_name else None
        cmeta = (cluster or {}).get("metadata", {})
        ref = ClusterRef(namespace, cluster_name or "", cmeta.get("uid", ""))
        await record_result(kube, ref, cluster, job, ok, result)
        await events.post(
            kube, body, "BackupSucceeded" if ok else "BackupFailed", new["message"], warning=not ok
        )
