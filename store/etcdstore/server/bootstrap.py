"""Starting a member: a new cluster from --initial-cluster, a restart from the data dir,
or joining a running cluster (--initial-cluster-state existing).

A restart ignores the --initial-cluster* flags, as etcd does: the data dir decides.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from etcdstore.config import ConfigError, check_bootstrap
from etcdstore.logs import get_logger
from etcdstore.membership import MEMBER_ID_KEY, Membership, conf_context
from etcdstore.membership import member_id as derive_member_id
from etcdstore.raft import Config as RaftConfig
from etcdstore.raft import RawNode
from etcdstore.storage import backend as bk

log = get_logger("etcdstore.server")
_U64 = struct.Struct(">Q")
__all__ = ["MEMBER_ID_KEY", "BootstrapMixin"]


class BootstrapMixin:
    """Part of EtcdServer (see server.py); methods use its state."""

    def _bootstrap(self) -> RawNode:
        """Identity and membership from the data dir or the flags; returns the Raft node."""
        cfg = self.cfg
        raw_id = self.backend.get(bk.RAFT_STATE, MEMBER_ID_KEY)
        raft_cfg_kw = {
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
            self.member_id = _U64.unpack(raw_id)[0]
            self.membership = Membership.load(self.backend)
            self.cluster_id = self.membership.cluster_id
            node = RawNode(
                RaftConfig(id=self.member_id, applied=self.applied_index, **raft_cfg_kw), self.raft_storage
            )
            log.info(
                "restarting member",
                member_id=f"{self.member_id:x}",
                cluster_id=f"{self.cluster_id:x}",
                applied_index=self.applied_index,
                revision=self.kv.current_revision,
            )
            conf = self.raft_storage.initial_state()[1]
            unknown = sorted((set(conf.voters) | set(conf.learners)) - set(self.membership.members))
            if unknown:
                # They would get no peer connection: say so rather than wait for a leader in silence.
                log.error(
                    "the member list lacks members of the Raft configuration",
                    missing=[f"{m:x}" for m in unknown],
                )
            return node
        check_bootstrap(cfg)
        initial = {name: [str(u) for u in urls] for name, urls in cfg.initial_cluster.items()}
        if cfg.initial_cluster_state == "existing":
            return self._join_existing(initial, raft_cfg_kw)
        membership = Membership.from_initial_cluster(initial, cfg.initial_cluster_token)
        mine = derive_member_id([str(u) for u in cfg.initial_advertise_peer_urls], cfg.initial_cluster_token)
        self.member_id = mine
        self.cluster_id = membership.cluster_id
        self.membership = Membership(membership.cluster_id)
        names = {derive_member_id(urls, cfg.initial_cluster_token): name for name, urls in initial.items()}
        batch = self.backend.batch()
        batch.put(bk.RAFT_STATE, MEMBER_ID_KEY, _U64.pack(mine))
        self.membership.save_all(batch)
        self.backend.write(batch, sync=True)
        contexts = {}
        for mid in sorted(membership.members):
            m = membership.members[mid]
            m.name = names.get(mid, "")
            contexts[mid] = conf_context(0, m)
        node = RawNode.bootstrap(
            RaftConfig(id=mine, applied=0, **raft_cfg_kw),
            self.raft_storage,
            sorted(membership.members),
            contexts=contexts,
        )
        log.info(
            "starting a new cluster",
            member_id=f"{mine:x}",
            cluster_id=f"{self.cluster_id:x}",
            members=len(contexts),
        )
        return node

    def _join_existing(self, initial: dict[str, list[str]], raft_cfg_kw: dict) -> RawNode:
        """A new member of a running cluster: learn the cluster from its peers, then start Raft
        with an empty log and let the leader send it everything (etcd's "existing" state)."""
        mine = sorted(str(u) for u in self.cfg.initial_advertise_peer_urls)
        peer_urls = [u for urls in initial.values() for u in urls if u not in mine]
        info = _fetch_cluster_sync(peer_urls, self.peer_tls)
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
        self.member_id = me
        self.cluster_id = int(info["clusterID"])
        # Membership itself is rebuilt by applying the log; the fetched members only tell the
        # transport where the peers are until then.
        self.membership = Membership(self.cluster_id)
        self.bootstrap_peers = {int(d["id"]): list(d.get("peerURLs", [])) for d in info["members"]}
        batch = self.backend.batch()
        batch.put(bk.RAFT_STATE, MEMBER_ID_KEY, _U64.pack(me))
        self.membership.save_all(batch)
        self.backend.write(batch, sync=True)
        log.info("joining an existing cluster", member_id=f"{me:x}", cluster_id=f"{self.cluster_id:x}")
        return RawNode(RaftConfig(id=me, applied=0, **raft_cfg_kw), self.raft_storage)


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
