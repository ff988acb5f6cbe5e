"""`etcdctl lock` (the real 3.4 tool) against our server and against real etcd 3.4.

etcdctl's lock runs etcd's Mutex recipe itself over KV/Watch/Lease; our Lock service runs the
same recipe inside the server with the same keys. Both must exclude each other: the tests mix
etcdctl holders with Lock RPC waiters and the other way round.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from concurrency_support import CTL_ENV, Ctl, ctl, kept_alive, stubs
from etcdstore.proto.v3lockpb import v3lock_pb2
from testlib import ETCDCTL_BIN, Cluster, etcdctl


async def test_second_locker_waits_until_the_first_exits(server: Cluster) -> None:
    ep = server.endpoints[0]
    async with ctl(ep, "lock", "mx") as a:
        key_a = await a.expect(lambda line: line.startswith("mx/"), 15)
        async with ctl(ep, "lock", "mx") as b:
            assert await b.silent_for(1.5), f"second locker did not wait: {b.lines}"
            async with stubs(ep) as st:
                assert len(await st.keys(b"mx/")) == 2  # the waiter queued its own key
            a.terminate()  # SIGTERM: etcdctl unlocks and exits
            assert await a.wait() == 0
            key_b = await b.expect(lambda line: line.startswith("mx/"), 10)
            assert key_b != key_a
            async with stubs(ep) as st:
                assert await st.keys(b"mx/") == [key_b.encode()]
            b.terminate()
            assert await b.wait() == 0
    assert etcdctl(ep, "get", "--prefix", "mx/").stdout == ""


async def test_lock_follows_the_lease_of_a_killed_holder(server: Cluster) -> None:
    ep = server.endpoints[0]
    ttl = 3
    async with ctl(ep, "lock", "--ttl", str(ttl), "lease-lock") as a:
        await a.expect(lambda line: line.startswith("lease-lock/"), 15)
        async with ctl(ep, "lock", "lease-lock") as b:
            assert await b.silent_for(1.0)
            a.kill()  # SIGKILL: no unlock; only the lease's expiry can release the lock
            await a.wait()
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            # The holder refreshed its lease every ttl/3 s, so at least ~2/3 of the TTL is left.
            assert await b.silent_for(0.8), "the lock was released before the lease expired"
            await b.expect(lambda line: line.startswith("lease-lock/"), ttl + 8)
            waited = loop.time() - killed_at
            assert 0.8 <= waited <= ttl + 8
            b.terminate()
            assert await b.wait() == 0


async def test_lock_rpc_and_etcdctl_lock_exclude_each_other(server: Cluster) -> None:
    ep = server.endpoints[0]
    async with stubs(ep) as st, kept_alive(st, 10) as lease:
        async with ctl(ep, "lock", "mixed") as holder:
            await holder.expect(lambda line: line.startswith("mixed/"), 15)
            waiter = asyncio.ensure_future(st.lock.Lock(v3lock_pb2.LockRequest(name=b"mixed", lease=lease)))
            await st.until_keys(b"mixed/", 2)  # the RPC's key is queued behind etcdctl's
            await asyncio.sleep(0.3)  # a window in which it must not be granted
            assert not waiter.done(), "Lock RPC did not wait for the etcdctl holder"
            holder.terminate()
            got = await asyncio.wait_for(waiter, 10)
        assert got.key == b"mixed/%x" % lease
        held = (await st.get(got.key)).kvs[0]
        assert held.lease == lease and got.header.revision >= held.create_revision
        async with ctl(ep, "lock", "mixed") as other:
            assert await other.silent_for(1.0), "etcdctl lock did not wait for the Lock RPC holder"
            await st.lock.Unlock(v3lock_pb2.UnlockRequest(key=got.key))
            await other.expect(lambda line: line.startswith("mixed/"), 10)
            other.terminate()
            await other.wait()


# The critical section: exclusive (mkdir is atomic), fenced (each holder's ETCD_LOCK_REV must be
# above every earlier one) and a read-modify-write of a counter that overlapping holders would lose.
CRITICAL = """\
d="$1"
mkdir "$d/inside" 2>/dev/null || echo "overlap at rev $ETCD_LOCK_REV" >> "$d/violations"
last=$(cat "$d/token")
[ "$ETCD_LOCK_REV" -gt "$last" ] || echo "token $ETCD_LOCK_REV after $last" >> "$d/violations"
echo "$ETCD_LOCK_REV" > "$d/token"
echo "$ETCD_LOCK_REV $ETCD_LOCK_KEY" >> "$d/log"
n=$(cat "$d/counter")
sleep 0.05
echo $((n + 1)) > "$d/counter"
rmdir "$d/inside" 2>/dev/null || echo "another holder left at rev $ETCD_LOCK_REV" >> "$d/violations"
"""


def _shared_state(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "token").write_text("0\n")
    (d / "counter").write_text("0\n")
    (d / "violations").write_text("")
    (d / "log").write_text("")
    script = d / "critical.sh"
    script.write_text(CRITICAL)
    return script


async def _run(*argv: str, env: dict[str, str] | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env or CTL_ENV, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{argv} failed: {err.decode()}"


async def test_concurrent_etcdctl_lock_loops_are_exclusive_and_fenced(
    server: Cluster, tmp_path: Path
) -> None:
    ep = server.endpoints[0]
    d = tmp_path / "shared"
    script = _shared_state(d)
    workers, rounds = 4, 4

    async def worker() -> None:
        for _ in range(rounds):
            await _run(ETCDCTL_BIN, "--endpoints", ep, "lock", "counter-lock", "sh", str(script), str(d))

    await asyncio.gather(*(worker() for _ in range(workers)))
    assert (d / "violations").read_text() == ""
    assert int((d / "counter").read_text()) == workers * rounds
    revs = [int(line.split()[0]) for line in (d / "log").read_text().splitlines()]
    assert len(revs) == workers * rounds and revs == sorted(set(revs))
    assert all(line.split()[1].startswith("counter-lock/") for line in (d / "log").read_text().splitlines())


async def test_the_critical_section_check_detects_overlap(tmp_path: Path) -> None:
    """Negative control for the test above: without the lock, the same holders are caught."""
    d = tmp_path / "unlocked"
    script = _shared_state(d)
    env = dict(os.environ, ETCD_LOCK_REV="7", ETCD_LOCK_KEY="none")
    await asyncio.gather(*(_run("sh", str(script), str(d), env=env) for _ in range(4)))
    assert "token 7 after 7" in (d / "violations").read_text()


async def test_etcdctl_lock_exec_sees_its_key_and_revision(server: Cluster) -> None:
    ep = server.endpoints[0]
    p = await Ctl.start(ep, "lock", "exec-lock", "--", "sh", "-c", 'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"')
    try:
        line = await p.expect(lambda line: line.startswith("exec-lock/"), 15)
        assert await p.wait() == 0
    finally:
        await p.close()
    key, rev = line.split()
    assert int(rev) > 0
    assert etcdctl(ep, "get", key).stdout == ""  # unlocked after the command
