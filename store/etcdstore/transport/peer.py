"""Member-to-member transport: Raft messages, snapshots, forwarded requests.

Raft messages go over a plain TCP (or TLS) stream of length-prefixed `raft.codec` messages on the
peer port (`transport/stream.py`: its protocol, and why not gRPC). The peer port tells that stream
apart from gRPC by a connection's first bytes and relays gRPC to the member's gRPC server on a
private Unix socket. A peer that does not accept the stream (a member of an older version, during
a rolling upgrade) is sent its messages over the gRPC Raft stream below.

Only our own members speak the gRPC protocol, so it uses raw-bytes methods (no .proto):

  /etcdstore.peer.Peer/Raft      client stream of frames; a frame is a batch of
                                 length-prefixed `raft.codec` messages
  /etcdstore.peer.Peer/Snapshot  client stream: first the encoded MsgSnap, then the
                                 snapshot file in chunks; answers b"ok" once stored
  /etcdstore.peer.Peer/Cluster   the cluster ID and members (JSON), for joining members
  /etcdstore.peer.Peer/Forward   a request a follower forwards to the leader (lease
                                 keep-alive, lease TTL, learner promotion)

Every call carries the sender's cluster ID and member ID as metadata. A receiver refuses a
different cluster ("cluster ID mismatch") and a removed member ("member removed") with
FAILED_PRECONDITION; a member told it was removed stops, as etcd's does.

The Raft stream's hello carries the same two IDs and gets the same two refusals.

Each peer has one sender task and a bounded queue: when a peer is down or slow, messages
beyond the bound are dropped (Raft retransmits) and Raft is told the peer is unreachable,
so a dead peer costs neither memory nor the drive loop's time. While a peer's Raft stream is up
and keeping pace, `send` writes each batch of messages to its socket at once (one write per peer
per batch, no task switch); when the socket's buffer passes WRITE_HIGH_WATER, or the stream is
down, messages wait in the queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import struct
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from etcdstore import errors, metrics
from etcdstore.logs import get_logger
from etcdstore.raft import codec
from etcdstore.raft.records import Message, MessageType
from etcdstore.transport import stream

GrpcProtocolFactory = Callable[[str, dict[str, grpc.RpcMethodHandler]], Callable[[], asyncio.Protocol]]

if TYPE_CHECKING:
    # the member: this module sits below the server (docs/architecture.md)
    from typing import Any as EtcdServer

    from etcdstore.membership import Membership
    from etcdstore.security.tls import PeerTLS

log = get_logger("etcdstore.transport")

_LEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")
SERVICE = "etcdstore.peer.Peer"
MAX_QUEUE_MESSAGES = 4096
MAX_FRAME_BYTES = 8 << 20
SNAPSHOT_CHUNK = 1 << 20
PROBE_INTERVAL = 5.0  # seconds between round-trip probes (and sender health checks)
CREDENTIALS_TIMEOUT = 10.0  # seconds to fetch a peer's certificate for pinning
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Redial a peer quickly (etcd retries every 100 ms): a member that just started must hear
    # the votes and appends meant for it at once, not after a long backoff.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    # A peer's name is re-resolved when its connection breaks, but by default at most every 30 s:
    # a member pod recreated with a new IP under the same DNS name would stay unreachable that
    # long. 500 ms: it rejoins within about a second (tests/store/test_peer_dns.py).
    ("grpc.dns_min_time_between_resolutions_ms", 500),
]
# The peer server must accept the senders' keepalive pings on idle streams (a follower's
# streams to non-leaders carry nothing for long stretches); gRPC's default policy answers
# them with GOAWAY "too many pings", which would leave a vote request waiting on a reconnect.
_SERVER_OPTIONS = _GRPC_OPTIONS + [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]
CLUSTER_MISMATCH = "cluster ID mismatch"
# Traced at debug level: elections are where timing problems show.
_ELECTION_MESSAGES = frozenset(
    {
        MessageType.VOTE,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE,
        MessageType.PRE_VOTE_RESP,
        MessageType.TIMEOUT_NOW,
        MessageType.READ_INDEX,
        MessageType.READ_INDEX_RESP,
    }
)
MEMBER_REMOVED = "member removed"


class Stats:
    """What the Raft streams carried (this process), for metrics and measurements."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "frames_received",
        "frames_sent",
        "messages_received",
        "messages_sent",
    )

    def __init__(self) -> None:
        self.frames_sent = self.messages_sent = self.bytes_sent = 0
        self.frames_received = self.messages_received = self.bytes_received = 0


