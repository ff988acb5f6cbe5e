"""Fault injection: one fault at a time, held for a few seconds, healed, then the cluster must
become healthy again before the next one.

Fault kinds (the --faults names):
    kill            SIGKILL the leader or a follower, restart it on its data dir
    pause           SIGSTOP the leader or a follower, SIGCONT it
    partition       blackhole the peer links isolating the leader, or a minority of followers
                    (partition-leader / partition-minority: always that one)
    drop            lose packets on every peer link (emulated at the stream level, see netproxy)
    delay           75 ms +- 50 ms on every peer link
    member-replace  MemberRemove a member, wipe its data, MemberAdd it back, start it "existing"
Kinds are used round-robin in a seeded shuffled order, so a run of N faults over K kinds
injects each kind N/K times (a 2-fault smoke run with two kinds gets one of each).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from .cluster import Cluster

FAULTS = (
    "kill",
    "pause",
    "partition",
    "partition-leader",
    "partition-minority",
    "drop",
    "delay",
    "member-replace",
)
DEFAULT_FAULTS = ("kill", "pause", "partition", "drop", "delay", "member-replace")


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    healed: float = 0.0
    recovered: float = 0.0  # cluster healthy again
    error: str = ""

    def describe(self) -> str:
        took = f"{self.healed - self.start:.1f}s" if self.healed else "?"
        back = f", healthy after {self.recovered - self.healed:.1f}s" if self.recovered else ""
        err = f", ERROR {self.error}" if self.error else ""
        return f"{self.kind}({self.target}) held {took}{back}{err}"


@dataclass
class Nemesis:
    cluster: Cluster
    faults: list[str]
    rnd: random.Random
    hold: tuple[float, float] = (2.0, 5.0)
    gap: tuple[float, float] = (1.0, 3.0)
    recover_timeout: float = 60.0
    injected: list[Fault] = field(default_factory=list)
    max_faults: int | None = None

    def __post_init__(self) -> None:
        bad = set(self.faults) - set(FAULTS)
        if bad:
            raise ValueError(f"unknown faults {sorted(bad)}; known: {', '.join(FAULTS)}")
        self._order = list(self.faults)
        self.rnd.shuffle(self._order)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set() and (self.max_faults is None or n < self.max_faults):
            try:
                await asyncio.wait_for(stop.wait(), self.rnd.uniform(*self.gap))
                break
            except TimeoutError:
                pass
            kind = self._order[n % len(self._order)]
            n += 1
            await self.inject(kind, stop)

    async def _sleep_hold(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), self.rnd.uniform(*self.hold))
        except TimeoutError:
            pass

    async def _pick(self) -> str:
        """The leader half of the time, else a random follower."""
        names = list(self.cluster.members)
        try:
            leader = await self.cluster.leader(timeout=5)
        except TimeoutError:
            return self.rnd.choice(names)
        if self.rnd.random() < 0.5:
            return leader
        return self.rnd.choice([n for n in names if n != leader])

    async def inject(self, kind: str, stop: asyncio.Event) -> Fault:
        c = self.cluster
        target = await self._pick()
        f = Fault(kind, target, time.monotonic())
        self.injected.append(f)
        try:
            if kind == "kill":
                c.kill(target)
                await self._sleep_hold(stop)
                await c.restart(target)
            elif kind == "pause":
                c.pause(target)
                await self._sleep_hold(stop)
                c.resume(target)
            elif kind.startswith("partition"):
                names = list(c.members)
                leader = await c.leader(timeout=5)
                isolate_leader = (
                    self.rnd.random() < 0.5 if kind == "partition" else kind == "partition-leader"
                )
                if isolate_leader:
                    cut = [leader]
                else:
                    followers = [n for n in names if n != leader]
                    cut = self.rnd.sample(followers, max(1, (len(names) - 1) // 2))
                f.target = "+".join(cut) + (" (leader)" if leader in cut else "")
                rest = [n for n in names if n not in cut]
                await c.network(blackhole=c.links(cut, rest))
                await self._sleep_hold(stop)
                await c.heal()
            elif kind == "drop":
                links = [(a, b, 0.1) for a in c.members for b in c.members if a != b]
                f.target = "all links, p=0.1"
                await c.network(drop=links)
                await self._sleep_hold(stop)
                await c.heal()
            elif kind == "delay":
                links = [(a, b, 75.0, 50.0) for a in c.members for b in c.members if a != b]
                f.target = "all links, 75+-50ms"
                await c.network(delay=links)
                await self._sleep_hold(stop)
                await c.heal()
            elif kind == "member-replace":
                await c.replace(target)
            f.healed = time.monotonic()
            await c.wait_healthy(timeout=self.recover_timeout)
            f.recovered = time.monotonic()
        except Exception as e:  # noqa: BLE001 - recorded; the runner heals and reports
            f.error = f"{type(e).__name__}: {e}"
            f.healed = f.healed or time.monotonic()
            await self.heal_all()
        return f

    async def heal_all(self) -> None:
        c = self.cluster
        await c.heal()
        for name, m in c.members.items():
            if m.paused:
                c.resume(name)
            if not m.running:
                await c.restart(name)
