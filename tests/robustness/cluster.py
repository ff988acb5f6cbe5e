"""A cluster of real member processes on loopback, for either target, with its peer links behind
the fault proxy (netproxy.py).

    async with Cluster(Target.get("etcd"), size=3, base=tmpdir) as c:
        await c.leader()                 # name of the member leading now (from Status)
        c.kill("m1"); await c.restart("m1")
        c.pause("m2"); c.resume("m2")
        await c.network(blackhole=[("m1", "m2"), ("m2", "m1")])   # see netproxy.py
        await c.replace("m3")            # MemberRemove + wipe + MemberAdd + start "existing"
        await c.wait_healthy()

Every member gets a client port, a private peer port it listens on, and a proxy port it
advertises to the others (--initial-advertise-peer-urls). Processes run in their own session, so
signals go to the member's whole process group (etcdstore may run helper processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from etcdstore.client import Client
from etcdstore.errors import EtcdError
from testlib import HOST, check_etcd_oracle, free_port, member_args, spawn

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Target:
    name: str  # "etcd" | "etcdstore"
    binary: str

    @staticmethod
    def locate(name: str) -> str | None:
        """The executable: on PATH, or next to this Python (a virtualenv's console script)."""
        found = shutil.which(name)
        if found:
            return found
        beside = Path(sys.executable).parent / name
        return str(beside) if beside.exists() else None

    @classmethod
    def get(cls, name: str) -> Target:
        if name not in ("etcd", "etcdstore"):
            raise ValueError(f"unknown target {name!r}")
        path = cls.locate(name)
        if path is None:
            raise FileNotFoundError(f"{name} is not installed (not on PATH)")
        if name == "etcd":
            check_etcd_oracle()  # the reference must be etcd 3.4
        return cls(name, path)

    def ready(self) -> tuple[bool, str]:
        """Whether the binary runs at all (`--version` exits 0)."""
        try:
            p = subprocess.run([self.binary, "--version"], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, str(e)
        lines = (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()
        if p.returncode != 0:
            return False, lines[-1] if lines else f"exit status {p.returncode}"
        return True, lines[0] if lines else ""


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int  # where the process listens for peers
    proxy_port: int  # what it advertises: the proxy forwards to peer_port
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    member_id: int = 0
    starts: int = 0

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def advertised_peer_url(self) -> str:
        return f"http://{HOST}:{self.proxy_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


class NetProxyProcess:
    """The fault proxy running as a child process, driven line by line over its stdin/stdout."""

    def __init__(self, seed: int) -> None:
        env = dict(os.environ, NETPROXY_SEED=str(seed or 1))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "netproxy.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._lock = asyncio.Lock()

    async def call(self, **msg: Any) -> Any:
        async with self._lock:
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            line = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
        if not line:
            raise RuntimeError("the network proxy exited")
        out = json.loads(line)
        if isinstance(out, dict) and "error" in out:
            raise RuntimeError(f"network proxy: {out['error']}")
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Cluster:
    def __init__(
        self,
        target: Target,
        *,
        size: int = 3,
        base: Path,
        seed: int = 0,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        snapshot_count: int = 2000,
    ) -> None:
        self.target = target
        self.size = size
        self.base = Path(base)
        self.seed = seed
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.snapshot_count = snapshot_count
        self.token = f"robustness-{uuid.uuid4().hex[:8]}"
        self.members: dict[str, Member] = {}
        self.proxy: NetProxyProcess | None = None
        self.admin: Client | None = None
        self.events: list[str] = []  # what happened to the cluster, for the report

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, attempts: int = 3) -> None:
        self.proxy = NetProxyProcess(self.seed)
        for attempt in range(attempts):
            self._allocate()
            for m in self.members.values():
                await self.proxy.call(cmd="listen", member=m.name, port=m.proxy_port, target=m.peer_port)
            for m in self.members.values():
                await self._spawn(m, "new")
            try:
                await self.wait_healthy(timeout=30)
                break
            except TimeoutError:
                # most likely a port someone else grabbed; start over on new ports
                for m in self.members.values():
                    m.signal(signal.SIGKILL)
                    if m.proc:
                        m.proc.wait()
                if attempt == attempts - 1:
                    raise
        await self._learn_ids()

    def _allocate(self) -> None:
        self.members = {}
        for i in range(self.size):
            name = f"m{i + 1}"
            d = self.base / name
            if d.exists():
                shutil.rmtree(d)
            self.members[name] = Member(
                name, free_port(), free_port(), free_port(), d / "data", self.base / f"{name}.log"
            )

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members.values()]

    def _command(self, m: Member, state: str, initial: list[Member]) -> list[str]:
        cluster = ",".join(f"{x.name}={x.advertised_peer_url}" for x in initial)
        timing = [
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--snapshot-count", str(self.snapshot_count),
        ]  # fmt: skip
        return [self.target.binary] + member_args(
            name=m.name,
            data_dir=m.data_dir,
            client_url=m.client_url,
            peer_url=f"http://{HOST}:{m.peer_port}",
            advertise_peer_url=m.advertised_peer_url,
            initial_cluster=cluster,
            state=state,
            token=self.token,
            extra=timing,
        )

    async def _spawn(self, m: Member, state: str, initial: list[Member] | None = None) -> None:
        cmd = self._command(m, state, initial or list(self.members.values()))
        m.proc = spawn(cmd, m.log_path, label=f"start {m.starts}")
        m.paused = False
        m.starts += 1
        assert self.proxy is not None
        await self.proxy.call(cmd="pid", member=m.name, pid=m.proc.pid)

    async def stop(self) -> None:
        for m in self.members.values():
            if m.paused:
                m.signal(signal.SIGCONT)
            m.signal(signal.SIGKILL)
            if m.proc is not None:
                m.proc.wait()
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def client(self) -> Client:
        if self.admin is None:
            self.admin = Client(self.endpoints, timeout=2.0)
        return self.admin

    # -- observation -------------------------------------------------------------------------

    async def status(self, name: str, timeout: float = 1.0) -> Any:
        return await self.client().at(self.members[name].endpoint).with_options(timeout=timeout).status()

    async def _learn_ids(self) -> None:
        for m in self.members.values():
            if m.running and not m.paused:
                try:
                    m.member_id = (await self.status(m.name)).header.member_id
                except EtcdError:
                    pass

    async def leader(self, timeout: float = 10.0) -> str:
        """The member every reachable member names as leader (waits for one to exist)."""
        deadline = time.monotonic() + timeout
        while True:
            await self._learn_ids()
            ids = {m.member_id: n for n, m in self.members.items() if m.member_id}
            seen = set()
            for n, m in self.members.items():
                if not m.running or m.paused:
                    continue
                try:
                    st = await self.status(n)
                except EtcdError:
                    continue
                if st.leader:
                    seen.add(st.leader)
            if len(seen) == 1:
                lid = seen.pop()
                if lid in ids:
                    return ids[lid]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no agreed leader (saw {seen})")
            await asyncio.sleep(0.2)

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running member answers a linearizable read and they agree on the leader."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                leaders = set()
                for m in self.members.values():
                    if not m.running:
                        raise TimeoutError(f"{m.name} is not running")
                    view = self.client().at(m.endpoint).with_options(timeout=1.0)
                    st = await view.status()
                    leaders.add(st.leader)
                    await view.get(b"/health")
                if len(leaders) == 1 and 0 not in leaders:
                    return
                last = RuntimeError(f"leaders seen: {leaders}")
            except (EtcdError, TimeoutError) as e:
                last = e
            await asyncio.sleep(0.3)
        raise TimeoutError(f"cluster not healthy after {timeout:.0f} s: {last}")

    # -- faults ------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        m = self.members[name]
        if m.paused:
            m.signal(signal.SIGCONT)
        m.signal(signal.SIGKILL)
        if m.proc is not None:
            m.proc.wait()
        m.paused = False

    async def restart(self, name: str) -> None:
        """Start a killed member again on its data dir."""
        m = self.members[name]
        if m.running:
            raise RuntimeError(f"{name} is still running")
        await self._spawn(m, "existing")

    def pause(self, name: str) -> None:
        m = self.members[name]
        m.signal(signal.SIGSTOP)
        m.paused = True

    def resume(self, name: str) -> None:
        m = self.members[name]
        m.signal(signal.SIGCONT)
        m.paused = False

    async def network(
        self,
        *,
        blackhole: list[tuple[str, str]] = (),  # type: ignore[assignment]  # an empty, never-mutated default
        # an empty, never-mutated default
        delay: list[tuple[str, str, float, float]] = (),  # type: ignore[assignment]
        # an empty, never-mutated default
        drop: list[tuple[str, str, float]] = (),  # type: ignore[assignment]
    ) -> None:
        assert self.proxy is not None
        await self.proxy.call(
            cmd="rules",
            blackhole=[list(x) for x in blackhole],
            delay=[list(x) for x in delay],
            drop=[list(x) for x in drop],
        )

    def links(self, a: list[str], b: list[str]) -> list[tuple[str, str]]:
        """Both directions of every link between groups a and b."""
        return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]

    async def heal(self) -> None:
        await self.network()

    async def replace(self, name: str) -> None:
        """Remove the member, wipe its data, add it back as a new member and start it."""
        m = self.members[name]
        old_id = m.member_id
        self.kill(name)
        others = [x for x in self.members.values() if x.name != name]
        admin = Client([x.endpoint for x in others], timeout=5.0)
        try:
            await self._retry(lambda: admin.member_remove(old_id), "member remove")
            shutil.rmtree(m.data_dir, ignore_errors=True)
            resp = await self._retry(lambda: admin.member_add([m.advertised_peer_url]), "member add")
            m.member_id = resp.member.ID
        finally:
            await admin.close()
        await self._spawn(m, "existing", list(self.members.values()))

    async def _retry(self, fn: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await fn()
            except EtcdError as e:
                if e.message.startswith("etcdserver: member not found") and what == "member remove":
                    return None  # an earlier attempt went through after all
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} failed: {e}") from None
                await asyncio.sleep(0.5)

    # -- the end of a run --------------------------------------------------------------------

    async def settle(self, timeout: float = 60.0) -> int:
        """Wait until every member reports the same revision; return it."""
        deadline = time.monotonic() + timeout
        while True:
            revs = {}
            for m in self.members.values():
                try:
                    revs[m.name] = (await self.status(m.name)).header.revision
                except EtcdError:
                    revs[m.name] = None
            if None not in revs.values() and len(set(revs.values())) == 1:
                return next(iter(revs.values()))
            if time.monotonic() > deadline:
                raise TimeoutError(f"members did not converge: {revs}")
            await asyncio.sleep(0.3)

    async def hash_kv(self, revision: int) -> dict[str, dict[str, int]]:
        out = {}
        for m in self.members.values():
            r = await self.client().at(m.endpoint).with_options(timeout=10.0).hash_kv(revision)
            out[m.name] = {
                "revision": r.header.revision,
                "hash": r.hash,
                "compact_revision": r.compact_revision,
            }
        return out


@dataclass
class FaultRecord:
    kind: str
    target: str
    start: float
    end: float = 0.0
    detail: str = ""
    errors: list[str] = field(default_factory=list)
