"""EtcdServer: one member — Raft driven by the asyncio loop, applying into MVCC on RocksDB.

The drive loop (`_run`) is the only code that touches the Raft node. Everything else talks
to it through queues and wakes it:

    client request --propose()--> proposal queue --+
    peer message  ---step()-----> inbound queue ---+--> drive loop: step/propose/tick
    ticker        ---tick()-----> tick counter ----+        |
                                                            v
        Ready: persist entries + hard state (synced, off-loop) -> send messages ->
               apply committed entries (one backend batch + consistent index) ->
               resolve waiters, notify watchers -> serve read states -> advance

Proposals queue up while the previous Ready is being fsynced, so under load each Ready
carries many entries: one fsync and one apply batch amortised over all of them.
The leader sends its messages before persisting (Raft allows it: the leader counts its own
entries toward commit only after they are durable).

Linearizable reads use ReadIndex: concurrent reads share one read_index round; each waits
until the applied index reaches the returned index, then reads the local store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from etcdstore import ETCD_VERSION, errors, metrics
from etcdstore.config import ConfigError, ServerConfig, check_bootstrap
from etcdstore.lease.lessor import Lessor, min_lease_ttl
from etcdstore.logs import get_logger
from etcdstore.mvcc.kvstore import KVStore
from etcdstore.mvcc.watchable import WatchableStore
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.raft import Config as RaftConfig
from etcdstore.raft import RawNode
from etcdstore.raft.errors import ProposalDropped
from etcdstore.raft.records import ConfChange, ConfChangeType, EntryType, Message, MessageType, Role
from etcdstore.raft import codec as raft_codec
from etcdstore.server import requests as rq
from etcdstore.server.alarms import Alarms
from etcdstore.server.apply import Applier
from etcdstore.server.membership import Member, Membership, member_id as derive_member_id
from etcdstore.server.waiters import IndexWaiters, RequestWaiters
from etcdstore.storage import backend as bk
from etcdstore.storage.raftlog import RaftLogStorage

log = get_logger("etcdstore.server")

_U64 = struct.Struct(">Q")
# Per-member identity lives with the Raft state, never in the replicated families a snapshot carries.
MEMBER_ID_KEY = b"memberID"
# Leases whose revoke the leader proposes per expiry check (etcd: leaseRevokeRate / 2).
_REVOKE_PER_CHECK = 500
_MAX_PROPOSALS_PER_READY = 4096
_ENTRY_OVERHEAD = 16  # what etcd's InternalRaftRequest adds around a request (header and field tags)
# Group commit window under load (ETCDSTORE_GROUP_COMMIT_US tunes it; 0 turns it off).
_GROUP_COMMIT_DELAY = float(os.environ.get("ETCDSTORE_GROUP_COMMIT_US", "1000")) / 1e6
_GROUP_COMMIT_MIN_RATE = 300.0  # proposals/s above which a member counts as busy
_GROUP_COMMIT_TARGET = 64  # enough queued: go at once


class EtcdServer:
    def __init__(self, cfg: ServerConfig, transport_factory: Callable[[EtcdServer], Any] | None = None,
                 peer_tls: Any = None) -> None:
        self.cfg = cfg
        self.peer_tls = peer_tls
        self.member_dir = os.path.join(cfg.data_dir, "member")
        os.makedirs(self.member_dir, exist_ok=True)
        try:
            os.chmod(cfg.data_dir, 0o700)
        except OSError:
            pass
        self.backend = bk.Backend(os.path.join(self.member_dir, "db"))
        self.raft_storage = RaftLogStorage(self.backend)
        election_ticks = cfg.election_ticks
        self.lessor = Lessor(self.backend, min_ttl=min_lease_ttl(election_ticks, cfg.tick_seconds))
        self.kv = KVStore(self.backend, lessor=self.lessor)
        self.watchable = WatchableStore(self.kv, progress_interval=cfg.watch_progress_notify_interval)
        self.alarms = Alarms(self.backend)
        self.applier = Applier(self)
        self.auth: Any = None  # set by the auth layer when present
        self.transport: Any = None
        self._transport_factory = transport_factory

        self.applied_index = self.kv.consistent_index
        self.applied_term = self.kv.consistent_term
        self.bootstrap_peers: dict[int, list[str]] = {}
        self._resume_snapshot_install()
        self._bootstrap()
        self._id_gen = rq.IDGenerator(self.member_id)

        # Leadership as last seen in a Ready's soft state.
        self.leader_id = 0
        self.role = Role.FOLLOWER
        self.term = self.node.term
        self.leader_changes = 0

        self._waiters = RequestWaiters()
        self._applied = IndexWaiters(self.applied_index)
        self._proposals: list[bytes] = []
        self._conf_proposals: list[ConfChange] = []
        self._inbound: list[Message] = []
        self._ticks = 0
        self._read_waiters: list[asyncio.Future[int]] = []
        self._read_inflight: dict[bytes, tuple[float, list[asyncio.Future[int]]]] = {}
        self._read_seq = 0
        self._transfer_to = 0
        self._campaign_when_applied = False
        self._rate_window = [time.monotonic(), 0]  # [window start, proposals since]
        self._rate_busy = False
        self._snapshot_index = self.raft_storage.snapshot().metadata.index
        self._compaction_pending = False
        self._disk = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raft-disk")
        self._tasks: list[asyncio.Task] = []
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self.stopped: asyncio.Future[None] | None = None
        self.removed = False
        self.request_timeout = 5.0 + 2 * cfg.election_timeout_ms / 1000.0
        self._reports: list[tuple[str, int, bool]] = []
        self._received_snapshots: dict[int, str] = {}
        self.metrics_hook: Callable[[str, float], None] | None = None
        self._size_sampled_at = 0.0
        self._leader_elected_at = 0.0
        self._db_size = 0
        self._nospace_raising = False

    # ---- bootstrap ----------------------------------------------------------------------------------

    def _bootstrap(self) -> None:
        cfg = self.cfg
        raw_id = self.backend.get(bk.RAFT_STATE, MEMBER_ID_KEY)
        raft_cfg_kw = dict(
            election_tick=cfg.election_ticks,
            heartbeat_tick=1,
            check_quorum=True,
            pre_vote=cfg.pre_vote,
            max_size_per_msg=1024 * 1024,
            max_inflight_msgs=512,
            max_uncommitted_entries_size=1 << 30,
        )
        if raw_id is not None:
            # Restart: the data dir decides; --initial-cluster* flags are ignored, as in etcd.
            self.member_id = _U64.unpack(raw_id)[0]
            self.membership = Membership.load(self.backend)
            self.cluster_id = self.membership.cluster_id
            self.node = RawNode(
                RaftConfig(id=self.member_id, applied=self.applied_index, **raft_cfg_kw), self.raft_storage
            )
            log.info("restarting member", member_id=f"{self.member_id:x}", cluster_id=f"{self.cluster_id:x}",
                     applied_index=self.applied_index, revision=self.kv.current_revision)
            return
        check_bootstrap(cfg)
        initial = {name: [str(u) for u in urls] for name, urls in cfg.initial_cluster.items()}
        if cfg.initial_cluster_state == "existing":
            self._join_existing(initial, raft_cfg_kw)
            return
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
            contexts[mid] = _conf_context(0, m)
        self.node = RawNode.bootstrap(
            RaftConfig(id=mine, applied=0, **raft_cfg_kw), self.raft_storage, sorted(membership.members),
            contexts=contexts,
        )
        log.info("starting a new cluster", member_id=f"{mine:x}", cluster_id=f"{self.cluster_id:x}",
                 members=len(contexts))

    def _join_existing(self, initial: dict[str, list[str]], raft_cfg_kw: dict) -> None:
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
                f"member with peer URLs {','.join(mine)} is not in the cluster; add it first (member add)")
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
        self.node = RawNode(RaftConfig(id=me, applied=0, **raft_cfg_kw), self.raft_storage)
        log.info("joining an existing cluster", member_id=f"{me:x}", cluster_id=f"{self.cluster_id:x}")

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.stopped = loop.create_future()
        if self._transport_factory is not None:
            self.transport = self._transport_factory(self)
            self.transport.extra_urls = dict(self.bootstrap_peers)
            await self.transport.start()
        self._spawn(self._run(), "raft")
        self._spawn(self._ticker(), "ticker")
        self._spawn(self._lease_loop(), "lease-expiry")
        self._spawn(self._publish(), "publish")
        if self.kv.compaction_unfinished():
            self.compaction_scheduled()
        # A single voter elects itself as soon as its bootstrap entries are applied (Raft will
        # not campaign with conf changes pending) instead of waiting an election timeout.
        self._campaign_when_applied = self.membership_is_single_voter()
        self._wake.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            # A dead drive loop would leave clients hanging forever: stop the member loudly.
            log.error("server task failed; stopping", task=task.get_name(), exc_info=exc)
            asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiters.fail_all(errors.STOPPED)
        self._applied.fail_all(errors.STOPPED)
        for fut in self._read_waiters:
            if not fut.done():
                fut.set_exception(errors.STOPPED)
        for _, waiters in self._read_inflight.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(errors.STOPPED)
        if self.transport is not None:
            await self.transport.stop()
        self.watchable.close()
        self._disk.shutdown(wait=True)
        self.backend.close()
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    # ---- identity and headers --------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def is_learner(self) -> bool:
        m = self.membership.get(self.member_id)
        return bool(m and m.is_learner)

    def membership_is_single_voter(self) -> bool:
        return self.membership.voters() == [self.member_id] or (
            not self.membership.members and len(self.cfg.initial_cluster) == 1
            and self.cfg.initial_cluster_state == "new"
        )

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.kv.current_revision if revision is None else revision,
            raft_term=self.term,
        )

    # ---- inputs to the drive loop -----------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def step(self, msg: Message) -> None:
        """A message from a peer (called by the transport)."""
        self._inbound.append(msg)
        self._kick()

    async def propose(self, kind: int, payload: bytes, *, user: str = "", auth_revision: int = 0,
                      timeout: float | None = None, system: bool = False) -> Any:
        """Replicate a request, wait until this member applied it, return its outcome.

        `system` marks the member's own requests (lease expiry, the v2 API's emulation writes):
        v3 auth does not apply to them, as etcd's internal requests bypass it."""
        if self._stopping:
            raise errors.STOPPED
        if self.removed:
            raise errors.STOPPED
        req_id = self._id_gen.next()
        # etcd refuses a request whose Raft entry (the request plus a small header) is over the limit.
        if len(payload) + _ENTRY_OVERHEAD > self.cfg.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        data = rq.encode(kind, req_id, payload, user, auth_revision, system=system)
        fut = self._waiters.register(req_id)
        self._proposals.append(data)
        self._kick()
        start = time.monotonic()
        try:
            result = await _with_deadline(fut, timeout or self.request_timeout)
        except asyncio.TimeoutError:
            self._waiters.forget(req_id)
            metrics.PROPOSALS_FAILED.inc()
            raise self._timeout_error(start) from None
        if isinstance(result, errors.EtcdError):
            raise result
        return result

    async def propose_conf_change(self, cc_type: int, member: Member, timeout: float | None = None) -> Any:
        req_id = self._id_gen.next()
        fut = self._waiters.register(req_id)
        self._conf_proposals.append(ConfChange(cc_type, member.id, _conf_context(req_id, member)))
        self._kick()
        start = time.monotonic()
        try:
            result = await _with_deadline(fut, timeout or self.request_timeout)
        except asyncio.TimeoutError:
            self._waiters.forget(req_id)
            metrics.PROPOSALS_FAILED.inc()
            raise self._timeout_error(start) from None
        if isinstance(result, errors.EtcdError):
            raise result
        return result

    def _timeout_error(self, start: float) -> errors.EtcdError:
        """Which "timed out" etcd would report for a proposal made at `start` (its parseProposeCtxErr)."""
        elected = self._leader_elected_at
        if elected - 2 * self.cfg.election_timeout_ms / 1000.0 < start < elected:
            return errors.TIMEOUT_DUE_TO_LEADER_FAIL
        leader = self.leader_id
        if leader == 0 or self.transport is None:
            return errors.TIMEOUT
        if leader == self.member_id:
            voters = [v for v in self.membership.voters() if v != self.member_id]
            connected = sum(1 for v in voters if 0 < self.transport.active_since(v) <= start)
            if connected + 1 < len(self.membership.voters()) // 2 + 1:
                return errors.TIMEOUT_DUE_TO_CONNECTION_LOST
        elif not 0 < self.transport.active_since(leader) <= start:
            return errors.TIMEOUT_DUE_TO_CONNECTION_LOST
        return errors.TIMEOUT

    async def read_index(self, timeout: float | None = None) -> None:
        """Linearizable read barrier: returns once this member has applied everything committed
        before the call (confirmed by the leader with a heartbeat quorum)."""
        if self._stopping:
            raise errors.STOPPED
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_waiters.append(fut)
        self._kick()
        deadline = timeout or self.request_timeout
        try:
            index = await _with_deadline(fut, deadline)
            await _with_deadline(self._applied.wait(index), deadline)
        except asyncio.TimeoutError:
            raise errors.TIMEOUT from None

    def transfer_leadership(self, target: int) -> None:
        self._transfer_to = target
        self._kick()

    def wait_applied(self, index: int) -> asyncio.Future[None]:
        return self._applied.wait(index)

    # ---- the drive loop ---------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = self.cfg.tick_seconds
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if next_at < loop.time():  # the loop fell far behind: do not burst ticks
                next_at = loop.time() + interval
            self._ticks += 1
            self._kick()

    async def _run(self) -> None:
        node = self.node
        wake = self._wake
        assert wake is not None
        while True:
            # Proposals and reads can only be fed once a leader is known; until then they wait
            # (their own deadlines bound them) and only ticks and messages wake the loop.
            actionable = self._inbound or self._ticks or self._transfer_to or self._reports or (
                self.leader_id != 0 and (self._proposals or self._conf_proposals or self._read_waiters))
            if not actionable and not node.has_ready():
                wake.clear()
                await wake.wait()
            elif self._proposals and self._busy():
                # Group commit: under steady load, let more requests join this Ready, so one
                # fsync and one apply batch serve many (idle members propose at once instead).
                await asyncio.sleep(_GROUP_COMMIT_DELAY)
            else:
                await asyncio.sleep(0)  # let client handlers run between Readies
            self._feed(node)
            while node.has_ready():
                rd = node.ready()
                await self._handle_ready(node, rd)
                node.advance(rd)
                # Inputs that arrived while we were on disk go into the next Ready.
                if self._inbound or self._proposals:
                    self._feed(node)
            self._check_read_timeouts(node)

    def _busy(self) -> bool:
        """Whether waiting briefly for more proposals pays off: they have been arriving fast,
        and other requests are in flight (a lone client is never made to wait)."""
        if _GROUP_COMMIT_DELAY <= 0 or len(self._waiters) <= len(self._proposals):
            return False
        now = time.monotonic()
        window = self._rate_window
        if now - window[0] > 0.05:
            self._rate_busy = window[1] >= _GROUP_COMMIT_MIN_RATE * (now - window[0])
            window[0], window[1] = now, 0
        return self._rate_busy and len(self._proposals) < _GROUP_COMMIT_TARGET

    def _feed(self, node: RawNode) -> None:
        if self._campaign_when_applied and self.applied_index >= node.commit_index:
            self._campaign_when_applied = False
            if self.leader_id == 0:
                node.campaign()
        while self._ticks:
            self._ticks -= 1
            node.tick()
        if self._reports:
            reports, self._reports = self._reports, []
            for kind, peer, ok in reports:
                if kind == "unreachable":
                    node.report_unreachable(peer)
                else:
                    node.report_snapshot(peer, ok)
        if self._inbound:
            msgs, self._inbound = self._inbound, []
            for m in msgs:
                try:
                    node.step(m)
                except Exception as e:  # a malformed message must not kill the member
                    log.warn("dropping raft message", type=getattr(m, "type", None), error=str(e))
        if self._proposals and self.leader_id != 0:
            batch = self._proposals[:_MAX_PROPOSALS_PER_READY]
            self._rate_window[1] += len(batch)
            try:
                node.propose_batch(batch)
            except ProposalDropped:
                # No leader right now or a transfer in progress: keep them queued; each client's
                # own deadline bounds the wait, as etcd's blocking Propose does.
                pass
            else:
                del self._proposals[: len(batch)]
        if self._conf_proposals and self.leader_id != 0:
            cc = self._conf_proposals[0]
            try:
                node.propose_conf_change(cc)
            except ProposalDropped:
                pass  # another change is pending; retried on the next pass
            else:
                self._conf_proposals.pop(0)
        if self._read_waiters and self.leader_id != 0:
            self._read_seq += 1
            ctx = _U64.pack(self._read_seq)
            waiters, self._read_waiters = self._read_waiters, []
            self._read_inflight[ctx] = (time.monotonic(), waiters)
            try:
                node.read_index(ctx)
            except ProposalDropped:
                pass  # retried by _check_read_timeouts
        if self._transfer_to:
            target, self._transfer_to = self._transfer_to, 0
            node.transfer_leadership(target)

    def _check_read_timeouts(self, node: RawNode) -> None:
        """Re-issue read index rounds that got no answer (lost message, leader change)."""
        if not self._read_inflight:
            return
        now = time.monotonic()
        retry_after = max(0.5, 2 * self.cfg.heartbeat_interval_ms / 1000.0)
        for ctx, (started, waiters) in list(self._read_inflight.items()):
            if now - started > retry_after:
                del self._read_inflight[ctx]
                live = [f for f in waiters if not f.done()]
                if live:
                    self._read_waiters.extend(live)
                    self._kick()

    async def _handle_ready(self, node: RawNode, rd: Any) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        early = rd.can_send_early
        if early and rd.messages and self.transport is not None:
            self.transport.send(rd.messages)
        if rd.snapshot is not None:
            self._mark_snapshot_install(rd.snapshot)
        if rd.entries or rd.snapshot is not None or rd.must_sync:
            await asyncio.get_running_loop().run_in_executor(self._disk, self._persist, rd)
        elif rd.hard_state is not None:
            # Only the commit index moved: nothing to fsync (Raft recovers it), so no trip to
            # the disk thread; an unsynced write on the loop is a few microseconds.
            self.raft_storage.save([], rd.hard_state, None, False)
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        if not early and rd.messages and self.transport is not None:
            self.transport.send(rd.messages)
        if rd.committed_entries:
            self._apply(node, rd.committed_entries)
        for rs in rd.read_states:
            entry = self._read_inflight.pop(rs.request_ctx, None)
            if entry is not None:
                for fut in entry[1]:
                    if not fut.done():
                        fut.set_result(rs.index)
        self._maybe_snapshot()

    def _persist(self, rd: Any) -> None:
        """Runs on the disk thread: the Ready's entries, hard state and snapshot, synced."""
        t = time.perf_counter()
        self.raft_storage.save(rd.entries, rd.hard_state, rd.snapshot, rd.must_sync)
        if rd.must_sync:
            metrics.WAL_FSYNC.observe(time.perf_counter() - t)

    def pending_proposals(self) -> int:
        return len(self._waiters)

    def _on_soft_state(self, ss: Any) -> None:
        was_leader = self.role == Role.LEADER
        if ss.leader != self.leader_id:
            if ss.leader != 0:
                self.leader_changes += 1
                metrics.LEADER_CHANGES.inc()
                self._leader_elected_at = time.monotonic()
            log.info("leader changed", leader=f"{ss.leader:x}", member_id=f"{self.member_id:x}")
        self.leader_id = ss.leader
        self.role = ss.role
        is_leader = ss.role == Role.LEADER
        if is_leader and not was_leader:
            # A new leader extends every lease by an election timeout: never expire early.
            self.lessor.promote(self.cfg.election_timeout_ms / 1000.0)
        elif was_leader and not is_leader:
            self.lessor.demote()
        # Reads waiting on a leader that went away must be re-issued to the new one.
        if self._read_inflight:
            for _, waiters in self._read_inflight.values():
                self._read_waiters.extend(f for f in waiters if not f.done())
            self._read_inflight.clear()

    # ---- apply -------------------------------------------------------------------------------------------

    def _apply(self, node: RawNode, entries: list) -> None:
        batch = self.backend.batch()
        results: list[tuple[int, Any]] = []
        applier = self.applier
        applier.events = []
        waiters = self._waiters
        last = None
        for e in entries:
            if e.index <= self.applied_index:
                continue  # already in the backend (replay after restart)
            last = e
            if e.type == EntryType.CONF_CHANGE:
                outcome = self._apply_conf_change(node, batch, e)
                if outcome is not None:
                    results.append((*outcome, self.kv.current_revision))
                continue
            if not e.data:
                continue  # a new leader's empty entry
            req = rq.decode(e.data)
            applier.index = e.index
            result = applier.apply(batch, req)
            if waiters.wanted(req.id):
                # The revision as of this entry, not the batch's last (a later entry may move it).
                results.append((req.id, result, self.kv.current_revision))
        if last is None:
            return
        self.applied_index = last.index
        self.applied_term = last.term
        self.kv.set_consistent_index(batch, last.index, last.term)
        t = time.perf_counter()
        self.backend.write(batch, sync=False)
        metrics.BACKEND_COMMIT.observe(time.perf_counter() - t)
        self.kv.batch_written()
        events = applier.events
        applier.events = []
        revision = self.kv.current_revision
        if events:
            self.watchable.notify(events, revision)
        for req_id, result, entry_revision in results:
            if isinstance(result, errors.EtcdError) or result is None:
                waiters.resolve(req_id, result)
            else:
                if hasattr(result, "header"):
                    h = result.header
                    h.cluster_id = self.cluster_id
                    h.member_id = self.member_id
                    if not h.revision:
                        h.revision = entry_revision
                    h.raft_term = self.term
                waiters.resolve(req_id, result)
        self._applied.advance(self.applied_index)

    def _apply_conf_change(self, node: RawNode, batch: bk.Batch, e: Any) -> tuple[int, Any] | None:
        cc = raft_codec.decode_conf_change(e.data)
        req_id, member = _parse_conf_context(cc.context)
        result: Any
        try:
            self._validate_conf_change(cc, member)
        except errors.EtcdError as err:
            # Refused on every member alike; Raft still needs to hear the change is done.
            node.apply_conf_change(ConfChange(cc.type, 0, b""))
            return (req_id, err) if req_id else None
        conf_state = node.apply_conf_change(cc)
        self.raft_storage.set_conf_state(batch, conf_state)
        if cc.type == ConfChangeType.ADD_NODE:
            existing = self.membership.get(cc.node_id)
            if existing is not None and existing.is_learner:
                self.membership.promote(batch, cc.node_id)
            else:
                self.membership.add(batch, member)
        elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
            member.is_learner = True
            self.membership.add(batch, member)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.membership.remove(batch, cc.node_id)
            if cc.node_id == self.member_id:
                # Like etcd, stop shortly after applying our own removal, so the commit of the
                # change still reaches the others (a removed leader hands over first).
                delay = max(1.0, self.cfg.election_timeout_ms / 1000.0)
                asyncio.get_running_loop().call_later(delay, self.on_removed)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            self.membership.update_peer_urls(batch, cc.node_id, member.peer_urls)
        if self.transport is not None:
            self.transport.update_members(self.membership)
        members = [_member_pb(m) for m in self.membership.sorted_members()]
        return (req_id, members) if req_id else None

    def _validate_conf_change(self, cc: ConfChange, member: Member) -> None:
        ms = self.membership
        if cc.type == ConfChangeType.ADD_NODE:
            existing = ms.get(cc.node_id)
            if existing is not None and existing.is_learner:
                return  # promotion
            ms.check_add(member, max_learners=1 << 30)
        elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
            ms.check_add(member, max_learners=1 << 30)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            ms.check_remove(cc.node_id)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            ms.check_update(cc.node_id, member.peer_urls)

    # ---- snapshots and log compaction ---------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        if self.applied_index - self._snapshot_index < self.cfg.snapshot_count:
            return
        index = self.applied_index
        if index <= self.raft_storage.snapshot().metadata.index:
            self._snapshot_index = self.raft_storage.snapshot().metadata.index
            return
        self.raft_storage.create_snapshot(index, self.applied_term)
        compact_to = index - self.cfg.snapshot_catchup_entries
        if compact_to > self.raft_storage.first_index():
            self.raft_storage.compact(compact_to)
        self._snapshot_index = index
        log.info("raft snapshot taken", index=index, compacted_to=max(compact_to, 0))

    # A follower installs a leader's snapshot in three durable steps, so a crash at any point
    # resumes correctly: (1) the received file is fsynced and a marker naming it is written,
    # (2) Raft's log is replaced by the snapshot, (3) the state machine is loaded from the file
    # and the marker cleared. A restart that finds the marker redoes (3) first.
    _INSTALL_MARKER = b"installingSnapshot"

    def _mark_snapshot_install(self, snap: Any) -> None:
        path = self._received_snapshots.get(snap.metadata.index)
        if path is None:
            raise RuntimeError(f"no snapshot data received for index {snap.metadata.index}")
        batch = self.backend.batch()
        batch.put(bk.RAFT_STATE, self._INSTALL_MARKER, json.dumps({"path": path}).encode())
        self.backend.write(batch, sync=True)

    def _install_snapshot(self, snap: Any) -> None:
        path = self._received_snapshots.pop(snap.metadata.index)
        for stale in self._received_snapshots.values():
            _unlink(stale)
        self._received_snapshots.clear()
        self._load_state_machine(path)
        self._snapshot_index = snap.metadata.index
        log.info("installed snapshot from leader", index=self.applied_index, revision=self.kv.current_revision)

    def _resume_snapshot_install(self) -> None:
        raw = self.backend.get(bk.RAFT_STATE, self._INSTALL_MARKER)
        if raw is None:
            return
        path = json.loads(raw)["path"]
        log.warn("resuming an interrupted snapshot install", path=path)
        self._load_state_machine(path)

    def _load_state_machine(self, path: str) -> None:
        from etcdstore.snapshot import format as snapfmt

        snapfmt.load_into(path, self.backend)
        self.lessor = Lessor(self.backend, min_ttl=self.lessor.min_ttl)
        self.kv = KVStore(self.backend, lessor=self.lessor)
        self.alarms = Alarms(self.backend)
        self.membership = Membership.load(self.backend)
        if hasattr(self, "watchable"):
            self.watchable.restore(self.kv)
        self.applied_index = self.kv.consistent_index
        self.applied_term = self.kv.consistent_term
        if hasattr(self, "_applied"):
            self._applied.advance(self.applied_index)
        if self.auth is not None:
            self.auth.reload()
        batch = self.backend.batch()
        batch.delete(bk.RAFT_STATE, self._INSTALL_MARKER)
        self.backend.write(batch, sync=True)
        _unlink(path)
        if self.transport is not None:
            self.transport.update_members(self.membership)

    async def receive_snapshot(self, msg: Message, path: str) -> None:
        """The transport stored a snapshot file from the leader: hand its message to Raft."""
        from etcdstore.snapshot import format as snapfmt

        await asyncio.get_running_loop().run_in_executor(None, snapfmt.verify, path)
        self._received_snapshots[msg.snapshot.metadata.index] = path
        self.step(msg)

    async def snapshot_for_follower(self) -> tuple[str, Any]:
        """A snapshot file of the current state and the Raft metadata describing exactly it."""
        from etcdstore.api.maintenance import make_snapshot_file
        from etcdstore.raft.records import SnapshotMetadata

        # make_snapshot_file checkpoints synchronously first, so these values match its content.
        meta = SnapshotMetadata(self.applied_index, self.applied_term, self.raft_storage.conf_state)
        path = await make_snapshot_file(self)
        return path, meta

    def report_unreachable(self, peer: int) -> None:
        self._reports.append(("unreachable", peer, False))
        self._kick()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self._reports.append(("snapshot", peer, ok))
        self._kick()

    def on_removed(self) -> None:
        """A peer told us we were removed from the cluster: stop serving, as etcd does."""
        if self.removed:
            return
        self.removed = True
        log.warn("the member has been permanently removed from the cluster", member_id=f"{self.member_id:x}")
        asyncio.get_running_loop().create_task(self.stop())

    # ---- periodic work -----------------------------------------------------------------------------------

    def compaction_scheduled(self) -> None:
        if not self._compaction_pending:
            self._compaction_pending = True
            self._spawn(self._compact_in_background(), "compaction")

    async def _compact_in_background(self) -> None:
        try:
            while not self.kv.compact_step(1000):
                await asyncio.sleep(0.01)  # let client traffic through between chunks
        finally:
            self._compaction_pending = False

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.is_leader:
                continue
            for lease_id in self.lessor.expired(_REVOKE_PER_CHECK):
                payload = rpc_pb2.LeaseRevokeRequest(ID=lease_id).SerializeToString()
                self._spawn_proposal(rq.Kind.LEASE_REVOKE, payload)

    def _spawn_proposal(self, kind: int, payload: bytes, done: Callable[[], None] | None = None) -> None:
        async def go() -> None:
            try:
                await self.propose(kind, payload, system=True)
            except errors.EtcdError as e:
                if e not in (errors.LEASE_NOT_FOUND,):
                    log.debug("background proposal failed", kind=kind, error=e.message)
            finally:
                if done is not None:
                    done()

        asyncio.get_running_loop().create_task(go())

    async def _publish(self) -> None:
        """Announce this member's name and client URLs to the cluster (retried until applied)."""
        doc = {"id": self.member_id, "name": self.cfg.name,
               "clientURLs": [str(u) for u in self.cfg.advertise_client_urls]}
        payload = json.dumps(doc).encode()
        while True:
            m = self.membership.get(self.member_id)
            if m is not None and m.name == self.cfg.name and m.client_urls == doc["clientURLs"]:
                return
            try:
                await self.propose(rq.Kind.MEMBER_PUBLISH, payload, timeout=self.request_timeout)
                return
            except errors.EtcdError:
                await asyncio.sleep(0.5)

    # ---- status ---------------------------------------------------------------------------------------------

    def status(self) -> rpc_pb2.StatusResponse:
        errs = []
        if self.alarms.any():
            errs.extend(f"memberID:{mid} alarm:{rpc_pb2.AlarmType.Name(a)} " for mid, a in self.alarms.list())
        return rpc_pb2.StatusResponse(
            header=self.header(),
            version=ETCD_VERSION,
            dbSize=self.backend.size(),
            dbSizeInUse=self.backend.size_in_use(),
            leader=self.leader_id,
            raftIndex=self.node.last_index if hasattr(self.node, "last_index") else self.applied_index,
            raftTerm=self.term,
            raftAppliedIndex=self.applied_index,
            errors=errs,
            isLearner=self.is_learner,
        )

    # ---- quota ------------------------------------------------------------------------------------------------

    def check_quota(self, cost: int) -> None:
        """Refuse writes once the backend is over --quota-backend-bytes, raising NOSPACE (etcd's quota).

        The check is a cheap estimate (the size is sampled at most every 100 ms); the alarm itself is
        replicated, so every member refuses writes once it is raised.
        """
        if self.alarms.active(rpc_pb2.NOSPACE):
            raise errors.NO_SPACE
        now = time.monotonic()
        if now - self._size_sampled_at > 0.1:
            self._size_sampled_at = now
            self._db_size = self.backend.size()
        if self._db_size + cost >= self.cfg.quota_backend_bytes:
            if not self._nospace_raising:
                self._nospace_raising = True
                payload = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.member_id,
                                               alarm=rpc_pb2.NOSPACE).SerializeToString()
                self._spawn_proposal(rq.Kind.ALARM, payload, done=self._nospace_raised)
            raise errors.NO_SPACE

    def _nospace_raised(self) -> None:
        self._nospace_raising = False

    async def wait_compaction_done(self) -> None:
        while self._compaction_pending or self.kv.compaction_unfinished():
            await asyncio.sleep(0.01)

    def alarm_deactivated(self) -> None:
        """After a disarm, measure the backend afresh before judging the quota again."""
        self._size_sampled_at = 0.0
        self._nospace_raising = False

    def new_request_id(self) -> int:
        return self._id_gen.next()

    # ---- leases: leader-local, forwarded by followers ------------------------------------------------------------

    async def wait_leader(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout or self.request_timeout)
        while self.leader_id == 0:
            if time.monotonic() > deadline:
                raise errors.NO_LEADER
            await asyncio.sleep(self.cfg.tick_seconds)
        return self.leader_id

    async def lease_renew(self, lease_id: int) -> int:
        while True:
            if self.is_leader:
                # A fresh leader first applies everything committed, so it knows every lease.
                await self._applied.wait(self.raft_storage.hard_state.commit)
                return self.lessor.renew(lease_id)
            leader = await self.wait_leader()
            if self.transport is None or leader == self.member_id:
                await asyncio.sleep(self.cfg.tick_seconds)
                continue
            return await self.transport.forward_lease_renew(leader, lease_id)

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int, list[bytes]]:
        while True:
            if self.is_leader:
                await self._applied.wait(self.raft_storage.hard_state.commit)
                return self.lessor.time_to_live(lease_id)
            leader = await self.wait_leader()
            if self.transport is None or leader == self.member_id:
                await asyncio.sleep(self.cfg.tick_seconds)
                continue
            return await self.transport.forward_lease_ttl(leader, lease_id)

    # ---- membership changes --------------------------------------------------------------------------------------

    def _started_voters(self, exclude: int = 0) -> tuple[int, int]:
        members = [m for m in self.membership.members.values() if not m.is_learner and m.id != exclude]
        return len(members), sum(1 for m in members if m.name)

    def check_can_add_voter(self) -> None:
        """etcd's strict reconfig check: adding a voter must not leave the started members short of quorum."""
        if not self.cfg.strict_reconfig_check:
            return
        n, started = self._started_voters()
        n += 1
        if started == 1 and n == 2:
            return
        if started < n // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED

    def check_can_remove(self, mid: int) -> None:
        if not self.cfg.strict_reconfig_check:
            return
        m = self.membership.get(mid)
        if m is None or m.is_learner:
            return
        n, started = self._started_voters(exclude=mid)
        if started < n // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED

    async def promote_member(self, mid: int) -> list:
        self.membership.check_promote(mid)
        while True:
            if self.is_leader:
                if not self._learner_ready(mid):
                    raise errors.LEARNER_NOT_READY
                m = self.membership.get(mid)
                assert m is not None
                return await self.propose_conf_change(ConfChangeType.ADD_NODE, Member(
                    id=mid, name=m.name, peer_urls=m.peer_urls, client_urls=m.client_urls, is_learner=False))
            leader = await self.wait_leader()
            if self.transport is None or leader == self.member_id:
                await asyncio.sleep(self.cfg.tick_seconds)
                continue
            return await self.transport.forward_promote(leader, mid)

    def _learner_ready(self, mid: int) -> bool:
        """etcd: a learner may be promoted once its log matches >= 90% of the leader's."""
        progress = self.node.status().progress
        pr = progress.get(mid)
        if pr is None:
            return False
        leader_match = progress[self.member_id].match if self.member_id in progress else self.applied_index
        return pr.match >= leader_match * 0.9

    async def move_leader(self, target: int) -> None:
        if not self.is_leader:
            raise errors.NOT_LEADER
        m = self.membership.get(target)
        if m is None or m.is_learner:
            raise errors.BAD_LEADER_TRANSFEREE
        if target == self.member_id:
            return
        self.transfer_leadership(target)
        deadline = time.monotonic() + self.request_timeout
        while self.leader_id != target:
            if time.monotonic() > deadline:
                raise errors.TIMEOUT
            await asyncio.sleep(self.cfg.tick_seconds)

    # ---- auth hooks (the auth layer replaces `self.auth`) --------------------------------------------------------

    def authorize_watch(self, context: Any, key: bytes, range_end: bytes) -> None:
        if self.auth is not None:
            self.auth.authorize_watch(context, key, range_end)

    def authorize_lease_revoke(self, context: Any, lease_id: int) -> None:
        if self.auth is not None:
            self.auth.authorize_lease_revoke(context, lease_id)

    def authorize_range(self, context: Any, req: rpc_pb2.RangeRequest) -> None:
        if self.auth is not None:
            self.auth.authorize_range(context, req)

    def authorize_put(self, context: Any, req: rpc_pb2.PutRequest) -> tuple[str, int]:
        return self.auth.authorize_put(context, req) if self.auth is not None else ("", 0)

    def authorize_delete(self, context: Any, req: rpc_pb2.DeleteRangeRequest) -> tuple[str, int]:
        return self.auth.authorize_delete(context, req) if self.auth is not None else ("", 0)

    def authorize_txn(self, context: Any, req: rpc_pb2.TxnRequest) -> tuple[str, int]:
        return self.auth.authorize_txn(context, req) if self.auth is not None else ("", 0)

    def authorize_admin(self, context: Any, rpc: str) -> tuple[str, int]:
        return self.auth.authorize_admin(context, rpc) if self.auth is not None else ("", 0)

    def credentials(self, context: Any) -> tuple[str, int]:
        """(user, auth revision) of the caller; raises INVALID_AUTH_TOKEN for a bad token."""
        return self.auth.credentials(context) if self.auth is not None else ("", 0)

    def check_lease_revoke_at_apply(self, req: rq.Request, keys: list[bytes]) -> None:
        """Revoking deletes the lease's keys: the caller must be allowed to write every one,
        judged again in log order (the API-time check may be stale)."""
        if self.auth is not None and not req.system and self.auth.store.enabled and keys:
            self.auth.store.check_keys_writable(req.user, req.auth_revision, keys)

    def check_permission_at_apply(self, req: rq.Request, op: str, key: bytes, range_end: bytes) -> None:
        if self.auth is not None and not req.system:
            self.auth.check_at_apply(req, op, key, range_end)

    def check_txn_permission_at_apply(self, req: rq.Request, txn: rpc_pb2.TxnRequest) -> None:
        if self.auth is not None and not req.system:
            self.auth.check_txn_at_apply(req, txn)


async def _with_deadline(fut: asyncio.Future, timeout: float) -> Any:
    """Await a future with a deadline, without asyncio.wait_for's extra Task per call (this
    is on every request's path): a timer cancels the future, and the cancellation becomes
    TimeoutError unless the caller itself was cancelled."""
    loop = asyncio.get_running_loop()
    expired = False

    def expire() -> None:
        nonlocal expired
        if not fut.done():
            expired = True
            fut.cancel()

    timer = loop.call_later(timeout, expire)
    try:
        return await fut
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        timer.cancel()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
                call = ch.unary_unary(f"/{SERVICE}/Cluster", request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
                try:
                    return json.loads(call(b"", timeout=2))
                except grpc.RpcError as e:
                    last = e
        time.sleep(0.5)
    raise ConfigError(f"cannot fetch cluster info from peers {', '.join(urls)}: {last}")


def _conf_context(req_id: int, member: Member) -> bytes:
    return _U64.pack(req_id) + member.to_json()


def _parse_conf_context(ctx: bytes) -> tuple[int, Member]:
    return _U64.unpack_from(ctx)[0], Member.from_json(ctx[8:])


def _member_pb(m: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls,
                          isLearner=m.is_learner)
