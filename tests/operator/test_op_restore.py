"""Issue 14 item 5: a restore leaves nothing behind. The seed's volume is filled by a one-shot Job
before the StatefulSet scales up (the only object that refers to the backup volume or the S3
credentials), with the engine's own restore tool at the target version; the Job is deleted once
the cluster has formed. Builder and planner; the whole flow runs in
test_op_scenario_backup.py::test_scheduled_backups_to_a_volume_with_retention_then_restore."""

from __future__ import annotations

import kubernetes_validate
import pytest
from etcdoperator import planner as P
from etcdoperator.build.common import Images
from etcdoperator.build.restorejob import SCRATCH, restore_job, restore_job_name, seed_claim
from etcdoperator.build.statefulset import statefulset
from etcdoperator.build.volumes import claim_template
from etcdoperator.model import BootstrapState, EtcdView, KubeView, MemberState, Observed, PodState, PVCState
from etcdoperator.naming import ClusterRef
from etcdoperator.restore_runner import restore_tool
from etcdoperator.spec import parse_cluster_spec
from podsecurity import restricted_violations

REF = ClusterRef("prod", "orders", "0c1d2e3f-aaaa-bbbb-cccc-123456789abc")
IMAGES = Images(operator="registry.local/etcd-operator:0.1.0", store="registry.local/etcdstore:0.1.0")
S3 = {
    "restore": {
        "source": {
            "s3": {"bucket": "b", "key": "k/x.db", "endpoint": "http://minio:9000", "credentialsSecret": "s3"}
        },
        "sha256": "a" * 64,
    }
}
PVC = {
    "engine": "etcd",
    "version": "3.5.9",
    "restore": {"source": {"pvc": {"claimName": "old", "path": "dir/x.db"}}},
    "pod": {
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}],
    },
    "imagePullSecrets": [{"name": "regcred"}],
}


@pytest.mark.parametrize(
    ("engine", "version", "tool"),
    [
        ("etcd", "3.4.23", ["etcdctl", "snapshot", "restore"]),
        ("etcd", "3.5.9", ["etcdutl", "snapshot", "restore"]),
        ("etcd", "3.6.0", ["etcdutl", "snapshot", "restore"]),
        ("etcdstore", "3.4.23", ["etcdstore", "snapshot", "restore"]),
    ],
)
def test_restore_tool_matches_engine_and_version(engine, version, tool):
    assert restore_tool(engine, version) == tool


