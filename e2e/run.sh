#!/usr/bin/env bash
# End-to-end suite on a real Kubernetes (kind). Needs: docker, kind, kubectl, helm, and the
# project's virtualenv (.venv). Builds both images, loads them into kind, installs the chart,
# runs e2e/ with pytest, and deletes the kind cluster (KEEP=1 keeps it).
#
#   e2e/run.sh                      # everything
#   E2E_MEMBER_ENGINE=etcd e2e/run.sh   # members run etcd (quay.io/coreos/etcd) instead of etcdstore
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
done
CLUSTER=${E2E_CLUSTER:-etcd-operator-e2e}
TAG=${E2E_TAG:-e2e}
export E2E_KUBECONFIG=${E2E_KUBECONFIG:-$PWD/e2e/.kubeconfig}

if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config e2e/kind-config.yaml --kubeconfig "$E2E_KUBECONFIG" --wait 120s
fi
cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

docker build -f Dockerfile.operator -t "etcd-operator:$TAG" .
kind load docker-image --name "$CLUSTER" "etcd-operator:$TAG"
if [ -f Dockerfile ]; then
    docker build -f Dockerfile -t "etcdstore:$TAG" .
    kind load docker-image --name "$CLUSTER" "etcdstore:$TAG"
fi

helm upgrade --install etcd-operator charts/etcd-operator --kubeconfig "$E2E_KUBECONFIG" \
    --namespace etcd-operator --create-namespace --wait \
    --set image.tag="$TAG" --set storeImage.tag="$TAG" --set image.pullPolicy=Never

E2E=1 .venv/bin/python -m pytest e2e -v -p no:cacheprovider "$@"
