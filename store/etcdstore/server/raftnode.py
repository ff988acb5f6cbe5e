"""The Raft node driver (etcd's raftNode): the only code that touches the Raft state machine.

It owns the RawNode, the Ready loop, persistence of entries, hard state and snapshots, sending
messages, and ticking. The server (the apply and request side) talks to it through queues and
wakes it:

    client request --propose()--> proposal queue --+
    peer message  ---step()-----> inbound queue ---+--> drive loop: step/propose/tick
    ticker        ---tick()-----> tick counter ----+        |
                                                            v
        Ready: persist entries + hard state (synced) -> send messages ->
               host.apply(committed entries) -> serve read states -> advance

Proposals queue up while the previous Ready is being fsynced, so under load each Ready carries
many entries: one fsync and one apply batch amortised over all of them. The leader sends its
messages before persisting (Raft allows it: the leader counts its own entries toward commit only
after they are durable). How long proposals may gather, and how reads share ReadIndex rounds, are
the policies' (server/policies.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Protocol

from etcdstore import metrics
from etcdstore.logs import get_logger
from etcdstore.raft import RawNode
from etcdstore.raft.errors import ProposalDropped
from etcdstore.raft.records import ConfChange, Message, MessageType, Role
from etcdstore.server.policies import GroupCommit, ReadRounds
from etcdstore.storage.backend import Backend
from etcdstore.storage.raftlog import RaftLogStorage

log = get_logger("etcdstore.server")

_MAX_PROPOSALS_PER_READY = 4096


class ReadyHost(Protocol):
    """What the driver hands to the server's apply side (implemented by EtcdServer)."""

    applied_index: int
    transport: Any

    def in_flight(self) -> int:
        """Requests of this member still waiting for their entry to be applied."""
        ...

    def on_soft_state(self, ss: Any, was_leader: bool) -> None: ...
    def mark_snapshot_install(self, snap: Any) -> None: ...
    def install_snapshot(self, snap: Any) -> None: ...
    def apply(self, node: RawNode, entries: list) -> None: ...
    def maybe_snapshot(self) -> None: ...


