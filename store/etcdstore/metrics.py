"""Prometheus metrics under etcd's names, so existing etcd dashboards and alerts work.

Values that can be read off the server when scraped (leader, sizes, indexes, revision,
counts) come from a collector at scrape time and cost nothing on the request path. Counters
and histograms that must be updated as things happen (fsync and commit durations, gRPC
request counts, leader changes) use pre-bound label children, a few hundred nanoseconds
each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from etcdstore import ETCD_VERSION

if TYPE_CHECKING:
    # the member: this module sits below the server (docs/architecture.md)
    from typing import Any as EtcdServer


def _exponential(start: float, factor: float, count: int) -> list[float]:
    return [start * factor**i for i in range(count)]


# etcd's bucket layouts (prometheus.ExponentialBuckets in its source).
WAL_FSYNC = Histogram(
    "etcd_disk_wal_fsync_duration_seconds",
    "The latency distributions of fsync called by WAL.",
    buckets=_exponential(0.001, 2, 14),
)
BACKEND_COMMIT = Histogram(
    "etcd_disk_backend_commit_duration_seconds",
    "The latency distributions of commit called by backend.",
    buckets=_exponential(0.001, 2, 14),
)
LEADER_CHANGES = Counter("etcd_server_leader_changes_seen", "The number of leader changes seen.")
PROPOSALS_FAILED = Counter("etcd_server_proposals_failed", "The total number of failed proposals seen.")
SLOW_APPLY = Counter(
    "etcd_server_slow_apply", "The total number of slow apply requests (likely overloaded from slow disk)."
)
HEALTH_SUCCESS = Counter("etcd_server_health_success", "The total number of successful health checks")
HEALTH_FAILURES = Counter("etcd_server_health_failures", "The total number of failed health checks")
PEER_RTT = Histogram(
    "etcd_network_peer_round_trip_time_seconds",
    "Round-Trip-Time histogram between peers",
    ["To"],
    buckets=_exponential(0.0001, 2, 16),
)
PEER_SENT_FAILURES = Counter(
    "etcd_network_peer_sent_failures", "The total number of send failures from peers.", ["To"]
)
SNAPSHOT_SAVE = Histogram(
    "etcd_debugging_snap_save_total_duration_seconds",
    "The total latency distributions of save called by snapshot.",
    buckets=_exponential(0.001, 2, 14),
)
GRPC_STARTED = Counter(
    "grpc_server_started",
    "Total number of RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
# grpc-go's prometheus interceptor keeps the handling-time histogram only once enabled, which etcd does
# for --metrics=extensive; with the default (basic) a call costs two counter increments and no clock reads.
GRPC_HANDLING: Histogram | None = None


def enable_handling_histogram() -> None:
    """Export grpc_server_handling_seconds from now on (etcd --metrics=extensive). Like grpc-go's
    EnableHandlingTimeHistogram it is process-wide and stays on."""
    global GRPC_HANDLING
    if GRPC_HANDLING is not None:
        return
    GRPC_HANDLING = Histogram(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        ["grpc_type", "grpc_service", "grpc_method"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    _bound.clear()  # bound again with the histogram (api.common.unary rebinds when it sees it set)


_bound: dict[tuple, tuple] = {}


def rpc_metrics(service: str, method: str, kind: str = "unary") -> tuple:
    """(started counter, handling histogram or None when basic, code -> handled counter) for one RPC,
    bound once."""
    key = (service, method, kind)
    got = _bound.get(key)
    if got is None:
        handled: dict[str, object] = {}

        def handled_for(code: str, _h=handled, _k=key) -> object:
            c = _h.get(code)
            if c is None:
                c = _h[code] = GRPC_HANDLED.labels(_k[2], _k[0], _k[1], code)
            return c

        got = _bound[key] = (
            GRPC_STARTED.labels(kind, service, method),
            None if GRPC_HANDLING is None else GRPC_HANDLING.labels(kind, service, method),
            handled_for,
        )
    return got


class ServerCollector(Collector):
    """Gauges read off a running member at scrape time."""

    def __init__(self, server: EtcdServer) -> None:
        self.s = server
        self.started = time.time()

    def collect(self) -> Iterator:
        s = self.s
        yield GaugeMetricFamily(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            value=1 if s.leader_id else 0,
        )
        yield GaugeMetricFamily(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            value=1 if s.is_leader else 0,
        )
        yield GaugeMetricFamily(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            value=1 if s.is_learner else 0,
        )
        g = GaugeMetricFamily(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            labels=["server_id"],
        )
        g.add_metric([f"{s.member_id:x}"], 1)
        yield g
        g = GaugeMetricFamily(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            labels=["server_version"],
        )
        g.add_metric([ETCD_VERSION], 1)
        yield g
        yield GaugeMetricFamily(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            value=s.raft_storage.hard_state.commit,
        )
        yield GaugeMetricFamily(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            value=s.applied_index,
        )
        yield GaugeMetricFamily(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            value=s.pending_proposals(),
        )
        yield GaugeMetricFamily(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            value=s.cfg.quota_backend_bytes,
        )
        size = s.backend.size()
        yield GaugeMetricFamily(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            value=size,
        )
        yield GaugeMetricFamily(
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            value=size,
        )
        yield GaugeMetricFamily(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            value=s.backend.size_in_use(),
        )
        yield GaugeMetricFamily(
            "etcd_debugging_mvcc_keys_total", "Total number of keys.", value=s.kv.key_count()
        )
        yield GaugeMetricFamily(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            value=s.kv.current_revision,
        )
        yield GaugeMetricFamily(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            value=max(s.kv.compact_revision, 0),
        )
        yield GaugeMetricFamily("etcd_debugging_lease_total", "The number of leases.", value=len(s.lessor))
        stats = s.watchable.stats() if hasattr(s.watchable, "stats") else {}
        yield GaugeMetricFamily(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            value=stats.get("synced", 0) + stats.get("unsynced", 0) + stats.get("victims", 0),
        )
        yield GaugeMetricFamily(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers.",
            value=stats.get("unsynced", 0) + stats.get("victims", 0),
        )
        yield CounterMetricFamily(
            "etcd_server_heartbeat_send_failures",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            value=0,
        )


_collector: list[ServerCollector] = []


def install(server: EtcdServer) -> None:
    """Point the scrape-time collector at this member (one member per process in production;
    tests that start several in one process see the latest)."""
    if _collector:
        REGISTRY.unregister(_collector.pop())
    c = ServerCollector(server)
    REGISTRY.register(c)
    _collector.append(c)
