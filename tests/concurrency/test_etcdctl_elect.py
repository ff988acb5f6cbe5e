"""`etcdctl elect` and `elect -l` (the real 3.4 tool) against our server and real etcd 3.4,
side by side with our Election service's Observe and Campaign/Proclaim/Resign RPCs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from concurrency_support import Ctl, Stubs, ctl, kept_alive, stubs
from etcdstore.proto.v3electionpb import v3election_pb2 as epb
from testlib import Cluster, etcdctl, eventually_async


def values(lines: list[str], name: str) -> list[str]:
    """What `elect -l` printed, as the leader values (it prints key, then value, per change)."""
    return [line for line in lines if not line.startswith(name + "/")]


async def wait_values(p: Ctl, name: str, want: list[str], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while values(p.lines, name) != want:
        assert len(values(p.lines, name)) < len(want) and want[: len(values(p.lines, name))] == values(
            p.lines, name
        ), f"observer saw {values(p.lines, name)}, want {want}"
        await p.expect(lambda line: True, max(deadline - loop.time(), 0.01))


@contextlib.asynccontextmanager
async def observed(st: Stubs, name: bytes) -> AsyncIterator[list[bytes]]:
    """Our Observe RPC collecting leader values in the background."""
    seen: list[bytes] = []

    async def run() -> None:
        async for resp in st.election.Observe(epb.LeaderRequest(name=name)):
            seen.append(resp.kv.value)

    task = asyncio.create_task(run())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    await eventually_async(pred, timeout)


async def queue_length(st: Stubs, prefix: bytes, n: int) -> None:
    await st.until_keys(prefix, n)


async def test_etcdctl_elect_leadership_changes_are_observed_in_order(server: Cluster) -> None:
    ep = server.endpoints[0]
    async with stubs(ep) as st, observed(st, b"el") as rpc_seen, ctl(ep, "elect", "-l", "el") as obs:
        assert await obs.silent_for(0.5)  # nobody leads yet
        async with ctl(ep, "elect", "el", "alpha") as a:
            await a.expect(lambda line: line == "alpha", 15)
            await wait_values(obs, "el", ["alpha"])
            async with ctl(ep, "elect", "el", "beta") as b:
                await queue_length(st, b"el/", 2)
                async with ctl(ep, "elect", "el", "gamma") as c:
                    await queue_length(st, b"el/", 3)
                    assert await b.silent_for(0.5) and await c.silent_for(0.1)
                    a.terminate()  # SIGTERM: etcdctl resigns
                    assert await a.wait() == 0
                    await b.expect(lambda line: line == "beta", 10)
                    assert await c.silent_for(0.5), "the third candidate jumped the queue"
                    await wait_values(obs, "el", ["alpha", "beta"])
                    # Losing the session's lease ends beta's leadership (its etcdctl notices only
                    # at its next keepalive, ttl/3 = 20 s later: not waited for).
                    lease_b = b.lines[0].split("/", 1)[1]
                    etcdctl(ep, "lease", "revoke", lease_b)
                    await c.expect(lambda line: line == "gamma", 10)
                    await wait_values(obs, "el", ["alpha", "beta", "gamma"])
                    await until(lambda: rpc_seen == [b"alpha", b"beta", b"gamma"])
                    c.terminate()
                    assert await c.wait() == 0
    assert await st_keys_after(ep, b"el/") == []


async def st_keys_after(ep: str, prefix: bytes) -> list[bytes]:
    async with stubs(ep) as st:
        return await st.keys(prefix)


async def test_campaign_rpcs_are_seen_by_etcdctl_observer(server: Cluster) -> None:
    ep = server.endpoints[0]
    async with (
        stubs(ep) as st,
        kept_alive(st, 10) as l1,
        kept_alive(st, 10) as l2,
        ctl(ep, "elect", "-l", "rpc-el") as obs,
        observed(st, b"rpc-el") as rpc_seen,
    ):
        first = await st.election.Campaign(epb.CampaignRequest(name=b"rpc-el", lease=l1, value=b"v1"))
        await wait_values(obs, "rpc-el", ["v1"])
        await st.election.Proclaim(epb.ProclaimRequest(leader=first.leader, value=b"v2"))
        await wait_values(obs, "rpc-el", ["v1", "v2"])
        second = asyncio.ensure_future(
            st.election.Campaign(epb.CampaignRequest(name=b"rpc-el", lease=l2, value=b"w1"))
        )
        await queue_length(st, b"rpc-el/", 2)
        await asyncio.sleep(0.3)
        assert not second.done()
        # An etcdctl candidate queues behind both RPC candidates.
        async with ctl(ep, "elect", "rpc-el", "tool") as tool:
            await queue_length(st, b"rpc-el/", 3)
            await st.election.Resign(epb.ResignRequest(leader=first.leader))
            won = await asyncio.wait_for(second, 10)
            assert won.leader.lease == l2 and won.leader.rev > first.leader.rev
            await wait_values(obs, "rpc-el", ["v1", "v2", "w1"])
            assert await tool.silent_for(0.3)
            await st.election.Resign(epb.ResignRequest(leader=won.leader))
            await tool.expect(lambda line: line == "tool", 10)
            await wait_values(obs, "rpc-el", ["v1", "v2", "w1", "tool"])
            await until(lambda: rpc_seen == [b"v1", b"v2", b"w1", b"tool"])
            leader = await st.election.Leader(epb.LeaderRequest(name=b"rpc-el"))
            assert leader.kv.value == b"tool" and leader.kv.key == tool.lines[0].encode()
            tool.terminate()
            assert await tool.wait() == 0
