"""A TCP proxy on the members' peer links, run as its own process, that partitions, delays and drops.

Why a proxy and not network namespaces + tc netem: the project's network tests stay on loopback,
need no root or kernel state that a crashed run would leak (namespaces, qdiscs), cannot disturb
other test runs sharing the machine, and work for any target, since both etcd and etcdstore just
dial the peer URLs the cluster advertises. Each member listens for peers on a private port and
advertises the proxy's port instead, so every byte between members passes through here.

Links are directional (member a -> member b). Every connection is attributed to the member that
dialed it: on loopback the source address says nothing, so the proxy looks the connecting socket
up in /proc/net/tcp and finds which member's process (or a descendant) holds that socket inode.

Faults, per directed link:
* blackhole: bytes stop flowing (the proxy stops reading, so TCP back-pressure builds up as it
  would behind a real partition); they flow again, in order, after healing;
* delay: each chunk is held for `ms +- jitter` milliseconds, order preserved;
* drop: each chunk is lost with probability p and "retransmitted" after a 200 ms RTO (Linux's
  minimum), holding back everything behind it, which is what packet loss does to a TCP stream.

Control: one JSON object per line on stdin, answered by one line on stdout ("ok" or an error):
    {"cmd": "listen", "member": "m1", "port": 40001, "target": 40002}
    {"cmd": "pid", "member": "m1", "pid": 1234}
    {"cmd": "rules", "blackhole": [["m1","m2"], ...], "delay": [["m1","m2",75,50], ...],
     "drop": [["m1","m2",0.1], ...]}
    {"cmd": "stats"}  ->  {"connections": n, "unidentified": n, "closed_early": n, "bytes": n, ...}
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

HOST = "127.0.0.1"
RTO = 0.2
CHUNK = 65536
QUEUE_CHUNKS = 64


def _hex_addrs(port: int) -> tuple[str, str]:
    """127.0.0.1:port as /proc/net/tcp and /proc/net/tcp6 write it (dual-stack sockets dialing an
    IPv4 address show up in tcp6 as ::ffff:127.0.0.1, in 32-bit little-endian words)."""
    return f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"


def socket_inode(local_port: int, remote_port: int) -> int | None:
    """Inode of the loopback socket 127.0.0.1:local_port -> 127.0.0.1:remote_port (0: closed)."""
    for path, i in (("/proc/net/tcp", 0), ("/proc/net/tcp6", 1)):
        local, remote = _hex_addrs(local_port)[i], _hex_addrs(remote_port)[i]
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1] == local and parts[2] == remote:
                        return int(parts[9])
        except OSError:
            continue
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def owner(inode: int, pids: dict[str, int]) -> str | None:
    target = f"socket:[{inode}]"
    for member, root in pids.items():
        for pid in _descendants(root):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return member
                except OSError:
                    continue
    return None


class Rules:
    def __init__(self) -> None:
        self.blackhole: set[tuple[str, str]] = set()
        self.delay: dict[tuple[str, str], tuple[float, float]] = {}
        self.drop: dict[tuple[str, str], float] = {}
        self.changed = asyncio.Event()

    def update(self, msg: dict[str, Any]) -> None:
        self.blackhole = {(a, b) for a, b in msg.get("blackhole", ())}
        self.delay = {(a, b): (ms / 1000, jit / 1000) for a, b, ms, jit in msg.get("delay", ())}
        self.drop = {(a, b): p for a, b, p in msg.get("drop", ())}
        self.changed.set()
        self.changed = asyncio.Event()

    def blocked(self, src: str | None, dst: str | None) -> bool:
        if src is None or dst is None:  # unattributed: blocked if the known end is cut off at all
            known = src or dst
            return any(known in link for link in self.blackhole)
        return (src, dst) in self.blackhole

    def hold(self, src: str | None, dst: str | None, rnd: random.Random) -> float:
        d = 0.0
        ms = self.delay.get((src, dst)) if src and dst else None
        if ms:
            d += max(0.0, ms[0] + rnd.uniform(-ms[1], ms[1]))
        p = self.drop.get((src, dst)) if src and dst else None
        if p:
            rto = RTO
            while rnd.random() < p:  # each retransmission may be lost again
                d += rto
                rto = min(rto * 2, 1.6)
        return d


class _Link:
    """The two ends of one proxied connection: the member it goes to, and the one that dialed
    (None until /proc says who)."""

    __slots__ = ("dialer", "member")

    def __init__(self, member: str) -> None:
        self.member = member
        self.dialer: str | None = None


class Proxy:
    def __init__(self) -> None:
        self.rules = Rules()
        self.pids: dict[str, int] = {}
        self.rnd = random.Random(int(os.environ.get("NETPROXY_SEED", "0")) or None)
        counters = ("connections", "unidentified", "closed_early", "upstream_refused", "bytes")
        self.stats = dict.fromkeys(counters, 0)
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self.conns: set[asyncio.Task[None]] = set()
        self.unidentified: list[str] = []

    async def listen(self, member: str, port: int, target: int) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.conns.add(task)
            try:
                await self._connection(member, port, target, reader, writer)
            finally:
                self.conns.discard(task)

        self.servers[member] = await asyncio.start_server(handle, HOST, port, reuse_address=True)

    async def _identify(self, link: _Link, peer_port: int, listen_port: int) -> None:
        loop = asyncio.get_running_loop()
        inode = None
        for _ in range(5):
            inode = await loop.run_in_executor(None, socket_inode, peer_port, listen_port)
            if inode:
                who = await loop.run_in_executor(None, owner, inode, dict(self.pids))
                if who:
                    link.dialer = who
                    self.rules.changed.set()  # pumps waiting on an unattributed link re-check
                    self.rules.changed = asyncio.Event()
                    return
            await asyncio.sleep(0.02)
        if not inode:  # no live socket (inode 0 = already closed by the dialer): nothing to attribute
            self.stats["closed_early"] += 1
            return
        self.stats["unidentified"] += 1
        self.unidentified.append(f"port {peer_port} -> {listen_port}: inode {inode}, pids {self.pids}")
        del self.unidentified[:-10]

    async def _connection(
        self, member: str, port: int, target: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Bytes flow at once; the dialer is identified alongside. (gRPC clients give a connection
        # attempt as little as their minimum reconnect backoff, 50 ms for etcdstore's peers, to
        # produce the server's SETTINGS frame: waiting for /proc before forwarding loses that race.)
        self.stats["connections"] += 1
        link = _Link(member)
        ident = asyncio.create_task(self._identify(link, writer.get_extra_info("peername")[1], port))
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, target)
        except OSError:  # the member is down: the dialer sees its connection closed
            self.stats["upstream_refused"] += 1
            ident.cancel()
            writer.close()
            return
        a = asyncio.create_task(self._pump(reader, up_writer, link, outbound=True))
        b = asyncio.create_task(self._pump(up_reader, writer, link, outbound=False))
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        for t in (a, b, ident):
            t.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, outbound: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()
        rules = self.rules

        def ends() -> tuple[str | None, str | None]:
            return (link.dialer, link.member) if outbound else (link.member, link.dialer)

        async def read() -> None:
            last = 0.0
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (OSError, RuntimeError):
                    data = b""
                if not data:
                    await queue.put((0.0, b""))
                    return
                due = max(loop.time() + rules.hold(*ends(), self.rnd), last)
                last = due
                await queue.put((due, data))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                while rules.blocked(*ends()):
                    await rules.changed.wait()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                while rules.blocked(*ends()):  # cut off while the chunk was held back
                    await rules.changed.wait()
                writer.write(data)
                self.stats["bytes"] += len(data)
                await writer.drain()
        except (OSError, RuntimeError):
            pass  # the other side went away: the connection handler closes both ends
        finally:
            reading.cancel()
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

    async def command(self, msg: dict[str, Any]) -> Any:
        cmd = msg["cmd"]
        if cmd == "listen":
            await self.listen(msg["member"], msg["port"], msg["target"])
        elif cmd == "pid":
            self.pids[msg["member"]] = msg["pid"]
        elif cmd == "rules":
            self.rules.update(msg)
        elif cmd == "stats":
            return dict(self.stats, last_unidentified=self.unidentified)
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return "ok"


async def main() -> None:
    try:
        import uvloop  # noqa: F401 - a faster loop keeps the proxy's added latency small
    except ImportError:
        pass
    proxy = Proxy()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            out = await proxy.command(json.loads(line))
        except Exception as e:  # noqa: BLE001 - reported to the controller, which decides
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    started = time.monotonic()
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
