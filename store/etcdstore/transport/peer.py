"""Member-to-member transport: Raft messages, snapshots, forwarded requests, over gRPC.

Only our own members speak this protocol, so it uses raw-bytes gRPC methods (no .proto):

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

Each peer has one sender task and a bounded queue: when a peer is down or slow, messages
beyond the bound are dropped (Raft retransmits) and Raft is told the peer is unreachable,
so a dead peer costs neither memory nor the drive loop's time.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from etcdstore import errors, metrics
from etcdstore.logs import get_logger
from etcdstore.raft import codec
from etcdstore.raft.records import Message, MessageType

if TYPE_CHECKING:
    from etcdstore.security.tls import PeerTLS
    from etcdstore.server.membership import Membership
    from etcdstore.server.server import EtcdServer

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
_ELECTION_MESSAGES = frozenset({MessageType.VOTE, MessageType.VOTE_RESP, MessageType.PRE_VOTE,
                                MessageType.PRE_VOTE_RESP, MessageType.TIMEOUT_NOW, MessageType.READ_INDEX,
                                MessageType.READ_INDEX_RESP})
MEMBER_REMOVED = "member removed"


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

    __slots__ = ("peer", "generation")

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
        self.task = self._start_sender()
        self.prober = asyncio.get_running_loop().create_task(self._probe(), name=f"probe-{peer_id:x}")
        self.dropped = 0

    def send(self, m: Message) -> None:
        if len(self.queue) >= MAX_QUEUE_MESSAGES:
            self.queue.popleft()  # the oldest is the least useful; Raft retransmits
            self.dropped += 1
            self.t.server.report_unreachable(self.id)
        self.queue.append(m)
        self.wake.set()
        if self.task.done() and not self.closed:
            # The sender must outlive any failure; a dead one would silently drop this peer's traffic.
            log.warn("peer sender had stopped; restarting it", peer=f"{self.id:x}")
            self.task = self._start_sender()

    def _start_sender(self) -> asyncio.Task:
        return asyncio.get_running_loop().create_task(self._run(), name=f"peer-{self.id:x}")

    def update(self, urls: list[str]) -> None:
        if sorted(urls) != sorted(self.urls):
            self.urls = list(urls)
            self._close_channel()

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
                log.warn("peer sender stopped", peer=f"{self.id:x}")

    async def _run_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                call = (await self.get_channel()).stream_unary(
                    f"/{SERVICE}/Raft", request_serializer=_ident, response_deserializer=_ident
                )
                log.debug("peer stream starting", peer=f"{self.id:x}", url=self.channel_url)
                self.active_since = time.monotonic()
                await call(self.frames(), metadata=self.t.metadata())
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                self.active_since = 0.0
                if self.t.check_refusal(e):
                    self.closed = True  # removed from the cluster: this member is stopping
                    return
                if e.code() != grpc.StatusCode.CANCELLED:
                    log.debug("peer stream broken", peer=f"{self.id:x}", error=e.code().name)
                if self.t.tls is not None and e.code() == grpc.StatusCode.UNAVAILABLE:
                    # Credentials are read when a channel is made: redial with the current files
                    # (and a fresh pin), or a peer that rolled to new certificates stays unreachable.
                    self._close_channel()
            except Exception as e:  # never let one peer's failure kill the member
                self.active_since = 0.0
                log.warn("peer sender failed", peer=f"{self.id:x}", exc_info=e)
            finally:
                self.generation += 1
                self.wake.set()  # let the retired iterator's consumer see it is done
            self.t.server.report_unreachable(self.id)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.25)

    async def _probe(self) -> None:
        """Measure the round trip to this peer every few seconds (etcd's peer RTT metric)."""
        rtt = metrics.PEER_RTT.labels(f"{self.id:x}")
        streamless = 0  # probes in a row that reached the peer while the sender had no stream
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                call = (await self.get_channel()).unary_unary(f"/{SERVICE}/Ping", request_serializer=_ident,
                                                              response_deserializer=_ident)
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
                log.warn("peer reachable but its sender has no stream; restarting the sender", peer=f"{self.id:x}")
                streamless = 0
                self.task.cancel()
                self.task = self._start_sender()

    async def close(self) -> None:
        self.closed = True
        self.prober.cancel()
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


class PeerTransport:
    """Raft messages to and from the other members, and the peer gRPC server."""

    def __init__(
        self,
        server: EtcdServer,
        listen: list[tuple[str, int]],
        *,
        tls: PeerTLS | None = None,
    ) -> None:
        self.server = server
        self.listen = listen
        self.peers: dict[int, _Peer] = {}
        self.extra_urls: dict[int, list[str]] = {}  # peers known before membership is applied
        self._grpc: grpc.aio.Server | None = None
        self.tls = tls
        self.bound_ports: list[int] = []
        self._snapshots_in_flight: set[int] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        srv = grpc.aio.server(options=_SERVER_OPTIONS)
        handlers = {
            "Raft": grpc.stream_unary_rpc_method_handler(self._on_raft, _ident, _ident),
            "Snapshot": grpc.stream_unary_rpc_method_handler(self._on_snapshot, _ident, _ident),
            "Cluster": grpc.unary_unary_rpc_method_handler(self._on_cluster, _ident, _ident),
            "Forward": grpc.unary_unary_rpc_method_handler(self._on_forward, _ident, _ident),
            "Ping": grpc.unary_unary_rpc_method_handler(self._on_ping, _ident, _ident),
        }
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        creds = self.tls.server_credentials() if self.tls is not None else None
        for host, port in self.listen:
            addr = f"{host}:{port}"
            try:
                bound = srv.add_secure_port(addr, creds) if creds is not None else srv.add_insecure_port(addr)
            except RuntimeError:  # gRPC's way of saying the address is taken
                bound = 0
            if bound == 0:
                raise OSError(f"cannot listen for peers on {addr}: address already in use or not available")
            self.bound_ports.append(bound)
        await srv.start()
        self._grpc = srv
        self.update_members(self.server.membership)

    async def stop(self) -> None:
        for peer in list(self.peers.values()):
            await peer.close()
        self.peers.clear()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.2)

    async def make_channel(self, url: str) -> grpc.aio.Channel:
        if url.startswith("https://"):
            if self.tls is None:
                raise ConnectionError(f"peer {url} uses https but this member has no peer TLS configured")
            # Off the loop: pinning a self-signed peer certificate dials the peer first.
            # Bounded: a dial that never finishes must not stall this peer's sender for good.
            creds, options = await asyncio.wait_for(
                asyncio.to_thread(self.tls.channel_credentials, url), timeout=CREDENTIALS_TIMEOUT)
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
        trace = log.enabled("debug")
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
            m.snapshot.metadata = meta
            m.snapshot.data = b""

            async def chunks() -> AsyncIterator[bytes]:
                yield codec.encode_message(m)
                with open(path, "rb") as f:
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
            log.warn("sending snapshot failed", peer=f"{peer.id:x}", error=e.details())
        except Exception as e:
            log.warn("sending snapshot failed", peer=f"{peer.id:x}", exc_info=e)
        finally:
            self._snapshots_in_flight.discard(peer.id)
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self.server.report_snapshot(peer.id, ok)

    # -- receiving --------------------------------------------------------------------------------

    def _check_caller(self, context: grpc.aio.ServicerContext) -> tuple[str, int]:
        md = dict(context.invocation_metadata() or ())
        s = self.server
        cid = md.get("cluster-id", "")
        if s.cluster_id and cid and cid != f"{s.cluster_id:x}":
            return CLUSTER_MISMATCH, 0
        try:
            frm = int(md.get("from", "0"), 16)
        except ValueError:
            frm = 0
        if frm and frm in s.membership.removed:
            return MEMBER_REMOVED, frm
        return "", frm

    async def _on_raft(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        refusal, frm = self._check_caller(context)
        if refusal:
            if refusal == CLUSTER_MISMATCH:
                log.error("rejected peer traffic: cluster ID mismatch", local=f"{self.server.cluster_id:x}",
                          remote=dict(context.invocation_metadata() or ()).get("cluster-id", ""))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        step = self.server.step
        trace = log.enabled("debug")
        async for frame in request_iterator:
            try:
                msgs = decode_frame(frame)
            except Exception as e:
                log.warn("dropping undecodable peer frame", peer=f"{frm:x}", error=str(e))
                continue
            for m in msgs:
                if trace and m.type in _ELECTION_MESSAGES:
                    log.debug("raft recv", raft_message=repr(m))
                step(m)
        return b""

    async def _on_snapshot(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
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
        call = (await peer.get_channel()).unary_unary(f"/{SERVICE}/Forward", request_serializer=_ident,
                                                      response_deserializer=_ident)
        try:
            raw = await call(json.dumps(doc).encode(), metadata=self.metadata(),
                             timeout=self.server.request_timeout)
        except grpc.aio.AioRpcError as e:
            self.check_refusal(e)
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.TIMEOUT() from None
            raise errors.LEADER_CHANGED() if e.code() == grpc.StatusCode.UNAVAILABLE else errors.TIMEOUT() from None
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
        """React to a peer refusing us; True when this member must stop sending."""
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
            return False
        if e.details() == MEMBER_REMOVED:
            self.server.on_removed()
            return True
        if e.details() == CLUSTER_MISMATCH:
            log.error("peer refused us: cluster ID mismatch (a member of another cluster?)",
                      cluster_id=f"{self.server.cluster_id:x}")
        return False
