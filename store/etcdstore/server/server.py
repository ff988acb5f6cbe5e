"""EtcdServer: one member's apply and request side, over the Raft node driver.

    client request --propose()--> RaftNode (server/raftnode.py): Ready loop, persistence,
                                  sending, ticking, group commit, ReadIndex rounds
                                      |
                                      v committed entries
    EtcdServer.apply: one backend batch + consistent index -> resolve waiters, notify watchers

Requests wait in `_waiters` until their entry is applied here; linearizable reads wait for a
ReadIndex round (shared, see server/policies.py), then until the applied index reaches it, then
read the local store. Response headers are filled in one place (`header`, `fill_header`). The
auth checks are `self.auth`'s, always present (server/authguard.py). The API layer sees this
class only through the `ServerAPI` protocol (server/api.py).

The rest is composed, each part given what it uses (etcd's split of its server):

    bootstrap()             server/bootstrap.py       backend, Raft log, stores, identity, Raft node
    stores: Stores          server/stores.py          kv, lessor, alarms, membership (reloaded in
                                                      place by a snapshot install)
    applier: Applier        etcdstore/apply/          one committed request's state changes
    snapshots: Snapshots    server/snapshots.py       Raft snapshots, taken and installed
    membership_changes      server/membership_ops.py  conf changes: checks, apply, promotion, transfer
    leases: LeaseOps        server/leases.py          renewal, time-to-live, expiry
    (Leadership)            server/leader.py          leader-only work: here, or forwarded

This class keeps the request path, the apply loop and the thin methods its callers need: the API
(ServerAPI), the Raft driver (ReadyHost), the transport, auth, metrics and the composition root.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from etcdstore import ETCD_VERSION, errors, metrics
from etcdstore.apply.applier import Applier
from etcdstore.config import ServerConfig
from etcdstore.lease.lessor import Lessor
from etcdstore.logs import get_logger
from etcdstore.membership import Member, Membership, conf_context
from etcdstore.mvcc.kvstore import KVStore
from etcdstore.mvcc.watchable import WatchableStore
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.raft import RawNode
from etcdstore.raft.records import ConfChange, EntryType, Message, Role, SnapshotMetadata
from etcdstore.server.alarms import Alarms
from etcdstore.server.authguard import AuthGuard, NoAuth
from etcdstore.server.bootstrap import bootstrap
from etcdstore.server.guards import Quota
from etcdstore.server.leader import Leadership
from etcdstore.server.leases import LeaseOps
from etcdstore.server.membership_ops import MembershipChanges
from etcdstore.server.policies import GroupCommit
from etcdstore.server.raftnode import RaftNode
from etcdstore.server.snapshots import Snapshots
from etcdstore.server.waiters import IndexWaiters, RequestWaiters
from etcdstore.txn import kv_apply
from etcdstore.txn import requests as rq

log = get_logger("etcdstore.server")

_ENTRY_OVERHEAD = 16  # what etcd's InternalRaftRequest adds around a request (header and field tags)
# Read once at import, as before: ETCDSTORE_GROUP_COMMIT_US / ETCDSTORE_GROUP_COMMIT_MAX_US.
GROUP_COMMIT = GroupCommit.from_env()


class EtcdServer:
    def __init__(
        self,
        cfg: ServerConfig,
        transport_factory: Callable[[EtcdServer], Any] | None = None,
        peer_tls: Any = None,
        group_commit: GroupCommit | None = None,
    ) -> None:
        self.cfg = cfg
        boot = bootstrap(cfg, peer_tls)
        self.member_dir = boot.member_dir
        self.backend = boot.backend
        self.raft_storage = boot.raft_storage
        self.stores = boot.stores
        self.member_id = boot.member_id
        self.cluster_id = boot.cluster_id
        self.bootstrap_peers = boot.peers
        kv = self.stores.kv
        self.watchable = WatchableStore(kv, progress_interval=cfg.watch_progress_notify_interval)
        self.auth: AuthGuard = NoAuth()  # the auth layer installs its hooks in its place
        self.applier = Applier(self.stores, lambda: self.auth, self.compaction_scheduled)
        self.transport: Any = None
        self._transport_factory = transport_factory

        self.applied_index = kv.consistent_index
        self.applied_term = kv.consistent_term
        self.r = RaftNode(
            boot.node,
            self.raft_storage,
            self.backend,
            self,
            tick_seconds=cfg.tick_seconds,
            heartbeat_seconds=cfg.heartbeat_interval_ms / 1000.0,
            group_commit=group_commit or GROUP_COMMIT,
        )
        self._id_gen = rq.IDGenerator(self.member_id)
        self._leader_elected_at = 0.0

        self._waiters = RequestWaiters()
        self._applied = IndexWaiters(self.applied_index)
        self.snapshots = Snapshots(
            self.backend,
            self.raft_storage,
            self.member_dir,
            snapshot_count=cfg.snapshot_count,
            catchup_entries=cfg.snapshot_catchup_entries,
            restore=self._restore,
        )
        self._compaction_pending = False
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.stopped: asyncio.Future[None] | None = None
        self.removed = False
        self.request_timeout = 5.0 + 2 * cfg.election_timeout_ms / 1000.0
        leadership = Leadership(
            self.r,
            self.member_id,
            lambda: self.transport,
            poll_seconds=cfg.tick_seconds,
            request_timeout=self.request_timeout,
        )
        self.leases = LeaseOps(
            self.stores,
            self.raft_storage,
            self._applied,
            leadership,
            self._spawn_proposal,
        )
        self.membership_changes = MembershipChanges(
            self.member_id,
            self.stores,
            self.r,
            self.raft_storage,
            leadership,
            self._applied,
            propose_conf_change=self.propose_conf_change,
            on_removed=self.on_removed,
            transport=lambda: self.transport,
            strict_reconfig_check=cfg.strict_reconfig_check,
            election_timeout=cfg.election_timeout_ms / 1000.0,
            poll_seconds=cfg.tick_seconds,
            request_timeout=self.request_timeout,
        )
        self.quota = Quota(
            cfg.quota_backend_bytes,
            self.member_id,
            lambda: self.stores.alarms,
            self.backend,
            lambda kind, payload, done: self._spawn_proposal(kind, payload, done=done),
        )

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.r.start()
        self.stopped = loop.create_future()
        if self._transport_factory is not None:
            self.transport = self._transport_factory(self)
            self.transport.extra_urls = dict(self.bootstrap_peers)
            await self.transport.start()
        self._spawn(self.r.run(), "raft")
        self._spawn(self.r.ticker(), "ticker")
        self._spawn(self.leases.expire(), "lease-expiry")
        self._spawn(self._publish(), "publish")
        if self.stores.kv.compaction_unfinished():
            self.compaction_scheduled()
        # A single voter elects itself as soon as its bootstrap entries are applied (Raft will
        # not campaign with conf changes pending) instead of waiting an election timeout.
        membership = self.stores.membership
        self.r.campaign_when_applied = membership.voters() == [self.member_id] or (
            not membership.members
            and len(self.cfg.initial_cluster) == 1
            and self.cfg.initial_cluster_state == "new"
        )
        self.r.kick()

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
        self._waiters.fail_all(errors.STOPPED())
        self._applied.fail_all(errors.STOPPED())
        self.r.fail_reads(errors.STOPPED())
        if self.transport is not None:
            await self.transport.stop()
        self.watchable.close()
        self.r.stop()
        self.backend.close()
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    # ---- Raft state, as the driver last saw it ------------------------------------------------------------

    @property
    def leader_id(self) -> int:
        return self.r.leader_id

    @property
    def role(self) -> Role:
        return self.r.role

    @property
    def term(self) -> int:
        return self.r.term

    # ---- identity and headers --------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.r.role == Role.LEADER

    @property
    def is_learner(self) -> bool:
        m = self.stores.membership.get(self.member_id)
        return bool(m and m.is_learner)

    # ---- the replicated stores (self.stores; a snapshot install reloads them) -----------------------------

    @property
    def kv(self) -> KVStore:
        return self.stores.kv

    @property
    def lessor(self) -> Lessor:
        return self.stores.lessor

    @property
    def alarms(self) -> Alarms:
        return self.stores.alarms

    @property
    def membership(self) -> Membership:
        return self.stores.membership

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        """A response header; `revision` defaults to the store's current one."""
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.stores.kv.current_revision if revision is None else revision,
            raft_term=self.r.term,
        )

    def fill_header(self, h: rpc_pb2.ResponseHeader, revision: int | None = None) -> None:
        """Complete a response's header in place; a revision already set is kept."""
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.r.term
        if not h.revision:
            h.revision = self.stores.kv.current_revision if revision is None else revision

    # ---- requests --------------------------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """A message from a peer (called by the transport)."""
        self.r.step(msg)

    async def propose(
        self,
        kind: int,
        payload: bytes,
        *,
        user: str = "",
        auth_revision: int = 0,
        timeout: float | None = None,
        system: bool = False,
    ) -> Any:
        """Replicate a request, wait until this member applied it, return its outcome.

        `system` marks the member's own requests (lease expiry, the v2 API's emulation writes):
        v3 auth does not apply to them, as etcd's internal requests bypass it."""
        if self._stopping:
            raise errors.STOPPED()
        if self.removed:
            raise errors.STOPPED()
        req_id = self._id_gen.next()
        # etcd refuses a request whose Raft entry (the request plus a small header) is over the limit.
        if len(payload) + _ENTRY_OVERHEAD > self.cfg.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE()
        data = rq.encode(kind, req_id, payload, user, auth_revision, system=system)
        fut = self._waiters.register(req_id)
        self.r.propose(data)
        return await self._outcome(req_id, fut, timeout)

    async def propose_conf_change(self, cc_type: int, member: Member, timeout: float | None = None) -> Any:
        req_id = self._id_gen.next()
        fut = self._waiters.register(req_id)
        self.r.propose_conf_change(ConfChange(cc_type, member.id, conf_context(req_id, member)))
        return await self._outcome(req_id, fut, timeout)

    async def _outcome(self, req_id: int, fut: asyncio.Future, timeout: float | None) -> Any:
        """Wait for a proposal to be applied here; its response, or its error raised."""
        start = time.monotonic()
        try:
            result = await _with_deadline(fut, timeout or self.request_timeout)
        except TimeoutError:
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
            return errors.TIMEOUT_DUE_TO_LEADER_FAIL()
        leader = self.leader_id
        if leader == 0 or self.transport is None:
            return errors.TIMEOUT()
        if leader == self.member_id:
            membership = self.stores.membership
            voters = [v for v in membership.voters() if v != self.member_id]
            connected = sum(1 for v in voters if 0 < self.transport.active_since(v) <= start)
            if connected + 1 < len(membership.voters()) // 2 + 1:
                return errors.TIMEOUT_DUE_TO_CONNECTION_LOST()
        elif not 0 < self.transport.active_since(leader) <= start:
            return errors.TIMEOUT_DUE_TO_CONNECTION_LOST()
        return errors.TIMEOUT()

    async def read_index(self, timeout: float | None = None) -> None:
        """Linearizable read barrier: returns once this member has applied everything committed
        before the call (confirmed by the leader with a heartbeat quorum)."""
        if self._stopping:
            raise errors.STOPPED()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.r.read(fut)
        deadline = timeout or self.request_timeout
        try:
            index = await _with_deadline(fut, deadline)
            await _with_deadline(self._applied.wait(index), deadline)
        except TimeoutError:
            raise errors.TIMEOUT() from None

    def local_range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """A Range served from this member's store as it is now (after read_index() if linearizable)."""
        return kv_apply.range(self.stores.kv, req)

    def local_txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """A read-only Txn served from this member's store as it is now (as local_range)."""
        return kv_apply.txn_read_only(self.stores.kv, req)

    def pending_proposals(self) -> int:
        return len(self._waiters)

    # ---- what the driver hands over (RaftNode's ReadyHost) -------------------------------------------------

    def in_flight(self) -> int:
        return len(self._waiters)

    def on_soft_state(self, ss: Any, was_leader: bool) -> None:
        if ss.leader != self.r.leader_id:
            if ss.leader != 0:
                metrics.LEADER_CHANGES.inc()
                self._leader_elected_at = time.monotonic()
            log.info("leader changed", leader=f"{ss.leader:x}", member_id=f"{self.member_id:x}")
        is_leader = ss.role == Role.LEADER
        if is_leader and not was_leader:
            # A new leader extends every lease by an election timeout: never expire early.
            self.stores.lessor.promote(self.cfg.election_timeout_ms / 1000.0)
        elif was_leader and not is_leader:
            self.stores.lessor.demote()

    # ---- apply -------------------------------------------------------------------------------------------

    def apply(self, node: RawNode, entries: list) -> None:
        batch = self.backend.batch()
        results: list[tuple[int, Any, int]] = []  # (request ID, outcome, revision as of the entry)
        applier = self.applier
        applier.events = []
        waiters = self._waiters
        kv = self.stores.kv  # no entry replaces the stores (only a snapshot install does)
        last = None
        for e in entries:
            if e.index <= self.applied_index:
                continue  # already in the backend (replay after restart)
            last = e
            if e.type == EntryType.CONF_CHANGE:
                outcome = self.membership_changes.apply_conf_change(node, batch, e)
                if outcome is not None:
                    results.append((*outcome, kv.current_revision))
                continue
            if not e.data:
                continue  # a new leader's empty entry
            req = rq.decode(e.data)
            applier.index = e.index
            result = applier.apply(batch, req)
            if waiters.wanted(req.id):
                # The revision as of this entry, not the batch's last (a later entry may move it).
                results.append((req.id, result, kv.current_revision))
        if last is None:
            return
        self.applied_index = last.index
        self.applied_term = last.term
        kv.set_consistent_index(batch, last.index, last.term)
        t = time.perf_counter()
        self.backend.write(batch, sync=False)
        metrics.BACKEND_COMMIT.observe(time.perf_counter() - t)
        kv.batch_written()
        events = applier.events
        applier.events = []
        revision = kv.current_revision
        if events:
            self.watchable.notify(events, revision)
        for req_id, result, entry_revision in results:
            if isinstance(result, errors.EtcdError) or result is None:
                waiters.resolve(req_id, result)
            else:
                if hasattr(result, "header"):
                    self.fill_header(result.header, entry_revision)
                waiters.resolve(req_id, result)
        self._applied.advance(self.applied_index)

    # ---- snapshots (RaftNode's ReadyHost, and the transport) ------------------------------------------------

    def mark_snapshot_install(self, snap: Any) -> None:
        self.snapshots.mark_install(snap)

    def install_snapshot(self, snap: Any) -> None:
        self.snapshots.install(snap)  # loads the file; self._restore reopens the stores on it
        if self.transport is not None:
            self.transport.update_members(self.stores.membership)
        log.info(
            "installed snapshot from leader",
            index=self.applied_index,
            revision=self.stores.kv.current_revision,
        )

    def _restore(self) -> None:
        """A snapshot was loaded into the backend: reopen the stores on it and catch up with them."""
        stores = self.stores
        stores.reload()
        self.watchable.restore(stores.kv)
        self.applied_index = stores.kv.consistent_index
        self.applied_term = stores.kv.consistent_term
        self._applied.advance(self.applied_index)
        self.auth.reload()

    def maybe_snapshot(self) -> None:
        self.snapshots.maybe_snapshot(self.applied_index, self.applied_term)

    async def receive_snapshot(self, msg: Message, path: str) -> None:
        """The transport stored a snapshot file from the leader: hand its message to Raft."""
        await self.snapshots.receive(msg, path)
        self.r.step(msg)

    async def snapshot_for_follower(self) -> tuple[str, SnapshotMetadata]:
        """A snapshot file of the current state and the Raft metadata describing exactly it."""
        return await self.snapshots.for_follower(self.applied_index, self.applied_term)

    # ---- from the transport ------------------------------------------------------------------------------

    def report_unreachable(self, peer: int) -> None:
        self.r.report_unreachable(peer)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.r.report_snapshot(peer, ok)

    def on_removed(self) -> None:
        """A peer told us we were removed from the cluster: stop serving, as etcd does."""
        if self.removed:
            return
        self.removed = True
        log.warning(
            "the member has been permanently removed from the cluster", member_id=f"{self.member_id:x}"
        )
        asyncio.get_running_loop().create_task(self.stop())

    # ---- periodic work -----------------------------------------------------------------------------------

    def compaction_scheduled(self) -> None:
        if not self._compaction_pending:
            self._compaction_pending = True
            self._spawn(self._compact_in_background(), "compaction")

    async def _compact_in_background(self) -> None:
        try:
            while not self.stores.kv.compact_step(1000):
                await asyncio.sleep(0.01)  # let client traffic through between chunks
        finally:
            self._compaction_pending = False

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
        doc = {
            "id": self.member_id,
            "name": self.cfg.name,
            "clientURLs": [str(u) for u in self.cfg.advertise_client_urls],
        }
        payload = json.dumps(doc).encode()
        while True:
            m = self.stores.membership.get(self.member_id)
            if m is not None and m.name == self.cfg.name and m.client_urls == doc["clientURLs"]:
                return
            try:
                await self.propose(rq.Kind.MEMBER_PUBLISH, payload, timeout=self.request_timeout)
                return
            except errors.EtcdError:
                await asyncio.sleep(0.5)

    # ---- status ---------------------------------------------------------------------------------------------

    def status(self) -> rpc_pb2.StatusResponse:
        errs: list[str] = []
        alarms = self.stores.alarms
        if alarms.any():
            errs.extend(f"memberID:{mid} alarm:{rpc_pb2.AlarmType.Name(a)} " for mid, a in alarms.list())
        return rpc_pb2.StatusResponse(
            header=self.header(),
            version=ETCD_VERSION,
            dbSize=self.backend.size(),
            dbSizeInUse=self.backend.size_in_use(),
            leader=self.leader_id,
            raftIndex=self.r.node.last_index if hasattr(self.r.node, "last_index") else self.applied_index,
            raftTerm=self.term,
            raftAppliedIndex=self.applied_index,
            errors=errs,
            isLearner=self.is_learner,
        )

    async def wait_compaction_done(self) -> None:
        while self._compaction_pending or self.stores.kv.compaction_unfinished():
            await asyncio.sleep(0.01)

    def new_request_id(self) -> int:
        return self._id_gen.next()

    # ---- leases and membership changes, for the API (ServerAPI) and the transport's forwarded calls -------

    async def lease_renew(self, lease_id: int) -> int:
        return await self.leases.renew(lease_id)

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int, list[bytes]]:
        return await self.leases.time_to_live(lease_id)

    def check_can_add_voter(self) -> None:
        self.membership_changes.check_can_add_voter()

    def check_can_remove(self, mid: int) -> None:
        self.membership_changes.check_can_remove(mid)

    async def promote_member(self, mid: int) -> list:
        return await self.membership_changes.promote(mid)

    async def move_leader(self, target: int) -> None:
        await self.membership_changes.move_leader(target)


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
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
