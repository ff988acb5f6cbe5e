"""Names for the pods' processes: cluster DNS (what CoreDNS's kubernetes plugin answers) and the kubelet's
per-pod /etc/hosts, /etc/resolv.conf and /etc/hostname.

- A small authoritative DNS server (UDP, on one loopback address of the agent, port 53) answers from the
  Services and pods of the API:
  `<svc>.<ns>.svc.<domain>` A -> the ClusterIP, or for a headless Service the IPs of its ready pods (all pods
  with an IP when publishNotReadyAddresses); `<hostname>.<svc>.<ns>.svc.<domain>` A -> the pod, for pods whose
  spec.subdomain names a headless Service; `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV (per pod for headless
  Services). Other names get NXDOMAIN: there is no forwarding, no query leaves the machine. No TCP, no PTR.
- Each pod's /etc/resolv.conf names that server with the kubelet's search path (`<ns>.svc.<domain>
  svc.<domain> <domain>`, ndots:5), so short names (`<svc>`, `<pod>.<svc>`, `<svc>.<ns>`) resolve as in a
  cluster, through glibc, Go's resolver (etcd) and c-ares (gRPC) alike.
- Each pod's /etc/hosts has the kubelet's lines only: localhost and the pod's own IP with
  `<hostname>.<subdomain>.<ns>.svc.<domain>` and `<hostname>`.

The files are bind-mounted into the pod's mount namespace and rewritten in place (same inode: a bind mount
pins the inode).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger("localkube.dns")
Obj = dict[str, Any]
TTL = 5


def pod_hostname(pod: Obj) -> str:
    spec = pod.get("spec", {})
    return (spec.get("hostname") or pod["metadata"]["name"])[:63].rstrip("-.")


def pod_ip(pod: Obj) -> str | None:
    return (pod.get("status") or {}).get("podIP") or None


def pod_ready(pod: Obj) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def selects(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def is_headless(svc: Obj) -> bool:
    return (svc.get("spec") or {}).get("clusterIP") == "None"


def service_pods(svc: Obj, pods: list[Obj], *, ready_only: bool) -> list[Obj]:
    """The pods a Service's selector picks in its namespace, with an IP, not terminating (and ready)."""
    ns = svc["metadata"]["namespace"]
    sel = (svc.get("spec") or {}).get("selector")
    out = []
    for p in pods:
        m = p["metadata"]
        if m.get("namespace") != ns or m.get("deletionTimestamp") or not pod_ip(p):
            continue
        if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if not selects(sel, m.get("labels")):
            continue
        if ready_only and not pod_ready(p):
            continue
        out.append(p)
    return out


class Records:
    """A and SRV records of the cluster domain, rebuilt from the API's Services and pods."""

    def __init__(self) -> None:
        self.a: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}

    @classmethod
    def build(cls, services: list[Obj], pods: list[Obj], domain: str = "cluster.local") -> Records:
        a: dict[str, list[str]] = defaultdict(list)
        srv: dict[str, list[tuple[int, int, int, str]]] = defaultdict(list)
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            spec = svc.get("spec") or {}
            fqdn = f"{name}.{ns}.svc.{domain}"
            if spec.get("type") == "ExternalName":
                continue
            ports = spec.get("ports") or []
            if not is_headless(svc):
                for cip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
                    if cip and cip != "None" and ":" not in cip and cip not in a[fqdn]:
                        a[fqdn].append(cip)
                for p in ports:
                    if p.get("name"):
                        srv[f"_{p['name']}._{(p.get('protocol') or 'TCP').lower()}.{fqdn}"].append(
                            (0, 100, int(p["port"]), fqdn)
                        )
                continue
            members = service_pods(svc, pods, ready_only=not spec.get("publishNotReadyAddresses"))
            for p in sorted(members, key=lambda p: p["metadata"]["name"]):
                ip = pod_ip(p)
                assert ip is not None
                if ip not in a[fqdn]:
                    a[fqdn].append(ip)
                target = fqdn
                if (p.get("spec") or {}).get("subdomain") == name:
                    target = f"{pod_hostname(p)}.{fqdn}"
                    a[target] = [ip]
                for port in ports:
                    if port.get("name"):
                        srv[f"_{port['name']}._{(port.get('protocol') or 'TCP').lower()}.{fqdn}"].append(
                            (
                                0,
                                100,
                                int(
                                    port.get("targetPort")
                                    if str(port.get("targetPort", "")).isdigit()
                                    else port["port"]
                                ),
                                target,
                            )
                        )
        r = cls()
        r.a = {k.lower(): v for k, v in a.items() if v}
        r.srv = {k.lower(): v for k, v in srv.items() if v}
        return r

    def known(self, name: str) -> bool:
        return name in self.a or name in self.srv


