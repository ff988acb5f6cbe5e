"""Group commit: how long the drive loop lets proposals gather before the next Ready.

The policy (server/policies.py GroupCommit) is tested on its own, with no clock at all; the
driver's loop around it (server/raftnode.py) with a fake sleep; and once on a real in-process
member: a lone sequential client must never be made to wait, and a steady concurrent load must be.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
from etcdstore.config import parse_args
from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.raft.records import Entry, Message, MessageType, Role
from etcdstore.server import raftnode
from etcdstore.server.policies import GroupCommit
from etcdstore.server.raftnode import RaftNode
from etcdstore.server.server import GROUP_COMMIT, EtcdServer
from etcdstore.txn.requests import Kind
from testlib import eventually_async, free_port

POLICY = GroupCommit()  # the defaults: 1 ms steps, 10 ms cap, 128 go at once, 16 is heavy


def _windows(policy: GroupCommit, last_batch: int, arrivals: list[int], queued: int = 1) -> int:
    """Steps one gathering waits when each step brings arrivals[i] more proposals (then none)."""
    g = policy.gathering(queued, last_batch)
    steps = 0
    while g.open():
        queued += arrivals[steps] if steps < len(arrivals) else 0
        steps += 1
        if g.go(queued):
            break
    return steps


def test_a_quiet_step_ends_the_wait_under_light_load() -> None:
    assert _windows(POLICY, last_batch=3, arrivals=[]) == 1


def test_waits_while_proposals_keep_arriving() -> None:
    assert (
        _windows(POLICY, last_batch=3, arrivals=[2, 1, 3]) == 4
    )  # three steps brought some, the fourth none


def test_steady_load_waits_the_whole_cap() -> None:
    # After a full Ready, arrivals come in bursts (a follower forwards a batch at a time): a
    # quiet step does not mean the flow stopped.
    assert _windows(POLICY, last_batch=POLICY.heavy, arrivals=[]) == round(POLICY.cap / POLICY.step) > 1


def test_a_full_batch_goes_at_once() -> None:
    assert _windows(POLICY, last_batch=POLICY.heavy, arrivals=[POLICY.target]) == 1


def test_turned_off_never_waits() -> None:
    off = GroupCommit(step=0)
    assert not off.enabled and not off.gathering(5, 100).open()
    assert off.busy(own_queued=1, forwarded=0, arrived_during_ready=5, in_flight=50) is False


def test_the_environment_tunes_step_and_cap() -> None:
    p = GroupCommit.from_env({"ETCDSTORE_GROUP_COMMIT_US": "500", "ETCDSTORE_GROUP_COMMIT_MAX_US": "3000"})
    assert (p.step, p.cap) == (0.0005, 0.003)
    assert GroupCommit.from_env({}) == GroupCommit()


def test_other_requests_in_flight_count_as_load() -> None:
    # A follower's Readies only forward proposals and take no time, so nothing "arrives during"
    # them; its own requests still waiting on the leader are what tells it that it is busy.
    assert POLICY.busy(own_queued=1, forwarded=0, arrived_during_ready=0, in_flight=5) is True
    assert POLICY.busy(own_queued=1, forwarded=0, arrived_during_ready=0, in_flight=1) is False  # only itself
    assert POLICY.busy(own_queued=1, forwarded=0, arrived_during_ready=2, in_flight=1) is True
    assert POLICY.busy(own_queued=POLICY.target, forwarded=0, arrived_during_ready=0, in_flight=300) is False
    assert (
        POLICY.busy(own_queued=100, forwarded=POLICY.target - 100, arrived_during_ready=3, in_flight=300)
        is False
    )


# ---- the driver around the policy ---------------------------------------------------------------------------


def _driver(last_batch: int = 0, role: Role = Role.LEADER) -> RaftNode:
    host = SimpleNamespace(applied_index=0, transport=None, in_flight=lambda: 0)
    node = SimpleNamespace(term=1)
    r = RaftNode(
        node,
        None,
        None,
        host,
        tick_seconds=0.1,
        heartbeat_seconds=0.1,
        group_commit=POLICY,
    )
    r._last_batch = last_batch
    r.role = role
    r._proposals = [b"p"]
    return r


async def test_the_driver_gathers_while_proposals_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _driver(last_batch=3)
    arrivals = [2, 1, 3]
    steps: list[float] = []

    async def sleep(delay: float) -> None:
        if len(steps) < len(arrivals):
            r._proposals.extend([b"p"] * arrivals[len(steps)])
        steps.append(delay)

    monkeypatch.setattr(raftnode.asyncio, "sleep", sleep)
    await r._gather_proposals()
    assert steps == [POLICY.step] * 4


def test_the_driver_asks_the_policy_whether_it_is_busy() -> None:
    r = _driver()
    r._arrived_during_ready = 0
    assert r._busy() is False  # one queued, nothing else in flight
    r.host.in_flight = lambda: 7  # type: ignore[method-assign]  # a fake in_flight
    assert r._busy() is True


def test_forwarded_proposals_count_toward_the_batch() -> None:
    r = _driver()
    r._proposals = []
    kicks: list[int] = []
    r.kick = lambda: kicks.append(1)  # type: ignore[method-assign]  # a fake kick
    entries = [Entry(term=0, index=0, data=b"x") for _ in range(3)]
    r.step(Message(MessageType.PROP, to=1, frm=2, entries=entries))
    r.step(Message(MessageType.APP_RESP, to=1, frm=2, term=1))
    assert r._forwarded == 3 and r._answers == 1 and len(r._inbound) == 2 and len(kicks) == 2
    assert r._queued() == 3


async def test_a_gathering_leader_commits_what_answers_bring_without_ending_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Acks that arrive while proposals gather are stepped at the next step (their commit is
    # applied and answered then); the window itself goes on for the proposals.
    r = _driver(last_batch=POLICY.heavy)
    early: list[int] = []
    steps: list[float] = []

    async def commit_early() -> None:
        early.append(len(steps))
        r._answers = 0

    async def sleep(delay: float) -> None:
        steps.append(delay)
        if len(steps) == 3:
            r._answers = 2  # two followers acked during the third step

    r._commit_early = commit_early  # type: ignore[method-assign]  # a fake
    monkeypatch.setattr(raftnode.asyncio, "sleep", sleep)
    await r._gather_proposals()
    assert early == [3]
    assert len(steps) == round(POLICY.cap / POLICY.step)

    # A follower never does this: its answers are for its leader's Readies, not its own.
    f = _driver(last_batch=POLICY.heavy, role=Role.FOLLOWER)
    f._answers = 1
    f._commit_early = commit_early  # type: ignore[method-assign]  # a fake
    early.clear()
    steps.clear()
    await f._gather_proposals()
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
    r = _driver()
    r.node = node  # type: ignore[assignment]  # a fake RawNode
    r._answers = 2
    r._handle_ready = handle_ready  # type: ignore[method-assign,assignment]  # a fake
    r._inbound = [
        Message(MessageType.APP_RESP, to=1, frm=2, term=1),
        prop,
        Message(MessageType.HEARTBEAT_RESP, to=1, frm=3, term=1),
    ]
    await r._commit_early()
    assert r._inbound == [prop] and r._answers == 0
    assert node.log == ["begin", "step APP_RESP", "step HEARTBEAT_RESP", "end", "advance rd"]
    assert handled == ["rd"]


@pytest.mark.skipif(not GROUP_COMMIT.enabled, reason="group commit turned off (ETCDSTORE_GROUP_COMMIT_US=0)")
async def test_a_real_member_delays_load_but_not_a_lone_client(tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = parse_args(
        [
            "--name",
            "g",
            "--data-dir",
            str(tmp_path),
            "--listen-peer-urls",
            url,
            "--initial-advertise-peer-urls",
            url,
            "--initial-cluster",
            f"g={url}",
        ],
        {},
    )
    s = EtcdServer(cfg)
    gathered: list[int] = []
    real_gather = s.r._gather_proposals

    async def counting_gather() -> None:
        gathered.append(len(s.r._proposals))
        await real_gather()

    s.r._gather_proposals = counting_gather  # type: ignore[method-assign]  # a counting wrapper
    await s.start()
    try:
        # Wait out the member's own start-up proposals (it publishes its name).
        await eventually_async(
            lambda: s.leader_id != 0 and s.membership.get(s.member_id).name == "g",
            interval=0.01,
            message="a leader, the member's name published",
        )

        def put(i: int) -> asyncio.Future:
            return asyncio.ensure_future(
                s.propose(Kind.PUT, rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v").SerializeToString())
            )

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
