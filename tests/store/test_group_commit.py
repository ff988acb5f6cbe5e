"""Group commit: how long the drive loop lets proposals gather before the next Ready.

The policy is tested on its own with a fake clock step (no timing in the assertions), and once
on a real in-process member: a lone sequential client must never be made to wait, and a steady
concurrent load must be.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
from etcdstore.config import parse_args
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.raft.records import Entry, Message, MessageType, Role
from etcdstore.server import server as server_mod
from etcdstore.server.requests import Kind
from etcdstore.server.server import EtcdServer
from procs import free_port

pytestmark = pytest.mark.skipif(server_mod._GROUP_COMMIT_STEP <= 0, reason="group commit turned off")


def _member(last_batch: int, proposals: int = 1, forwarded: int = 0) -> SimpleNamespace:
    m = SimpleNamespace(_proposals=[b"p"] * proposals, _forwarded=forwarded, _last_batch=last_batch,
                        _answers=0, role=Role.LEADER)
    m._queued = lambda: EtcdServer._queued(m)
    return m


def _fake_sleep(monkeypatch: pytest.MonkeyPatch, member: SimpleNamespace, arrivals: list[int]) -> list[float]:
    """Each step "lets" arrivals[i] more proposals in (then none); returns the steps taken."""
    steps: list[float] = []

    async def sleep(delay: float) -> None:
        if len(steps) < len(arrivals):
            member._proposals.extend([b"p"] * arrivals[len(steps)])
        steps.append(delay)

    monkeypatch.setattr(server_mod.asyncio, "sleep", sleep)
    return steps


async def test_a_quiet_step_ends_the_wait_under_light_load(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _member(last_batch=3)
    steps = _fake_sleep(monkeypatch, m, [])
    await EtcdServer._gather_proposals(m)
    assert len(steps) == 1


async def test_waits_while_proposals_keep_arriving(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _member(last_batch=3)
    steps = _fake_sleep(monkeypatch, m, [2, 1, 3])
    await EtcdServer._gather_proposals(m)
    assert len(steps) == 4  # three steps brought some, the fourth none


async def test_steady_load_waits_the_whole_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # After a full Ready, arrivals come in bursts (a follower forwards a batch at a time): a
    # quiet step does not mean the flow stopped.
    m = _member(last_batch=server_mod._GROUP_COMMIT_HEAVY)
    steps = _fake_sleep(monkeypatch, m, [])
    await EtcdServer._gather_proposals(m)
    assert len(steps) == round(server_mod._GROUP_COMMIT_MAX / server_mod._GROUP_COMMIT_STEP) > 1


async def test_a_full_batch_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _member(last_batch=server_mod._GROUP_COMMIT_HEAVY)
    steps = _fake_sleep(monkeypatch, m, [server_mod._GROUP_COMMIT_TARGET])
    await EtcdServer._gather_proposals(m)
    assert len(steps) == 1


def test_forwarded_proposals_count_toward_the_batch() -> None:
    kicks: list[int] = []
    m = SimpleNamespace(_inbound=[], _forwarded=0, _answers=0, _kick=lambda: kicks.append(1))
    entries = [Entry(term=0, index=0, data=b"x") for _ in range(3)]
    EtcdServer.step(m, Message(MessageType.PROP, to=1, frm=2, entries=entries))
    EtcdServer.step(m, Message(MessageType.APP_RESP, to=1, frm=2, term=1))
    assert m._forwarded == 3 and m._answers == 1 and len(m._inbound) == 2 and len(kicks) == 2


async def test_a_gathering_leader_commits_what_answers_bring_without_ending_the_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Acks that arrive while proposals gather are stepped at the next step (their commit is
    # applied and answered then); the window itself goes on for the proposals.
    m = _member(last_batch=server_mod._GROUP_COMMIT_HEAVY)
    early: list[int] = []

    async def commit_early() -> None:
        early.append(len(steps))
        m._answers = 0

    m._commit_early = commit_early
    steps: list[float] = []

    async def sleep(delay: float) -> None:
        steps.append(delay)
        if len(steps) == 3:
            m._answers = 2  # two followers acked during the third step

    monkeypatch.setattr(server_mod.asyncio, "sleep", sleep)
    await EtcdServer._gather_proposals(m)
    assert early == [3]
    assert len(steps) == round(server_mod._GROUP_COMMIT_MAX / server_mod._GROUP_COMMIT_STEP)

    # A follower never does this: its answers are for its leader's Readies, not its own.
    f = _member(last_batch=server_mod._GROUP_COMMIT_HEAVY)
    f.role = Role.FOLLOWER
    f._answers = 1
    f._commit_early = commit_early
    early.clear()
    steps.clear()
    await EtcdServer._gather_proposals(f)
    assert early == []


class _Node:
    """Records what the server does with a RawNode."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.ready_pending = False

    def begin_batch(self) -> None:
        self.log.append("begin")

    def end_batch(self) -> None:
        self.log.append("end")

    def step(self, m: Message) -> None:
        self.log.append(f"step {m.type.name}")
        self.ready_pending = True

    def has_ready(self) -> bool:
        return self.ready_pending

    def ready(self) -> str:
        self.ready_pending = False
        return "rd"

    def advance(self, rd: str) -> None:
        self.log.append(f"advance {rd}")


