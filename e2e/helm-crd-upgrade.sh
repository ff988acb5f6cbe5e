#!/usr/bin/env bash
# `helm upgrade` with a CRD change, as e2e/run.sh runs it (Helm never upgrades a chart's crds/ folder; this
# chart renders its CRDs as templates with helm.sh/resource-policy: keep, see charts/etcd-operator/values.yaml).
#
#   e2e/helm-crd-upgrade.sh upgrade RELEASE_NS [helm --set args]   # an EtcdCluster, then upgrade to a chart copy
#                                                                  # whose CRD changed, check, and upgrade back
#   e2e/helm-crd-upgrade.sh kept                                   # after `helm uninstall`: CRDs and cluster kept
#   e2e/helm-crd-upgrade.sh cleanup                                # delete the test's cluster (operator running)
#
# Needs E2E_KUBECONFIG; kubectl and helm on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ns=e2e-helm-crd-upgrade
crd=etcdclusters.etcdstore.io
label=etcdstore.io/e2e-chart-upgrade
k() { kubectl --kubeconfig "$E2E_KUBECONFIG" "$@"; }
h() { helm --kubeconfig "$E2E_KUBECONFIG" "$@"; }
fail() { echo "e2e: helm CRD upgrade: $*" >&2; exit 1; }
columns() { k get crd "$crd" -o jsonpath='{.spec.versions[0].additionalPrinterColumns[*].name}'; }
uid() { k -n "$ns" get etcdcluster upg -o jsonpath='{.metadata.uid}'; }
# Waits on the EtcdCluster's Available condition and its one ready member.
available() {
    k -n "$ns" wait --for=condition=Available etcdcluster/upg --timeout=600s >/dev/null
    k -n "$ns" wait --for=jsonpath='{.status.readyReplicas}'=1 etcdcluster/upg --timeout=600s >/dev/null
}

case "${1:-}" in
upgrade)
    release_ns=$2; shift 2
    k apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels: {pod-security.kubernetes.io/enforce: restricted, pod-security.kubernetes.io/enforce-version: latest}
YAML
    k -n "$ns" apply -f - <<YAML
apiVersion: etcdstore.io/v1alpha1
kind: EtcdCluster
metadata: {name: upg}
spec: {replicas: 1, engine: ${E2E_MEMBER_ENGINE:-etcdstore}, storage: {size: 256Mi}}
YAML
    available
    before=$(uid)
    [ "$(k get crd "$crd" -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')" = keep ] ||
        fail "the installed CRD is not annotated helm.sh/resource-policy: keep"
    [ "$(k get crd "$crd" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')" = etcd-operator ] ||
        fail "the installed CRD does not belong to the release"

    # A copy of the chart whose EtcdCluster CRD has one more printer column and one more label.
    copy=$(mktemp -d /tmp/e2e-chart.XXXXXX)
    trap 'rm -rf "$copy"' EXIT
    cp -r charts/etcd-operator "$copy/"
    .venv/bin/python - "$copy/etcd-operator" "$label" <<'PY'
import sys
from pathlib import Path
import yaml
chart, label = Path(sys.argv[1]), sys.argv[2]
path = chart / "files" / "crds" / "etcdclusters.etcdstore.io.yaml"
doc = yaml.safe_load(path.read_text())
doc["metadata"]["labels"][label] = "v2"
for v in doc["spec"]["versions"]:
    v["additionalPrinterColumns"].append({"name": "Upgraded", "type": "string", "jsonPath": ".spec.engine"})
path.write_text(yaml.safe_dump(doc, sort_keys=False))
meta = yaml.safe_load((chart / "Chart.yaml").read_text())
meta["version"] += "-crdchange"
(chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
PY
    echo "e2e: helm upgrade to a chart whose CRD changed"
    h upgrade etcd-operator "$copy/etcd-operator" --namespace "$release_ns" --wait --timeout 5m "$@"
    [ "$(k get crd "$crd" -o jsonpath="{.metadata.labels.${label//./\\.}}")" = v2 ] || fail "the live CRD has no new label"
    case " $(columns) " in *" Upgraded "*) ;; *) fail "the live CRD has no new printer column: $(columns)" ;; esac
    # The API server prints a changed CRD's columns once its own watch of CRDs has seen the change (under
    # load that can lag the update): wait for it, up to a minute.
    deadline=$((SECONDS + 60))
    until k -n "$ns" get etcdcluster upg | head -1 | grep -qw UPGRADED; do
        [ "$SECONDS" -lt "$deadline" ] || fail "kubectl get does not print the new column (waited 60 s)"
        sleep 0.5
    done
    [ "$(uid)" = "$before" ] || fail "the EtcdCluster did not survive the upgrade"
    available

    echo "e2e: helm upgrade back to the chart as it is"
    h upgrade etcd-operator charts/etcd-operator --namespace "$release_ns" --wait --timeout 5m "$@"
    case " $(columns) " in *" Upgraded "*) fail "the printer column is still there after the upgrade back" ;; esac
    [ -z "$(k get crd "$crd" -o jsonpath="{.metadata.labels.${label//./\\.}}")" ] || fail "the label is still there"
    [ "$(uid)" = "$before" ] || fail "the EtcdCluster did not survive the upgrade back"
    available
    echo "e2e: helm upgrade with a CRD change: the live CRD changed both ways, EtcdCluster $ns/upg kept ($before)"
    ;;
kept)
    for c in etcdclusters.etcdstore.io etcdbackups.etcdstore.io; do
        k get crd "$c" -o name >/dev/null || fail "helm uninstall deleted CRD $c (helm.sh/resource-policy: keep)"
    done
    k -n "$ns" get etcdcluster upg -o name >/dev/null || fail "EtcdCluster $ns/upg did not survive helm uninstall"
    echo "e2e: helm uninstall kept the CRDs and EtcdCluster $ns/upg"
    ;;
cleanup)
    # The operator installed by kubectl apply -k deploy/ serves the cluster made under the Helm release.
    available
    k -n "$ns" delete etcdcluster upg --wait=true --timeout=300s
    k delete namespace "$ns" --wait=false
    ;;
*) echo "usage: $0 upgrade RELEASE_NS [helm args] | kept | cleanup" >&2; exit 2 ;;
esac
