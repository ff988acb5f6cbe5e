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
from podsecurity import restricted_violations

K8S = ["1.30", "1.37"]
REF = ClusterRef("prod", "orders", "0c1d2e3f-aaaa-bbbb-cccc-123456789abc")
IMAGES = Images(operator="registry.local/etcd-operator:0.1.0", store="registry.local/etcdstore:0.1.0")

SPECS = {
    "minimal": {},
    "etcd-full": {
        "engine": "etcd",
        "replicas": 5,
        "version": "3.5.9",
        "storage": {"size": "10Gi", "storageClassName": "fast", "reclaimPolicy": "Retain"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2147483648}},
        "pod": {
            "labels": {"team": "a"},
            "annotations": {"x": "y"},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}
            ],
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"a": "b"}},
                }
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "role", "operator": "In", "values": ["etcd"]}]}
                        ]
                    }
                }
            },
            "priorityClassName": "high",
            "serviceAccountName": "etcd",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "options": {
            "quotaBackendBytes": 4294967296,
            "autoCompactionMode": "revision",
            "autoCompactionRetention": "1000",
            "snapshotCount": 10000,
            "heartbeatIntervalMs": 100,
            "electionTimeoutMs": 1000,
        },
    },
    "tls-auto": {"tls": {"client": {"mode": "auto"}, "peer": {"mode": "auto"}}},
    "tls-secret": {
        "tls": {
            "client": {"mode": "secret", "secretName": "srv", "operatorSecretName": "op"},
            "peer": {"mode": "secret", "secretName": "peer"},
        }
    },
    "ephemeral": {"storage": {"ephemeral": True}},
    "restore-s3": {
        "restore": {
            "source": {
                "s3": {
                    "bucket": "b",
                    "key": "k/x.db",
                    "endpoint": "http://minio:9000",
                    "credentialsSecret": "s3",
                }
            },
            "sha256": "a" * 64,
        }
    },
    "restore-pvc": {
        "engine": "etcd",
        "restore": {"source": {"pvc": {"claimName": "old", "path": "dir/x.db"}}},
    },
    "backup-auth": {
        "auth": {"rootPasswordSecret": {"name": "root"}},
        "tls": {"client": {"mode": "auto"}},
        "backup": {"schedule": "0 * * * *", "destination": {"s3": {"bucket": "b", "credentialsSecret": "c"}}},
    },
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
    assert any(
        a.startswith("--initial-advertise-peer-urls=") and "$(POD_NAME).orders.prod.svc" in a for a in args
    )
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["INITIAL_CLUSTER_STATE"]["valueFrom"]["configMapKeyRef"]["name"] == "orders-bootstrap"
    assert not any(n.startswith("ETCD_") for n in env), "etcd refuses flags shadowed by ETCD_* variables"


def test_statefulset_flags_follow_the_spec():
    spec = parse_cluster_spec(SPECS["etcd-full"])
    sts = statefulset(REF, spec, images=IMAGES, version="3.5.9", replicas=5)
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "quay.io/coreos/etcd:v3.5.9"
    for flag in (
        "--quota-backend-bytes=4294967296",
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=1000",
        "--snapshot-count=10000",
        "--heartbeat-interval=100",
        "--election-timeout=1000",
    ):
        assert flag in c["args"]
    assert not any("cert-file" in a for a in c["args"])
    pod = sts["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "high" and pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["affinity"]["nodeAffinity"]  # user affinity replaces the default anti-affinity
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert (
        claim["spec"]["storageClassName"] == "fast"
        and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    )


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


def test_ephemeral_storage_uses_emptydir():
    spec = parse_cluster_spec(SPECS["ephemeral"])
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=1)
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_services_and_pdb():
    for svc in (peer_service(REF), client_service(REF)):
        _validate(svc)
    assert peer_service(REF)["spec"]["selector"] == REF.member_selector()
    assert peer_service(REF)["spec"]["clusterIP"] == "None"
    assert peer_service(REF)["spec"]["publishNotReadyAddresses"] is True
    for voters, want in ((2, 2), (3, 2), (4, 3), (5, 3), (7, 4)):
        pdb = pod_disruption_budget(REF, voters)
        _validate(pdb)
        assert pdb["spec"]["minAvailable"] == want and "maxUnavailable" not in pdb["spec"]
    # issue 14 item 9: one member must not block node drains forever; voters only
    one = pod_disruption_budget(REF, 1)
    _validate(one)
    assert one["spec"]["maxUnavailable"] == 1 and "minAvailable" not in one["spec"]
    for pdb in (one, pod_disruption_budget(REF, 3)):
        assert pdb["spec"]["selector"]["matchLabels"] == {
            **REF.member_selector(),
            "etcdstore.io/role": "voter",
        }
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # learners are not behind the client Service (the peer Service keeps every member)
    assert client_service(REF)["spec"]["selector"] == {**REF.member_selector(), "etcdstore.io/role": "voter"}


