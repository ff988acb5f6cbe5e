"""One process's share of a benchmark: raw gRPC calls on prebuilt bytes, timed per request.

Requests and responses cross gRPC as bytes (no serializer, no deserializer): the client pays
only for gRPC itself, so on a 2-core machine the server, not the load generator, is measured.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import struct
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from etcdstore.bench import wire
from etcdstore.bench.config import BenchConfig, WorkerResult, WorkerShare
from etcdstore.client.requests import prefix_end
from etcdstore.proto.etcdserverpb import rpc_pb2

_PATHS = {
    "put": "/etcdserverpb.KV/Put",
    "range": "/etcdserverpb.KV/Range",
    "txn": "/etcdserverpb.KV/Txn",
    "delete": "/etcdserverpb.KV/DeleteRange",
    "watch": "/etcdserverpb.KV/Put",  # the load behind the watchers
}
WATCH_PATH = "/etcdserverpb.Watch/Watch"
WATCH_PREFIX = b"wb/"
_PREBUILD_LIMIT = 64 << 20  # bytes of prebuilt requests; beyond that, build each one
_pack_ts = struct.Struct("<d").pack
_unpack_ts = struct.Struct("<d").unpack_from


def make_channel(endpoint: str, tls: tuple[str | None, str | None, str | None] | None) -> grpc.aio.Channel:
    # A local subchannel pool gives each channel its own TCP connection (--conns means it).
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    target = endpoint.split("://", 1)[-1]
    secure = tls is not None or endpoint.startswith("https://")
    if not secure:
        return grpc.aio.insecure_channel(target, options)
    ca, cert, key = tls or (None, None, None)

    def read(p: str | None) -> bytes | None:
        return open(p, "rb").read() if p else None

    creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    return grpc.aio.secure_channel(target, creds, options)


def _deleted_one(resp: bytes) -> str | None:
    """A delete that removed no key did not do the work measured (on etcd it makes no revision)."""
    return None if rpc_pb2.DeleteRangeResponse.FromString(resp).deleted == 1 else "NOT_DELETED"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Requests:
    """Picks the next request's bytes for this workload."""

    def __init__(self, cfg: BenchConfig, rng: random.Random, share: WorkerShare) -> None:
        self.cfg = cfg
        self.rng = rng
        self.share = share
        self.value = rng.randbytes(cfg.val_size)
        size = cfg.key_space * (cfg.key_size + cfg.val_size + 8)
        self.prebuilt: list[bytes] | None = None
        prebuildable = cfg.workload in ("put", "range") or (cfg.workload == "txn" and cfg.txn_ops == 1)
        if prebuildable and size <= _PREBUILD_LIMIT:
            self.prebuilt = [self._build(i) for i in range(cfg.key_space)]
        if cfg.workload == "watch":
            if cfg.val_size < 8:
                raise ValueError("watch needs --val-size >= 8 (the value carries a timestamp)")
            self.key_fields = [
                wire.field_bytes(1, wire.key_bytes(i, cfg.key_size, WATCH_PREFIX))
                for i in range(cfg.key_space)
            ]
            self.value_head = wire.varint(2 << 3 | 2) + wire.varint(cfg.val_size)
            self.value_pad = self.value[8:]

    def _build(self, i: int) -> bytes:
        cfg = self.cfg
        key = wire.key_bytes(i, cfg.key_size)
        if cfg.workload == "put":
            return wire.put_request(key, self.value)
        if cfg.workload == "range":
            return wire.range_request(key, cfg.consistency == "s")
        return wire.txn_put_request([(key, self.value)])

    def picker(self) -> Callable[[], bytes]:
        cfg, rng = self.cfg, self.rng
        space = cfg.key_space
        rnd = rng.random
        if self.prebuilt is not None:
            reqs = self.prebuilt
            return lambda: reqs[int(rnd() * space)]
        if cfg.workload == "watch":
            fields, head, pad, now = self.key_fields, self.value_head, self.value_pad, time.monotonic
            return lambda: fields[int(rnd() * space)] + head + _pack_ts(now()) + pad
        if cfg.workload == "txn":
            ops, value, ks = min(cfg.txn_ops, space), self.value, cfg.key_size
            return lambda: wire.txn_put_request(
                [(wire.key_bytes(i, ks), value) for i in rng.sample(range(space), ops)]
            )
        if cfg.workload == "delete":
            # Each key once, in order: the clients share the iterator, and the budget asks it for
            # exactly share.total keys, this process's own (the prefill wrote them all).
            first, ks = self.share.key_offset, cfg.key_size
            keys = iter(range(first, first + self.share.total))
            return lambda: wire.delete_range_request(wire.key_bytes(next(keys), ks))
        return lambda: self._build(int(rnd() * space))


