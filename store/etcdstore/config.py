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
    # Bootstrap by discovery (etcdstore.discovery turns these into initial_cluster before the start).
    discovery: str = ""
    discovery_fallback: str = "proxy"
    discovery_proxy: str = ""
    discovery_srv: str = ""
    discovery_srv_name: str = ""
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
    # etcd's --metrics: "extensive" adds the gRPC handling-time histogram; anything else is basic.
    metrics: str = "basic"
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
        raise ValueError(f"URL scheme must be http, https, unix, or unixs: {text}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"URL must not contain a path: {text}")
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
    """ "name=url,name=url2,other=url3" -> {name: [url, url2], other: [url3]}."""
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


def parse_fallback(text: str) -> str:
    if text not in ("proxy", "exit"):
        raise ValueError("invalid value")
    return text


def _bindable(urls: list[URL], flag: str) -> None:
    # etcd binds only to IP addresses (or localhost), never to DNS names.
    for u in urls:
        if u.scheme.startswith("unix") or u.host == "localhost":
            continue
        try:
            ipaddress.ip_address(u.host)
        except ValueError:
            raise ConfigError(f"expected IP in URL for binding ({u}) in --{flag}") from None


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
    "discovery": ("discovery", str),
    "discovery-fallback": ("discovery_fallback", parse_fallback),
    "discovery-proxy": ("discovery_proxy", str),
    "discovery-srv": ("discovery_srv", str),
    "discovery-srv-name": ("discovery_srv_name", str),
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
    "metrics": ("metrics", str),
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
    "enable-pprof",
    "experimental-initial-corrupt-check",
    "experimental-corrupt-check-time",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "backend-batch-interval",
    "backend-batch-limit",
}
_IGNORED_BOOL_FLAGS = {
    "enable-pprof",
    "experimental-initial-corrupt-check",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
}


# ---- help: every flag's group, shown default and description (etcd 3.4's `etcd --help` wording) ----

_NO_EFFECT = " Accepted for etcd compatibility; no effect in etcdstore."
GROUPS = (
    "Member",
    "Clustering",
    "Security",
    "Auth",
    "Profiling and Monitoring",
    "Logging",
    "Experimental feature",
    "Unsafe feature",
)


def _h(group: str, default: str, *text: str) -> tuple[str, str, str]:
    return group, default, "".join(text)