def test_bootstrap_configmap():
    joining = {2: frozenset({"u1", "u2"}), 4: frozenset()}
    cm = bootstrap_configmap(
        REF, initial_cluster="orders-0=http://a:2380", state="new", token="t", joining=joining
    )
    _validate(cm)
    assert cm["data"] == {
        "initial-cluster": "orders-0=http://a:2380",
        "initial-cluster-state": "new",
        "initial-cluster-token": "t",
        "join": "",
    }
    assert decode_joining(cm["metadata"]["annotations"]["etcdstore.io/joining"]) == joining
    assert decode_joining(encode_joining({})) == {}


@pytest.mark.parametrize("name", ["minimal", "backup-auth", "tls-secret"])
@pytest.mark.parametrize(
    "dest", [{"pvc": {"claimName": "bk", "path": "x"}}, {"s3": {"bucket": "b", "prefix": "p"}}]
)
def test_backup_job(name, dest):
    from etcdoperator.spec import destination_from

    spec = parse_cluster_spec(SPECS[name])
    job = backup_job(
        REF,
        spec,
        job_name="orders-backup-1",
        kind="scheduled",
        backup_name="orders-1",
        destination=destination_from(dest),
        keep=5,
        images=IMAGES,
    )
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
    assert {w.name for w in writes} == {
        "orders-ca",
        "orders-server-tls",
        "orders-client-tls",
        "orders-peer-tls",
    }
    for w in writes:
        _validate(tls_secret(REF, w))


def test_event_validates():
    from etcdoperator.events import event_manifest

    body = {
        "apiVersion": "etcdstore.io/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "orders", "namespace": "prod", "uid": REF.uid},
    }
    ev = event_manifest(body, "MemberAdded", "added orders-3 as learner 1234" * 200, warning=True)
    _validate(ev)
    assert ev["type"] == "Warning" and len(ev["message"]) == 1024 and ev["involvedObject"]["uid"] == REF.uid


# -- issue 14 item 1: every pod the operator makes passes Pod Security `restricted` -------------


def test_restricted_checker_catches_violations():
    assert restricted_violations({"containers": [{"name": "c"}]})  # nothing set: many violations
    bad = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
                },
            }
        ],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    }
    text = "\n".join(restricted_violations(bad))
    assert "SYS_ADMIN" in text and "hostPath" in text


def _assert_restricted(pod_spec):
    assert restricted_violations(pod_spec) == []
    sc = pod_spec["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and sc["runAsGroup"] == 65532
    assert sc["fsGroup"] == 65532 and sc["fsGroupChangePolicy"] == "OnRootMismatch"
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod_spec["containers"] + pod_spec.get("initContainers", []):
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_member_pods_pass_pod_security_restricted(name):
    spec = parse_cluster_spec(SPECS[name])
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=3)
    _assert_restricted(sts["spec"]["template"]["spec"])


@pytest.mark.parametrize("name", ["minimal", "backup-auth", "tls-secret", "etcd-full"])
def test_backup_job_passes_pod_security_restricted_and_gets_pull_secrets(name):
    from etcdoperator.spec import destination_from

    spec = parse_cluster_spec(SPECS[name])
    job = backup_job(
        REF,
        spec,
        job_name="orders-backup-1",
        kind="scheduled",
        backup_name="orders-1",
        destination=destination_from({"pvc": {"claimName": "bk"}}),
        keep=5,
        images=IMAGES,
    )
    pod = job["spec"]["template"]["spec"]
    _assert_restricted(pod)
    if spec.image_pull_secrets:
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_operator_deployment_passes_pod_security_restricted():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    dep = next(d for d in yaml.safe_load_all((root / "deploy" / "operator.yaml").read_text()) if d)
    assert restricted_violations(dep["spec"]["template"]["spec"]) == []
    # the chart's Deployment takes both contexts from its values, as they are
    values = yaml.safe_load((root / "charts" / "etcd-operator" / "values.yaml").read_text())
    template = (root / "charts" / "etcd-operator" / "templates" / "deployment.yaml").read_text()
    assert "toYaml .Values.podSecurityContext" in template and "toYaml .Values.securityContext" in template
    pod = {
        "securityContext": values["podSecurityContext"],
        "containers": [{"name": "operator", "securityContext": values["securityContext"]}],
        "volumes": [{"name": "run", "emptyDir": {"medium": "Memory"}}, {"name": "tmp", "emptyDir": {}}],
    }
    assert restricted_violations(pod) == []


