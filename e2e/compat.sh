#!/usr/bin/env bash
# kube-apiserver v1.34 stored in real etcd 3.4 vs in etcdstore: the same script against each, one table.
#
#   e2e/compat.sh                      # full: etcd x1, etcdstore x1, etcd x3, etcdstore x3 (~40 min)
#   e2e/compat.sh --short              # etcd x1 vs etcdstore x1, 100 objects, 60 s lease hold (~5 min)
#   e2e/compat.sh --backends etcd:3,etcdstore:3 --lease-hold 300 --details --json out.json
#
# Builds the control plane first if e2e/toolchain/build.sh has not yet (many minutes once).
# Exit status 0 only when every operation gave the same normalised result on every backend.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
[ -x "$py" ] || py=python3
command -v etcd >/dev/null 2>&1 || { echo "compat: real etcd 3.4 missing: apt-get install -y etcd-server etcd-client" >&2; exit 2; }
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m localkube.compat "$@"