STATS = Stats()


class _StatsCollector(Collector):
    def collect(self) -> Any:
        yield CounterMetricFamily(
            "etcd_network_peer_sent_bytes", "The total number of bytes sent to peers.", value=STATS.bytes_sent
        )
        yield CounterMetricFamily(
            "etcd_network_peer_received_bytes",
            "The total number of bytes received from peers.",
            value=STATS.bytes_received,
        )
        c = CounterMetricFamily(
            "etcdstore_network_peer_stream_writes",
            "Writes (sent) and reads (received) on the Raft streams.",
            labels=["direction"],
        )
        c.add_metric(["sent"], STATS.frames_sent)
        c.add_metric(["received"], STATS.frames_received)
        yield c
        c = CounterMetricFamily(
            "etcdstore_network_peer_stream_messages",
            "Raft messages sent and received on the Raft streams.",
            labels=["direction"],
        )
        c.add_metric(["sent"], STATS.messages_sent)
        c.add_metric(["received"], STATS.messages_received)
        yield c


try:
    REGISTRY.register(_StatsCollector())
except ValueError:  # pragma: no cover - registered twice (module reloaded)
    pass


def encode_frame(msgs: list[Message]) -> bytes:
    parts = []
    for m in msgs:
        raw = codec.encode_message(m)
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def decode_frame(frame: bytes) -> list[Message]:
    out = []
    pos, n = 0, len(frame)
    while pos < n:
        if pos + 4 > n:
            raise ValueError("truncated frame")
        (size,) = _LEN.unpack_from(frame, pos)
        pos += 4
        if pos + size > n:
            raise ValueError("truncated frame")
        out.append(codec.decode_message(frame[pos : pos + size]))
        pos += size
    return out


def _ident(b: bytes) -> bytes:
    return b


