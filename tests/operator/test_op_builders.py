"""Manifest builders: every object validates against the official Kubernetes schemas (offline,
strict: unknown fields are errors), and carries what the operator relies on."""

from __future__ import annotations

import datetime as dt

import kubernetes_validate
import pytest
from etcdoperator import tlsplan
from etcdoperator.build.backupjob import backup_job
from etcdoperator.build.bootstrap import bootstrap_configmap, decode_joining, encode_joining
from etcdoperator.build.common import Images
from etcdoperator.build.disruption import pod_disruption_budget
from etcdoperator.build.secrets import tls_secret
from etcdoperator.build.services import client_service, peer_service
from etcdoperator.build.statefulset import statefulset
from etcdoperator.naming import ClusterRef
from etcdoperator.spec import parse_cluster_spec

K8S = ["1.30", "1.37"]
REF = ClusterRef("prod", "orders", "0c1d2e3f-aaaa-bbbb-cccc-123456789abc")
IMAGES = Images(operator="registry.local/etcd-operator:0.1.0", store="registry.local/etcdstore:0.1.0")

SPECS = {
    "minimal": {},
    "etcd-full": {
        "engine": "etcd", "replicas": 5, "version": "3.5.9",
        "storage": {"size": "10Gi", "storageClassName": "fast", "reclaimPolicy": "Retain"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2147483648}},
        "pod": {"labels": {"team": "a"}, "annotations": {"x": "y"}, "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}],
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                                               "labelSelector": {"matchLabels": {"a": "b"}}}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "role", "operator": "In", "values": ["etcd"]}]}]}}},
                "priorityClassName": "high", "serviceAccountName": "etcd"},
        "imagePullSecrets": [{"name": "regcred"}],
        "options": {"quotaBackendBytes": 4294967296, "autoCompactionMode": "revision", "autoCompactionRetention": "1000",
                    "snapshotCount": 10000, "heartbeatIntervalMs": 100, "electionTimeoutMs": 1000},
    },
    "tls-auto": {"tls": {"client": {"mode": "auto"}, "peer": {"mode": "auto"}}},
    "tls-secret": {"tls": {"client": {"mode": "secret", "secretName": "srv", "operatorSecretName": "op"},
                           "peer": {"mode": "secret", "secretName": "peer"}}},
    "ephemeral": {"storage": {"ephemeral": True}},
    "restore-s3": {"restore": {"source": {"s3": {"bucket": "b", "key": "k/x.db", "endpoint": "http://minio:9000",
                                                 "credentialsSecret": "s3"}}, "sha256": "a" * 64}},
    "restore-pvc": {"engine": "etcd", "restore": {"source": {"pvc": {"claimName": "old", "path": "dir/x.db"}}}},
    "backup-auth": {"auth": {"rootPasswordSecret": {"name": "root"}}, "tls": {"client": {"mode": "auto"}},
                    "backup": {"schedule": "0 * * * *", "destination": {"s3": {"bucket": "b", "credentialsSecret": "c"}}}},
}