# -- the wire format (RFC 1035) -------------------------------------------------------------------------------------
T_A, T_AAAA, T_SRV, T_ANY = 1, 28, 33, 255


def _parse_name(data: bytes, pos: int) -> tuple[str, int]:
    labels = []
    while True:
        n = data[pos]
        if n == 0:
            return ".".join(labels), pos + 1
        if n & 0xC0:
            raise ValueError("compressed question name")
        labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def answer(query: bytes, records: Records) -> bytes | None:
    """The response to one DNS query message (None: not a query worth answering)."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    try:
        qname, pos = _parse_name(query, 12)
        qtype, _qclass = struct.unpack("!HH", query[pos : pos + 4])
    except (ValueError, IndexError, struct.error):
        return struct.pack("!HHHHHH", qid, 0x8001, 0, 0, 0, 0)  # FORMERR
    question = query[12 : pos + 4]
    name = qname.lower().rstrip(".")
    answers: list[bytes] = []
    if qtype in (T_A, T_ANY):
        for ip in records.a.get(name, []):
            answers.append(
                b"\xc0\x0c" + struct.pack("!HHIH", T_A, 1, TTL, 4) + bytes(int(x) for x in ip.split("."))
            )
    if qtype in (T_SRV, T_ANY):
        for prio, weight, port, target in records.srv.get(name, []):
            rdata = struct.pack("!HHH", prio, weight, port) + _encode_name(target)
            answers.append(b"\xc0\x0c" + struct.pack("!HHIH", T_SRV, 1, TTL, len(rdata)) + rdata)
    rcode = 0 if records.known(name) else 3  # NXDOMAIN
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, len(answers), 0, 0)  # QR, AA
    return header + question + b"".join(answers)


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.records = Records()
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a DatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        out = answer(data, self.records)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    @classmethod
    async def serve(cls, host: str, port: int = 53) -> DnsServer:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, local_addr=(host, port))
        return proto

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# -- the per-pod files ----------------------------------------------------------------------------------------------
def hosts_file(pod: Obj, ip: str | None, domain: str = "cluster.local") -> str:
    """The kubelet's managed /etc/hosts."""
    ns = pod["metadata"]["namespace"]
    host = pod_hostname(pod)
    lines = [
        "# Kubernetes-managed hosts file (localkube node agent).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    sub = (pod.get("spec") or {}).get("subdomain")
    if ip:
        names = [f"{host}.{sub}.{ns}.svc.{domain}", host] if sub else [host]
        lines.append(f"{ip}\t{' '.join(names)}")
    for entry in (pod.get("spec") or {}).get("hostAliases") or []:
        lines.append(f"{entry['ip']}\t{' '.join(entry.get('hostnames') or [])}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str, nameserver: str, domain: str = "cluster.local") -> str:
    return (
        f"search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {nameserver}\noptions ndots:5\n"
    )


def write_in_place(path: Path, content: str) -> bool:
    """Replace a file's content keeping its inode (bind mounts of it see the change). True if changed."""
    data = content.encode()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    os.chmod(path, 0o644)
    return True
