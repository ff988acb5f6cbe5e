"""Prometheus metrics of the operator (served by `etcdoperator run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "etcdoperator_reconciles_total", "Reconcile steps taken", ["namespace", "cluster", "action"]
)
RECONCILE_ERRORS = Counter(
    "etcdoperator_reconcile_errors_total", "Reconcile steps that failed", ["namespace", "cluster"]
)
RECONCILE_SECONDS = Histogram(
    "etcdoperator_reconcile_duration_seconds",
    "Time of one reconcile step",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MEMBER_OPERATIONS = Counter(
    "etcdoperator_member_operations_total",
    "Membership and maintenance calls",
    ["namespace", "cluster", "operation", "result"],
)
MEMBERS = Gauge(
    "etcdoperator_cluster_members", "Members by role and health", ["namespace", "cluster", "role", "healthy"]
)
BACKUPS = Counter(
    "etcdoperator_backups_total", "Backups finished", ["namespace", "cluster", "kind", "result"]
)
BACKUP_BYTES = Gauge(
    "etcdoperator_last_backup_size_bytes", "Size of the last successful backup", ["namespace", "cluster"]
)
BACKUP_TIME = Gauge(
    "etcdoperator_last_backup_timestamp_seconds",
    "Time of the last successful backup",
    ["namespace", "cluster"],
)
