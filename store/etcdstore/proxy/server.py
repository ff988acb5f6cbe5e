"""`etcdstore grpc-proxy start`: flags (etcd 3.4's), wiring and the process.

Clients are served by the project's own gRPC server (api.h2: its Router and Connections), and a
small first-bytes sniffer here hands HTTP/1 connections to aiohttp instead, so gRPC and HTTP/1
(/health, /metrics) share --listen-addr, as etcd's proxy does with cmux; --metrics-addr adds an HTTP-only listener. Upstream calls use grpcio channels
(etcdstore.client's channel pool) carrying raw bytes wherever the proxy changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from etcdstore import logs
from etcdstore.api.h2 import Connections, Router
from etcdstore.client.channels import TLSConfig
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.v3electionpb import v3election_pb2
from etcdstore.proto.v3lockpb import v3lock_pb2
from etcdstore.proxy.cache import RangeCache
from etcdstore.proxy.cluster import ClusterProxy, Registration
from etcdstore.proxy.kv import KVProxy
from etcdstore.proxy.leader import LeaderMonitor
from etcdstore.proxy.lease import LeaseProxy
from etcdstore.proxy.namespace import Namespace
from etcdstore.proxy.rpc import passthrough_handlers
from etcdstore.proxy.upstream import Upstream
from etcdstore.proxy.watch import WatchProxy
from etcdstore.security.tls import ReloadingServerTLS, TLSFiles, self_signed

log = logs.get_logger("etcdstore.proxy")

USAGE = """start the grpc proxy (etcd 3.4's `etcd grpc-proxy start`)

Usage:
  etcdstore grpc-proxy start [flags]

Forwards KV, Watch, Lease, Cluster, Maintenance, Auth, Lock and Election to the cluster at
--endpoints (failing over between them). Identical watches share one upstream watch,
serializable ranges are answered from a cache that writes through the proxy invalidate, lease
keepalives of all clients are sent upstream once per lease. /health and /metrics (the
cluster's metrics, fetched from an endpoint, plus the proxy's own) are served on the same port."""


@dataclass
class ProxyConfig:
    listen_addr: str = "127.0.0.1:23790"
    endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    advertise_client_url: str = "127.0.0.1:23790"
    resolver_prefix: str = ""
    resolver_ttl: int = 0
    namespace: str = ""
    metrics_addr: str = ""
    data_dir: str = "default.proxy"
    cert: str = ""
    key: str = ""
    cacert: str = ""
    insecure_skip_tls_verify: bool = False
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    auto_tls: bool = False
    enable_pprof: bool = False
    max_send_bytes: int = int(1.5 * 1024 * 1024)
    max_recv_bytes: int = 2**31 - 1
    debug: bool = False


class FlagError(Exception):
    pass


def _bool(v: str) -> bool:
    if v.lower() in ("1", "t", "true"):
        return True
    if v.lower() in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {v!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise FlagError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="etcdstore grpc-proxy start",
        usage="%(prog)s [flags]",
        description=USAGE,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--listen-addr", default="127.0.0.1:23790", help="listen address")
    a("--endpoints", action="append", help="comma separated etcd cluster endpoints (default 127.0.0.1:2379)")
    a(
        "--advertise-client-url",
        default="127.0.0.1:23790",
        help="advertise address to register (must be reachable by client)",
    )
    a(
        "--resolver-prefix",
        default="",
        help="prefix to use for registering proxy (must be shared with other grpc-proxy members)",
    )
    a("--resolver-ttl", type=int, default=0, help="specify TTL, in seconds, when registering proxy endpoints")
    a("--namespace", default="", help="string to prefix to all keys for namespacing requests")
    a("--metrics-addr", default="", help="listen for endpoint /metrics requests on an additional interface")
    a(
        "--data-dir",
        default="default.proxy",
        help="data directory for persistent data (--auto-tls certificates)",
    )
    a(
        "--enable-pprof",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="accepted for etcd compatibility (no Go profiler here)",
    )
    a("--max-send-bytes", type=int, default=int(1.5 * 1024 * 1024), help="message send limits in bytes")
    a("--max-recv-bytes", type=int, default=2**31 - 1, help="message receive limits in bytes")
    a(
        "--cert",
        default="",
        help="identify secure connections with etcd servers using this TLS certificate file",
    )
    a("--key", default="", help="identify secure connections with etcd servers using this TLS key file")
    a(
        "--cacert",
        default="",
        help="verify certificates of TLS-enabled secure etcd servers using this CA bundle",
    )
    a(
        "--insecure-skip-tls-verify",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="not supported (gRPC Python always verifies): refused when set",
    )
    a(
        "--cert-file",
        default="",
        help="identify secure connections to the proxy using this TLS certificate file",
    )
    a("--key-file", default="", help="identify secure connections to the proxy using this TLS key file")
    a(
        "--trusted-ca-file",
        default="",
        help="verify client certificates of secure connections to the proxy with this CA",
    )
    a(
        "--auto-tls",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="proxy TLS using generated certificates",
    )
    a("--debug", type=_bool, nargs="?", const=True, default=False, help="enable debug-level logging")
    # Accepted and ignored (logged): etcd flags with no meaning here.
    for name in (
        "--discovery-srv",
        "--discovery-srv-name",
        "--listen-cipher-suites",
        "--client-crl-file",
        "--experimental-leasing-prefix",
        "--max-concurrent-streams",
    ):
        a(name, default=None, help=argparse.SUPPRESS)
    for name in ("--insecure-discovery", "--experimental-serializable-ordering"):
        a(name, type=_bool, nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str]) -> ProxyConfig:
    ns = _parser().parse_args(argv)
    eps: list[str] = []
    for item in ns.endpoints or ["127.0.0.1:2379"]:
        eps.extend(e for e in item.split(",") if e.strip())
    cfg = ProxyConfig(
        listen_addr=ns.listen_addr,
        endpoints=eps,
        advertise_client_url=ns.advertise_client_url,
        resolver_prefix=ns.resolver_prefix,
        resolver_ttl=ns.resolver_ttl,
        namespace=ns.namespace,
        metrics_addr=ns.metrics_addr,
        data_dir=ns.data_dir,
        cert=ns.cert,
        key=ns.key,
        cacert=ns.cacert,
        insecure_skip_tls_verify=ns.insecure_skip_tls_verify,
        cert_file=ns.cert_file,
        key_file=ns.key_file,
        trusted_ca_file=ns.trusted_ca_file,
        auto_tls=ns.auto_tls,
        enable_pprof=ns.enable_pprof,
        max_send_bytes=ns.max_send_bytes,
        max_recv_bytes=ns.max_recv_bytes,
        debug=ns.debug,
    )
    # etcd's checkArgs
    if cfg.resolver_prefix and cfg.resolver_ttl < 1:
        raise FlagError(f"invalid resolver-ttl {cfg.resolver_ttl}")
    if not cfg.resolver_prefix and cfg.resolver_ttl > 0:
        raise FlagError(f'invalid resolver-prefix "{cfg.resolver_prefix}"')
    if cfg.resolver_prefix and cfg.resolver_ttl > 0 and not cfg.advertise_client_url:
        raise FlagError(f'invalid advertise-client-url "{cfg.advertise_client_url}"')
    if cfg.insecure_skip_tls_verify:
        raise FlagError("--insecure-skip-tls-verify is not supported: give --cacert")
    if cfg.cert:
        cn = _common_name(cfg.cert)
        if (
            cn
        ):  # etcd's proxy (TLSInfo.EmptyCN): its identity must not be a user's, or every client would be it
            raise FlagError(f"cert has non empty Common Name ({cn})")
    if ns.discovery_srv:
        raise FlagError("--discovery-srv is not supported by etcdstore's grpc-proxy: give --endpoints")
    return cfg


def _common_name(path: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        with open(path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError) as e:
        raise FlagError(str(e)) from None
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _split_addr(addr: str) -> tuple[str, int]:
    if "://" in addr:
        u = urlsplit(addr)
        return u.hostname or "127.0.0.1", u.port or 0
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes, then hands it to the gRPC server or to HTTP/1."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's transport is a Transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = min(len(self.buf), len(_H2_PREFACE))
        if self.buf[:n] == _H2_PREFACE[:n] and n < len(_H2_PREFACE):
            return  # could still be either
        transport = self.transport
        assert transport is not None
        if self.buf[:n] == _H2_PREFACE[:n]:
            proto: asyncio.Protocol = self.front.connections.open(self.front.router)
        else:
            proto = self.front.http_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(self.buf)
        self.buf = b""


class Front:
    """gRPC (api.h2) and HTTP/1 on one listener."""

    def __init__(self, router: Router, http_factory: Callable[[], asyncio.Protocol]) -> None:
        self.router = router
        self.http_factory = http_factory
        self.connections = Connections()
        self.servers: list[asyncio.base_events.Server] = []

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Sniffer(self),
            host,
            port,
            reuse_address=True,
            backlog=4096,
            ssl=tls,
            ssl_handshake_timeout=10 if tls else None,
        )
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        self.connections.close_all()
        for server in self.servers:
            await server.wait_closed()


class Proxy:
    """A running proxy (usable in-process by tests)."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        tls = None
        if cfg.cert or cfg.key or cfg.cacert:
            tls = TLSConfig(ca_file=cfg.cacert or None, cert_file=cfg.cert or None, key_file=cfg.key or None)
        self.upstream_tls = tls
        self.up = Upstream(cfg.endpoints, tls, max_send=cfg.max_send_bytes, max_recv=cfg.max_recv_bytes)
        self.ns = Namespace(cfg.namespace.encode()) if cfg.namespace else None
        self.cache = RangeCache()
        self.kv = KVProxy(self.up, self.ns, self.cache)
        self.leader = LeaderMonitor(self.up, self.ns)
        self.watch = WatchProxy(self.up, self.ns, self.leader)
        self.lease = LeaseProxy(self.up, self.ns, self.leader)
        self.cluster = ClusterProxy(self.up, self.ns, cfg.advertise_client_url, cfg.resolver_prefix)
        self.registration: Registration | None = None
        self.front: Front | None = None
        self.runners: list[web.AppRunner] = []
        self.port = 0
        self.metrics_port = 0
        self._http: aiohttp.ClientSession | None = None

    def router(self) -> Router:
        router = Router(
            4 << 20
        )  # what a client may send the proxy: grpc-go's default, as etcd's proxy serves
        rpc = rpc_pb2.DESCRIPTOR.services_by_name
        router.add("etcdserverpb.KV", self.kv.handlers())
        router.add("etcdserverpb.Watch", self.watch.handlers())
        router.add("etcdserverpb.Lease", self.lease.handlers())
        router.add("etcdserverpb.Cluster", self.cluster.handlers())
        router.add(
            "etcdserverpb.Maintenance",
            passthrough_handlers(
                self.up, rpc["Maintenance"], idempotent=frozenset({"Status", "Hash", "HashKV"})
            ),
        )
        router.add(
            "etcdserverpb.Auth",
            passthrough_handlers(
                self.up,
                rpc["Auth"],
                idempotent=frozenset(
                    {"Authenticate", "UserGet", "UserList", "RoleGet", "RoleList", "AuthStatus"}
                ),
            ),
        )
        router.add(
            "v3lockpb.Lock", passthrough_handlers(self.up, v3lock_pb2.DESCRIPTOR.services_by_name["Lock"])
        )
        router.add(
            "v3electionpb.Election",
            passthrough_handlers(
                self.up,
                v3election_pb2.DESCRIPTOR.services_by_name["Election"],
                idempotent=frozenset({"Leader"}),
            ),
        )
        return router

    def _server_tls(self) -> ssl.SSLContext | None:
        cfg = self.cfg
        if cfg.cert_file and cfg.key_file:
            files = TLSFiles(cfg.cert_file, cfg.key_file, cfg.trusted_ca_file, bool(cfg.trusted_ca_file))
        elif cfg.auto_tls:
            host, _ = _split_addr(cfg.listen_addr)
            files = self_signed(os.path.join(cfg.data_dir, "fixtures", "proxy"), [host], name="grpc-proxy")
        else:
            return None
        return ReloadingServerTLS(files).listener_context()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        cfg = self.cfg
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        self.runners.append(runner)
        tls = self._server_tls()
        assert runner.server is not None  # set by setup()
        self.front = Front(self.router(), runner.server)
        host, port = _split_addr(cfg.listen_addr)
        self.port = await self.front.listen(host, port, tls)
        log.info("listening for gRPC proxy client requests", address=f"{host}:{self.port}")
        if cfg.metrics_addr:
            mrunner = web.AppRunner(self._app(), access_log=None)
            await mrunner.setup()
            self.runners.append(mrunner)
            mhost, mport = _split_addr(cfg.metrics_addr)
            mtls = tls if cfg.metrics_addr.startswith("https") else None
            site = web.TCPSite(mrunner, mhost, mport, ssl_context=mtls)
            await site.start()
            self.metrics_port = mrunner.addresses[0][1]  # the one site just started
            log.info("gRPC proxy listening for metrics", address=f"{mhost}:{self.metrics_port}")
        self.leader.start()
        if cfg.resolver_prefix:
            self.registration = Registration(
                self.up,
                self.lease.keepalives,
                self.ns,
                cfg.resolver_prefix,
                cfg.advertise_client_url,
                cfg.resolver_ttl,
            )
            self.registration.start()
        log.info("started gRPC proxy", address=f"{host}:{self.port}", endpoints=",".join(self.up.targets))

    async def _health(self, request: web.Request) -> web.Response:
        req = rpc_pb2.RangeRequest(key=b"a")
        healthy = False
        try:
            await self.up.unary(
                "/etcdserverpb.KV/Range", req.SerializeToString(), timeout=1.0, idempotent=True
            )
            healthy = True
        except Exception as e:  # noqa: BLE001 - any failure is "not healthy"
            healthy = "permission denied" in str(getattr(e, "details", lambda: "")())
        body = '{"health":"true"}' if healthy else '{"health":"false"}'
        return web.Response(text=body, status=200 if healthy else 503, content_type="application/json")

    def own_metrics(self) -> str:
        w = self.watch
        lines = []
        for name, kind, help_, value in (
            (
                "etcd_grpc_proxy_watchers_coalescing_total",
                "gauge",
                "Total number of current watchers coalescing",
                w.watchers_coalescing,
            ),
            (
                "etcd_grpc_proxy_events_coalescing_total",
                "counter",
                "Total number of events coalescing",
                w.events_coalescing,
            ),
            (
                "etcd_grpc_proxy_cache_keys_total",
                "gauge",
                "Total number of keys/ranges cached",
                len(self.cache),
            ),
            ("etcd_grpc_proxy_cache_hits_total", "gauge", "Total number of cache hits", self.cache.hits),
            (
                "etcd_grpc_proxy_cache_misses_total",
                "gauge",
                "Total number of cache misses",
                self.cache.misses,
            ),
            (
                "etcdstore_grpc_proxy_upstream_watches",
                "gauge",
                "Watches the proxy holds open on the cluster",
                w.upstream.count,
            ),
            (
                "etcdstore_grpc_proxy_client_watchers",
                "gauge",
                "Watchers clients hold on the proxy",
                w.client_watchers,
            ),
            (
                "etcdstore_grpc_proxy_keepalives_sent_total",
                "counter",
                "Lease keepalive requests sent to the cluster",
                self.lease.keepalives.sent,
            ),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"

    async def _metrics(self, request: web.Request) -> web.Response:
        """The cluster's metrics from one endpoint (as etcd's proxy serves them), then the proxy's."""
        upstream = ""
        ep = self.up.endpoints[self.up.current]
        scheme = "https" if ep.secure else "http"
        try:
            if self._http is None:
                ctx: ssl.SSLContext | bool = False
                if self.upstream_tls is not None:
                    ctx = ssl.create_default_context(cafile=self.upstream_tls.ca_file)
                    if self.upstream_tls.cert_file:
                        ctx.load_cert_chain(str(self.upstream_tls.cert_file), str(self.upstream_tls.key_file))
                self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
            async with self._http.get(
                f"{scheme}://{ep.target}/metrics", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                upstream = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            return web.Response(status=500, text=f"Internal server error: {e}\n")
        own = self.own_metrics()
        if "etcd_grpc_proxy_watchers_coalescing_total " in upstream:  # an etcd binary lists these (at 0)
            upstream = (
                "\n".join(line for line in upstream.splitlines() if "etcd_grpc_proxy_" not in line) + "\n"
            )
        return web.Response(
            text=upstream + own,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
        if self.front is not None:
            await self.front.close()
        for r in self.runners:
            await r.cleanup()
        await self.leader.stop()
        self.watch.close()
        self.lease.close()
        if self._http is not None:
            await self._http.close()
        await self.up.close()


async def _serve(cfg: ProxyConfig) -> int:
    proxy = Proxy(cfg)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: None if stop.done() else stop.set_result(None))
    try:
        await proxy.start()
    except OSError as e:
        log.error("failed to start gRPC proxy", error=str(e))
        await proxy.stop()
        return 1
    await stop
    log.info("stopping gRPC proxy")
    await proxy.stop()
    return 0


def main(argv: list[str]) -> int:
    """`etcdstore grpc-proxy start [flags]`."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(
            "grpc-proxy related command\n\nUsage:\n  etcdstore grpc-proxy [command]\n\n"
            "Available Commands:\n  start       start the grpc proxy\n"
        )
        return 0 if argv else 1
    if argv[0] != "start":
        print(f'Error: unknown command "{argv[0]}" for "etcdstore grpc-proxy"', file=sys.stderr)
        return 1
    try:
        cfg = parse_args(argv[1:])
    except FlagError as e:
        print(f"Error: {e}" if not str(e).startswith(("invalid ", "cert has")) else str(e), file=sys.stderr)
        return 1
    logs.setup("debug" if cfg.debug else "info")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        return asyncio.run(_serve(cfg))
    except KeyboardInterrupt:
        return 0
