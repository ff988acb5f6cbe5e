"""etcd-compatible flags and environment variables."""

import subprocess
import sys

import pytest
from etcdstore import config as c


def test_defaults_match_etcd():
    cfg = c.parse_args([], {})
    assert cfg.name == "default" and cfg.data_dir == "default.etcd"
    assert [str(u) for u in cfg.listen_client_urls] == ["http://localhost:2379"]
    assert [str(u) for u in cfg.listen_peer_urls] == ["http://localhost:2380"]
    assert {k: [str(u) for u in v] for k, v in cfg.initial_cluster.items()} == {
        "default": ["http://localhost:2380"]
    }
    assert (cfg.heartbeat_interval_ms, cfg.election_timeout_ms, cfg.election_ticks) == (100, 1000, 10)
    assert cfg.max_txn_ops == 128 and cfg.max_request_bytes == 1572864
    assert cfg.quota_backend_bytes == 2 * 1024**3 and cfg.snapshot_count == 100_000


def test_flags_beat_environment_and_env_fills_the_rest():
    cfg = c.parse_args(
        ["--name", "n1"], {"ETCD_NAME": "ignored", "ETCD_DATA_DIR": "/var/x", "ETCD_AUTO_TLS": "true"}
    )
    assert cfg.name == "n1" and cfg.data_dir == "/var/x" and cfg.auto_tls


def test_go_style_flags():
    cfg = c.parse_args(
        [
            "-name=a",
            "--client-cert-auth",
            "--peer-client-cert-auth=false",
            "--initial-cluster",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
        ],
        {},
    )
    assert cfg.name == "a" and cfg.client_cert_auth and not cfg.peer_client_cert_auth
    assert list(cfg.initial_cluster) == ["a", "b"]
    c.check_bootstrap(cfg)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-such-flag"], "unrecognized arguments"),
        (["--heartbeat-interval=abc"], "--heartbeat-interval"),
        (["--election-timeout=400"], "at least as 5 times"),
        (["--election-timeout=60000", "--heartbeat-interval=100"], "too long"),
        (["--listen-client-urls", "http://example.com:2379"], "expected IP"),
        (["--listen-client-urls", "ftp://127.0.0.1:1"], "scheme"),
        (["--initial-cluster-state", "old"], "clusterState"),
        (["--auto-compaction-mode", "weekly"], "auto-compaction-mode"),
        (["--log-level", "loud"], "log level"),
        (["--listen-client-urls", "https://127.0.0.1:1"], "must be provided for https"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message):
    with pytest.raises(c.ConfigError, match=message):
        c.parse_args(argv, {})


def test_bootstrap_check_finds_missing_name():
    cfg = c.parse_args(["--name", "x", "--initial-cluster", "y=http://127.0.0.1:1"], {})
    with pytest.raises(c.ConfigError, match="couldn't find local name"):
        c.check_bootstrap(cfg)


def test_retention_forms():
    assert c.auto_compaction_retention(c.parse_args(["--auto-compaction-retention", "2"], {})) == (
        "periodic",
        7200.0,
    )
    assert c.auto_compaction_retention(c.parse_args(["--auto-compaction-retention", "90s"], {})) == (
        "periodic",
        90.0,
    )
    cfg = c.parse_args(["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"], {})
    assert c.auto_compaction_retention(cfg) == ("revision", 1000.0)


def test_cli_exits_1_on_bad_flag():
    proc = subprocess.run(
        [sys.executable, "-m", "etcdstore", "--bogus"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert "bogus" in proc.stderr
