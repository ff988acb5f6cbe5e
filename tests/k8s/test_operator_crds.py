"""The operator's CRDs on the real kube-apiserver: accepted as generated (structural schema, defaults and CEL
rules checked by the API server itself), and the CEL rules judge objects as the operator expects."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cluster(name: str, **spec) -> str:
    return json.dumps(
        {
            "apiVersion": "etcdstore.io/v1alpha1",
            "kind": "EtcdCluster",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


def test_crds_accepted_and_rules_enforced(control_plane) -> None:
    cp = control_plane
    for f in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        r = cp.kubectl("apply", "--server-side", "-f", str(f), check=False)
        assert r.returncode == 0, f"{f.name} refused by kube-apiserver: {r.stderr}"
    cp.kubectl("wait", "--for=condition=Established", "crd/etcdclusters.etcdstore.io", "--timeout=60s")

    # A minimal cluster (every nested default applied by the server) is accepted.
    cp.kubectl("apply", "-f", "-", input=_cluster("crd-min", replicas=1))
    got = json.loads(cp.kubectl("get", "etcdcluster", "crd-min", "-n", "default", "-o", "json").stdout)
    assert got["spec"]["engine"] == "etcdstore"
    # Cross-field rule: a secret-mode TLS side needs its secretName.
    r = cp.kubectl(
        "apply", "-f", "-", input=_cluster("crd-bad", tls={"client": {"mode": "secret"}}), check=False
    )
    assert r.returncode != 0 and "secretName is required when mode is secret" in r.stderr, r.stderr
    # Transition rules: engine and TLS modes cannot change in place.
    r = cp.kubectl(
        "patch",
        "etcdcluster",
        "crd-min",
        "-n",
        "default",
        "--type=merge",
        "-p",
        '{"spec":{"tls":{"client":{"mode":"auto"}}}}',
        check=False,
    )
    assert r.returncode != 0 and "immutable" in r.stderr, r.stderr
    r = cp.kubectl(
        "patch",
        "etcdcluster",
        "crd-min",
        "-n",
        "default",
        "--type=merge",
        "-p",
        '{"spec":{"engine":"etcd"}}',
        check=False,
    )
    assert r.returncode != 0 and "immutable" in r.stderr, r.stderr
    cp.kubectl("delete", "etcdcluster", "crd-min", "-n", "default")