def _target(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


class _Frames:
    """The request stream of one Raft call: batches of queued messages, as they come.

    One per call, retired when its call ends: gRPC consumes a request iterator in a task of
    its own that can outlive a failed call, and a stale consumer must not take messages off
    the queue (they would go into a dead call and be lost). A plain async iterator rather than
    a generator, so that cancelling gRPC's task never races a generator's aclose().
    """

    __slots__ = ("generation", "peer")

    def __init__(self, peer: _Peer) -> None:
        self.peer = peer
        self.generation = peer.generation

    def __aiter__(self) -> _Frames:
        return self

    async def __anext__(self) -> bytes:
        p = self.peer
        while True:
            if self.generation != p.generation:
                raise StopAsyncIteration
            if not p.queue:
                p.wake.clear()
                await p.wake.wait()
                continue
            batch: list[Message] = []
            size = 0
            while p.queue and size < MAX_FRAME_BYTES:
                m = p.queue.popleft()
                if m.type == MessageType.SNAP:
                    p.t.start_snapshot(p, m)
                    continue
                batch.append(m)
                size += 64 + sum(len(e.data) for e in m.entries)
            if batch:
                return encode_frame(batch)


class _Peer:
    """One remote member: its URLs, an outbound queue and the task that drains it."""

    def __init__(self, transport: PeerTransport, peer_id: int, urls: list[str]) -> None:
        self.t = transport
        self.id = peer_id
        self.urls = list(urls)
        self.queue: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.channel: grpc.aio.Channel | None = None
        self.channel_url = ""
        self.active_since = 0.0  # monotonic time the current stream started (0: down)
        self.generation = 0  # bumped when a call ends: retires its request iterator
        self.closed = False
        self.out: stream.Outbound | None = None  # the Raft stream, while it is up
        self.legacy = False  # the peer refused the Raft stream: use the gRPC one until it ends
        self.task = self._start_sender()
        self.prober = asyncio.get_running_loop().create_task(self._probe(), name=f"probe-{peer_id:x}")
        self.dropped = 0

    def send(self, m: Message) -> None:
        if len(self.queue) >= MAX_QUEUE_MESSAGES:
            self.queue.popleft()  # the oldest is the least useful; Raft retransmits
            self.dropped += 1
            self.t.server.report_unreachable(self.id)
        self.queue.append(m)
        if self.task.done() and not self.closed:
            # The sender must outlive any failure; a dead one would silently drop this peer's traffic.
            log.warning("peer sender had stopped; restarting it", peer=f"{self.id:x}")
            self.task = self._start_sender()

    def flush(self) -> None:
        """Write what is queued to the Raft stream now, or leave it to the sender."""
        out = self.out
        if out is None or out.paused or out.transport is None:
            self.wake.set()
            return
        q = self.queue
        if not q:
            return
        parts: list[bytes] = []
        pack, encode = _LEN.pack, codec.encode_message
        n = 0
        while q:
            m = q.popleft()
            if m.type == MessageType.SNAP:
                self.t.start_snapshot(self, m)
                continue
            raw = encode(m)
            parts.append(pack(len(raw)))
            parts.append(raw)
            n += 1
        if parts:
            data = b"".join(parts)
            STATS.frames_sent += 1
            STATS.messages_sent += n
            STATS.bytes_sent += len(data)
            out.transport.write(data)

    def _start_sender(self) -> asyncio.Task:
        return asyncio.get_running_loop().create_task(self._run(), name=f"peer-{self.id:x}")

    def update(self, urls: list[str]) -> None:
        if sorted(urls) != sorted(self.urls):
            self.urls = list(urls)
            self._close_channel()
            if self.out is not None and self.out.transport is not None:
                self.out.transport.abort()  # redial at the new address

    async def get_channel(self) -> grpc.aio.Channel:
        if self.channel is None or self.channel_url not in self.urls:
            self._close_channel()
            url = self.urls[0]
            channel = await self.t.make_channel(url)
            if self.channel is not None:  # another caller won the race
                await channel.close()
                return self.channel
            self.channel_url = url
            self.channel = channel
        return self.channel

    def _close_channel(self) -> None:
        if self.channel is not None:
            ch, self.channel = self.channel, None
            asyncio.get_running_loop().create_task(ch.close())

    def frames(self) -> _Frames:
        return _Frames(self)

    async def _run(self) -> None:
        try:
            await self._run_forever()
        finally:
            if not self.closed:
                log.warning("peer sender stopped", peer=f"{self.id:x}")

    async def _run_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                if not self.legacy:
                    try:
                        await self._stream()
                    except stream.NotSupported as e:
                        log.info(
                            "peer does not accept the Raft stream; using the gRPC stream",
                            peer=f"{self.id:x}",
                            answer=str(e),
                        )
                        self.legacy = True
                        continue
                else:
                    self.legacy = False  # when this stream ends, try the Raft stream again (upgraded?)
                    call = (await self.get_channel()).stream_unary(
                        f"/{SERVICE}/Raft", request_serializer=_ident, response_deserializer=_ident
                    )
                    log.debug("peer gRPC stream starting", peer=f"{self.id:x}", url=self.channel_url)
                    self.active_since = time.monotonic()
                    await call(self.frames(), metadata=self.t.metadata())
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except stream.Refused as e:
                if self.t.on_refusal(e.reason):
                    self.closed = True  # removed from the cluster: this member is stopping
                    return
            except grpc.aio.AioRpcError as e:
                if self.t.check_refusal(e):
                    self.closed = True
                    return
                if e.code() != grpc.StatusCode.CANCELLED:
                    log.debug("peer stream broken", peer=f"{self.id:x}", error=e.code().name)
                if self.t.tls is not None and e.code() == grpc.StatusCode.UNAVAILABLE:
                    # Credentials are read when a channel is made: redial with the current files
                    # (and a fresh pin), or a peer that rolled to new certificates stays unreachable.
                    self._close_channel()
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as e:
                log.debug("peer stream broken", peer=f"{self.id:x}", error=repr(e))
            except Exception as e:  # never let one peer's failure kill the member
                log.warning("peer sender failed", peer=f"{self.id:x}", exc_info=e)
            finally:
                self.active_since = 0.0
                self.generation += 1
                self.wake.set()  # let the retired iterator's consumer see it is done
            self.t.server.report_unreachable(self.id)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.25)

    async def _stream(self) -> None:
        """One Raft stream to the peer, from dial to loss."""
        url = self.urls[0]
        host, port = _host_port(url)
        ctx = self.t.client_ssl(url)
        transport, out = await stream.dial(host, port, ctx, self.flush)
        try:
            transport.set_write_buffer_limits(high=stream.WRITE_HIGH_WATER)
            s = self.t.server
            transport.write(stream.hello(s.cluster_id, s.member_id, self.id))
            stream.check_reply(await asyncio.wait_for(asyncio.shield(out.reply), stream.HANDSHAKE_TIMEOUT))
            log.debug("peer stream started", peer=f"{self.id:x}", url=url)
            self.active_since = time.monotonic()
            self.out = out
            self.flush()
            await out.lost
        finally:
            if self.out is out:
                self.out = None
            transport.abort()

    async def _probe(self) -> None:
        """Measure the round trip to this peer every few seconds (etcd's peer RTT metric)."""
        rtt = metrics.PEER_RTT.labels(f"{self.id:x}")
        streamless = 0  # probes in a row that reached the peer while the sender had no stream
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                call = (await self.get_channel()).unary_unary(
                    f"/{SERVICE}/Ping", request_serializer=_ident, response_deserializer=_ident
                )
                t = time.perf_counter()
                await call(b"ping", timeout=2)
                rtt.observe(time.perf_counter() - t)
            except (grpc.aio.AioRpcError, OSError, ConnectionError, TimeoutError):
                metrics.PEER_SENT_FAILURES.labels(f"{self.id:x}").inc()
                streamless = 0
                continue
            # The peer answers, so the sender should hold a stream (it redials within 250 ms). Two
            # probes without one mean it is stuck somewhere: start it over rather than stay mute.
            streamless = streamless + 1 if self.active_since == 0.0 else 0
            if streamless >= 2 and not self.closed:
                log.warning(
                    "peer reachable but its sender has no stream; restarting the sender", peer=f"{self.id:x}"
                )
                streamless = 0
                self.task.cancel()
                self.task = self._start_sender()

    async def close(self) -> None:
        self.closed = True
        self.prober.cancel()
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110  # closing: how the sender ended is moot
            pass
        if self.out is not None and self.out.transport is not None:
            self.out.transport.abort()
            self.out = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


