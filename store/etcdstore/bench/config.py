"""What one benchmark run does, and how it is split over processes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

WORKLOADS = ("put", "range", "txn", "delete", "watch")


@dataclass(frozen=True)
class BenchConfig:
    workload: str
    endpoints: tuple[str, ...]
    clients: int = 1
    conns: int = 0  # 0: one per 100 clients, at least one per process
    procs: int = 1
    total: int = 0  # requests in all; 0: run for `duration`
    duration: float = 10.0
    key_size: int = 8
    val_size: int = 256
    key_space: int = 10_000
    consistency: str = "l"  # range: l(inearizable) or s(erializable)
    txn_ops: int = 1
    rate: float = 0.0  # total requests/s cap; 0: as fast as possible
    watchers: int = 100
    watch_streams: int = 10
    prefill: bool = False
    timeout: float = 10.0  # per request
    tls: tuple[str | None, str | None, str | None] | None = None  # (ca, cert, key)
    label: str = ""

    @property
    def effective_conns(self) -> int:
        if self.conns > 0:
            return max(self.conns, self.procs)
        return max(self.procs, -(-self.clients // 100))

    def describe(self) -> str:
        parts = [
            f"workload={self.workload}",
            f"endpoints={','.join(self.endpoints)}",
            f"clients={self.clients}",
            f"conns={self.effective_conns}",
            f"procs={self.procs}",
            f"total={self.total}" if self.total else f"duration={self.duration:g}s",
            f"key-size={self.key_size}",
            f"val-size={self.val_size}",
            f"key-space={self.key_space}",
        ]
        if self.workload == "range":
            parts.append(f"consistency={self.consistency}")
        if self.workload == "txn":
            parts.append(f"txn-ops={self.txn_ops}")
        if self.workload == "watch":
            parts += [f"watchers={self.watchers}", f"watch-streams={self.watch_streams}"]
        if self.rate:
            parts.append(f"rate={self.rate:g}/s")
        if self.prefill:
            parts.append("prefill")
        if self.tls:
            parts.append("tls")
        return " ".join(parts)

    def with_(self, **changes: object) -> BenchConfig:
        return replace(self, **changes)  # type: ignore[arg-type]  # field types checked by dataclasses


def split(n: int, parts: int) -> list[int]:
    """n as `parts` near-equal shares, larger ones first."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


@dataclass(frozen=True)
class WorkerShare:
    """One process's part of a run."""

    index: int
    clients: int
    conns: int
    conn_offset: int  # spreads connections over the endpoints across processes
    total: int  # this process's request budget (0: duration)
    watchers: int
    watch_streams: int
    seed: int = 0
    key_offset: int = 0  # delete: this process deletes keys key_offset .. key_offset + total - 1


def shares(cfg: BenchConfig) -> list[WorkerShare]:
    p = cfg.procs
    clients = split(cfg.clients, p)
    conns = split(cfg.effective_conns, p)
    totals = split(cfg.total, p) if cfg.total else [0] * p
    watchers = split(cfg.watchers if cfg.workload == "watch" else 0, p)
    streams = split(cfg.watch_streams if cfg.workload == "watch" else 0, p)
    out = []
    offset = 0
    key_offsets = [sum(totals[:i]) for i in range(p)]
    for i in range(p):
        out.append(
            WorkerShare(
                index=i,
                clients=clients[i],
                conns=max(conns[i], 1),
                conn_offset=offset,
                total=totals[i],
                watchers=watchers[i],
                watch_streams=max(streams[i], 1 if watchers[i] else 0),
                seed=1000 + i,
                key_offset=key_offsets[i],
            )
        )
        offset += max(conns[i], 1)
    return out


@dataclass
class WorkerResult:
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: bytes = b""  # array('d') of seconds, successful requests
    start: float = 0.0  # time.monotonic() (CLOCK_MONOTONIC: comparable across processes)
    end: float = 0.0
    events: int = 0
    event_latencies: bytes = b""  # watch: put issued -> event read, seconds
    events_end: float = 0.0
    busy_cpu: float = 0.0  # CPU seconds this process used during the run