# flag -> (group, default as shown, description)
FLAG_HELP: dict[str, tuple[str, str, str]] = {
    # Member
    "name": _h("Member", "default", "Human-readable name for this member."),
    "data-dir": _h("Member", "${name}.etcd", "Path to the data directory."),
    "snapshot-count": _h(
        "Member", "100000", "Number of committed transactions to trigger a snapshot to disk."
    ),
    "heartbeat-interval": _h("Member", "100", "Time (in milliseconds) of a heartbeat interval."),
    "election-timeout": _h(
        "Member",
        "1000",
        "Time (in milliseconds) for an election to timeout. ",
        "See tuning documentation for details.",
    ),
    "listen-peer-urls": _h("Member", DEFAULT_PEER_URL, "List of URLs to listen on for peer traffic."),
    "listen-client-urls": _h("Member", DEFAULT_CLIENT_URL, "List of URLs to listen on for client traffic."),
    "listen-client-http-urls": _h(
        "Member",
        "",
        "List of URLs to listen on for HTTP client traffic (health, ",
        "metrics, JSON gateway, v2); when set, --listen-client-urls serve gRPC only ",
        "(etcd 3.5's flag).",
    ),
    "max-snapshots": _h(
        "Member", "5", "Maximum number of snapshot files to retain (0 is unlimited)." + _NO_EFFECT
    ),
    "max-wals": _h("Member", "5", "Maximum number of wal files to retain (0 is unlimited)." + _NO_EFFECT),
    "quota-backend-bytes": _h(
        "Member",
        "0",
        "Raise alarms when backend size exceeds the given quota ",
        "(0 defaults to low space quota).",
    ),
    "backend-batch-interval": _h(
        "Member",
        "",
        "BackendBatchInterval is the maximum time before commit the ",
        "backend transaction." + _NO_EFFECT,
    ),
    "backend-batch-limit": _h(
        "Member",
        "0",
        "BackendBatchLimit is the maximum operations before commit the ",
        "backend transaction." + _NO_EFFECT,
    ),
    "max-txn-ops": _h("Member", "128", "Maximum number of operations permitted in a transaction."),
    "max-request-bytes": _h(
        "Member", "1572864", "Maximum client request size in bytes the server will accept."
    ),
    "max-concurrent-streams": _h(
        "Member", "math.MaxUint32", "Maximum concurrent streams that each client can ", "open at a time."
    ),
    "grpc-keepalive-min-time": _h(
        "Member", "5s", "Minimum duration interval that a client should wait before ", "pinging server."
    ),
    "grpc-keepalive-interval": _h(
        "Member",
        "2h",
        "Frequency duration of server-to-client ping to check if a ",
        "connection is alive (0 to disable).",
    ),
    "grpc-keepalive-timeout": _h(
        "Member",
        "20s",
        "Additional duration of wait before closing a non-responsive ",
        "connection (0 to disable).",
    ),
    # Clustering
    "initial-advertise-peer-urls": _h(
        "Clustering",
        DEFAULT_PEER_URL,
        "List of this member's peer URLs to ",
        "advertise to the rest of the cluster.",
    ),
    "initial-cluster": _h(
        "Clustering", "default=" + DEFAULT_PEER_URL, "Initial cluster configuration for bootstrapping."
    ),
    "initial-cluster-state": _h("Clustering", "new", "Initial cluster state ('new' or 'existing')."),
    "initial-cluster-token": _h(
        "Clustering",
        "etcd-cluster",
        "Initial cluster token for the etcd cluster during ",
        "bootstrap. Specifying this can protect you from unintended cross-cluster ",
        "interaction when running multiple clusters.",
    ),
    "advertise-client-urls": _h(
        "Clustering",
        DEFAULT_CLIENT_URL,
        "List of this member's client URLs to ",
        "advertise to the public. The client URLs advertised should be accessible to ",
        "machines that talk to etcd cluster. etcd client libraries parse these URLs to ",
        "connect to the cluster.",
    ),
    "discovery": _h("Clustering", "", "Discovery URL used to bootstrap the cluster."),
    "discovery-fallback": _h(
        "Clustering",
        "proxy",
        "Expected behavior ('exit' or 'proxy') when discovery ",
        "services fails. etcdstore has no v2 proxy: 'proxy' logs etcd's message and exits.",
    ),
    "discovery-proxy": _h("Clustering", "", "HTTP proxy to use for traffic to discovery service."),
    "discovery-srv": _h("Clustering", "", "DNS srv domain used to bootstrap the cluster."),
    "discovery-srv-name": _h("Clustering", "", "Suffix to the dns srv name queried when bootstrapping."),
    "strict-reconfig-check": _h(
        "Clustering", "true", "Reject reconfiguration requests that would cause ", "quorum loss."
    ),
    "pre-vote": _h("Clustering", "true", "Enable to run an additional Raft election phase."),
    "auto-compaction-retention": _h(
        "Clustering", "0", "Auto compaction retention length. 0 means disable auto ", "compaction."
    ),
    "auto-compaction-mode": _h(
        "Clustering",
        "periodic",
        "Interpret 'auto-compaction-retention' one of: ",
        "periodic|revision. 'periodic' for duration based retention, defaulting to hours ",
        "if no time unit is provided (e.g. '5m'). 'revision' for revision number based ",
        "retention.",
    ),
    "enable-v2": _h("Clustering", "false", "Accept etcd V2 client requests."),
    "enable-grpc-gateway": _h("Clustering", "true", "Enable GRPC gateway (the JSON API under /v3/)."),
    # Security
    "cert-file": _h("Security", "", "Path to the client server TLS cert file."),
    "key-file": _h("Security", "", "Path to the client server TLS key file."),
    "client-cert-auth": _h("Security", "false", "Enable client cert authentication."),
    "trusted-ca-file": _h("Security", "", "Path to the client server TLS trusted CA cert file."),
    "auto-tls": _h("Security", "false", "Client TLS using generated certificates."),
    "peer-cert-file": _h("Security", "", "Path to the peer server TLS cert file."),
    "peer-key-file": _h("Security", "", "Path to the peer server TLS key file."),
    "peer-client-cert-auth": _h("Security", "false", "Enable peer client cert authentication."),
    "peer-trusted-ca-file": _h("Security", "", "Path to the peer server TLS trusted CA file."),
    "peer-auto-tls": _h(
        "Security",
        "false",
        "Peer TLS using self-generated certificates if --peer-key-file ",
        "and --peer-cert-file are not provided.",
    ),
    # Auth
    "auth-token": _h(
        "Auth", "simple", "Specify a v3 authentication token type and its options ('simple' or ", "'jwt')."
    ),
    "bcrypt-cost": _h(
        "Auth",
        "10",
        "Specify the cost / strength of the bcrypt algorithm for hashing auth ",
        "passwords. Valid values are between 4 and 31.",
    ),
    "auth-token-ttl": _h("Auth", "300", "Time (in seconds) of the auth-token-ttl."),
    # Profiling and Monitoring
    "enable-pprof": _h(
        "Profiling and Monitoring",
        "false",
        "Enable runtime profiling data via HTTP server. ",
        'Address is at client URL + "/debug/pprof/".' + _NO_EFFECT,
    ),
    "metrics": _h(
        "Profiling and Monitoring",
        "basic",
        "Set level of detail for exported metrics, specify ",
        "'extensive' to include histogram metrics.",
    ),
    "listen-metrics-urls": _h(
        "Profiling and Monitoring", "", "List of URLs to listen on for the metrics and ", "health endpoints."
    ),
    # Logging
    "logger": _h(
        "Logging",
        "zap",
        "Specify 'zap' for structured logging or 'capnslog'. etcdstore always logs ",
        "zap's JSON shape." + _NO_EFFECT,
    ),
    "log-outputs": _h(
        "Logging",
        "default",
        "Specify 'stdout' or 'stderr' to skip journald logging even when ",
        "running under systemd, or list of comma separated output targets. etcdstore logs to ",
        "stderr." + _NO_EFFECT,
    ),
    "log-level": _h(
        "Logging",
        "info",
        "Configures log level. Only supports debug, info, warn, error, panic, ",
        "or fatal.",
    ),
    # Experimental feature
    "experimental-initial-corrupt-check": _h(
        "Experimental feature",
        "false",
        "Enable to check data corruption ",
        "before serving any client/peer traffic." + _NO_EFFECT,
    ),
    "experimental-corrupt-check-time": _h(
        "Experimental feature",
        "0s",
        "Duration of time between cluster ",
        "corruption check passes." + _NO_EFFECT,
    ),
    "experimental-enable-lease-checkpoint": _h(
        "Experimental feature",
        "false",
        "ExperimentalEnableLeaseCheckpoint ",
        "enables primary lessor to persist lease remainingTTL to prevent ",
        "indefinite auto-renewal of long lived leases." + _NO_EFFECT,
    ),
    "experimental-enable-lease-checkpoint-persist": _h(
        "Experimental feature",
        "false",
        "Enable persisting ",
        "remainingTTL to prevent indefinite auto-renewal of long ",
        "lived leases." + _NO_EFFECT,
    ),
    "experimental-watch-progress-notify-interval": _h(
        "Experimental feature", "10m", "Duration of periodical ", "watch progress notification."
    ),
    "experimental-snapshot-catchup-entries": _h(
        "Experimental feature",
        "5000",
        "Number of entries for a slow ",
        "follower to catch up after compacting the raft storage ",
        "entries.",
    ),
    # Unsafe feature
    "force-new-cluster": _h("Unsafe feature", "false", "Force to create a new one-member cluster."),
}


