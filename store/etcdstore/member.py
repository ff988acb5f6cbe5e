"""The composition root: the process wiring of one member (server, auth, gRPC services,
client-port listeners, signals). It sits above every other layer; nothing imports it but the CLI
(see docs/architecture.md)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
import sys
from collections.abc import Callable

import grpc
from aiohttp import web

from etcdstore import errors, logs, metrics
from etcdstore.api.auth import AuthService
from etcdstore.api.cluster import ClusterService
from etcdstore.api.common import register_service, service_handlers, unknown_method_handler
from etcdstore.api.election import ElectionService
from etcdstore.api.gateway import add_gateway_routes
from etcdstore.api.h2 import Connections, H2Connection, Router
from etcdstore.api.h2.limits import Limits
from etcdstore.api.health import HealthService, add_HealthServicer_to_server
from etcdstore.api.http import add_base_routes
from etcdstore.api.kv import KVService
from etcdstore.api.lease import LeaseService
from etcdstore.api.lock import LockService
from etcdstore.api.maintenance import MaintenanceService
from etcdstore.api.mux import ClientPortMux
from etcdstore.api.v2.http import add_v2_routes
from etcdstore.api.watch import WatchService
from etcdstore.auth import install as install_auth
from etcdstore.config import ConfigError, ServerConfig
from etcdstore.proto.etcdserverpb import rpc_pb2_grpc
from etcdstore.proto.v3electionpb import v3election_pb2_grpc
from etcdstore.proto.v3lockpb import v3lock_pb2_grpc
from etcdstore.security.tls import (
    GrpcTLS,
    PeerTLS,
    ReloadingServerTLS,
    TLSFiles,
    cn_from_grpc_context,
    self_signed,
)
from etcdstore.server.server import EtcdServer
from etcdstore.transport.peer import PeerTransport

log = logs.get_logger("etcdstore.main")

# etcd allows this much gRPC framing on top of --max-request-bytes.
_GRPC_OVERHEAD = 512 * 1024


class Member:
    """A running member: its server, the gRPC server and the listeners (usable in-process by tests)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.server: EtcdServer | None = None
        self.grpc: grpc.aio.Server | None = None
        self.mux: ClientPortMux | None = None
        self.runners: list[web.AppRunner] = []
        self.client_ports: list[int] = []
        self.listeners: list[asyncio.base_events.Server] = []
        self.h2_limits = Limits.from_config(cfg)
        self.h2_connections = Connections(self.h2_limits)

    async def start(self) -> None:
        cfg = self.cfg
        use_grpcio = os.environ.get("ETCDSTORE_GRPC_SERVER") == "grpcio"
        if use_grpcio and not cfg.listen_client_http_urls:
            raise ConfigError(
                "ETCDSTORE_GRPC_SERVER=grpcio needs --listen-client-http-urls (grpcio cannot share "
                "the client port with HTTP/1 but through a listener no flag declares)"
            )
        client_tls, peer_tls = build_tls(cfg)
        listen = [(u.host, u.port) for u in cfg.listen_peer_urls]
        s = EtcdServer(
            cfg,
            transport_factory=lambda srv: PeerTransport(srv, listen, tls=peer_tls, grpc_protocol=peer_grpc),
            peer_tls=peer_tls,
        )
        self.server = s
        metrics.install(s)
        if cfg.metrics == "extensive":
            metrics.enable_handling_histogram()
        auth = install_auth(s)  # before start: replayed entries need the auth apply handlers
        await s.start()
        max_message = max(64 << 20, 2 * (cfg.max_request_bytes + _GRPC_OVERHEAD))
        options = [
            # The etcd-sized limit is checked by the services (with grpc-go's message); gRPC-core's
            # own limit only stops absurd frames.
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_concurrent_streams", 2**31 - 1),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        # Clients are served by the in-process gRPC server (api.h2) and the JSON gateway calls the
        # same method handlers in-process: no listener but the declared ones. With
        # ETCDSTORE_GRPC_SERVER=grpcio (the earlier way, kept for comparison) grpcio's server takes
        # the gRPC clients instead, bound on the declared client URLs themselves; that needs etcd
        # 3.5's split ports (--listen-client-http-urls), as grpcio cannot share a port with HTTP/1.
        # api.h2 refuses a request message above etcd's gRPC limit (--max-request-bytes + 512 KiB)
        # from its length prefix, as grpc-go does in etcd.
        router = Router(self.h2_limits.max_recv_message)
        server = grpc.aio.server(options=options) if use_grpcio else None
        for add_to_server, servicer in (
            (rpc_pb2_grpc.add_KVServicer_to_server, KVService(s)),
            (rpc_pb2_grpc.add_WatchServicer_to_server, WatchService(s)),
            (rpc_pb2_grpc.add_LeaseServicer_to_server, LeaseService(s)),
            (rpc_pb2_grpc.add_MaintenanceServicer_to_server, MaintenanceService(s)),
            (rpc_pb2_grpc.add_ClusterServicer_to_server, ClusterService(s)),
            (rpc_pb2_grpc.add_AuthServicer_to_server, AuthService(s)),
            (v3lock_pb2_grpc.add_LockServicer_to_server, LockService(s)),
            (v3election_pb2_grpc.add_ElectionServicer_to_server, ElectionService(s)),
            (add_HealthServicer_to_server, HealthService(s)),  # grpc.health.v1.Health, as etcd
        ):
            registered = (
                register_service(server, add_to_server, servicer)
                if server is not None
                else service_handlers(add_to_server, servicer)
            )
            for service, handlers in registered:
                router.add(service, handlers)
        if server is not None:
            server.add_generic_rpc_handlers((unknown_method_handler(router.services),))
        self.grpc = server
        # Both gRPC servers and the gateway identify a caller by its verified certificate's CN
        # (api.h2.CallContext and grpcio report it the same way).
        auth.peer_identity = cn_from_grpc_context

        app = web.Application(client_max_size=cfg.max_request_bytes + _GRPC_OVERHEAD)
        add_base_routes(app, s)
        if cfg.enable_grpc_gateway:
            add_gateway_routes(app, router)
        add_v2_routes(app, s, enabled=cfg.enable_v2)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.runners.append(runner)
        for url in cfg.listen_client_urls + cfg.listen_client_http_urls:
            if url.tls and client_tls is None:
                raise ConfigError(f"{url} needs --cert-file/--key-file or --auto-tls")
        if cfg.listen_client_http_urls:
            # etcd 3.5's split: gRPC alone on the client URLs, bound by gRPC itself (no relay),
            # HTTP on its own URLs.
            for url in cfg.listen_client_urls:
                addr = f"{url.host}:{url.port}"
                if server is None:
                    port = await self._listen_h2(
                        router, url.host, url.port, client_tls.listener_context() if url.tls else None
                    )
                else:
                    try:
                        port = (
                            server.add_secure_port(addr, GrpcTLS(client_tls.files).server_credentials())
                            if url.tls
                            else server.add_insecure_port(addr)
                        )
                    except RuntimeError:
                        port = 0
                if not port:
                    raise OSError(f"cannot listen for clients on {addr}")
                self.client_ports.append(port)
                log.info("serving client gRPC traffic", address=addr)
            for url in cfg.listen_client_http_urls:
                ssl_ctx = client_tls.listener_context() if url.tls else None
                await web.TCPSite(runner, url.host, url.port, ssl_context=ssl_ctx).start()
                log.info("serving client HTTP traffic", address=f"{url.host}:{url.port}")
        else:
            self.mux = ClientPortMux(runner.server, router, self.h2_limits)
            mux = self.mux
            for url in cfg.listen_client_urls:
                tls = client_tls.listener_context() if url.tls else None
                port = await mux.listen(url.host, url.port, tls)
                self.client_ports.append(port)
                log.info("serving client traffic", address=f"{url.host}:{port}")
        if server is not None:
            await server.start()
        for url in cfg.listen_metrics_urls:
            mapp = web.Application()
            add_base_routes(mapp, s)
            mrunner = web.AppRunner(mapp, access_log=None)
            await mrunner.setup()
            ssl_ctx = client_tls.context() if (url.tls and client_tls is not None) else None
            await web.TCPSite(mrunner, url.host, url.port, ssl_context=ssl_ctx).start()
            self.runners.append(mrunner)
            log.info("serving metrics", address=f"{url.host}:{url.port}")

    async def _listen_h2(self, router: Router, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        """A gRPC-only client listener (etcd 3.5's split ports) served by api.h2."""
        loop = asyncio.get_running_loop()

        listener = await loop.create_server(
            lambda: self.h2_connections.open(router),
            host,
            port,
            reuse_address=True,
            backlog=4096,
            ssl=tls,
            ssl_handshake_timeout=10 if tls else None,
        )
        self.listeners.append(listener)
        return listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
        await self.h2_connections.shutdown()  # GOAWAY, calls in flight finish (up to a deadline)
        if self.mux is not None:
            await self.mux.close()
        if self.grpc is not None:
            await self.grpc.stop(grace=0.5)
        for runner in self.runners:
            await runner.cleanup()
        if self.server is not None:
            await self.server.stop()


# The peer port's gRPC calls (Snapshot, Cluster, Forward, Ping, and older members' Raft streams) are
# served by api.h2 on the connections the port hands over (transport/stream.py); Raft streams of this
# version do not use gRPC. Messages up to the peer transport's 64 MiB; the peers' keepalive pings on
# idle channels are expected.
PEER_H2_LIMITS = Limits(
    max_recv_message=64 << 20, max_buffered_request_bytes=256 << 20, max_ping_strikes=1 << 30
)


def peer_grpc(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> Callable[[], asyncio.Protocol]:
    router = Router(PEER_H2_LIMITS.max_recv_message)
    router.add(service, handlers)
    return lambda: H2Connection(router, limits=PEER_H2_LIMITS)


def build_tls(cfg: ServerConfig) -> tuple[ReloadingServerTLS | None, PeerTLS | None]:
    """Client and peer TLS from the flags (explicit files win over --auto-tls, as in etcd)."""
    client = peer = None
    if cfg.cert_file and cfg.key_file:
        client = ReloadingServerTLS(
            TLSFiles(cfg.cert_file, cfg.key_file, cfg.trusted_ca_file, cfg.client_cert_auth)
        )
    elif cfg.auto_tls:
        hosts = [u.host for u in cfg.listen_client_urls + cfg.advertise_client_urls]
        files = self_signed(os.path.join(cfg.data_dir, "fixtures", "client"), hosts, name=cfg.name)
        client = ReloadingServerTLS(files)
    if cfg.peer_cert_file and cfg.peer_key_file:
        peer = PeerTLS(
            TLSFiles(
                cfg.peer_cert_file, cfg.peer_key_file, cfg.peer_trusted_ca_file, cfg.peer_client_cert_auth
            )
        )
    elif cfg.peer_auto_tls:
        hosts = [u.host for u in cfg.listen_peer_urls + cfg.initial_advertise_peer_urls]
        peer = PeerTLS(self_signed(os.path.join(cfg.data_dir, "fixtures", "peer"), hosts, name=cfg.name))
    return client, peer


def _tune_gc() -> None:
    """Every request allocates many short-lived objects, so the default gen-0 threshold (700)
    runs a collection every few requests; startup's objects (modules, protobuf descriptors) are
    long-lived and only make each full collection slower. Freeze those and collect less often
    (measured: 3-member puts at 100 clients, +2-11%)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


async def _serve(cfg: ServerConfig) -> int:
    member = Member(cfg)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    try:
        await member.start()
    except (ConfigError, errors.EtcdError, OSError) as e:
        log.error("failed to start member", error=str(e))
        await member.stop()
        return 1
    assert member.server is not None and member.server.stopped is not None
    _tune_gc()
    _done, _ = await asyncio.wait([stop, member.server.stopped], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping member")
    await member.stop()
    return 0


def run(cfg: ServerConfig) -> int:
    logs.setup(cfg.log_level)
    for name, value in cfg.ignored.items():
        log.info("flag accepted for etcd compatibility and ignored", flag=name, value=value)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        return asyncio.run(_serve(cfg))
    except KeyboardInterrupt:
        return 0
    except ConfigError as e:
        print(f"etcdstore: {e}", file=sys.stderr)
        return 1
