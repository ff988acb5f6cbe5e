"""The benchmark command against a real etcd 3.4 member (small runs), and its wire encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from etcdstore.bench import main, wire
from etcdstore.bench.config import BenchConfig, shares, split
from etcdstore.bench.runner import percentiles
from etcdstore.proto.etcdserverpb import rpc_pb2
from testlib import Member, etcdctl, free_port


def test_wire_bytes_equal_protobuf() -> None:
    k, v = wire.key_bytes(300, 8), b"v" * 300
    assert k == b"\0" * 6 + b"\x01\x2c"
    assert wire.put_request(k, v) == rpc_pb2.PutRequest(key=k, value=v).SerializeToString()
    for s in (False, True):
        assert wire.range_request(k, s) == rpc_pb2.RangeRequest(key=k, serializable=s).SerializeToString()
    puts = [(wire.key_bytes(i, 8), v) for i in range(3)]
    expected = rpc_pb2.TxnRequest(
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=a, value=b)) for a, b in puts]
    )
    assert wire.txn_put_request(puts) == expected.SerializeToString()
    for key in (k, wire.key_bytes(0, 8), b"x" * 200):  # 200: a two-byte length varint
        assert wire.delete_range_request(key) == rpc_pb2.DeleteRangeRequest(key=key).SerializeToString()
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"wb/", range_end=b"wb0"))
    assert wire.watch_create_request(b"wb/", b"wb0") == create.SerializeToString()
    with pytest.raises(ValueError):
        wire.key_bytes(256, 4, b"abc")


def test_shares_and_percentiles() -> None:
    assert split(10, 3) == [4, 3, 3]
    cfg = BenchConfig("put", ("a",), clients=1000, procs=2, total=1001)
    parts = shares(cfg)
    assert [p.clients for p in parts] == [500, 500] and [p.total for p in parts] == [501, 500]
    assert cfg.effective_conns == 10 and [p.conns for p in parts] == [5, 5]
    # delete: each process its own run of keys, together 0..total-1.
    parts = shares(BenchConfig("delete", ("a",), clients=3, procs=3, total=10, key_space=10))
    assert [(p.key_offset, p.total) for p in parts] == [(0, 4), (4, 3), (7, 3)]
    from array import array

    p = percentiles(array("d", [i / 1000 for i in range(1, 101)]))
    assert (round(p["p50"]), round(p["p99"]), round(p["max"])) == (51, 100, 100)


def test_repeat_interleaves_sets_and_reports_medians() -> None:
    import io

    from etcdstore.bench.cli import print_table, schedule
    from etcdstore.bench.runner import Summary

    cfgs = [BenchConfig("put", ("e",), clients=c, label=lab) for c in (1, 100) for lab in ("etcd", "ours")]
    order = [(c.clients, c.label) for c in schedule(cfgs, 3)]
    # Rounds alternate which set goes first, so run order and drift weigh on both alike.
    assert order == [
        (1, "etcd"),
        (1, "ours"),
        (1, "ours"),
        (1, "etcd"),
        (1, "etcd"),
        (1, "ours"),
        (100, "etcd"),
        (100, "ours"),
        (100, "ours"),
        (100, "etcd"),
        (100, "etcd"),
        (100, "ours"),
    ]
    assert len(schedule(cfgs, 1)) == 4

    # Per-round ratios 0.5, 0.4, 0.6: median 0.50, range 0.40-0.60; each set's median run shown.
    thr = {"etcd": [1000.0, 2000.0, 1500.0], "ours": [500.0, 800.0, 900.0]}
    seen = {"etcd": 0, "ours": 0}
    results = []
    for c in schedule(cfgs[2:], 3):
        k = seen[c.label]
        seen[c.label] += 1
        results.append(Summary(c, ops=1, throughput=thr[c.label][k], latency_ms={"p50": 1.0, "p99": 2.0}))
    out = io.StringIO()
    print_table(results, out)
    row = out.getvalue().splitlines()[-1].split()
    assert row[:3] == ["put", "100", "1500.0"] and row[6] == "800.0"
    assert row[-2:] == ["0.50", "(0.40-0.60)"]


@pytest.mark.etcd
def test_put_and_range_runs_hit_the_server(etcd, capsys, tmp_path: Path) -> None:
    ep = etcd.endpoints[0]
    out_json = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "put",
                "--endpoints",
                ep,
                "--clients",
                "1,4",
                "--total",
                "200",
                "--key-space",
                "50",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "workload=put" in text and "p99 ms" in text
    rows = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [(r["clients"], r["ops"], r["errors"]) for r in rows] == [(1, 200, {}), (4, 200, {})]
    assert rows[0]["ops_per_s"] > 0 and rows[0]["latency_ms"]["p50"] > 0
    # 400 puts over a 50-key space: etcd's revision moved by 400, keys are 8 bytes.
    status = json.loads(etcdctl([ep], "endpoint", "status", "-w", "json").stdout)
    assert status[0]["Status"]["header"]["revision"] == 401
    keys = etcdctl([ep], "get", "", "--from-key", "--keys-only").stdout.split()
    assert 0 < len(keys) <= 50

    assert (
        main(
            [
                "range",
                "--endpoints",
                ep,
                "--clients",
                "8",
                "--total",
                "300",
                "--key-space",
                "300",
                "--consistency",
                "s",
                "--procs",
                "2",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    last = json.loads(out_json.read_text().splitlines()[-1])
    assert (last["workload"], last["procs"], last["ops"], last["errors"]) == ("range", 2, 300, {})
    assert "range-s" in capsys.readouterr().out
    # --prefill (default for range) wrote the whole key space.
    assert (
        json.loads(etcdctl([ep], "get", "", "--from-key", "--keys-only", "-w", "json").stdout)["count"] == 300
    )


@pytest.mark.etcd
def test_txn_watch_and_compare(etcd, capsys, tmp_path: Path) -> None:
    ep = etcd.endpoints[0]
    out_json = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "txn",
                "--endpoints",
                ep,
                "--clients",
                "4",
                "--total",
                "100",
                "--txn-ops",
                "3",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    status = json.loads(etcdctl([ep], "endpoint", "status", "-w", "json").stdout)
    rev = status[0]["Status"]["header"]["revision"]
    assert rev == 101  # one revision per txn
    assert (
        main(
            [
                "watch",
                "--endpoints",
                ep,
                "--clients",
                "2",
                "--total",
                "100",
                "--watchers",
                "6",
                "--watch-streams",
                "2",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    w = json.loads(out_json.read_text().splitlines()[-1])
    assert w["ops"] == 100 and w["events"] == w["events_expected"] == 600  # every watcher saw every put
    assert w["event_latency_ms"]["p50"] > 0 and w["events_per_s"] > 0
    capsys.readouterr()
    assert (
        main(
            ["put", "--compare", f"etcd={ep}", "--compare", f"again={ep}", "--clients", "2", "--total", "50"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "etcd ops/s" in table and "again ops/s" in table and "again/etcd" in table


def test_delete_removes_exactly_the_prefilled_keys(tmp_path: Path, capsys) -> None:
    """Op i deletes key i, written by the prefill: after the run those keys are gone, each delete
    removed one (a delete that removed nothing counts as an error) and made one revision."""
    out_json = tmp_path / "r.jsonl"
    with Member.single(tmp_path, binary="etcdstore") as m:
        ep = m.endpoint
        etcdctl([ep], "put", "zz-other", "kept")  # outside the benchmark's keys: left alone
        for procs in ("1", "2"):
            rev0 = json.loads(etcdctl([ep], "endpoint", "status", "-w", "json").stdout)[0]["Status"][
                "header"
            ]["revision"]
            argv = ["delete", "--endpoints", ep, "--clients", "5", "--procs", procs, "--total", "300"]
            assert main([*argv, "--json", str(out_json)]) == 0
            run = json.loads(out_json.read_text().splitlines()[-1])
            assert (run["workload"], run["procs"], run["ops"], run["errors"]) == (
                "delete",
                int(procs),
                300,
                {},
            )
            assert "key-space=300" in run["config"] and "prefill" in run["config"]
            # 300 keys of 8 bytes: the prefill's 3 txns (128 puts each at most), then 300 deletes.
            rev = json.loads(etcdctl([ep], "endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"][
                "revision"
            ]
            assert rev == rev0 + 3 + 300
            left = etcdctl([ep], "get", "", "--from-key", "--keys-only").stdout.split()
            assert left == ["zz-other"]
        assert "delete" in capsys.readouterr().out
        # Without --total there is no set of keys to delete.
        with pytest.raises(SystemExit, match="--total"):
            main(["delete", "--endpoints", ep, "--duration", "1"])
        # Without the prefill the keys are gone already: deletes that remove nothing are errors, not ops.
        assert (
            main(["delete", "--endpoints", ep, "--total", "20", "--no-prefill", "--json", str(out_json)]) == 0
        )
        run = json.loads(out_json.read_text().splitlines()[-1])
        assert (run["ops"], run["errors"]) == (0, {"NOT_DELETED": 20})
        assert "NOT_DELETED" in capsys.readouterr().out


def test_unreachable_endpoint_fails_cleanly(capsys) -> None:
    assert main(["put", "--endpoints", f"127.0.0.1:{free_port()}", "--total", "10", "--timeout", "1"]) == 1
    assert "failed" in capsys.readouterr().out


@pytest.mark.etcd
def test_rate_cap_and_tls(etcd_tls, tls_files, tmp_path: Path) -> None:
    out_json = tmp_path / "r.jsonl"
    ep = etcd_tls.members[0].client_url  # https://
    tls = tls_files.etcdctl_args()  # the bench takes etcdctl's flags
    assert (
        main(
            [
                "put",
                "--endpoints",
                ep,
                "--clients",
                "2",
                "--total",
                "100",
                "--rate",
                "200",
                "--json",
                str(out_json),
                *tls,
            ]
        )
        == 0
    )
    r = json.loads(out_json.read_text())
    assert r["ops"] == 100 and r["errors"] == {}
    # Functional check of the cap (a slow machine cannot break it): never above 200/s (7.5% slack
    # for rounding of the measured window). The lower bound is a speed claim: -m slow below.
    assert r["ops_per_s"] <= 215
    assert main(["put", "--endpoints", ep, "--total", "5", "--timeout", "2"]) == 1  # no certs: refused


def test_grpc_floor_server_answers_the_bench(tmp_path: Path) -> None:
    """The no-op server that measures grpcio's own cost serves Put and Range to the bench."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcdstore.bench.grpc_floor", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "no-op etcd KV gRPC server" in proc.stdout.readline()
        out_json = tmp_path / "r.jsonl"
        for workload in ("put", "range"):
            args = [
                workload,
                "--endpoints",
                f"127.0.0.1:{port}",
                "--clients",
                "4",
                "--total",
                "200",
                "--json",
                str(out_json),
                "--no-prefill",
            ]
            assert main(args) == 0
        rows = [json.loads(line) for line in out_json.read_text().splitlines()]
        assert [(r["workload"], r["ops"], r["errors"]) for r in rows] == [
            ("put", 200, {}),
            ("range", 200, {}),
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.etcd
def test_rate_cap_is_reached(etcd, tmp_path: Path) -> None:
    """Throughput (slow only): a paced run of 100 requests at 200/s comes close to the cap."""
    out_json = tmp_path / "r.jsonl"
    ep = etcd.endpoints[0]
    args = [
        "put",
        "--endpoints",
        ep,
        "--clients",
        "2",
        "--total",
        "100",
        "--rate",
        "200",
        "--json",
        str(out_json),
    ]
    assert main(args) == 0
    r = json.loads(out_json.read_text())
    assert r["ops"] == 100 and r["errors"] == {}
    assert 150 < r["ops_per_s"] <= 215