def _wrap(text: str, indent: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent)


def flags_help() -> str:
    """The member flags by group, in etcd's `--help` layout."""
    out: list[str] = []
    for group in GROUPS:
        out.append(f"{group}:")
        for name, (g, default, text) in FLAG_HELP.items():
            if g == group:
                out.append(f"  --{name} '{default}'")
                out.append(_wrap(text, "    "))
        out.append("")
    out.append("CAUTIOUS with unsafe flag! It may break the guarantees given by the consensus protocol!")
    return "\n".join(out) + "\n"


# Environment variables the store reads besides ETCD_<FLAG> (docs/configuration.md is generated from this).
ENVIRONMENT: dict[str, str] = {
    "ETCDSTORE_GROUP_COMMIT_US": "Group commit: microseconds a leader waits for more proposals before one Raft "
    "round (default 1000; 0 turns group commit off).",
    "ETCDSTORE_GROUP_COMMIT_MAX_US": "Group commit: the most microseconds one gathering waits in all (default "
    "10000).",
    "ETCDSTORE_GRPC_SERVER": "'grpcio' serves gRPC clients with grpcio's server instead of the built-in HTTP/2 "
    "server (needs --listen-client-http-urls); kept for comparison.",
    "ETCDSTORE_BENCH_NO_UVLOOP": "`etcdstore bench`: when set, the load generator runs on plain asyncio "
    "instead of uvloop.",
    "ETCD_BENCHMARK_BIN": "`etcdstore bench compare`: the path of etcd's benchmark tool (skips the build).",
    "ETCD_BENCHMARK_BUILD": "`etcdstore bench compare`: the script that builds etcd's benchmark tool when it "
    "is not cached.",
    "XDG_CACHE_HOME": "`etcdstore bench compare`: where the built benchmark tool is cached (default ~/.cache).",
}