class RaftNode:
    def __init__(
        self,
        node: RawNode,
        storage: RaftLogStorage,
        backend: Backend,
        host: ReadyHost,
        *,
        tick_seconds: float,
        heartbeat_seconds: float,
        group_commit: GroupCommit,
    ) -> None:
        self.node = node
        self.storage = storage
        self.backend = backend
        self.host = host
        self.tick_seconds = tick_seconds
        self.read_retry_after = max(0.5, 2 * heartbeat_seconds)
        self.group_commit = group_commit
        self.reads = ReadRounds()
        # Leadership as last seen in a Ready's soft state.
        self.leader_id = 0
        self.role = Role.FOLLOWER
        self.term = node.term
        self.campaign_when_applied = False
        self._proposals: list[bytes] = []
        self._conf_proposals: list[ConfChange] = []
        self._inbound: list[Message] = []
        self._ticks = 0
        self._reports: list[tuple[str, int, bool]] = []
        self._transfer_to = 0
        self._arrived_during_ready = 0  # proposals that queued while the last Ready was handled
        self._answers = 0  # messages other than MsgProp waiting in _inbound
        self._forwarded = 0  # entries in MsgProp messages waiting in _inbound (a leader's followers' clients)
        self._last_batch = 0  # proposals (own and forwarded) fed to Raft the last time there were any
        self._disk = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raft-disk")
        self._wake: asyncio.Event | None = None

    # ---- inputs ------------------------------------------------------------------------------------------

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def step(self, msg: Message) -> None:
        """A message from a peer (called by the transport)."""
        self._inbound.append(msg)
        if msg.type == MessageType.PROP:
            self._forwarded += len(msg.entries)
        else:
            self._answers += 1
        self.kick()

    def propose(self, data: bytes) -> None:
        self._proposals.append(data)
        self.kick()

    def propose_conf_change(self, cc: ConfChange) -> None:
        self._conf_proposals.append(cc)
        self.kick()

    def read(self, waiter: asyncio.Future[int]) -> None:
        """`waiter` gets the read index of the next ReadIndex round."""
        self.reads.add(waiter)
        self.kick()

    def transfer_leadership(self, target: int) -> None:
        self._transfer_to = target
        self.kick()

    def report_unreachable(self, peer: int) -> None:
        self._reports.append(("unreachable", peer, False))
        self.kick()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self._reports.append(("snapshot", peer, ok))
        self.kick()

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()

    def fail_reads(self, err: Exception) -> None:
        for fut in self.reads.everyone():
            if not fut.done():
                fut.set_exception(err)

    def stop(self) -> None:
        self._disk.shutdown(wait=True)

    # ---- the drive loop ----------------------------------------------------------------------------------

    async def ticker(self) -> None:
        interval = self.tick_seconds
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if next_at < loop.time():  # the loop fell far behind: do not burst ticks
                next_at = loop.time() + interval
            self._ticks += 1
            self.kick()

    async def run(self) -> None:
        node = self.node
        wake = self._wake
        assert wake is not None
        reads = self.reads
        while True:
            # Proposals and reads can only be fed once a leader is known; until then they wait
            # (their own deadlines bound them) and only ticks and messages wake the loop.
            actionable = (
                self._inbound
                or self._ticks
                or self._transfer_to
                or self._reports
                or (self.leader_id != 0 and (self._proposals or self._conf_proposals or reads.due()))
            )
            if not actionable and not node.has_ready():
                wake.clear()
                await wake.wait()
            elif (self._proposals or self._forwarded) and self._busy():
                await self._gather_proposals()
            else:
                await asyncio.sleep(0)  # let client handlers run between Readies
            self._feed(node)
            # One Ready per turn, then back to the top, which yields: requests that arrived while
            # this Ready was on disk run their handlers and join the next one.
            if await self._handle_one_ready(node):
                self._arrived_during_ready = self._queued()
            self._check_read_timeouts()

    def _queued(self) -> int:
        """Proposals waiting for the next Ready: this member's own and those forwarded to it."""
        return len(self._proposals) + self._forwarded

    def _busy(self) -> bool:
        return self.group_commit.busy(
            len(self._proposals), self._forwarded, self._arrived_during_ready, self.host.in_flight()
        )

    async def _gather_proposals(self) -> None:
        """Group commit (see GroupCommit): wait in steps while proposals keep arriving."""
        g = self.group_commit.gathering(self._queued(), self._last_batch)
        while g.open():
            await asyncio.sleep(g.step)
            if self._answers and self.role == Role.LEADER:
                await self._commit_early()
            if g.go(self._queued()):
                return

    async def _commit_early(self) -> None:
        """A leader gathering proposals steps the answers that came meanwhile (appends acked,
        heartbeats answered) and handles their Ready at once: what they commit is applied and
        answered now, as etcd's loop would, instead of after the window closes, ~10 ms later
        under load. Forwarded proposals stay queued for the Ready the window is for."""
        node = self.node
        keep: list[Message] = []
        answers: list[Message] = []
        for m in self._inbound:
            (keep if m.type == MessageType.PROP else answers).append(m)
        self._inbound = keep
        self._answers = 0
        node.begin_batch()
        try:
            _step_all(node, answers)
        finally:
            node.end_batch()
        await self._handle_one_ready(node)

    async def _handle_one_ready(self, node: RawNode) -> bool:
        """Persist, send and apply the node's Ready, if it has one."""
        if not node.has_ready():
            return False
        rd = node.ready()
        await self._handle_ready(node, rd)
        node.advance(rd)
        return True

    def _feed(self, node: RawNode) -> None:
        if self.campaign_when_applied and self.host.applied_index >= node.commit_index:
            self.campaign_when_applied = False
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
        # One broadcast for everything stepped and proposed here: otherwise a leader sends each
        # follower a MsgApp per forwarded batch and per commit, and each is acked separately.
        node.begin_batch()
        try:
            fed = self._forwarded
            if self._inbound:
                msgs, self._inbound = self._inbound, []
                self._forwarded = 0
                self._answers = 0
                _step_all(node, msgs)
            if self._proposals and self.leader_id != 0:
                batch = self._proposals[:_MAX_PROPOSALS_PER_READY]
                try:
                    node.propose_batch(batch)
                except ProposalDropped:
                    # No leader right now or a transfer in progress: keep them queued; each client's
                    # own deadline bounds the wait, as etcd's blocking Propose does.
                    pass
                else:
                    del self._proposals[: len(batch)]
                    fed += len(batch)
            if fed:
                self._last_batch = fed
            if self._conf_proposals and self.leader_id != 0:
                cc = self._conf_proposals[0]
                try:
                    node.propose_conf_change(cc)
                except ProposalDropped:
                    pass  # another change is pending; retried on the next pass
                else:
                    self._conf_proposals.pop(0)
        finally:
            node.end_batch()
        if self.leader_id != 0 and self.reads.due():
            ctx = self.reads.start(time.monotonic())
            try:
                node.read_index(ctx)
            except ProposalDropped:
                pass  # retried by _check_read_timeouts
        if self._transfer_to:
            target, self._transfer_to = self._transfer_to, 0
            node.transfer_leadership(target)

    def _check_read_timeouts(self) -> None:
        """Re-issue read index rounds that got no answer (lost message, leader change)."""
        if self.reads.inflight and self.reads.expire(time.monotonic(), self.read_retry_after, _done):
            self.kick()

    async def _handle_ready(self, node: RawNode, rd: Any) -> None:
        host = self.host
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        transport = host.transport
        early = rd.can_send_early
        if early and rd.messages and transport is not None:
            transport.send(rd.messages)
        if rd.snapshot is not None:
            host.mark_snapshot_install(rd.snapshot)
        if rd.entries or rd.snapshot is not None or rd.hard_state is not None:
            # Written unsynced here (microseconds); when the Ready must be durable before its
            # messages go out, the WAL is then fsynced on the disk thread. rocksdict releases the
            # GIL during that fsync but not during a synced write, so the loop keeps taking
            # requests meanwhile and they join the next Ready (docs/performance.md). A
            # commit-index-only change needs no fsync: Raft recovers it.
            t = time.perf_counter()
            self.storage.save(rd.entries, rd.hard_state, rd.snapshot, False)
            if rd.must_sync:
                await asyncio.get_running_loop().run_in_executor(self._disk, self.backend.sync_wal)
                metrics.WAL_FSYNC.observe(time.perf_counter() - t)
        if rd.snapshot is not None:
            host.install_snapshot(rd.snapshot)
        if not early and rd.messages and transport is not None:
            transport.send(rd.messages)
        if rd.committed_entries:
            host.apply(node, rd.committed_entries)
        for rs in rd.read_states:
            for fut in self.reads.answered(rs.request_ctx):
                if not fut.done():
                    fut.set_result(rs.index)
        host.maybe_snapshot()

    def _on_soft_state(self, ss: Any) -> None:
        was_leader = self.role == Role.LEADER
        self.host.on_soft_state(ss, was_leader)
        self.leader_id = ss.leader
        self.role = ss.role
        # Reads waiting on a leader that went away must be re-issued to the new one.
        self.reads.requeue_all(_done)


def _done(fut: asyncio.Future) -> bool:
    return fut.done()


def _step_all(node: RawNode, msgs: list[Message]) -> None:
    for m in msgs:
        try:
            node.step(m)
        except Exception as e:  # noqa: BLE001 - a malformed message must not kill the member
            log.warning("dropping raft message", type=getattr(m, "type", None), error=str(e))
