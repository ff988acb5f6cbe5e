"""Names to loopback addresses: the harness's stand-in for cluster DNS and kube-proxy.

Every (host, port) a pod could be reached at gets a free port on 127.0.0.1: the StatefulSet's pod
names (`<pod>.<service>.<ns>.svc.cluster.local:<containerPort>`, allocated for ordinals 0-9 as
soon as the StatefulSet exists, since the operator names a member before its pod exists), and
each Service name, pointed at one ready pod behind it. The table is written to a JSON file that
the operator and every process the kubelet starts read through ETCDOPERATOR_ADDRESS_MAP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# tests/conftest.py puts tests/ on sys.path; kubeharness is only ever imported under pytest.
from testlib import free_port

CLUSTER_DOMAIN = "cluster.local"
MAX_ORDINALS = 10


def pod_fqdn(pod: str, service: str, namespace: str) -> str:
    return f"{pod}.{service}.{namespace}.svc.{CLUSTER_DOMAIN}"


def service_fqdn(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"


class AddressBook:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: dict[str, str] = {}
        self._written: dict[str, str] | None = None
        self.write()

    def allocate(self, hostport: str) -> str:
        if hostport not in self.table:
            self.table[hostport] = f"127.0.0.1:{free_port()}"
        return self.table[hostport]

    def lookup(self, hostport: str) -> str | None:
        return self.table.get(hostport)

    def port_of(self, hostport: str) -> int | None:
        target = self.table.get(hostport)
        return int(target.rsplit(":", 1)[1]) if target else None

    def ensure_statefulset(self, namespace: str, name: str, service: str, ports: list[int]) -> None:
        for k in range(MAX_ORDINALS):
            for port in ports:
                self.allocate(f"{pod_fqdn(f'{name}-{k}', service, namespace)}:{port}")

    def pod_hostport(self, namespace: str, pod: str, subdomain: str | None, port: int) -> str:
        """The table key of a pod's port (pods outside a StatefulSet get a private name)."""
        host = pod_fqdn(pod, subdomain, namespace) if subdomain else f"{pod}.{namespace}.pod.{CLUSTER_DOMAIN}"
        return f"{host}:{port}"

    def point_service(self, namespace: str, service: str, port: int, target: str | None) -> None:
        key = f"{service_fqdn(service, namespace)}:{port}"
        if target is None:
            self.table.pop(key, None)
        else:
            self.table[key] = target

    def write(self) -> None:
        if self._written == self.table:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.table, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        self._written = dict(self.table)