def flags_markdown() -> str:
    """The flag and environment tables of docs/configuration.md (a test keeps the two equal)."""
    out: list[str] = []
    for group in GROUPS:
        out += [f"### {group}", "", "| Flag | Environment | Default | Description |", "|---|---|---|---|"]
        for name, (g, default, text) in FLAG_HELP.items():
            if g == group:
                env = "ETCD_" + name.upper().replace("-", "_")
                shown = f"`{default}`" if default else ""
                out.append(f"| `--{name}` | `{env}` | {shown} | {text.replace('|', '&#124;')} |")
        out.append("")
    out += ["### Environment variables (besides ETCD_*)", "", "| Variable | Meaning |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in ENVIRONMENT.items()]
    return "\n".join(out) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2; we raise for exit 1
        raise ConfigError(message)

    def format_help(self) -> str:
        return (
            "Usage:\n\n  etcdstore [flags]\n    Start an etcd-compatible member. Every flag can also be "
            "given as an ETCD_* environment variable\n    (--initial-cluster: ETCD_INITIAL_CLUSTER); a flag "
            "wins over its variable.\n\n" + flags_help()
        )


def _build_parser() -> _Parser:
    p = _Parser(
        prog="etcdstore",
        add_help=True,
        allow_abbrev=False,
        description="An etcd v3 compatible key-value store member. Flags are etcd's.",
    )
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for name in list(_FLAGS) + sorted(_IGNORED_FLAGS):
        group, default, text = FLAG_HELP[name]
        desc = f"{text} (default '{default}')" if default else text
        if name in _BOOL_FLAGS or name in _IGNORED_BOOL_FLAGS:
            # Go's flag package accepts "--flag" and "--flag=true|false".
            groups[group].add_argument(
                f"--{name}", nargs="?", const="true", default=None, metavar="BOOL", help=desc
            )
        else:
            groups[group].add_argument(f"--{name}", default=None, help=desc)
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
            setattr(cfg, attr, parser(text))  # type: ignore[operator]  # _FLAGS types parsers as object
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
        # etcd's default: this member alone, at its advertised peer URLs; none when a discovery
        # flag is set (the discovery module fills it in).
        discovering = cfg.discovery or cfg.discovery_srv or cfg.discovery_srv_name
        cfg.initial_cluster = {} if discovering else {cfg.name: list(cfg.initial_advertise_peer_urls)}
    if cfg.quota_backend_bytes <= 0:
        cfg.quota_backend_bytes = DEFAULT_QUOTA_BYTES
    elif cfg.quota_backend_bytes > MAX_QUOTA_BYTES:
        # etcd warns and caps the quota at 8 GiB.
        cfg.quota_backend_bytes = MAX_QUOTA_BYTES


def _validate(cfg: ServerConfig, raw: dict[str, str]) -> None:
    if cfg.initial_cluster_state not in ("new", "existing"):
        raise ConfigError(f'unexpected clusterState "{cfg.initial_cluster_state}"')
    if sum(1 for v in (cfg.discovery, "initial-cluster" in raw, cfg.discovery_srv) if v) > 1:
        raise ConfigError(
            'multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", '
            '"discovery" or "discovery-srv"'
        )
    if cfg.discovery:
        try:
            _ = urlsplit(cfg.discovery).port
        except ValueError as e:
            raise ConfigError(f'invalid value "{cfg.discovery}" for flag --discovery: {e}') from None
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
            raise ConfigError(
                f"TLS key/cert (--{'' if client else 'peer-'}cert-file, "
                f"--{'' if client else 'peer-'}key-file) must be provided for https in --{flag}"
            )
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