async def test_commit_early_steps_answers_and_keeps_forwarded_proposals() -> None:
    node = _Node()
    handled: list[str] = []

    async def handle_ready(n: _Node, rd: str) -> None:
        handled.append(rd)

    prop = Message(MessageType.PROP, to=1, frm=2, entries=[Entry(term=0, index=0, data=b"x")])
    m = SimpleNamespace(node=node, _answers=2, _handle_ready=handle_ready, _step_all=EtcdServer._step_all,
                        _inbound=[Message(MessageType.APP_RESP, to=1, frm=2, term=1), prop,
                                  Message(MessageType.HEARTBEAT_RESP, to=1, frm=3, term=1)])
    m._handle_one_ready = lambda n: EtcdServer._handle_one_ready(m, n)
    await EtcdServer._commit_early(m)
    assert m._inbound == [prop] and m._answers == 0
    assert node.log == ["begin", "step APP_RESP", "step HEARTBEAT_RESP", "end", "advance rd"]
    assert handled == ["rd"]


async def test_a_real_member_delays_load_but_not_a_lone_client(tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = parse_args(["--name", "g", "--data-dir", str(tmp_path), "--listen-peer-urls", url,
                      "--initial-advertise-peer-urls", url, "--initial-cluster", f"g={url}"], {})
    s = EtcdServer(cfg)
    gathered: list[int] = []
    real_gather = s._gather_proposals

    async def counting_gather() -> None:
        gathered.append(len(s._proposals))
        await real_gather()

    s._gather_proposals = counting_gather  # type: ignore[method-assign]
    await s.start()
    try:
        # Wait out the member's own start-up proposals (it publishes its name).
        while s.leader_id == 0 or s.membership.get(s.member_id).name != "g":
            await asyncio.sleep(0.01)

        def put(i: int) -> asyncio.Future:
            return asyncio.ensure_future(
                s.propose(Kind.PUT, rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v").SerializeToString()))

        await put(-1)
        gathered.clear()
        for i in range(30):
            await put(i)
        assert gathered == []  # one client, one request at a time: never held back

        async def client(c: int) -> None:
            # Remote clients' requests arrive at odd moments, some while a Ready is on disk.
            rnd = random.Random(c)
            for i in range(10):
                await asyncio.sleep(rnd.random() * 0.003)
                await put(1000 * c + i)

        await asyncio.gather(*(client(c) for c in range(50)))
        assert gathered, "a steady concurrent load should have been gathered into fewer Readies"
    finally:
        await s.stop()


def test_other_requests_in_flight_count_as_load() -> None:
    # A follower's Readies only forward proposals and take no time, so nothing "arrives during"
    # them; its own requests still waiting on the leader are what tells it that it is busy.
    def member(in_flight: int, queued: int = 1) -> SimpleNamespace:
        return SimpleNamespace(_proposals=[b"p"] * queued, _forwarded=0, _arrived_during_ready=0,
                               _waiters=[None] * in_flight)

    assert EtcdServer._busy(member(in_flight=5)) is True
    assert EtcdServer._busy(member(in_flight=1)) is False  # the one queued request is the only one
    assert EtcdServer._busy(member(in_flight=300, queued=server_mod._GROUP_COMMIT_TARGET)) is False  # full: go
