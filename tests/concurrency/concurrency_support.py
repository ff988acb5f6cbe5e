"""Helpers for the lock/election tests: long-running etcdctl processes and raw gRPC stubs.

    p = await Ctl.start(endpoint, "lock", "mylock")
    line = await p.expect(lambda l: l.startswith("mylock/"), 10)   # holds the lock
    assert await p.silent_for(1.0)                                 # a waiter prints nothing
    p.terminate() / p.kill()                                       # SIGTERM unlocks, SIGKILL leaves the lease

The services under test are called through the generated stubs (no client library between).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from etcdstore.proto.v3electionpb import v3election_pb2_grpc
from etcdstore.proto.v3lockpb import v3lock_pb2_grpc
from testlib import ETCDCTL_BIN, eventually_async

CTL_ENV = dict(os.environ, ETCDCTL_API="3")


def is_deadline_error(code: grpc.StatusCode, details: str) -> bool:
    """A call whose deadline passed. etcd's server sometimes answers first, with its own
    context's error as a plain error: Unknown, "context deadline exceeded"."""
    return code == grpc.StatusCode.DEADLINE_EXCEEDED or (
        code == grpc.StatusCode.UNKNOWN and details == "context deadline exceeded"
    )


class Ctl:
    """One etcdctl process whose stdout lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.proc = proc
        self.args = args
        self.lines: list[str] = []

    @classmethod
    async def start(cls, endpoint: str, *args: str, env: dict[str, str] | None = None) -> Ctl:
        proc = await asyncio.create_subprocess_exec(
            ETCDCTL_BIN,
            "--endpoints",
            endpoint,
            *args,
            env=env or CTL_ENV,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, args)

    async def readline(self, timeout: float) -> str | None:
        """The next stdout line (without newline); None at end of output."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def expect(self, pred: Callable[[str], bool], timeout: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            try:
                line = await self.readline(max(left, 0.01))
            except TimeoutError:
                raise AssertionError(
                    f"etcdctl {' '.join(self.args)}: no matching line in {timeout}s; got {self.lines}"
                ) from None
            if line is None:
                err = await self.stderr()
                raise AssertionError(
                    f"etcdctl {' '.join(self.args)} ended (rc={self.proc.returncode}) "
                    f"before a matching line; got {self.lines}; stderr: {err}"
                )
            if pred(line):
                return line

    async def silent_for(self, seconds: float) -> bool:
        """True if the process printed nothing and kept running for `seconds`."""
        try:
            await self.readline(seconds)
        except TimeoutError:
            return self.proc.returncode is None
        return False  # it printed a line, or its output ended

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(asyncio.TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 2)).decode()
        return ""

    def terminate(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def wait(self, timeout: float = 10.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def close(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            await self.wait(5)


@contextlib.asynccontextmanager
async def ctl(endpoint: str, *args: str) -> AsyncIterator[Ctl]:
    p = await Ctl.start(endpoint, *args)
    try:
        yield p
    finally:
        await p.close()


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    lock: v3lock_pb2_grpc.LockStub
    election: v3election_pb2_grpc.ElectionStub
    kv: rpc_pb2_grpc.KVStub
    lease: rpc_pb2_grpc.LeaseStub

    async def grant(self, ttl: int) -> int:
        return (await self.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl))).ID

    async def get(self, key: bytes) -> rpc_pb2.RangeResponse:
        return await self.kv.Range(rpc_pb2.RangeRequest(key=key))

    async def keys(self, prefix: bytes) -> list[bytes]:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        resp = await self.kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, keys_only=True))
        return [kv.key for kv in resp.kvs]

    async def until_keys(self, prefix: bytes, n: int, timeout: float = 10.0) -> None:
        """Until exactly `n` keys exist under `prefix` (queued lock waiters, election candidates)."""

        async def count() -> bool:
            return len(await self.keys(prefix)) == n

        await eventually_async(count, timeout, message=f"{n} keys under {prefix!r}")


@contextlib.asynccontextmanager
async def stubs(endpoint: str) -> AsyncIterator[Stubs]:
    ch = grpc.aio.insecure_channel(endpoint)
    try:
        yield Stubs(
            ch,
            v3lock_pb2_grpc.LockStub(ch),
            v3election_pb2_grpc.ElectionStub(ch),
            rpc_pb2_grpc.KVStub(ch),
            rpc_pb2_grpc.LeaseStub(ch),
        )
    finally:
        await ch.close()


@contextlib.asynccontextmanager
async def kept_alive(st: Stubs, ttl: int) -> AsyncIterator[int]:
    """A lease refreshed every ttl/3 seconds for the duration of the block (like a client session)."""
    lease = await st.grant(ttl)
    stop = asyncio.Event()

    async def requests() -> AsyncIterator[rpc_pb2.LeaseKeepAliveRequest]:
        while not stop.is_set():
            yield rpc_pb2.LeaseKeepAliveRequest(ID=lease)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), ttl / 3)

    async def run() -> None:
        async for _ in st.lease.LeaseKeepAlive(requests()):
            pass

    task = asyncio.create_task(run())
    try:
        yield lease
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
