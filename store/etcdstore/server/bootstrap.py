"""Starting a member (etcd's bootstrap.go): from the flags and the data dir, everything the server
is built from: the backend and the Raft log on it, the state machine's stores, the member's
identity and member list, and the Raft node.

Three ways to start: a new cluster from --initial-cluster, a restart from the data dir, or joining
a running cluster (--initial-cluster-state existing). A restart ignores the --initial-cluster*
flags, as etcd does: the data dir decides.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from etcdstore.config import ConfigError, ServerConfig, check_bootstrap
from etcdstore.lease.lessor import min_lease_ttl
from etcdstore.logs import get_logger
from etcdstore.membership import MEMBER_ID_KEY, Membership, conf_context
from etcdstore.membership import member_id as derive_member_id
from etcdstore.raft import Config as RaftConfig
from etcdstore.raft import RawNode
from etcdstore.server.snapshots import resume_install
from etcdstore.server.stores import Stores
from etcdstore.storage import backend as bk
from etcdstore.storage.raftlog import RaftLogStorage

log = get_logger("etcdstore.server")
_U64 = struct.Struct(">Q")
__all__ = ["MEMBER_ID_KEY", "Bootstrapped", "bootstrap"]


@dataclass
class Bootstrapped:
    """What a member starts from (etcd's bootstrappedServer)."""

    member_dir: str
    backend: bk.Backend
    raft_storage: RaftLogStorage
    stores: Stores
    member_id: int
    cluster_id: int
    node: RawNode
    # Where the peers are until the member list is rebuilt by applying the log (joining only).
    peers: dict[int, list[str]]


@dataclass
class _Identity:
    member_id: int
    cluster_id: int
    membership: Membership
    node: RawNode
    peers: dict[int, list[str]]


def bootstrap(cfg: ServerConfig, peer_tls: Any = None) -> Bootstrapped:
    """Open the data dir and decide who this member is; `peer_tls` reaches the peers when joining."""
    member_dir = os.path.join(cfg.data_dir, "member")
    os.makedirs(member_dir, exist_ok=True)
    try:
        os.chmod(cfg.data_dir, 0o700)
    except OSError:
        pass
    backend = bk.Backend(os.path.join(member_dir, "db"))
    raft_storage = RaftLogStorage(backend)
    stores = Stores(backend, min_lease_ttl(cfg.election_ticks, cfg.tick_seconds))
    # Before anything reads the stores: a crash may have left a snapshot install half done.
    resume_install(backend, stores.reload)
    ident = _identity(cfg, backend, raft_storage, stores, peer_tls)
    stores.membership = ident.membership
    return Bootstrapped(
        member_dir=member_dir,
        backend=backend,
        raft_storage=raft_storage,
        stores=stores,
        member_id=ident.member_id,
        cluster_id=ident.cluster_id,
        node=ident.node,
        peers=ident.peers,
    )


def _identity(
    cfg: ServerConfig, backend: bk.Backend, raft_storage: RaftLogStorage, stores: Stores, peer_tls: Any
) -> _Identity:
    """Identity and membership from the data dir or the flags, and the Raft node."""
    raw_id = backend.get(bk.RAFT_STATE, MEMBER_ID_KEY)
    raft_cfg_kw: dict[str, Any] = {
        "election_tick": cfg.election_ticks,
        "heartbeat_tick": 1,
        "check_quorum": True,
        "pre_vote": cfg.pre_vote,
        "max_size_per_msg": 1024 * 1024,
        "max_inflight_msgs": 512,
        "max_uncommitted_entries_size": 1 << 30,
    }
    if raw_id is not None:
        # Restart: the data dir decides; --initial-cluster* flags are ignored, as in etcd.
        mid = _U64.unpack(raw_id)[0]
        membership = stores.membership  # as persisted (or as the resumed snapshot install left it)
        kv = stores.kv
        node = RawNode(RaftConfig(id=mid, applied=kv.consistent_index, **raft_cfg_kw), raft_storage)
        log.info(
            "restarting member",
            member_id=f"{mid:x}",
            cluster_id=f"{membership.cluster_id:x}",
            applied_index=kv.consistent_index,
            revision=kv.current_revision,
        )
        conf = raft_storage.initial_state()[1]
        unknown = sorted((set(conf.voters) | set(conf.learners)) - set(membership.members))
        if unknown:
            # They would get no peer connection: say so rather than wait for a leader in silence.
            log.error(
                "the member list lacks members of the Raft configuration",
                missing=[f"{m:x}" for m in unknown],
            )
        return _Identity(mid, membership.cluster_id, membership, node, {})
    check_bootstrap(cfg)
    initial = {name: [str(u) for u in urls] for name, urls in cfg.initial_cluster.items()}
    if cfg.initial_cluster_state == "existing":
        return _join_existing(cfg, backend, raft_storage, initial, raft_cfg_kw, peer_tls)
    configured = Membership.from_initial_cluster(initial, cfg.initial_cluster_token)
    mine = derive_member_id([str(u) for u in cfg.initial_advertise_peer_urls], cfg.initial_cluster_token)
    cluster_id = configured.cluster_id
    # Empty: the members are added by applying the bootstrap conf changes below.
    membership = Membership(cluster_id)
    names = {derive_member_id(urls, cfg.initial_cluster_token): name for name, urls in initial.items()}
    batch = backend.batch()
    batch.put(bk.RAFT_STATE, MEMBER_ID_KEY, _U64.pack(mine))
    membership.save_all(batch)
    backend.write(batch, sync=True)
    contexts = {}
    for mid in sorted(configured.members):
        m = configured.members[mid]
        m.name = names.get(mid, "")
        contexts[mid] = conf_context(0, m)
    node = RawNode.bootstrap(
        RaftConfig(id=mine, applied=0, **raft_cfg_kw),
        raft_storage,
        sorted(configured.members),
        contexts=contexts,
    )
    log.info(
        "starting a new cluster",
        member_id=f"{mine:x}",
        cluster_id=f"{cluster_id:x}",
        members=len(contexts),
    )
    return _Identity(mine, cluster_id, membership, node, {})


def _join_existing(
    cfg: ServerConfig,
    backend: bk.Backend,
    raft_storage: RaftLogStorage,
    initial: dict[str, list[str]],
    raft_cfg_kw: dict[str, Any],
    peer_tls: Any,
) -> _Identity:
    """A new member of a running cluster: learn the cluster from its peers, then start Raft
    with an empty log and let the leader send it everything (etcd's "existing" state)."""
    mine = sorted(str(u) for u in cfg.initial_advertise_peer_urls)
    peer_urls = [u for urls in initial.values() for u in urls if u not in mine]
    info = _fetch_cluster_sync(peer_urls, peer_tls)
    me = None
    for doc in info["members"]:
        if sorted(doc.get("peerURLs", [])) == mine:
            me = int(doc["id"])
    if me is None:
        raise ConfigError(
            f"member with peer URLs {','.join(mine)} is not in the cluster; add it first (member add)"
        )
    if me in set(info.get("removed", [])):
        raise ConfigError(f"member {me:x} was removed from the cluster; it cannot rejoin")
    cluster_id = int(info["clusterID"])
    # Membership itself is rebuilt by applying the log; the fetched members only tell the
    # transport where the peers are until then.
    membership = Membership(cluster_id)
    peers = {int(d["id"]): list(d.get("peerURLs", [])) for d in info["members"]}
    batch = backend.batch()
    batch.put(bk.RAFT_STATE, MEMBER_ID_KEY, _U64.pack(me))
    membership.save_all(batch)
    backend.write(batch, sync=True)
    log.info("joining an existing cluster", member_id=f"{me:x}", cluster_id=f"{cluster_id:x}")
    node = RawNode(RaftConfig(id=me, applied=0, **raft_cfg_kw), raft_storage)
    return _Identity(me, cluster_id, membership, node, peers)


def _fetch_cluster_sync(urls: list[str], peer_tls: Any) -> dict:
    """Ask the peers listed in --initial-cluster for the cluster (blocking; start-up only)."""
    import grpc

    from etcdstore.transport.peer import SERVICE

    last: Exception | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for url in urls:
            target = url.split("://", 1)[-1].rstrip("/")
            try:
                if url.startswith("https://"):
                    if peer_tls is None:
                        raise ConfigError(f"peer {url} uses https but no peer TLS is configured")
                    creds, options = peer_tls.channel_credentials(url)
                    ch = grpc.secure_channel(target, creds, options=options)
                else:
                    ch = grpc.insecure_channel(target)
            except OSError as e:
                last = e
                continue
            with ch:
                call = ch.unary_unary(
                    f"/{SERVICE}/Cluster", request_serializer=lambda b: b, response_deserializer=lambda b: b
                )
                try:
                    return json.loads(call(b"", timeout=2))
                except grpc.RpcError as e:
                    last = e
        time.sleep(0.5)
    raise ConfigError(f"cannot fetch cluster info from peers {', '.join(urls)}: {last}")