def _validate(obj):
    for v in K8S:
        kubernetes_validate.validate(obj, v, strict=True)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_statefulset_validates(name):
    spec = parse_cluster_spec(SPECS[name])
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=3, tls_hash="abc")
    _validate(sts)
    tmpl = sts["spec"]["template"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert sts["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    c = tmpl["spec"]["containers"][0]
    assert c["command"] == (["etcd"] if spec.engine == "etcd" else ["etcdstore"])
    args = c["args"]
    assert "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)" in args
    assert any(a.startswith("--initial-advertise-peer-urls=") and "$(POD_NAME).orders.prod.svc" in a for a in args)
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["INITIAL_CLUSTER_STATE"]["valueFrom"]["configMapKeyRef"]["name"] == "orders-bootstrap"
    assert not any(n.startswith("ETCD_") for n in env), "etcd refuses flags shadowed by ETCD_* variables"


def test_statefulset_flags_follow_the_spec():
    spec = parse_cluster_spec(SPECS["etcd-full"])
    sts = statefulset(REF, spec, images=IMAGES, version="3.5.9", replicas=5)
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "quay.io/coreos/etcd:v3.5.9"
    for flag in ("--quota-backend-bytes=4294967296", "--auto-compaction-mode=revision", "--auto-compaction-retention=1000",
                 "--snapshot-count=10000", "--heartbeat-interval=100", "--election-timeout=1000"):
        assert flag in c["args"]
    assert not any("cert-file" in a for a in c["args"])
    pod = sts["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "high" and pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["affinity"]["nodeAffinity"]  # user affinity replaces the default anti-affinity
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "fast" and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_statefulset_tls_flags_and_mounts():
    spec = parse_cluster_spec(SPECS["tls-auto"])
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=3, tls_hash="h1")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    assert any(a.startswith("--listen-client-urls=https://") for a in args)
    assert any(a.startswith("--initial-advertise-peer-urls=https://") for a in args)
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls-server"]["secret"]["secretName"] == "orders-server-tls"
    assert vols["tls-peer"]["secret"]["secretName"] == "orders-peer-tls"
    assert sts["spec"]["template"]["metadata"]["annotations"]["etcdstore.io/tls-hash"] == "h1"


def test_restore_init_container():
    spec = parse_cluster_spec(SPECS["restore-pvc"])
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=1)
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == IMAGES.operator and init["command"] == ["etcdoperator", "restore-member"]
    assert "--source=file:///backup/dir/x.db" in init["args"] and "--engine=etcd" in init["args"]
    assert "--seed=orders-0" in init["args"]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["backup"]["persistentVolumeClaim"] == {"claimName": "old", "readOnly": True}


def test_ephemeral_storage_uses_emptydir():
    spec = parse_cluster_spec(SPECS["ephemeral"])
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=1)
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_services_and_pdb():
    for svc in (peer_service(REF), client_service(REF)):
        _validate(svc)
        assert svc["spec"]["selector"] == REF.member_selector()
    assert peer_service(REF)["spec"]["clusterIP"] == "None"
    assert peer_service(REF)["spec"]["publishNotReadyAddresses"] is True
    for voters, want in ((1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)):
        pdb = pod_disruption_budget(REF, voters)
        _validate(pdb)
        assert pdb["spec"]["minAvailable"] == want


def test_bootstrap_configmap():
    joining = {2: frozenset({"u1", "u2"}), 4: frozenset()}
    cm = bootstrap_configmap(REF, initial_cluster="orders-0=http://a:2380", state="new", token="t", joining=joining)
    _validate(cm)
    assert cm["data"] == {"initial-cluster": "orders-0=http://a:2380", "initial-cluster-state": "new",
                          "initial-cluster-token": "t"}
    assert decode_joining(cm["metadata"]["annotations"]["etcdstore.io/joining"]) == joining
    assert decode_joining(encode_joining({})) == {}


@pytest.mark.parametrize("name", ["minimal", "backup-auth", "tls-secret"])
@pytest.mark.parametrize("dest", [{"pvc": {"claimName": "bk", "path": "x"}}, {"s3": {"bucket": "b", "prefix": "p"}}])
def test_backup_job(name, dest):
    from etcdoperator.spec import destination_from

    spec = parse_cluster_spec(SPECS[name])
    job = backup_job(REF, spec, job_name="orders-backup-1", kind="scheduled", backup_name="orders-1",
                     destination=destination_from(dest), keep=5, images=IMAGES)
    _validate(job)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["etcdoperator", "backup"]
    assert "--keep=5" in c["args"] and "--kind=scheduled" in c["args"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "backup"
    assert not REF.member_selector().items() <= labels.items(), "backup pods must not look like members"
    if spec.tls.client.enabled:
        assert any(a.startswith("--cacert=") for a in c["args"])
    if spec.auth is not None:
        assert "--user=root" in c["args"]


def test_tls_secrets_validate():
    spec = parse_cluster_spec(SPECS["tls-auto"])
    writes = tlsplan.plan_tls(REF, spec, {}, now=dt.datetime.now(dt.UTC), rolled=False)
    assert {w.name for w in writes} == {"orders-ca", "orders-server-tls", "orders-client-tls", "orders-peer-tls"}
    for w in writes:
        _validate(tls_secret(REF, w))


def test_event_validates():
    from etcdoperator.events import event_manifest

    body = {"apiVersion": "etcdstore.io/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "orders", "namespace": "prod", "uid": REF.uid}}
    ev = event_manifest(body, "MemberAdded", "added orders-3 as learner 1234" * 200, warning=True)
    _validate(ev)
    assert ev["type"] == "Warning" and len(ev["message"]) == 1024 and ev["involvedObject"]["uid"] == REF.uid
