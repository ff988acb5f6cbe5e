"""Bootstrap by discovery: etcd 3.4's --discovery (v2 discovery protocol) and --discovery-srv.

`resolve(cfg)` runs before the member starts. When the data dir holds no member yet and one of
the discovery flags is set, it turns the flags into the initial cluster (cfg.initial_cluster and,
for --discovery, cfg.initial_cluster_token, which is the discovery URL in etcd), so that the
member then bootstraps exactly as if --initial-cluster had been given. A member that already has
a data dir restarts from it and ignores the flags, as etcd does.

etcd's v2 proxy (its --discovery-fallback=proxy, the default, when the discovery cluster is
full) is not implemented: etcdstore logs etcd's message and exits 1 (see docs/discovery.md).
"""

from __future__ import annotations

import os

from etcdstore.config import URL, ConfigError, ServerConfig, parse_initial_cluster
from etcdstore.discovery import srv, v2
from etcdstore.logs import get_logger

log = get_logger("etcdstore.discovery")

# The key under which a bootstrapped member records its ID (server/bootstrap.py's MEMBER_ID_KEY).
_MEMBER_ID_KEY = b"memberID"


class DiscoveryFailed(ConfigError):
    """Discovery failed; the reasons were logged in etcd's words. Exit status 1."""


def member_initialized(data_dir: str) -> bool:
    """etcd's isMemberInitialized: the data dir already holds a bootstrapped member."""
    db = os.path.join(data_dir, "member", "db")
    if not os.path.isdir(db) or not os.listdir(db):
        return False
    from etcdstore.storage import backend as bk

    backend = bk.Backend.open_read_only(db)
    try:
        return backend.get(bk.RAFT_STATE, _MEMBER_ID_KEY) is not None
    finally:
        backend.close()


def urls_map_string(cluster: dict[str, list[URL]]) -> str:
    """etcd's URLsMap.String(): `name=url` pairs, sorted."""
    return ",".join(sorted(f"{name}={u}" for name, urls in cluster.items() for u in urls))


def resolve(cfg: ServerConfig) -> None:
    """Fill in the initial cluster from --discovery or --discovery-srv (no-op without them)."""
    if not (cfg.discovery or cfg.discovery_srv) or member_initialized(cfg.data_dir):
        return
    if cfg.discovery:
        _from_discovery_url(cfg)
    else:
        _from_srv(cfg)


def _from_discovery_url(cfg: ServerConfig) -> None:
    from etcdstore.membership import member_id

    # etcd: the discovery URL is the cluster token, and the member's ID comes from its own peer URLs.
    cfg.initial_cluster_token = cfg.discovery
    cfg.initial_cluster = {cfg.name: list(cfg.initial_advertise_peer_urls)}
    if cfg.initial_cluster_state != "new":
        return  # etcd consults the discovery service only for a new cluster
    mid = member_id([str(u) for u in cfg.initial_advertise_peer_urls], cfg.initial_cluster_token)
    try:
        text = v2.join_cluster(cfg.discovery, cfg.discovery_proxy, mid, urls_map_string(cfg.initial_cluster))
    except v2.DiscoveryError as derr:
        _report(cfg, derr)
        raise DiscoveryFailed(str(derr)) from None
    try:
        cluster = parse_initial_cluster(text)
    except ValueError as e:
        raise DiscoveryFailed(str(e)) from None
    seen: set[str] = set()
    for urls in cluster.values():
        for u in urls:
            if str(u) in seen:
                raise DiscoveryFailed(f"discovery cluster {urls_map_string(cluster)} has duplicate url")
            seen.add(str(u))
    cfg.initial_cluster = cluster
    log.info("initial cluster from the discovery service", **{"initial-cluster": urls_map_string(cluster)})


def _report(cfg: ServerConfig, derr: v2.DiscoveryError) -> None:
    """etcd's etcdmain messages for a failed discovery (its zap wording)."""
    token = {"discovery-token": cfg.discovery}
    if v2.is_full(derr.err) and cfg.discovery_fallback == "proxy":
        log.warning(
            "discovery cluster is full, falling back to proxy", **{"fallback-proxy": "proxy"}, error=str(derr)
        )
        log.warning(
            "etcdstore has no v2 proxy (etcd's v2 proxy mode is deprecated, to be removed in v4, and "
            "serves the v2 API only); exiting instead. Use --discovery-fallback=exit to say so, or run "
            "'etcdstore grpc-proxy start' for a v3 proxy",
            **token,
        )
        return
    if derr.err is v2.ErrDuplicateID:
        log.warning(
            "member has been registered with discovery service", name=cfg.name, **token, error=str(derr.err)
        )
        log.warning("but could not find valid cluster configuration", **{"data-dir": cfg.data_dir})
        log.warning("check data dir if previous bootstrap succeeded")
        log.warning("or use a new discovery token if previous bootstrap failed")
    elif derr.err is v2.ErrDuplicateName:
        log.warning("member with duplicated name has already been registered", **token, error=str(derr.err))
        log.warning("cURL the discovery token URL for details")
        log.warning("do not reuse discovery token; generate a new one to bootstrap a cluster")
    else:
        log.warning("failed to bootstrap; discovery token was already used", **token, error=str(derr))
        log.warning("do not reuse discovery token; generate a new one to bootstrap a cluster")


def _from_srv(cfg: ServerConfig) -> None:
    apurls = [(u.scheme, u.host, u.port) for u in cfg.initial_advertise_peer_urls]
    try:
        entries = srv.dns_cluster_names(cfg.discovery_srv, cfg.discovery_srv_name, cfg.name, apurls)
    except srv.SRVError as e:
        log.warning("failed to resolve during SRV discovery", error=str(e))
        raise DiscoveryFailed(f"error setting up initial cluster: {e}") from None
    for entry in entries:
        log.info("got bootstrap from DNS for etcd-server", node=entry)
    cluster = parse_initial_cluster(",".join(entries))
    if cfg.name not in cluster:
        raise DiscoveryFailed(
            f'error setting up initial cluster: cannot find local etcd member "{cfg.name}" in SRV records'
        )
    # etcd checks that this member's SRV URLs and its advertised peer URLs are the same addresses
    # (resolving names), then the cluster knows the member by its SRV URLs: so do we.
    mine = sorted(cluster[cfg.name], key=str)
    resolved_mine = sorted(srv.resolve_tcp((u.host, u.port)) for u in mine)
    resolved_ap = sorted(srv.resolve_tcp((u.host, u.port)) for u in cfg.initial_advertise_peer_urls)
    if resolved_mine != resolved_ap or len(mine) != len(cfg.initial_advertise_peer_urls):
        missing = ",".join(
            f"{cfg.name}={u}" for u in mine if str(u) not in {str(a) for a in cfg.initial_advertise_peer_urls}
        )
        raise DiscoveryFailed(
            f"--initial-cluster has {missing} but missing from --initial-advertise-peer-urls="
            f"{','.join(sorted(map(str, cfg.initial_advertise_peer_urls)))} (resolved urls: "
            f'"{",".join(sorted(map(str, cfg.initial_advertise_peer_urls)))}" != "{",".join(map(str, mine))}")'
        )
    cfg.initial_advertise_peer_urls = mine
    cfg.initial_cluster = cluster
