"""localkube: a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
kube-scheduler built from source by e2e/toolchain/build.sh) on loopback, stored in etcdstore or
real etcd 3.4. Import with e2e/ on sys.path. See README.md."""

from .controlplane import ControlPlane, ControlPlaneError, attach, down

__all__ = ["ControlPlane", "ControlPlaneError", "attach", "down"]
