#!/usr/bin/env bash
# The end-to-end suite on a real Kubernetes control plane. One suite, two providers:
#
#   e2e/run.sh --provider local [pytest args]   # this machine: the control plane built from source
#                                               # (e2e/toolchain) and the node agent (e2e/localkube)
#   e2e/run.sh --provider kind  [pytest args]   # a machine with Docker and kind: images built and loaded
#   e2e/run.sh --provider local -m smoke        # the short form (tests/run runs it)
#
# Steps: start (or reach) the cluster; install the operator with the chart (helm lint, template, install);
# helm upgrade to a copy of the chart whose CRD changed and back (e2e/helm-crd-upgrade.sh: the live CRD
# changes, an EtcdCluster survives); run the suite; uninstall (the CRDs and that EtcdCluster are kept);
# install again with `kubectl apply -k deploy/` and run the smoke test on it; delete it. A provider that
# cannot be reached fails the run.
# KEEP=1 keeps the cluster; E2E_MEMBER_ENGINE=etcd runs the EtcdClusters on etcd instead of etcdstore.
set -euo pipefail
cd "$(dirname "$0")/.."
provider=""
if [ "${1:-}" = "--provider" ]; then provider=${2:-}; shift 2; fi
case "$provider" in
    local|kind) ;;
    *) echo "usage: e2e/run.sh --provider local|kind [pytest args]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || { echo "e2e: the project's virtualenv is missing: run tests/run first" >&2; exit 2; }
export PATH="$PWD/.venv/bin:$PATH"
TAG=${E2E_TAG:-$(.venv/bin/python -c 'import yaml; print(yaml.safe_load(open("charts/etcd-operator/Chart.yaml"))["appVersion"])')}
started=$(date +%s)

if [ "$provider" = local ]; then
    bin=$(e2e/toolchain/build.sh)
    export PATH="$bin:$PATH"
    state=${E2E_STATE:-$(mktemp -d /tmp/e2e-local.XXXXXX)}
    cleanup() { [ "${KEEP:-0}" = 1 ] || e2e/localkube.sh down --workdir "$state"; }
    trap cleanup EXIT
    eval "$(e2e/localkube.sh up --workdir "$state" --nodes "${E2E_NODES:-3}" --service-cidr "${E2E_SERVICE_CIDR:-127.97.0.0/16}")"
    export E2E_KUBECONFIG="$KUBECONFIG"
    pull=IfNotPresent
else
    for tool in docker kind kubectl helm; do
        command -v "$tool" >/dev/null || { echo "e2e: provider kind needs $tool" >&2; exit 2; }
    done
    CLUSTER=${E2E_CLUSTER:-etcd-operator-e2e}
    export E2E_KUBECONFIG=${E2E_KUBECONFIG:-$PWD/e2e/.kubeconfig}
    if ! kind get clusters | grep -qx "$CLUSTER"; then
        kind create cluster --name "$CLUSTER" --config e2e/kind-config.yaml --kubeconfig "$E2E_KUBECONFIG" --wait 120s
    fi
    cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
    trap cleanup EXIT
    docker build -f Dockerfile.operator -t "etcd-operator:$TAG" .
    docker build -f Dockerfile -t "etcdstore:$TAG" .
    kind load docker-image --name "$CLUSTER" "etcd-operator:$TAG" "etcdstore:$TAG"
    pull=Never
fi
export E2E=1 E2E_PROVIDER="$provider"
k() { kubectl --kubeconfig "$E2E_KUBECONFIG" "$@"; }
h() { helm --kubeconfig "$E2E_KUBECONFIG" "$@"; }

echo "e2e: installing the operator with Helm"
h lint charts/etcd-operator
h template etcd-operator charts/etcd-operator --namespace etcd-operator >/dev/null
sets=(--set image.tag="$TAG" --set storeImage.tag="$TAG" --set image.pullPolicy="$pull")
h install etcd-operator charts/etcd-operator --namespace etcd-operator --create-namespace --wait --timeout 5m "${sets[@]}"
e2e/helm-crd-upgrade.sh upgrade etcd-operator "${sets[@]}"
.venv/bin/python -m pytest e2e -v -p no:cacheprovider -o addopts="" --timeout="${E2E_TEST_TIMEOUT:-3600}" "$@"
h uninstall etcd-operator --namespace etcd-operator --wait
k wait --for=delete namespace/etcd-operator --timeout=0s 2>/dev/null || true
e2e/helm-crd-upgrade.sh kept

echo "e2e: installing the operator with kubectl apply -k deploy/"
k apply -k deploy/
k -n etcd-operator rollout status deployment/etcd-operator --timeout=300s
.venv/bin/python -m pytest e2e -v -p no:cacheprovider -o addopts="" --timeout="${E2E_TEST_TIMEOUT:-3600}" -m smoke
e2e/helm-crd-upgrade.sh cleanup
k delete -k deploy/ --wait=true
echo "e2e: provider $provider passed in $(( $(date +%s) - started )) s"