async def _client_loop(
    call: Any,
    pick: Callable[[], bytes],
    budget: list[int],
    stop_at: float,
    interval: float,
    timeout: float,
    lat: array,
    errors: dict[str, int],
    check: Callable[[bytes], str | None] | None = None,
) -> None:
    now = time.monotonic
    append = lat.append
    next_at = now()
    while True:
        if budget[0] == 0:
            return
        budget[0] -= 1  # negative budgets never reach 0: duration mode
        if interval:
            next_at += interval
            delay = next_at - now()
            if delay > 0:
                await asyncio.sleep(delay)
        req = pick()
        t0 = now()
        if t0 >= stop_at:
            return
        try:
            resp = await call(req, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            name = e.code().name
            errors[name] = errors.get(name, 0) + 1
            await asyncio.sleep(0.01)  # a down server must not turn this into a busy loop
            continue
        t1 = now()
        if check is not None:
            wrong = check(resp)
            if wrong:  # answered, but not done: an error, not an op
                errors[wrong] = errors.get(wrong, 0) + 1
                continue
        append(t1 - t0)


class _WatchSide:
    """Watchers on the benchmark prefix; they time every event against the put's timestamp."""

    def __init__(self, channels: list[grpc.aio.Channel], share: WorkerShare, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.events = 0
        self.last_event = 0.0
        self.lat = array("d")
        self.calls: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.per_stream = [
            share.watchers // share.watch_streams + (i < share.watchers % share.watch_streams)
            for i in range(share.watch_streams)
        ]
        self.channels = channels

    async def start(self) -> None:
        create = wire.watch_create_request(WATCH_PREFIX, prefix_end(WATCH_PREFIX))
        for i, n in enumerate(self.per_stream):
            ch = self.channels[i % len(self.channels)]
            call = ch.stream_stream(WATCH_PATH, request_serializer=None, response_deserializer=None)()
            self.calls.append(call)
            for _ in range(n):
                await call.write(create)
            for _ in range(n):  # one `created` answer per create
                resp = rpc_pb2.WatchResponse.FromString(await call.read())
                if not resp.created or resp.canceled:
                    raise RuntimeError(f"watch create refused: {resp.cancel_reason}")
        self.tasks = [asyncio.create_task(self._read(call)) for call in self.calls]

    async def _read(self, call: Any) -> None:
        parse = rpc_pb2.WatchResponse.FromString
        now = time.monotonic
        append = self.lat.append
        try:
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    return
                events = parse(raw).events
                t = now()
                for ev in events:
                    append(t - _unpack_ts(ev.kv.value)[0])
                self.events += len(events)
                self.last_event = t
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return

    async def drain(self, quiet: float = 1.0, limit: float = 20.0) -> None:
        """Until no event arrived for `quiet` seconds (or `limit` passed)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            seen = self.events
            await asyncio.sleep(quiet)
            if self.events == seen:
                break

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run_share(
    cfg: BenchConfig, share: WorkerShare, wait_go: Callable[[], Awaitable[float]]
) -> WorkerResult:
    """Connect, get ready, wait for the common start, run, report."""
    rng = random.Random(share.seed)
    eps = cfg.endpoints
    channels = [make_channel(eps[(share.conn_offset + i) % len(eps)], cfg.tls) for i in range(share.conns)]
    try:
        # Fail fast on a wrong or dead endpoint instead of hanging in gRPC's reconnect loop.
        limit = max(cfg.timeout, 1.0)
        try:
            await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), limit)
        except TimeoutError:
            raise RuntimeError(f"could not connect to {', '.join(eps)} within {limit:g}s") from None
        calls = [
            ch.unary_unary(_PATHS[cfg.workload], request_serializer=None, response_deserializer=None)
            for ch in channels
        ]
        reqs = _Requests(cfg, rng, share)
        watch = _WatchSide(channels, share, cfg) if share.watchers else None
        if watch:
            await watch.start()
        pick = reqs.picker()
        budget = [share.total if share.total else -1]
        lat = array("d")
        errors: dict[str, int] = {}
        interval = cfg.clients / cfg.rate if cfg.rate else 0.0  # per client, for the total rate
        check = _deleted_one if cfg.workload == "delete" else None
        start_at = await wait_go()
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        cpu0 = _cpu()
        start = time.monotonic()
        stop_at = start + cfg.duration if not share.total else float("inf")
        await asyncio.gather(
            *(
                _client_loop(
                    calls[i % len(calls)], pick, budget, stop_at, interval, cfg.timeout, lat, errors, check
                )
                for i in range(share.clients)
            )
        )
        end = time.monotonic()
        result = WorkerResult(ops=len(lat), errors=errors, latencies=lat.tobytes(), start=start, end=end)
        if watch:
            await watch.drain()
            result.events = watch.events
            result.event_latencies = watch.lat.tobytes()
            result.events_end = watch.last_event
            await watch.close()
        result.busy_cpu = _cpu() - cpu0
        return result
    finally:
        for ch in channels:
            await ch.close()


def install_uvloop() -> None:
    if os.environ.get("ETCDSTORE_BENCH_NO_UVLOOP"):
        return
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # optional: plain asyncio works, a little slower
        pass