def _host_port(url: str) -> tuple[str, int]:
    hostport = _target(url)
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


class PeerTransport:
    """Raft messages to and from the other members, and the peer gRPC server."""

    def __init__(
        self,
        server: EtcdServer,
        listen: list[tuple[str, int]],
        *,
        tls: PeerTLS | None = None,
        grpc_protocol: GrpcProtocolFactory | None = None,
    ) -> None:
        self.server = server
        # Serves the peer port's gRPC connections in-process (the member passes api.h2's): given
        # the service's method handlers, a factory of protocols for connections the port hands
        # over. Without one (a transport on its own, as in tests), grpcio serves them on a Unix
        # socket in a private directory and the port relays to it.
        self.grpc_protocol = grpc_protocol
        self._accepted: set[asyncio.BaseTransport] = set()
        self.listen = listen
        self.peers: dict[int, _Peer] = {}
        self.extra_urls: dict[int, list[str]] = {}  # peers known before membership is applied
        self._grpc: grpc.aio.Server | None = None
        self.tls = tls
        self.bound_ports: list[int] = []
        self._snapshots_in_flight: set[int] = set()
        self._listeners: list[asyncio.base_events.Server] = []
        self._grpc_dir = ""
        self.stats = STATS
        self.trace_elections = False

    # -- lifecycle ------------------------------------------------------------------------------

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Raft": grpc.stream_unary_rpc_method_handler(self._on_raft, _ident, _ident),
            "Snapshot": grpc.stream_unary_rpc_method_handler(self._on_snapshot, _ident, _ident),
            "Cluster": grpc.unary_unary_rpc_method_handler(self._on_cluster, _ident, _ident),
            "Forward": grpc.unary_unary_rpc_method_handler(self._on_forward, _ident, _ident),
            "Ping": grpc.unary_unary_rpc_method_handler(self._on_ping, _ident, _ident),
        }

    async def start(self) -> None:
        if self.grpc_protocol is not None:
            grpc_side: Any = self.grpc_protocol(SERVICE, self._handlers())
        else:
            srv = grpc.aio.server(options=_SERVER_OPTIONS)
            srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers()),))
            self._grpc_dir = tempfile.mkdtemp(prefix="etcdstore-peer-")
            grpc_side = os.path.join(self._grpc_dir, "grpc.sock")
            if srv.add_insecure_port(f"unix:{grpc_side}") == 0:
                raise OSError(f"cannot listen on {grpc_side} for the peer gRPC server")
            await srv.start()
            self._grpc = srv
        loop = asyncio.get_running_loop()
        ssl_ctx = stream.PeerServerTLS(self.tls.files).listener_context() if self.tls is not None else None
        try:
            for host, port in self.listen:
                try:
                    listener = await loop.create_server(
                        lambda: stream.PortProtocol(self, grpc_side),
                        host or None,
                        port,
                        ssl=ssl_ctx,
                        reuse_address=True,
                        backlog=1024,
                        ssl_handshake_timeout=stream.FIRST_BYTES_TIMEOUT if ssl_ctx else None,
                    )
                except OSError as e:
                    raise OSError(
                        f"cannot listen for peers on {host}:{port}: address already in use or not available"
                    ) from e
                self._listeners.append(listener)
                self.bound_ports.append(listener.sockets[0].getsockname()[1])
        except BaseException:
            await self._stop_listeners()
            raise
        self.update_members(self.server.membership)

    def accepted(self, transport: asyncio.BaseTransport) -> None:
        """A connection to the peer port, closed when the transport stops."""
        if len(self._accepted) > 64:
            self._accepted = {t for t in self._accepted if not t.is_closing()}
        self._accepted.add(transport)

    async def _stop_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for t in self._accepted:
            t.abort()  # type: ignore[attr-defined]  # accepted ones are Transports
        self._accepted.clear()
        try:
            if self._grpc is not None:
                await self._grpc.stop(grace=0.2)
        finally:
            self._grpc = None
            if self._grpc_dir:
                shutil.rmtree(self._grpc_dir, ignore_errors=True)
                self._grpc_dir = ""

    async def stop(self) -> None:
        try:
            for peer in list(self.peers.values()):
                await peer.close()
            self.peers.clear()
        finally:
            await self._stop_listeners()

    def client_ssl(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("https://"):
            return None
        if self.tls is None:
            raise ConnectionError(f"peer {url} uses https but this member has no peer TLS configured")
        return stream.client_context(self.tls.files, self.tls.verify)

    async def make_channel(self, url: str) -> grpc.aio.Channel:
        if url.startswith("https://"):
            if self.tls is None:
                raise ConnectionError(f"peer {url} uses https but this member has no peer TLS configured")
            # Off the loop: pinning a self-signed peer certificate dials the peer first.
            # Bounded: a dial that never finishes must not stall this peer's sender for good.
            creds, options = await asyncio.wait_for(
                asyncio.to_thread(self.tls.channel_credentials, url), timeout=CREDENTIALS_TIMEOUT
            )
            return grpc.aio.secure_channel(_target(url), creds, options=_GRPC_OPTIONS + options)
        return grpc.aio.insecure_channel(_target(url), options=_GRPC_OPTIONS)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        s = self.server
        return (("cluster-id", f"{s.cluster_id:x}"), ("from", f"{s.member_id:x}"))

    # -- membership --------------------------------------------------------------------------------

    def update_members(self, membership: Membership) -> None:
        me = self.server.member_id
        wanted: dict[int, list[str]] = {mid: list(urls) for mid, urls in self.extra_urls.items()}
        for m in membership.members.values():
            wanted[m.id] = list(m.peer_urls)
        for mid in list(self.peers):
            if mid not in wanted or mid in membership.removed:
                peer = self.peers.pop(mid)
                asyncio.get_running_loop().create_task(peer.close())
        for mid, urls in wanted.items():
            if mid == me or mid in membership.removed or not urls:
                continue
            if mid in self.peers:
                self.peers[mid].update(urls)
            else:
                self.peers[mid] = _Peer(self, mid, urls)

    def active_since(self, mid: int) -> float:
        peer = self.peers.get(mid)
        return peer.active_since if peer is not None else 0.0

    # -- sending -----------------------------------------------------------------------------------

    def send(self, msgs: list[Message]) -> None:
        peers = self.peers
        trace = self.trace_elections = log.enabled("debug")
        touched: list[_Peer] = []
        for m in msgs:
            if trace and m.type in _ELECTION_MESSAGES:
                log.debug("raft send", raft_message=repr(m))
            peer = peers.get(m.to)
            if peer is None:
                self.server.report_unreachable(m.to)
                if m.type == MessageType.SNAP:
                    self.server.report_snapshot(m.to, False)
                continue
            peer.send(m)
            if peer not in touched:
                touched.append(peer)
        for peer in touched:
            peer.flush()

    def trace(self, what: str, m: Message) -> None:
        if m.type in _ELECTION_MESSAGES:
            log.debug(what, raft_message=repr(m))

    def start_snapshot(self, peer: _Peer, m: Message) -> None:
        if peer.id in self._snapshots_in_flight:
            return  # one at a time; Raft asks again after report_snapshot
        self._snapshots_in_flight.add(peer.id)
        asyncio.get_running_loop().create_task(self._send_snapshot(peer, m))

    async def _send_snapshot(self, peer: _Peer, m: Message) -> None:
        ok = False
        path = None
        try:
            # Ship the state as it is now, under metadata describing exactly that state
            # (etcd's "merged snapshot"); the follower's log catches up from there.
            path, meta = await self.server.snapshot_for_follower()
            assert m.snapshot is not None  # Raft sends MsgSnap with one
            m.snapshot.metadata = meta
            m.snapshot.data = b""

            async def chunks() -> AsyncIterator[bytes]:
                yield codec.encode_message(m)
                with open(path, "rb") as f:  # noqa: ASYNC230  # a local file read in chunks between sends
                    while True:
                        blob = f.read(SNAPSHOT_CHUNK)
                        if not blob:
                            break
                        yield blob

            call = (await peer.get_channel()).stream_unary(
                f"/{SERVICE}/Snapshot", request_serializer=_ident, response_deserializer=_ident
            )
            await call(chunks(), metadata=self.metadata(), timeout=600)
            ok = True
            log.info("sent snapshot", peer=f"{peer.id:x}", index=meta.index, bytes=os.path.getsize(path))
        except grpc.aio.AioRpcError as e:
            self.check_refusal(e)
            log.warning("sending snapshot failed", peer=f"{peer.id:x}", error=e.details())
        except Exception as e:
            log.warning("sending snapshot failed", peer=f"{peer.id:x}", exc_info=e)
        finally:
            self._snapshots_in_flight.discard(peer.id)
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self.server.report_snapshot(peer.id, ok)

    # -- receiving --------------------------------------------------------------------------------

    def check_identity(self, md: dict) -> tuple[str, int]:
        """(refusal or "", sender's member ID) for a caller's "cluster-id" and "from"."""
        s = self.server
        cid = md.get("cluster-id", "")
        if s.cluster_id and cid and cid != f"{s.cluster_id:x}":
            return CLUSTER_MISMATCH, 0
        try:
            frm = int(md.get("from", "0"), 16)
        except (TypeError, ValueError):
            frm = 0
        if frm and frm in s.membership.removed:
            return MEMBER_REMOVED, frm
        return "", frm

    def log_refusal(self, refusal: str, md: dict) -> None:
        if refusal == CLUSTER_MISMATCH:
            log.error(
                "rejected peer traffic: cluster ID mismatch",
                local=f"{self.server.cluster_id:x}",
                remote=str(md.get("cluster-id", "")),
            )

    def _check_caller(self, context: grpc.aio.ServicerContext) -> tuple[str, int]:
        return self.check_identity(dict(context.invocation_metadata() or ()))

    async def _on_raft(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        refusal, frm = self._check_caller(context)
        if refusal:
            self.log_refusal(refusal, dict(context.invocation_metadata() or ()))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        step = self.server.step
        trace = log.enabled("debug")
        async for frame in request_iterator:
            try:
                msgs = decode_frame(frame)
            except Exception as e:  # noqa: BLE001  # a peer's bytes: whatever fails to decode is dropped
                log.warning("dropping undecodable peer frame", peer=f"{frm:x}", error=str(e))
                continue
            for m in msgs:
                if trace and m.type in _ELECTION_MESSAGES:
                    log.debug("raft recv", raft_message=repr(m))
                step(m)
        return b""

    async def _on_snapshot(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        refusal, _ = self._check_caller(context)
        if refusal:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        it = request_iterator.__aiter__()
        try:
            msg = codec.decode_message(await it.__anext__())
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot stream")
        fd, path = tempfile.mkstemp(prefix="recv-snapshot-", suffix=".db", dir=self.server.member_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                async for blob in it:
                    f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            await self.server.receive_snapshot(msg, path)
        except Exception:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return b"ok"

    async def _on_ping(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def _on_cluster(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        s = self.server
        doc = {
            "clusterID": s.cluster_id,
            "members": [json.loads(m.to_json()) for m in s.membership.sorted_members()],
            "removed": sorted(s.membership.removed),
        }
        return json.dumps(doc).encode()

    async def _on_forward(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        refusal, _ = self._check_caller(context)
        if refusal:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        doc = json.loads(request)
        s = self.server
        try:
            if not s.is_leader:
                raise errors.NOT_LEADER()
            op = doc["op"]
            if op == "lease_renew":
                result: Any = {"ttl": await s.lease_renew(int(doc["id"]))}
            elif op == "lease_ttl":
                remaining, granted, keys = await s.lease_time_to_live(int(doc["id"]))
                result = {"ttl": remaining, "granted": granted, "keys": [k.hex() for k in keys]}
            elif op == "promote":
                members = await s.promote_member(int(doc["id"]))
                result = {"members": [m.SerializeToString().hex() for m in members]}
            else:
                raise errors.EtcdError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown forwarded op {op}")
        except errors.EtcdError as e:
            result = {"error": e.message, "code": e.code.name}
        return json.dumps(result).encode()

    # -- forwarding to the leader ---------------------------------------------------------------------

    async def _forward(self, leader: int, doc: dict) -> dict:
        peer = self.peers.get(leader)
        if peer is None:
            raise errors.NO_LEADER()
        call = (await peer.get_channel()).unary_unary(
            f"/{SERVICE}/Forward", request_serializer=_ident, response_deserializer=_ident
        )
        try:
            raw = await call(
                json.dumps(doc).encode(), metadata=self.metadata(), timeout=self.server.request_timeout
            )
        except grpc.aio.AioRpcError as e:
            self.check_refusal(e)
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.TIMEOUT() from None
            raise (
                errors.LEADER_CHANGED() if e.code() == grpc.StatusCode.UNAVAILABLE else errors.TIMEOUT()
            ) from None
        result = json.loads(raw)
        if "error" in result:
            known = errors.from_message(result["error"])
            raise known or errors.EtcdError(grpc.StatusCode[result["code"]], result["error"])
        return result

    async def forward_lease_renew(self, leader: int, lease_id: int) -> int:
        return int((await self._forward(leader, {"op": "lease_renew", "id": lease_id}))["ttl"])

    async def forward_lease_ttl(self, leader: int, lease_id: int) -> tuple[int, int, list[bytes]]:
        r = await self._forward(leader, {"op": "lease_ttl", "id": lease_id})
        return int(r["ttl"]), int(r["granted"]), [bytes.fromhex(k) for k in r["keys"]]

    async def forward_promote(self, leader: int, mid: int) -> list:
        from etcdstore.proto.etcdserverpb import rpc_pb2

        r = await self._forward(leader, {"op": "promote", "id": mid})
        return [rpc_pb2.Member.FromString(bytes.fromhex(m)) for m in r["members"]]

    # -- refusals ---------------------------------------------------------------------------------------

    def check_refusal(self, e: grpc.aio.AioRpcError) -> bool:
        """React to a peer refusing a gRPC call; True when this member must stop sending."""
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
            return False
        return self.on_refusal(e.details() or "")

    def on_refusal(self, reason: str) -> bool:
        """React to a peer refusing us; True when this member must stop sending."""
        if reason == MEMBER_REMOVED:
            self.server.on_removed()
            return True
        if reason == CLUSTER_MISMATCH:
            log.error(
                "peer refused us: cluster ID mismatch (a member of another cluster?)",
                cluster_id=f"{self.server.cluster_id:x}",
            )
        return False