# -- issue 14 item 2: the member gate -------------------------------------------------------------


@pytest.mark.parametrize("name", ["minimal", "restore-pvc", "ephemeral"])
def test_every_member_starts_through_the_gate(name):
    spec = parse_cluster_spec(SPECS[name])
    pod = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=3)["spec"]["template"]["spec"]
    inits = pod["initContainers"]
    assert [c["name"] for c in inits] == [
        "gate"
    ]  # a restore is a Job before the seed starts (test_op_restore.py)
    gate = inits[-1]
    assert gate["command"] == ["etcdoperator", "member-gate"] and gate["image"] == IMAGES.operator
    assert "--data-dir=/var/lib/etcd/data" in gate["args"] and "--seed=orders-0" in gate["args"]
    assert "--join=$(JOIN_TICKETS)" in gate["args"]
    env = {e["name"]: e for e in gate["env"]}
    assert env["JOIN_TICKETS"]["valueFrom"]["configMapKeyRef"] == {
        "name": "orders-bootstrap",
        "key": "join",
        "optional": True,
    }
    assert gate["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/etcd", "readOnly": True}]


# -- issue 14 items 6, 7, 9 -----------------------------------------------------------------------


@pytest.mark.parametrize("reclaim", ["Delete", "Retain"])
def test_deleting_only_the_statefulset_keeps_member_volumes(reclaim):
    spec = parse_cluster_spec({"storage": {"reclaimPolicy": reclaim}})
    sts = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=3)
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    labels = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
    assert labels["etcdstore.io/cluster-uid"] == REF.uid


def test_probes_readiness_ignores_nospace_and_startup_is_generous_and_configurable():
    c = statefulset(REF, parse_cluster_spec({}), images=IMAGES, version="3.4.23", replicas=3)["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health?exclude=NOSPACE"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
    c = statefulset(
        REF,
        parse_cluster_spec({"pod": {"startupTimeoutSeconds": 3600}}),
        images=IMAGES,
        version="3.4.23",
        replicas=3,
    )["spec"]["template"]["spec"]["containers"][0]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] == 3600


@pytest.mark.parametrize(
    ("spec", "flag"),
    [
        ({}, "--quota-backend-bytes=268435456"),  # 1Gi volume: 256 MiB, NOSPACE long before the disk fills
        ({"storage": {"size": "20Gi"}}, "--quota-backend-bytes=8589934592"),
        (
            {"storage": {"size": "20Gi"}, "options": {"quotaBackendBytes": 1048576}},
            "--quota-backend-bytes=1048576",
        ),
        ({"storage": {"ephemeral": True}}, "--quota-backend-bytes=2147483648"),
    ],
)
def test_default_quota_is_derived_from_the_volume(spec, flag):
    c = statefulset(REF, parse_cluster_spec(spec), images=IMAGES, version="3.4.23", replicas=3)["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert flag in c["args"]


@pytest.mark.parametrize("name", ["restore-s3", "restore-pvc"])
def test_member_pods_never_refer_to_the_restore_source(name):
    """Issue 14 item 5: no member pod refers to the backup volume or the S3 credentials, ever (an
    RWO backup volume would pin members to one node; a deleted Secret would stop them): the
    restore is a one-shot Job (test_op_restore.py)."""
    spec = parse_cluster_spec(SPECS[name])
    pod = statefulset(REF, spec, images=IMAGES, version=spec.version, replicas=1)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["gate"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    text = str(pod)
    assert "AWS_" not in text and "'s3'" not in text and "old" not in [v.get("name") for v in pod["volumes"]]
