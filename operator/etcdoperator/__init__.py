"""etcdoperator: a kopf operator that runs etcdstore (or etcd) clusters on Kubernetes."""

__version__ = "0.1.0"
