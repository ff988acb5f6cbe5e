"""etcdstore: an etcd v3 compatible clustered key-value store."""

__version__ = "0.1.0"
# The etcd API version we speak; clients (and Kubernetes) read it from Status.
ETCD_VERSION = "3.4.23"
