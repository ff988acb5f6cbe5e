"""Names, labels, DNS names and ports of everything the operator makes for one EtcdCluster.

Every other module asks here, so a member's identity (pod name, PVC name, peer URL) is
computed in exactly one way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CLIENT_PORT = 2379
PEER_PORT = 2380
METRICS_PORT = 2381
DATA_MOUNT = "/var/lib/etcd"
DATA_DIR = f"{DATA_MOUNT}/data"
TLS_MOUNT = "/etc/etcd/tls"
BACKUP_MOUNT = "/backup"
TERMINATION_LOG = "/dev/termination-log"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_BACKUP_KIND = "etcdstore.io/backup-kind"  # scheduled | on-demand
LABEL_BACKUP = "etcdstore.io/backup"  # the EtcdBackup a Job belongs to
LABEL_ROLE = "etcdstore.io/role"  # on member pods, set by the operator: voter | learner
LABEL_CLUSTER_UID = "etcdstore.io/cluster-uid"  # on member volumes: the EtcdCluster that made them
RUN_AS = 65532  # uid and gid of every pod the operator makes (the images' non-root user)
ANNOTATION_MEMBER_ID = "etcdstore.io/member-id"  # on member PVCs: which etcd member owns the data
ANNOTATION_TLS_HASH = "etcdstore.io/tls-hash"  # on the pod template: rolls members when certs change
ANNOTATION_MEMBERSHIP_TIME = "etcdstore.io/membership-updated"  # on the bootstrap ConfigMap
ANNOTATION_SCHEDULED_TIME = "etcdstore.io/scheduled-time"  # on scheduled backup Jobs
ANNOTATION_CA_ROTATION = "etcdstore.io/ca-rotation"
MANAGED_BY = "etcd-operator"

_ORDINAL = re.compile(r"^(?P<base>.+)-(?P<ordinal>0|[1-9][0-9]*)$")


def cluster_domain() -> str:
    return os.environ.get("ETCDOPERATOR_CLUSTER_DOMAIN", "cluster.local")


@dataclass(frozen=True, slots=True)
class ClusterRef:
    namespace: str
    name: str
    uid: str = ""

    # -- object names ----------------------------------------------------------------------
    @property
    def peer_service(self) -> str:
        """Headless Service: gives each member pod a stable DNS name; also the StatefulSet's name."""
        return self.name

    @property
    def client_service(self) -> str:
        return f"{self.name}-client"

    @property
    def statefulset(self) -> str:
        return self.name

    @property
    def bootstrap_configmap(self) -> str:
        return f"{self.name}-bootstrap"

    @property
    def pdb(self) -> str:
        return self.name

    @property
    def ca_secret(self) -> str:
        return f"{self.name}-ca"

    @property
    def server_secret(self) -> str:
        return f"{self.name}-server-tls"

    @property
    def peer_secret(self) -> str:
        return f"{self.name}-peer-tls"

    @property
    def client_secret(self) -> str:
        return f"{self.name}-client-tls"

    def pod(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"

    def pvc(self, ordinal: int) -> str:
        return f"data-{self.name}-{ordinal}"

    def ordinal_of(self, pod_or_member_name: str) -> int | None:
        m = _ORDINAL.match(pod_or_member_name)
        if m is None or m.group("base") != self.name:
            return None
        return int(m.group("ordinal"))

    def pvc_ordinal(self, pvc_name: str) -> int | None:
        prefix = "data-"
        return self.ordinal_of(pvc_name[len(prefix) :]) if pvc_name.startswith(prefix) else None

    # -- DNS -------------------------------------------------------------------------------
    def pod_host(self, ordinal: int) -> str:
        return f"{self.pod(ordinal)}.{self.peer_service}.{self.namespace}.svc.{cluster_domain()}"

    def pod_host_template(self) -> str:
        """The pod's own host name with the pod name left to the kubelet's $(POD_NAME) expansion."""
        return f"$(POD_NAME).{self.peer_service}.{self.namespace}.svc.{cluster_domain()}"

    def client_host(self) -> str:
        return f"{self.client_service}.{self.namespace}.svc.{cluster_domain()}"

    def server_dns_names(self) -> list[str]:
        """What a member's serving certificate must cover (peers, clients, the client Service)."""
        d = cluster_domain()
        ns = self.namespace
        return [
            f"*.{self.peer_service}.{ns}.svc.{d}",
            f"*.{self.peer_service}.{ns}.svc",
            f"{self.client_service}.{ns}.svc.{d}",
            f"{self.client_service}.{ns}.svc",
            f"{self.client_service}.{ns}",
            self.client_service,
            "localhost",
        ]

    # -- labels ----------------------------------------------------------------------------
    def cluster_labels(self) -> dict[str, str]:
        """On every object made for this cluster (members, backup jobs, secrets...)."""
        return {LABEL_NAME: "etcd", LABEL_INSTANCE: self.name, LABEL_MANAGED_BY: MANAGED_BY}

    def labels(self, component: str) -> dict[str, str]:
        return {**self.cluster_labels(), LABEL_COMPONENT: component}

    def member_selector(self) -> dict[str, str]:
        """Selects member pods only (the StatefulSet, Services and PodDisruptionBudget use it)."""
        return self.labels("member")

    def voter_selector(self) -> dict[str, str]:
        """Voting members only: what the client Service and the PodDisruptionBudget select."""
        return {**self.member_selector(), LABEL_ROLE: "voter"}

    def member_selector_string(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.member_selector().items())

    def cluster_selector_string(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.cluster_labels().items())


def quorum(voters: int) -> int:
    return voters // 2 + 1
