"""The Raft driver's two batching policies, as small pure objects (no clock, no I/O, no loop):
the driver (server/raftnode.py) asks them what to do and does it.

Group commit: under load, let more proposals join the next Ready, so one fsync, one replication
round and one apply batch serve many. Each Ready costs the same whatever it carries, and on a busy
machine that fixed cost is what limits throughput. The driver waits in short steps while requests
keep arriving, up to a cap, and stops as soon as a step brings none (a few clients have all sent
theirs and would only be delayed); a lone sequential client is never held back.

Read rounds: linearizable reads share ReadIndex rounds. A round costs a heartbeat to every follower
and their answers, so one round is in flight at a time, carrying every read that arrived meanwhile
(etcd's read loop does the same); reads that arrive during it join the next one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class GroupCommit:
    """When and how long the drive loop lets proposals gather before the next Ready.

    `step` (s): one wait; 0 turns group commit off. `cap` (s): the most one gathering waits.
    `target`: that many queued proposals go at once. `heavy`: a last batch this full means steady
    load, so the whole cap is waited (arrivals come in bursts: a quiet step is no sign the flow
    stopped)."""

    step: float = 0.001
    cap: float = 0.010
    target: int = 128
    heavy: int = 16

    @classmethod
    def from_env(cls, environ: Any = os.environ) -> GroupCommit:
        """ETCDSTORE_GROUP_COMMIT_US tunes the step (0 turns group commit off),
        ETCDSTORE_GROUP_COMMIT_MAX_US the cap."""
        return cls(
            step=float(environ.get("ETCDSTORE_GROUP_COMMIT_US", "1000")) / 1e6,
            cap=float(environ.get("ETCDSTORE_GROUP_COMMIT_MAX_US", "10000")) / 1e6,
        )

    @property
    def enabled(self) -> bool:
        return self.step > 0

    def busy(self, own_queued: int, forwarded: int, arrived_during_ready: int, in_flight: int) -> bool:
        """Whether waiting briefly for more proposals pays off: requests kept arriving while the
        last Ready was being handled, or other requests of ours are still in flight (a follower
        only forwards its proposals, a Ready that takes no time, so the first test alone would
        never hold it back and it would forward them a few at a time). A lone sequential client
        passes neither test (its next request waits for the previous answer): it never waits."""
        return (
            self.step > 0
            and (arrived_during_ready > 0 or in_flight > own_queued)
            and own_queued + forwarded < self.target
        )

    def gathering(self, queued: int, last_batch: int) -> Gathering:
        """One wait for more proposals, starting with `queued` of them waiting."""
        return Gathering(self, queued, last_batch >= self.heavy)


class Gathering:
    """One group-commit window. The driver loops `while g.open(): sleep(g.step) ...` and ends
    the window when `g.go(queued)` says so."""

    __slots__ = ("_heavy", "_policy", "_seen", "waited")

    def __init__(self, policy: GroupCommit, queued: int, heavy: bool) -> None:
        self._policy = policy
        self._seen = queued
        self._heavy = heavy
        self.waited = 0.0

    @property
    def step(self) -> float:
        return self._policy.step

    def open(self) -> bool:
        """Another step may be waited."""
        return self._policy.step > 0 and self.waited < self._policy.cap

    def go(self, queued: int) -> bool:
        """A step was waited and `queued` proposals now wait: whether the Ready should go now."""
        self.waited += self._policy.step
        if (queued == self._seen and not self._heavy) or queued >= self._policy.target:
            return True
        self._seen = queued
        return False


class ReadRounds:
    """ReadIndex bookkeeping: reads waiting for a round, and the round(s) out with their reads.

    Waiters are opaque (the driver's futures); `done(w)` tells which no longer need an answer."""

    __slots__ = ("_seq", "inflight", "waiting")

    def __init__(self) -> None:
        self.waiting: list[Any] = []
        self.inflight: dict[bytes, tuple[float, list[Any]]] = {}
        self._seq = 0

    def add(self, waiter: Any) -> None:
        self.waiting.append(waiter)

    def due(self) -> bool:
        """Reads wait and no round is out."""
        return bool(self.waiting) and not self.inflight

    def start(self, now: float) -> bytes:
        """Open a round for every waiting read; returns its request context."""
        self._seq += 1
        ctx = _U64.pack(self._seq)
        waiters, self.waiting = self.waiting, []
        self.inflight[ctx] = (now, waiters)
        return ctx

    def answered(self, ctx: bytes) -> list[Any]:
        """The round `ctx` got its read index: its reads (none for an unknown or retried round)."""
        entry = self.inflight.pop(ctx, None)
        return entry[1] if entry is not None else []

    def expire(self, now: float, retry_after: float, done: Any) -> bool:
        """Rounds out longer than `retry_after` lost their answer (lost message, leader change):
        their live reads wait again. Returns whether any read was put back."""
        requeued = False
        for ctx, (started, waiters) in list(self.inflight.items()):
            if now - started > retry_after:
                del self.inflight[ctx]
                live = [w for w in waiters if not done(w)]
                if live:
                    self.waiting.extend(live)
                    requeued = True
        return requeued

    def requeue_all(self, done: Any) -> None:
        """The leader changed: every round's live reads must be asked of the new one."""
        if self.inflight:
            for _, waiters in self.inflight.values():
                self.waiting.extend(w for w in waiters if not done(w))
            self.inflight.clear()

    def everyone(self) -> Iterable[Any]:
        """Every read still held (waiting or in a round)."""
        yield from self.waiting
        for _, waiters in self.inflight.values():
            yield from waiters
