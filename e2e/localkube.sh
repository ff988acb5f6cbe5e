#!/usr/bin/env bash
# A local Kubernetes control plane (real kube-apiserver, kube-controller-manager, kube-scheduler,
# built by e2e/toolchain/build.sh) stored in etcdstore (default) or real etcd 3.4.
#
#   e2e/localkube.sh up [--store etcd] [--members 3] [--workdir DIR]   # prints export KUBECONFIG=...
#   eval "$(e2e/localkube.sh env)"; kubectl get ns
#   e2e/localkube.sh node-kubeconfig node-1                            # system:node:node-1
#   e2e/localkube.sh down
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
[ -x "$py" ] || py=python3
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m localkube "$@"
