"""DNS SRV bootstrap (etcd 3.4's --discovery-srv and --discovery-srv-name).

The initial cluster comes from the SRV records `_etcd-server-ssl<suffix>._tcp.<domain>` (https peers)
and `_etcd-server<suffix>._tcp.<domain>` (http peers), where `<suffix>` is `-<name>` when
--discovery-srv-name is given. Each record's target and port is a peer URL. A record whose target
resolves to the same address as one of this member's --initial-advertise-peer-urls is this member
(named --name); the others get the names 0, 1, 2, ... as etcd gives them. A record that is this
member but with the other scheme is an error (etcd's "scheme mismatch").
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from etcdstore.logs import get_logger

log = get_logger("etcdstore.discovery")


@dataclass(frozen=True, slots=True)
class SRV:
    target: str  # as DNS gives it, with the trailing dot
    port: int
    priority: int = 0
    weight: int = 0


LookupSRV = Callable[[str], list[SRV]]


class SRVError(Exception):
    pass


def service_name(service: str, name: str, scheme: str) -> str:
    """etcd's srv.GetSRVService: `etcd-server` -> `etcd-server-ssl` for https, then `-<name>`."""
    if scheme == "https":
        service += "-ssl"
    return f"{service}-{name}" if name else service


def lookup_srv(qname: str) -> list[SRV]:
    """The SRV records of `qname`, through the system's resolver configuration (/etc/resolv.conf),
    ordered as Go's net.LookupSRV orders them (priority, then weight, highest first)."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(qname, "SRV", search=False)
    except dns.resolver.NXDOMAIN:
        raise SRVError(f"lookup {qname} on {_nameserver()}: no such host") from None
    except dns.resolver.NoAnswer:
        raise SRVError(f"lookup {qname} on {_nameserver()}: no such host") from None
    except dns.resolver.NoNameservers:  # SERVFAIL, REFUSED: Go's resolver says "server misbehaving"
        raise SRVError(f"lookup {qname} on {_nameserver()}: server misbehaving") from None
    except dns.exception.DNSException as e:
        raise SRVError(f"lookup {qname} on {_nameserver()}: {e}") from None
    records = [SRV(r.target.to_text(), int(r.port), int(r.priority), int(r.weight)) for r in answer]
    records.sort(key=lambda r: (r.priority, -r.weight))
    return records


def _nameserver() -> str:
    try:
        import dns.resolver

        ns = dns.resolver.get_default_resolver().nameservers
        return f"{ns[0]}:53" if ns else "?"
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def resolve_tcp(hostport: tuple[str, int]) -> str:
    """Go's net.ResolveTCPAddr("tcp", host:port).String(): the first address, as ip:port."""
    host, port = hostport
    try:
        infos = socket.getaddrinfo(host.rstrip("."), port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SRVError(f"lookup {host.rstrip('.')}: {e.strerror}") from None
    # Go prefers IPv4 for the "tcp" network.
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    addr = infos[0][4][0]
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def get_cluster(
    scheme: str,
    service: str,
    name: str,
    domain: str,
    apurls: Iterable[tuple[str, str, int]],
    lookup: LookupSRV = lookup_srv,
) -> list[str]:
    """etcd's srv.GetCluster: `name=scheme://target:port` entries for one SRV service.

    `apurls` are this member's advertised peer URLs as (scheme, host, port).
    """
    mine: dict[str, tuple[str, str]] = {}
    for ap_scheme, host, port in apurls:
        mine[resolve_tcp((host, port))] = (ap_scheme, f"{ap_scheme}://{_join(host, port)}")
    parts: list[str] = []
    temp_name = 0
    err: Exception | None = None
    try:
        records = lookup(f"_{service}._tcp.{domain}")
    except SRVError as e:
        raise SRVError(f"error querying DNS SRV records for _{service} {e}") from None
    for rec in records:
        try:
            addr = resolve_tcp((rec.target, rec.port))
        except SRVError as e:
            err = e
            continue
        short = _join(rec.target.rstrip("."), rec.port)
        me = mine.get(addr)
        if me is not None:
            n = name
        else:
            n = str(temp_name)
            temp_name += 1
        if me is not None and me[0] != scheme:
            err = SRVError(
                f"bootstrap at {scheme}://{short} from DNS for {service} has scheme mismatch "
                f"with expected peer {me[1]}"
            )
        else:
            parts.append(f"{n}={scheme}://{short}")
    if not parts and err is not None:
        raise SRVError(f"error querying DNS SRV records for _{service} {err}")
    return parts


def dns_cluster_names(
    domain: str,
    service_suffix_name: str,
    name: str,
    apurls: list[tuple[str, str, int]],
    lookup: LookupSRV = lookup_srv,
) -> list[str]:
    """etcd's Config.GetDNSClusterNames: the https records, then the http records, combined.

    etcd 3.4.23 keeps the http records only when their lookup failed (a bug fixed in 3.5, which
    combines both and fails only when neither gives a member); this is 3.5's behaviour, so a
    cluster of http peers can bootstrap from `_etcd-server._tcp` records alone.
    """
    suffix = f"-{service_suffix_name}" if service_suffix_name else ""
    found: list[str] = []
    errors: list[str] = []
    for scheme, base in (("https", "etcd-server-ssl"), ("http", "etcd-server")):
        service = base + suffix
        try:
            got = get_cluster(scheme, service, name, domain, apurls, lookup)
        except SRVError as e:
            got, err = [], str(e)
            errors.append(err)
        else:
            err = ""
        log.info(
            f"get cluster for {base} SRV",
            **{
                "service-scheme": scheme,
                "service-name": service,
                "server-name": name,
                "discovery-srv": domain,
                "found-cluster": got,
                "error": err or None,
            },
        )
        found.extend(got)
    if not found:
        raise SRVError("; ".join(errors) or f"no SRV records for {domain}")
    if errors:
        log.warning("failed to resolve during SRV discovery", error="; ".join(errors))
    return found
