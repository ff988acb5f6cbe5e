"""Leadership.run: leader-only work runs here or is forwarded, and a forward that found no leader is
tried again until the request timeout, as etcd's LeaseRenew / PromoteMember loops do."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from etcdstore import errors
from etcdstore.raft.records import Role
from etcdstore.server.leader import Leadership


@dataclass
class FakeRaft:
    role: Role = Role.FOLLOWER
    leader_id: int = 2


def _leadership(raft: FakeRaft, timeout: float = 5.0) -> Leadership:
    transport = object()
    return Leadership(raft, 1, lambda: transport, poll_seconds=0.01, request_timeout=timeout)  # type: ignore[arg-type]  # a fake RaftNode and transport


async def _local() -> str:
    return "here"


def test_leader_runs_locally() -> None:
    lead = _leadership(FakeRaft(role=Role.LEADER, leader_id=1))

    async def never(t: object, leader: int) -> str:
        raise AssertionError("a leader does not forward")

    assert asyncio.run(lead.run(_local, never)) == "here"


def test_forward_retried_after_the_leader_went_away() -> None:
    raft = FakeRaft(leader_id=2)
    calls: list[int] = []

    async def forward(t: object, leader: int) -> str:
        calls.append(leader)
        if len(calls) == 1:
            raft.leader_id = 3  # the old leader died; an election picked member 3
            raise errors.LEADER_CHANGED()
        if len(calls) == 2:
            raise errors.NOT_LEADER()
        return f"from {leader}"

    assert asyncio.run(_leadership(raft).run(_local, forward)) == "from 3"
    assert calls == [2, 3, 3]


def test_forward_errors_of_the_request_return_at_once() -> None:
    calls = 0

    async def forward(t: object, leader: int) -> str:
        nonlocal calls
        calls += 1
        raise errors.LEASE_NOT_FOUND()

    with pytest.raises(errors.EtcdError) as e:
        asyncio.run(_leadership(FakeRaft()).run(_local, forward))
    assert e.value == errors.LEASE_NOT_FOUND and calls == 1


def test_no_leader_reached_before_the_timeout_is_a_timeout() -> None:
    async def forward(t: object, leader: int) -> str:
        raise errors.LEADER_CHANGED()

    start = time.monotonic()
    with pytest.raises(errors.EtcdError) as e:
        asyncio.run(_leadership(FakeRaft(), timeout=0.3).run(_local, forward))
    assert e.value == errors.TIMEOUT
    assert time.monotonic() - start >= 0.3