@pytest.mark.parametrize("spec", [S3, PVC], ids=["s3", "pvc"])
def test_restore_job_steps(spec):
    s = parse_cluster_spec(spec)
    job = restore_job(REF, s, images=IMAGES, version=s.version)
    for v in ("1.30", "1.37"):
        kubernetes_validate.validate(job, v, strict=True)
    assert job["metadata"]["name"] == restore_job_name(REF) == "orders-restore"
    assert job["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and restricted_violations(pod) == []
    fetch, restore = pod["initContainers"]
    (finish,) = pod["containers"]
    assert fetch["image"] == finish["image"] == IMAGES.operator
    assert fetch["command"] == ["etcdoperator", "restore-member", "fetch"]
    assert finish["command"] == ["etcdoperator", "restore-member", "finish"]
    # the engine's own tool, in the member image of the target version
    member = statefulset(REF, s, images=IMAGES, version=s.version, replicas=1)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert restore["image"] == member["image"]
    assert restore["command"] + restore["args"][:3] == restore_tool(s.engine, s.version) + [
        f"{SCRATCH}/snapshot.db"
    ]
    args = restore["args"]
    peer = "http://orders-0.orders.prod.svc.cluster.local:2380"
    assert "--name=orders-0" in args and f"--initial-cluster=orders-0={peer}" in args
    assert f"--initial-advertise-peer-urls={peer}" in args and "--data-dir=/var/lib/etcd/data" in args
    assert "--initial-cluster-token=orders-0c1d2e3f" in args  # the bootstrap ConfigMap's token
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "data-orders-0"}
    # only the fetch step sees the backup source
    if s.restore.source.s3 is not None:
        assert {e["name"] for e in fetch["env"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert "--sha256=" + "a" * 64 in fetch["args"] and "--s3-endpoint=http://minio:9000" in fetch["args"]
        assert "AWS_" not in str(restore) + str(finish)
    else:
        assert vols["backup"]["persistentVolumeClaim"] == {"claimName": "old", "readOnly": True}
        assert "--source=file:///backup/dir/x.db" in fetch["args"]
        assert (
            [m["name"] for m in restore["volumeMounts"]]
            == ["data"]
            == [m["name"] for m in finish["volumeMounts"]]
        )
        # scheduled where a member may run: the volume binds on the Job's node
        assert pod["nodeSelector"] == {"disk": "ssd"} and pod["tolerations"][0]["key"] == "dedicated"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_seed_claim_is_what_the_statefulset_would_make():
    s = parse_cluster_spec(PVC)
    claim = seed_claim(REF, s)
    tmpl = claim_template(REF, s)
    assert claim["metadata"]["name"] == "data-orders-0" and claim["metadata"]["namespace"] == "prod"
    assert claim["metadata"]["labels"] == tmpl["metadata"]["labels"] and claim["spec"] == tmpl["spec"]
    kubernetes_validate.validate(claim, "1.30", strict=True)


# -- planner --------------------------------------------------------------------------------------

PREF = ClusterRef("ns", "c", "uid-1")


def _obs(spec=None, *, job=None, restored=False, pvcs=(), pods=(), boot=None, view=None) -> Observed:
    kube = KubeView(
        pvcs={k: PVCState(name=f"data-c-{k}", ordinal=k, uid=f"v{k}", member_id=mid) for k, mid in pvcs},
        pods={k: PodState(name=f"c-{k}", ordinal=k, uid=f"p{k}") for k in pods},
        bootstrap=boot,
        restore_job=job,
        restored=restored,
    )
    return Observed(
        spec=parse_cluster_spec(spec or {"replicas": 3, **S3}),
        kube=kube,
        etcd=view or EtcdView(reachable=False, error="no member pods yet"),
    )


def _act(o: Observed) -> P.Action:
    return P.plan(o, PREF).action


def test_restore_runs_before_the_seed_starts():
    assert isinstance(_act(_obs()), P.RunRestore)
    a = _act(_obs(job="Running", pvcs=[(0, None)]))
    assert isinstance(a, P.Wait) and a.reason == "Restoring"
    assert isinstance(_act(_obs(job="Complete", pvcs=[(0, None)])), P.MarkRestored)
    # restored: the ordinary bootstrap on the seed's (restored) volume
    assert isinstance(_act(_obs(job="Complete", restored=True, pvcs=[(0, None)])), P.Bootstrap)


def test_failed_restore_is_reported_and_waits():
    p = P.plan(_obs(job="Failed: BackoffLimitExceeded", pvcs=[(0, None)]), PREF)
    assert isinstance(p.action, P.Wait) and p.action.reason == "RestoreFailed"
    assert any(r == "RestoreFailed" and "BackoffLimitExceeded" in m for r, m in p.degraded)


def test_never_restores_over_member_data():
    # volumes with member data and no bootstrap ConfigMap: they come back, no restore
    assert isinstance(_act(_obs(pvcs=[(0, "abc")])), P.WriteBootstrap)
    # a cluster that bootstrapped already never restores again
    boot = BootstrapState(state="new", initial_cluster="c-0=http://c-0.c.ns.svc:2380", token="t")
    assert not isinstance(_act(_obs(boot=boot, pvcs=[(0, None)], pods=[0])), (P.RunRestore, P.MarkRestored))


def test_restore_needs_a_volume():
    p = P.plan(_obs({"replicas": 1, "storage": {"ephemeral": True}, **S3}), PREF)
    assert isinstance(p.action, P.Wait) and p.action.reason == "RestoreNeedsVolume"


def test_restore_job_is_deleted_once_the_cluster_has_formed():
    m = MemberState(
        id=0x100,
        name="c-0",
        peer_urls=("http://c-0.c.ns.svc:2380",),
        ordinal=0,
        healthy=True,
        raft_index=5,
        version="3.4.23",
    )
    view = EtcdView(reachable=True, members=(m,), leader_id=0x100, cluster_id=1)
    ic = P.initial_cluster(PREF, view.members)
    formed = BootstrapState(state="existing", initial_cluster=ic, token="t")
    o = _obs(
        {"replicas": 1, **S3},
        job="Complete",
        restored=True,
        pvcs=[(0, "100")],
        pods=[0],
        boot=formed,
        view=view,
    )
    assert isinstance(_act(o), P.DeleteRestoreJob)
    # while the seed has not formed the cluster yet, the Job stays
    new = BootstrapState(state="new", initial_cluster=ic, token="t")
    o = _obs(
        {"replicas": 1, **S3}, job="Complete", restored=True, pvcs=[(0, "100")], pods=[0], boot=new, view=view
    )
    assert isinstance(_act(o), P.MarkFormed)
