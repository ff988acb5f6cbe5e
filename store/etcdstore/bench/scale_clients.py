"""Clients of the scale suite's parts that etcd's benchmark tool has no workload for (compare.py):

- `StalledWatch`: a watch whose client stops reading its connection once the watch is created, a raw
  HTTP/2 client on a plain socket, so nothing below it reads on its behalf: the server's stream and
  connection windows (65,535 bytes, never updated) fill and its events back up in the server;
- `Filler`: a thread putting values of a given size at a given rate (the events that back up);
- lease helpers for the leader-change part: grant leases with a key each, renew every lease once over
  keepalive streams that fail over between members, follow the leader through Status, and record the
  keys deleted (a lease revoked) from a watch.

They depend only on grpcio and the generated etcd protos, as the rest of compare.py does.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

# ---------------------------------------------------------------------------------------------
# A watcher that never reads

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0, 1, 3, 4, 6, 7
_ACK, _END_STREAM, _END_HEADERS = 0x1, 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _hpack_int(n: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes((n,))
    out = bytearray((limit,))
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value


def _frames(buf: bytearray) -> list[tuple[int, int, int, bytes]]:
    """Complete frames at the start of `buf` (removed from it): (type, flags, stream, payload)."""
    out = []
    while len(buf) >= 9:
        size = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + size:
            break
        kind, flags = buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        out.append((kind, flags, stream, bytes(buf[9 : 9 + size])))
        del buf[: 9 + size]
    return out


class StalledWatch:
    """One watch over its own TCP connection, from a client that stops reading once the watch is
    created: it sends the preface, its (empty) SETTINGS, the Watch call and a create request, reads
    until the server's SETTINGS (which it acknowledges) and the watch's created response have come,
    and from then on reads nothing and sends nothing (no WINDOW_UPDATE). The server may send 65,535
    bytes on the stream (the default window the client leaves in place); everything after that waits
    in the server."""

    def __init__(self, endpoint: str, key: bytes, range_end: bytes, timeout: float = 30.0) -> None:
        from etcdstore.proto.etcdserverpb import rpc_pb2

        host, port = endpoint.rsplit(":", 1)
        req = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=range_end)
        ).SerializeToString()
        headers = b"".join(
            _literal(n, v)
            for n, v in (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/etcdserverpb.Watch/Watch"),
                (b":authority", endpoint.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.sendall(
            _PREFACE
            + _frame(_SETTINGS, 0, 0)
            + _frame(_HEADERS, _END_HEADERS, 1, headers)
            + _frame(_DATA, 0, 1, b"\x00" + len(req).to_bytes(4, "big") + req)
        )
        buf = bytearray()
        deadline = time.monotonic() + timeout
        created = False
        while not created:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                self.sock.close()
                raise TimeoutError(
                    f"no created response for a watch on {endpoint} in {timeout:.0f} s"
                ) from None
            if not chunk:
                self.sock.close()
                raise ConnectionError(f"{endpoint} closed the connection before the watch was created")
            buf += chunk
            for kind, flags, stream, payload in _frames(buf):
                if kind == _SETTINGS and not flags & _ACK:
                    self.sock.sendall(_frame(_SETTINGS, _ACK, 0))
                elif kind == _PING and not flags & _ACK:
                    self.sock.sendall(_frame(_PING, _ACK, 0, payload))
                elif kind in (_GOAWAY, _RST_STREAM) or (
                    kind == _HEADERS and stream == 1 and flags & _END_STREAM
                ):
                    self.sock.close()
                    raise ConnectionError(f"{endpoint} refused the watch (frame type {kind})")
                elif kind == _DATA and stream == 1 and payload:
                    created = True

    def close(self) -> str:
        """How the connection stands after the stall ("open", "stream reset", "goaway" or "closed" by the
        server), read without blocking from what the kernel holds; then closes it."""
        state = "open"
        buf = bytearray()
        try:
            self.sock.settimeout(0.2)
            while True:
                try:
                    chunk = self.sock.recv(1 << 20)
                except TimeoutError:
                    break
                if not chunk:
                    state = "closed" if state == "open" else state
                    break
                buf += chunk
                for kind, flags, stream, _payload in _frames(buf):
                    if kind == _GOAWAY:
                        state = "goaway"
                    elif state == "open" and (
                        (kind == _RST_STREAM and stream == 1)
                        or (kind == _HEADERS and stream == 1 and flags & _END_STREAM)
                    ):
                        state = "stream reset"
        except OSError:
            state = "closed"
        finally:
            self.sock.close()
        return state


class Filler(threading.Thread):
    """Puts `total_bytes` in values of `value_size` bytes, at most `rate` bytes/s, over `keys` keys under
    `prefix`, with one gRPC client (sequentially); `sent` counts what was put."""

    def __init__(
        self,
        endpoint: str,
        total_bytes: int,
        value_size: int,
        rate: float,
        prefix: bytes = b"etcdstore-bench-fill/",
        keys: int = 16,
    ) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.value_size, self.rate, self.prefix, self.keys = (
            endpoint,
            value_size,
            rate,
            prefix,
            keys,
        )
        self.puts = max(1, total_bytes // value_size)
        self.sent = 0
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        import grpc

        from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

        value = b"f" * self.value_size
        interval = self.value_size / self.rate if self.rate > 0 else 0.0
        t0 = time.monotonic()
        try:
            with grpc.insecure_channel(self.endpoint) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                for i in range(self.puts):
                    wait = t0 + i * interval - time.monotonic()
                    if self._halt.wait(wait) if wait > 0 else self._halt.is_set():
                        break
                    key = self.prefix + str(i % self.keys).encode()
                    kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=60.0)
                    self.sent += self.value_size
        except BaseException as e:  # noqa: BLE001 - reported by the part
            self.error = e
        finally:
            self.seconds = time.monotonic() - t0

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------------------------------------
# Leases across a leader change (grpc.aio; one event loop)


async def member_ids(channels: dict[str, object]) -> tuple[dict[str, int], int]:
    """Each endpoint's member ID and the leader's ID, from Status."""
    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    ids, leader = {}, 0
    for ep, ch in channels.items():
        st = await rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=10.0)
        ids[ep] = st.header.member_id
        leader = st.leader or leader
    return ids, leader


async def wait_new_leader(channels: list[object], old: int, give_up: float) -> tuple[float | None, int]:
    """The monotonic time a member first reports a leader other than `old` (none: no leader), and its ID."""
    import grpc

    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    while time.monotonic() < give_up:
        for ch in channels:
            try:
                st = await rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1.0)
            except grpc.RpcError:
                continue
            if st.leader and st.leader != old:
                return time.monotonic(), st.leader
        await asyncio.sleep(0.02)
    return None, 0


async def grant_with_keys(
    channel: object, n: int, ttl: int, prefix: bytes, concurrency: int = 100
) -> list[int]:
    """Grant n leases of `ttl` s and put one key under `prefix` on each; their IDs."""
    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    lease, kv = rpc_pb2_grpc.LeaseStub(channel), rpc_pb2_grpc.KVStub(channel)
    todo = iter(range(n))
    ids: list[int] = []

    async def worker() -> None:
        for i in todo:
            g = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=60.0)
            await kv.Put(rpc_pb2.PutRequest(key=prefix + b"%d" % i, value=b"x", lease=g.ID), timeout=60.0)
            ids.append(g.ID)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


async def renew_all(
    channels: list[object],
    ids: list[int],
    give_up: float,
    streams: int = 50,
    errors: dict[str, int] | None = None,
    silence: float = 8.0,
) -> tuple[dict[int, float], set[int], int]:
    """Renew every lease once: `streams` LeaseKeepAlive streams spread over `channels`, each renewing its
    share one request at a time; a stream that fails or stays silent for `silence` s (default 8: longer
    than etcd's own 7 s wait for a leader when a follower forwards a renewal) is dropped and the lease
    retried on a new stream on the next channel, until `give_up`. Returns the time each lease was
    answered with a TTL, the leases answered TTL 0 (not found: revoked), and the retries (counted by kind
    of error in `errors`, if given)."""
    from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    ok: dict[int, float] = {}
    gone: set[int] = set()
    retries = 0
    kinds = errors if errors is not None else {}

    async def worker(w: int) -> None:
        nonlocal retries
        at = w % len(channels)
        call = None
        try:
            for lid in ids[w::streams]:
                while time.monotonic() < give_up:
                    try:
                        if call is None:
                            call = rpc_pb2_grpc.LeaseStub(channels[at]).LeaseKeepAlive()
                        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lid))
                        left = give_up - time.monotonic()
                        resp = await asyncio.wait_for(call.read(), timeout=max(0.05, min(silence, left)))
                        if not isinstance(resp, rpc_pb2.LeaseKeepAliveResponse):  # grpc.aio.EOF
                            raise ConnectionError("keepalive stream ended")
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # noqa: BLE001 - any failure: new stream, next member
                        retries += 1
                        kind = _error_kind(e)
                        kinds[kind] = kinds.get(kind, 0) + 1
                        if call is not None:
                            call.cancel()
                        call = None
                        at = (at + 1) % len(channels)
                        await asyncio.sleep(0.05)
                        continue
                    if resp.TTL > 0:
                        ok[lid] = time.monotonic()
                    else:
                        gone.add(lid)
                    break
        finally:
            if call is not None:
                call.cancel()

    await asyncio.gather(*(worker(w) for w in range(min(streams, max(1, len(ids))))))
    return ok, gone, retries


def _error_kind(e: BaseException) -> str:
    import grpc

    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {(e.details() or '')[:120]}"
    return type(e).__name__


class DeleteWatch:
    """A watch for the delete events under `prefix` on one member (a lease's key deleted: the lease was
    revoked); `deleted` maps each key to when its event came."""

    def __init__(self, channel: object, prefix: bytes) -> None:
        self.channel, self.prefix = channel, prefix
        self.deleted: dict[bytes, float] = {}
        self.error: BaseException | None = None
        self._created = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        deadline = time.monotonic() + timeout
        while not self._created.is_set():
            if self._task.done() or time.monotonic() > deadline:
                raise TimeoutError(f"delete watch not created: {self.error!r}")
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        import grpc

        from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

        p = self.prefix

        async def requests():
            yield rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=p, range_end=p[:-1] + bytes([p[-1] + 1]), filters=[rpc_pb2.WatchCreateRequest.NOPUT]
                )
            )
            await self._done.wait()

        try:
            async for resp in rpc_pb2_grpc.WatchStub(self.channel).Watch(requests()):
                if resp.created:
                    self._created.set()
                now = time.monotonic()
                for ev in resp.events:
                    self.deleted.setdefault(ev.kv.key, now)
        except (grpc.RpcError, asyncio.CancelledError) as e:
            self.error = e

    async def stop(self) -> None:
        self._done.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
