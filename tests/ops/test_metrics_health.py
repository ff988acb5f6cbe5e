"""Prometheus metrics under etcd's names, on the client port and --listen-metrics-urls; /health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from testlib import Cluster, etcdctl, eventually, free_port, have_etcd

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcdctl 3.4 not installed")


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    for s in metrics[name]:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, labels))


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_metrics_move_with_traffic_and_metrics_port(tmp_path):
    metrics_port = free_port()
    with Cluster.start(
        tmp_path,
        1,
        binary="etcdstore",
        extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"],
    ) as c:
        ep = c.endpoints[0]
        before = scrape(f"http://{ep}/metrics")
        for i in range(20):
            etcdctl([ep], "put", f"k{i}", "v")
        etcdctl([ep], "get", "k", "--prefix")
        after = scrape(f"http://{ep}/metrics")
        assert value(after, "etcd_server_has_leader") == 1
        assert value(after, "etcd_server_is_leader") == 1
        assert (
            value(after, "etcd_server_proposals_committed_total")
            >= value(before, "etcd_server_proposals_committed_total") + 20
        )
        assert (
            value(after, "etcd_server_proposals_applied_total")
            >= value(before, "etcd_server_proposals_applied_total") + 20
        )
        assert value(after, "etcd_disk_wal_fsync_duration_seconds_count") > value(
            before, "etcd_disk_wal_fsync_duration_seconds_count"
        )
        assert value(after, "etcd_disk_backend_commit_duration_seconds_count") > value(
            before, "etcd_disk_backend_commit_duration_seconds_count"
        )
        assert (
            value(
                after,
                "grpc_server_handled_total",
                grpc_method="Put",
                grpc_code="OK",
                grpc_service="etcdserverpb.KV",
            )
            >= 20
        )
        assert value(after, "grpc_server_started_total", grpc_method="Range", grpc_type="unary") >= 1
        assert value(after, "etcd_mvcc_db_total_size_in_bytes") > 0
        assert value(after, "etcd_debugging_mvcc_keys_total") == 20
        assert value(after, "etcd_server_leader_changes_seen_total") >= 1
        assert value(after, "etcd_server_version", server_version="3.4.23") == 1
        # Errors are counted under gRPC's code names, as grpc-prometheus does.
        etcdctl([ep], "get", "k0", "--rev", "9999", check=False)
        errs = scrape(f"http://{ep}/metrics")
        assert value(errs, "grpc_server_handled_total", grpc_method="Range", grpc_code="OutOfRange") >= 1
        # The dedicated metrics listener serves the same registry, and /health.
        side = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert value(side, "etcd_server_has_leader") == 1
        assert health(f"http://127.0.0.1:{metrics_port}/health") == (200, {"health": "true"})


@pytest.mark.parametrize("binary", ["etcd", "etcdstore"])
@pytest.mark.parametrize("level", ["basic", "extensive"])
def test_handling_histogram_only_with_metrics_extensive(tmp_path, binary, level):
    """etcd keeps grpc_server_handling_seconds only with --metrics=extensive; the counters always."""
    with Cluster.start(tmp_path, 1, binary=binary, extra_args=["--metrics", level]) as c:
        ep = c.endpoints[0]
        etcdctl([ep], "put", "k", "v")
        got = scrape(f"http://{ep}/metrics")
        put = {"grpc_method": "Put", "grpc_service": "etcdserverpb.KV", "grpc_type": "unary"}
        assert value(got, "grpc_server_started_total", **put) >= 1
        assert value(got, "grpc_server_handled_total", grpc_code="OK", **put) >= 1
        if level == "extensive":
            assert value(got, "grpc_server_handling_seconds_count", **put) >= 1
        else:
            assert "grpc_server_handling_seconds_count" not in got


def test_health_false_without_leader(tmp_path):
    with Cluster.start(
        tmp_path,
        3,
        binary="etcdstore",
        extra_args=["--heartbeat-interval", "50", "--election-timeout", "500"],
    ) as c:
        ep = c.members[0].endpoint
        assert health(f"http://{ep}/health") == (200, {"health": "true"})
        for m in c.members[1:]:
            m.kill()

        def unhealthy() -> dict | None:
            status, body = health(f"http://{ep}/health")
            return body if status == 503 else None

        body = eventually(unhealthy, 10, 0.3, message="/health 503 after quorum loss")
        assert body == {"health": "false"}
        m = scrape(f"http://{ep}/metrics")
        assert value(m, "etcd_server_health_failures_total") >= 1
        eventually(
            lambda: value(scrape(f"http://{ep}/metrics"), "etcd_server_has_leader") == 0,
            10,
            0.3,
            message="etcd_server_has_leader 0",
        )
