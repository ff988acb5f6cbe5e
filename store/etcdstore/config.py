"""Server configuration from etcd's flags and ETCD_* environment variables.

Flag names, defaults and validation rules follow etcd 3.4 so that manifests, operators and
scripts written for etcd start our server unchanged. A flag given on the command line wins
over its environment variable (as in etcd). Any unknown flag or bad value raises
`ConfigError`; the CLI prints it and exits with status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_NAME = "default"
DEFAULT_CLIENT_URL = "http://localhost:2379"
DEFAULT_PEER_URL = "http://localhost:2380"
DEFAULT_QUOTA_BYTES = 2 * 1024**3
MAX_QUOTA_BYTES = 8 * 1024**3
MAX_ELECTION_MS = 50_000
LOG_LEVELS = ("debug", "info", "warn", "error", "panic", "fatal")


class ConfigError(ValueError):
    """A flag or environment variable that etcd would refuse."""


@dataclass(frozen=True, slots=True)
class URL:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(slots=True)
class ServerConfig:
    name: str = DEFAULT_NAME
    data_dir: str = ""
    listen_client_urls: list[URL] = field(default_factory=list)
    # etcd 3.5's split: when set, HTTP (health, metrics, gateway, v2) is served here only, and
    # the client URLs serve gRPC alone (bound directly by gRPC, which is faster).
    listen_client_http_urls: list[URL] = field(default_factory=list)
    advertise_client_urls: list[URL] = field(default_factory=list)
    listen_peer_urls: list[URL] = field(default_factory=list)
    initial_advertise_peer_urls: list[URL] = field(default_factory=list)
    initial_cluster: dict[str, list[URL]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    snapshot_count: int = 100_000
    snapshot_catchup_entries: int = 5_000
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    quota_backend_bytes: int = DEFAULT_QUOTA_BYTES
    max_txn_ops: int = 128
    max_request_bytes: int = 1536 * 1024
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    listen_metrics_urls: list[URL] = field(default_factory=list)
    log_level: str = "info"
    pre_vote: bool = True
    strict_reconfig_check: bool = True
    enable_v2: bool = False
    enable_grpc_gateway: bool = True
    # TLS (client side of the member, then peer side)
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    auto_tls: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    peer_auto_tls: bool = False
    # Auth
    auth_token: str = "simple"
    auth_token_ttl: int = 300
    bcrypt_cost: int = 10
    # Watch progress notifications for watchers that asked for them (etcd: 10 minutes).
    watch_progress_notify_interval: float = 600.0
    force_new_cluster: bool = False
    # Client gRPC server (api.h2): etcd 3.5's --max-concurrent-streams (0 or 2^32-1: no limit, as
    # grpc-go) and etcd's keepalive policy (grpc-go's enforcement; durations in seconds).
    max_concurrent_streams: int = 2**32 - 1
    grpc_keepalive_min_time: float = 5.0
    grpc_keepalive_interval: float = 2 * 3600.0
    grpc_keepalive_timeout: float = 20.0
    # Flags accepted for compatibility with etcd deployments that have no effect here;
    # recorded so the server can log that it ignored them.
    ignored: dict[str, str] = field(default_factory=dict)

    @property
    def election_ticks(self) -> int:
        return max(1, self.election_timeout_ms // self.heartbeat_interval_ms)

    @property
    def tick_seconds(self) -> float:
        return self.heartbeat_interval_ms / 1000.0


# ---- value parsers -------------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "t", "true", "yes", "on"):
        return True
    if low in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def parse_uint(text: str) -> int:
    value = int(text.strip(), 0)
    if value < 0:
        raise ValueError(f"negative value {text!r}")
    return value


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ("1h30m", "500ms", "10s") in seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}")
    return total


def parse_url(text: str) -> URL:
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https", "unix", "unixs"):
        raise ValueError(f'URL scheme must be http, https, unix, or unixs: {text}')
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f'URL must not contain a path: {text}')
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f'URL address does not have the form "host:port": {text}') from None
    if not parts.hostname or port is None:
        raise ValueError(f'URL address does not have the form "host:port": {text}')
    return URL(parts.scheme, parts.hostname, port)


def parse_urls(text: str) -> list[URL]:
    urls = [parse_url(u) for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("empty URL list")
    return urls


def parse_initial_cluster(text: str) -> dict[str, list[URL]]:
    """"name=url,name=url2,other=url3" -> {name: [url, url2], other: [url3]}."""
    cluster: dict[str, list[URL]] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--initial-cluster entry {item!r} must be name=url")
        cluster.setdefault(name, []).append(parse_url(url))
    return cluster


def _bindable(urls: list[URL], flag: str) -> None:
    # etcd binds only to IP addresses (or localhost), never to DNS names.
    for u in urls:
        if u.scheme.startswith("unix") or u.host == "localhost":
            continue
        try:
            ipaddress.ip_address(u.host)
        except ValueError:
            raise ConfigError(f'expected IP in URL for binding ({u}) in --{flag}') from None


# ---- flag table ----------------------------------------------------------------------------

# flag name -> (ServerConfig attribute, parser, default text or None for the dataclass default)
_FLAGS: dict[str, tuple[str, object]] = {
    "name": ("name", str),
    "data-dir": ("data_dir", str),
    "listen-client-urls": ("listen_client_urls", parse_urls),
    "listen-client-http-urls": ("listen_client_http_urls", parse_urls),
    "advertise-client-urls": ("advertise_client_urls", parse_urls),
    "listen-peer-urls": ("listen_peer_urls", parse_urls),
    "initial-advertise-peer-urls": ("initial_advertise_peer_urls", parse_urls),
    "initial-cluster": ("initial_cluster", parse_initial_cluster),
    "initial-cluster-state": ("initial_cluster_state", str),
    "initial-cluster-token": ("initial_cluster_token", str),
    "snapshot-count": ("snapshot_count", parse_uint),
    "experimental-snapshot-catchup-entries": ("snapshot_catchup_entries", parse_uint),
    "heartbeat-interval": ("heartbeat_interval_ms", parse_uint),
    "election-timeout": ("election_timeout_ms", parse_uint),
    "quota-backend-bytes": ("quota_backend_bytes", int),
    "max-txn-ops": ("max_txn_ops", parse_uint),
    "max-request-bytes": ("max_request_bytes", parse_uint),
    "auto-compaction-mode": ("auto_compaction_mode", str),
    "auto-compaction-retention": ("auto_compaction_retention", str),
    "listen-metrics-urls": ("listen_metrics_urls", parse_urls),
    "log-level": ("log_level", str),
    "pre-vote": ("pre_vote", parse_bool),
    "strict-reconfig-check": ("strict_reconfig_check", parse_bool),
    "enable-v2": ("enable_v2", parse_bool),
    "enable-grpc-gateway": ("enable_grpc_gateway", parse_bool),
    "cert-file": ("cert_file", str),
    "key-file": ("key_file", str),
    "trusted-ca-file": ("trusted_ca_file", str),
    "client-cert-auth": ("client_cert_auth", parse_bool),
    "auto-tls": ("auto_tls", parse_bool),
    "peer-cert-file": ("peer_cert_file", str),
    "peer-key-file": ("peer_key_file", str),
    "peer-trusted-ca-file": ("peer_trusted_ca_file", str),
    "peer-client-cert-auth": ("peer_client_cert_auth", parse_bool),
    "peer-auto-tls": ("peer_auto_tls", parse_bool),
    "auth-token": ("auth_token", str),
    "auth-token-ttl": ("auth_token_ttl", parse_uint),
    "bcrypt-cost": ("bcrypt_cost", parse_uint),
    "experimental-watch-progress-notify-interval": ("watch_progress_notify_interval", parse_duration),
    "force-new-cluster": ("force_new_cluster", parse_bool),
    "max-concurrent-streams": ("max_concurrent_streams", parse_uint),
    "grpc-keepalive-min-time": ("grpc_keepalive_min_time", parse_duration),
    "grpc-keepalive-interval": ("grpc_keepalive_interval", parse_duration),
    "grpc-keepalive-timeout": ("grpc_keepalive_timeout", parse_duration),
}
_BOOL_FLAGS = {name for name, (_, parser) in _FLAGS.items() if parser is parse_bool}
# Accepted so that etcd deployments start unchanged; they configure etcd internals we do not have.
_IGNORED_FLAGS = {
    "logger",
    "log-outputs",
    "max-snapshots",
    "max-wals",
    "metrics",
    "enable-pprof",
    "experimental-initial-corrupt-check",
    "experimental-corrupt-check-time",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "backend-batch-interval",
    "backend-batch-limit",
}
_IGNORED_BOOL_FLAGS = {"enable-pprof", "experimental-initial-corrupt-check", "experimental-enable-lease-checkpoint",
                       "experimental-enable-lease-checkpoint-persist"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2; we raise for exit 1
        raise ConfigError(message)


def _build_parser() -> _Parser:
    p = _Parser(prog="etcdstore", add_help=True, allow_abbrev=False,
                description="An etcd v3 compatible key-value store member. Flags are etcd's.")
    for name in list(_FLAGS) + sorted(_IGNORED_FLAGS):
        if name in _BOOL_FLAGS or name in _IGNORED_BOOL_FLAGS:
            # Go's flag package accepts "--flag" and "--flag=true|false".
            p.add_argument(f"--{name}", nargs="?", const="true", default=None, metavar="BOOL")
        else:
            p.add_argument(f"--{name}", default=None)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Build a validated ServerConfig from flags and ETCD_* environment variables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    # Go flags also accept a single dash ("-name x"); normalise to argparse's double dash.
    argv = ["-" + a if a.startswith("-") and not a.startswith("--") and len(a) > 2 else a for a in argv]
    ns = _build_parser().parse_args(argv)
    raw: dict[str, str] = {}
    for name in list(_FLAGS) + sorted(_IGNORED_FLAGS):
        value = getattr(ns, name.replace("-", "_"))
        env_name = "ETCD_" + name.upper().replace("-", "_")
        if value is None and env_name in environ:
            value = environ[env_name]
        if value is not None:
            raw[name] = value
    cfg = ServerConfig()
    for name, text in raw.items():
        if name in _IGNORED_FLAGS:
            cfg.ignored[name] = text
            continue
        attr, parser = _FLAGS[name]
        try:
            setattr(cfg, attr, parser(text))  # type: ignore[operator]
        except ValueError as e:
            raise ConfigError(f'invalid value "{text}" for flag --{name}: {e}') from None
    _apply_defaults(cfg, raw)
    _validate(cfg, raw)
    return cfg


def _apply_defaults(cfg: ServerConfig, raw: dict[str, str]) -> None:
    if not cfg.data_dir:
        cfg.data_dir = f"{cfg.name}.etcd"
    if "listen-client-urls" not in raw:
        cfg.listen_client_urls = [parse_url(DEFAULT_CLIENT_URL)]
    if "advertise-client-urls" not in raw:
        cfg.advertise_client_urls = [parse_url(DEFAULT_CLIENT_URL)]
    if "listen-peer-urls" not in raw:
        cfg.listen_peer_urls = [parse_url(DEFAULT_PEER_URL)]
    if "initial-advertise-peer-urls" not in raw:
        cfg.initial_advertise_peer_urls = [parse_url(DEFAULT_PEER_URL)]
    if "initial-cluster" not in raw:
        # etcd's default: this member alone, at its advertised peer URLs.
        cfg.initial_cluster = {cfg.name: list(cfg.initial_advertise_peer_urls)}
    if cfg.quota_backend_bytes <= 0:
        cfg.quota_backend_bytes = DEFAULT_QUOTA_BYTES
    elif cfg.quota_backend_bytes > MAX_QUOTA_BYTES:
        # etcd warns and caps the quota at 8 GiB.
        cfg.quota_backend_bytes = MAX_QUOTA_BYTES


def _validate(cfg: ServerConfig, raw: dict[str, str]) -> None:
    if cfg.initial_cluster_state not in ("new", "existing"):
        raise ConfigError(f'unexpected clusterState "{cfg.initial_cluster_state}"')
    if cfg.heartbeat_interval_ms <= 0:
        raise ConfigError(f"--heartbeat-interval must be >0 (set to {cfg.heartbeat_interval_ms}ms)")
    if cfg.election_timeout_ms <= 0:
        raise ConfigError(f"--election-timeout must be >0 (set to {cfg.election_timeout_ms}ms)")
    if 5 * cfg.heartbeat_interval_ms > cfg.election_timeout_ms:
        raise ConfigError(
            f"--election-timeout[{cfg.election_timeout_ms}ms] should be at least as 5 times as "
            f"--heartbeat-interval[{cfg.heartbeat_interval_ms}ms]"
        )
    if cfg.election_timeout_ms > MAX_ELECTION_MS:
        raise ConfigError(
            f"--election-timeout[{cfg.election_timeout_ms}ms] is too long, and should be set less than "
            f"{MAX_ELECTION_MS}ms"
        )
    if cfg.auto_compaction_mode not in ("", "periodic", "revision"):
        raise ConfigError(f'unknown auto-compaction-mode "{cfg.auto_compaction_mode}"')
    try:
        auto_compaction_retention(cfg)
    except ValueError as e:
        raise ConfigError(f"invalid --auto-compaction-retention: {e}") from None
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f'unknown log level "{cfg.log_level}" (want one of {", ".join(LOG_LEVELS)})')
    if cfg.max_txn_ops <= 0:
        raise ConfigError("--max-txn-ops must be > 0")
    if cfg.max_request_bytes <= 0:
        raise ConfigError("--max-request-bytes must be > 0")
    if cfg.max_concurrent_streams > 2**32 - 1:
        raise ConfigError(f"--max-concurrent-streams {cfg.max_concurrent_streams} is above 4294967295")
    if cfg.max_concurrent_streams == 0:
        cfg.max_concurrent_streams = 2**32 - 1  # grpc-go: 0 means no limit
    if cfg.snapshot_count <= 0:
        cfg.snapshot_count = 100_000  # etcd resets a zero snapshot count to its default
    _bindable(cfg.listen_client_urls, "listen-client-urls")
    _bindable(cfg.listen_client_http_urls, "listen-client-http-urls")
    _bindable(cfg.listen_peer_urls, "listen-peer-urls")
    _bindable(cfg.listen_metrics_urls, "listen-metrics-urls")
    for flag, has_https in (
        ("listen-client-urls", any(u.tls for u in cfg.listen_client_urls)),
        ("listen-peer-urls", any(u.tls for u in cfg.listen_peer_urls)),
    ):
        client = flag == "listen-client-urls"
        have_cert = (cfg.cert_file and cfg.key_file) if client else (cfg.peer_cert_file and cfg.peer_key_file)
        auto = cfg.auto_tls if client else cfg.peer_auto_tls
        if has_https and not have_cert and not auto:
            raise ConfigError(f"TLS key/cert (--{'' if client else 'peer-'}cert-file, "
                              f"--{'' if client else 'peer-'}key-file) must be provided for https in --{flag}")
    token_kind = cfg.auth_token.split(",", 1)[0]
    if token_kind not in ("simple", "jwt"):
        raise ConfigError(f'unknown token type "{token_kind}" in --auth-token')


def check_bootstrap(cfg: ServerConfig) -> None:
    """Checks etcd makes only when a member starts without a data dir (restarts ignore the flags)."""
    mine = cfg.initial_cluster.get(cfg.name)
    if mine is None:
        raise ConfigError(f'couldn\'t find local name "{cfg.name}" in the initial cluster configuration')
    if sorted(map(str, mine)) != sorted(map(str, cfg.initial_advertise_peer_urls)):
        raise ConfigError(
            f"--initial-cluster has {cfg.name}={','.join(map(str, mine))} but missing from "
            f"--initial-advertise-peer-urls={','.join(map(str, cfg.initial_advertise_peer_urls))}"
        )
    seen: dict[str, str] = {}
    for name, urls in cfg.initial_cluster.items():
        for u in urls:
            if str(u) in seen and seen[str(u)] != name:
                raise ConfigError(f"--initial-cluster has duplicate url {u}")
            seen[str(u)] = name


def auto_compaction_retention(cfg: ServerConfig) -> tuple[str, float]:
    """("periodic", seconds) or ("revision", revisions); retention 0 disables auto compaction.

    As in etcd, a bare number in periodic mode means hours.
    """
    text = cfg.auto_compaction_retention.strip() or "0"
    if cfg.auto_compaction_mode == "revision":
        return "revision", float(parse_uint(text))
    try:
        return "periodic", float(int(text)) * 3600.0
    except ValueError:
        return "periodic", parse_duration(text)
