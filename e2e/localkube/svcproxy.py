"""A userspace service proxy (kube-proxy's old `userspace` mode, TCP only) for ClusterIPs on loopback.

The control plane allocates ClusterIPs from a 127.x range (localkube: 127.96.0.0/16), so the proxy can listen
on ClusterIP:port for every TCP port of every Service and forward each connection to one ready endpoint,
round-robin. Endpoints come from the pods the Service selects (ready, not terminating, with an IP), with
targetPort resolved by number or by the container port's name: EndpointSlices cannot carry loopback pod IPs
(the API refuses 127.0.0.0/8 endpoint addresses), so the proxy computes what the EndpointSlice controller
would. Selector-less Services use their EndpointSlices; `default/kubernetes` (whose endpoints the localkube
apiserver does not publish, for the same reason) forwards to the API server of the kubeconfig.
Not done: UDP/SCTP, session affinity, NodePorts, externalIPs, traffic policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import dns

if TYPE_CHECKING:
    from .nodeagent import ClusterView

log = logging.getLogger("localkube.svcproxy")
Obj = dict[str, Any]
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _target_port(pod: Obj, target: int | str) -> int | None:
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for c in pod["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


class ServiceProxy:
    def __init__(self, cluster: ClusterView, api_server: str) -> None:
        self.cluster = cluster
        u = urlparse(api_server)
        self.api_addr = (u.hostname or "127.0.0.1", u.port or 443)
        self.servers: dict[tuple[str, int], asyncio.base_events.Server] = {}
        self.routes: dict[tuple[str, int], tuple[str, str, Obj]] = {}  # (ip, port) -> (ns, svc name, port)
        self._rr = itertools.count()
        self.skipped: set[str] = set()

    def endpoints(self, ns: str, name: str, port: Obj) -> list[tuple[str, int]]:
        svc = self.cluster.service(ns, name)
        if svc is None:
            return []
        spec = svc.get("spec") or {}
        if spec.get("selector"):
            out = []
            for p in dns.service_pods(svc, self.cluster.pods(), ready_only=True):
                tp = _target_port(p, port.get("targetPort", port["port"]))
                if tp is not None:
                    out.append((dns.pod_ip(p), tp))
            return out  # type: ignore[return-value]  # ready pods have an IP
        if ns == "default" and name == "kubernetes":
            return [self.api_addr]
        out = []
        for sl in self.cluster.slices(ns, name):
            ports = [p for p in sl.get("ports") or [] if p.get("name", "") == port.get("name", "")]
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for addr in ep.get("addresses") or []:
                    out += [(addr, int(p["port"])) for p in ports]
        return out

    async def sync(self) -> None:
        want: dict[tuple[str, int], tuple[str, str, Obj]] = {}
        for svc in self.cluster.services():
            spec = svc.get("spec") or {}
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
                if not ip or ip == "None":
                    continue
                try:
                    if ipaddress.ip_address(ip) not in LOOPBACK:
                        if ip not in self.skipped:
                            self.skipped.add(ip)
                            log.warning("ClusterIP %s of %s/%s is not on loopback: not proxied", ip, ns, name)
                        continue
                except ValueError:
                    continue
                for p in spec.get("ports") or []:
                    if (p.get("protocol") or "TCP") == "TCP":
                        want[(ip, int(p["port"]))] = (ns, name, p)
        self.routes = want
        for key in list(self.servers):
            if key not in want:
                srv = self.servers.pop(key)
                srv.close()
        for key in want:
            if key not in self.servers:
                try:
                    self.servers[key] = await asyncio.start_server(
                        lambda r, w, k=key: self._handle(k, r, w),
                        host=key[0],
                        port=key[1],
                        reuse_address=True,
                    )
                except OSError as e:
                    log.warning("cannot listen on %s:%d: %s", key[0], key[1], e)

    async def _handle(
        self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        route = self.routes.get(key)
        eps = self.endpoints(*route) if route else []
        if not eps:
            writer.close()
            return
        start = next(self._rr)
        upstream = None
        for i in range(len(eps)):
            host, port = eps[(start + i) % len(eps)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 3.0)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.close()
            return
        ur, uw = upstream
        await asyncio.gather(_pipe(reader, uw), _pipe(ur, writer), return_exceptions=True)
        for w in (writer, uw):
            with contextlib.suppress(Exception):
                w.close()

    async def close(self) -> None:
        for srv in self.servers.values():
            srv.close()
        for srv in self.servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        self.servers.clear()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if w.can_write_eof():
                w.write_eof()
            else:
                w.close()
