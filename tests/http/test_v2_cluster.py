"""The v2 emulation on a 3-member cluster of ours: any member serves, writes are atomic and
linearizable under concurrency, watches see writes made through other members, data and
TTLs survive restarts."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from httpdiff import fetch, finish, open_stream, start, url
from testlib import Cluster

K = "/v2/keys"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start(tmp_path_factory.mktemp("v2c"), "etcdstore", "--enable-v2", size=3)
    try:
        yield c
    finally:
        c.close()


def urls(c: Cluster) -> list[str]:
    return [url(c, i) for i in range(len(c.members))]


async def test_any_member_serves_and_sees_the_others_writes(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    u = urls(cluster)
    for i, base in enumerate(u):
        r = await fetch(session, "PUT", f"{base}{K}/cl/k{i}", data={"value": f"v{i}"})
        assert r.status == 201, r.text
    for base in u:
        r = await fetch(session, "GET", f"{base}{K}/cl?recursive=true&sorted=true&quorum=true")
        assert [(n["key"], n["value"]) for n in r.json["node"]["nodes"]] == [
            ("/cl/k0", "v0"),
            ("/cl/k1", "v1"),
            ("/cl/k2", "v2"),
        ]
        assert (
            r.headers["X-Etcd-Cluster-Id"]
            == (await fetch(session, "GET", f"{u[0]}{K}/cl")).headers["X-Etcd-Cluster-Id"]
        )
    # a refused write on a member that may lag is confirmed against the leader's state
    r = await fetch(session, "PUT", f"{u[2]}{K}/cl/k0", data={"value": "x", "prevExist": "false"})
    assert r.status == 412 and r.json["errorCode"] == 105


async def test_wait_on_one_member_write_on_another(cluster: Cluster, session: aiohttp.ClientSession) -> None:
    u = urls(cluster)
    w = await open_stream(session, "GET", f"{u[1]}{K}/cw/x?wait=true")  # headers in: registered
    r = await fetch(session, "PUT", f"{u[2]}{K}/cw/x", data={"value": "hello"})
    got = await finish(w)
    assert got.status == 200 and got.json["action"] == "set" and got.json["node"]["value"] == "hello"
    assert got.json["node"]["modifiedIndex"] == r.json["node"]["modifiedIndex"]


async def test_concurrent_in_order_keys_and_cas_counter(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    u = urls(cluster)

    async def post(i: int) -> dict:
        r = await fetch(session, "POST", f"{u[i % 3]}{K}/cq", data={"value": str(i)})
        assert r.status == 201, r.text
        return r.json["node"]

    nodes = await asyncio.gather(*(post(i) for i in range(30)))
    keys = [n["key"] for n in nodes]
    assert len(set(keys)) == 30
    # names grow with the creation index
    by_index = sorted(nodes, key=lambda n: n["createdIndex"])
    assert [n["key"] for n in by_index] == sorted(keys)
    r = await fetch(session, "GET", f"{u[0]}{K}/cq?sorted=true&quorum=true")
    assert [n["key"] for n in r.json["node"]["nodes"]] == sorted(keys)

    await fetch(session, "PUT", f"{u[0]}{K}/counter", data={"value": "0"})

    async def increment(i: int) -> int:
        attempts = 0
        while True:
            attempts += 1
            cur = (await fetch(session, "GET", f"{u[i % 3]}{K}/counter?quorum=true")).json["node"]
            r = await fetch(
                session,
                "PUT",
                f"{u[i % 3]}{K}/counter",
                data={"value": str(int(cur["value"]) + 1), "prevIndex": str(cur["modifiedIndex"])},
            )
            if r.status == 200:
                return attempts
            assert r.status == 412 and r.json["errorCode"] == 101, r.text

    await asyncio.gather(*(increment(i) for i in range(12)))
    r = await fetch(session, "GET", f"{u[1]}{K}/counter?quorum=true")
    assert r.json["node"]["value"] == "12"  # no lost update


async def test_concurrent_recursive_delete_and_creates(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    """A directory deleted while keys are created under it leaves no orphans behind."""
    u = urls(cluster)
    for round_ in range(3):
        await fetch(session, "PUT", f"{u[0]}{K}/race/d/seed", data={"value": "s"})

        async def create(i: int) -> None:
            await fetch(session, "PUT", f"{u[i % 3]}{K}/race/d/sub{i}/leaf", data={"value": str(i)})

        tasks = [asyncio.ensure_future(create(i)) for i in range(12)]
        await asyncio.sleep(0.01 * round_)
        r = await fetch(session, "DELETE", f"{u[1]}{K}/race/d?recursive=true")
        assert r.status == 200, r.text
        await asyncio.gather(*tasks)
        # no orphans in the v3 key space: every stored node's directory is stored too
        paths = await _stored_paths(session, u[2])
        for p in paths:
            parent = p.rsplit("/", 1)[0] or "/"
            assert parent == "/" or parent in paths, (p, sorted(paths))
        await fetch(session, "DELETE", f"{u[0]}{K}/race/d?recursive=true")
        assert not any(p.startswith("/race/d") for p in await _stored_paths(session, u[0]))


async def _stored_paths(session: aiohttp.ClientSession, base: str) -> set[str]:
    """The v2 node paths as stored in the v3 key space (read through the JSON gateway)."""
    prefix = b"\x00v2/k"
    r = await fetch(
        session,
        "POST",
        f"{base}/v3/kv/range",
        json={
            "key": base64.b64encode(prefix).decode(),
            "range_end": base64.b64encode(b"\x00v2/l").decode(),
            "keys_only": True,
        },
    )
    assert r.status == 200, r.text
    return {base64.b64decode(kv["key"])[len(prefix) + 4 :].decode() for kv in r.json.get("kvs", [])}


def _walk(node: dict) -> set[str]:
    out = set()
    for n in node.get("nodes", []):
        out.add(n["key"])
        out |= _walk(n)
    return out


async def test_ttl_expiry_in_a_cluster(cluster: Cluster, session: aiohttp.ClientSession) -> None:
    u = urls(cluster)
    r = await fetch(session, "PUT", f"{u[1]}{K}/ct/dir?dir=true&ttl=2")
    assert r.status == 201
    r = await fetch(session, "PUT", f"{u[2]}{K}/ct/dir/a", data={"value": "1"})
    nxt = r.json["node"]["modifiedIndex"] + 1  # member 0 may not have applied the put yet
    w = await open_stream(session, "GET", f"{u[0]}{K}/ct/dir/a?wait=true&waitIndex={nxt}")
    got = await finish(w, timeout=20)
    assert got.json["action"] == "expire" and got.json["node"]["key"] == "/ct/dir" and got.json["node"]["dir"]
    for base in u:
        r = await fetch(session, "GET", f"{base}{K}/ct/dir/a?quorum=true")
        assert r.status == 404 and r.json["cause"] == "/ct/dir"


async def test_data_and_ttls_survive_restart(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    c = start(tmp_path, "etcdstore", "--enable-v2")
    try:
        base = url(c)
        await fetch(session, "PUT", f"{base}{K}/keep/a", data={"value": "kept"})
        await fetch(session, "PUT", f"{base}{K}/keep/t", data={"value": "t", "ttl": "4"})
        before = (await fetch(session, "GET", f"{base}{K}/keep?recursive=true&sorted=true")).json
        c.members[0].restart()
        after = (await fetch(session, "GET", f"{base}{K}/keep?recursive=true&sorted=true")).json
        for n in before["node"]["nodes"] + after["node"]["nodes"]:
            n.pop("ttl", None)
        assert after == before
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = await fetch(session, "GET", f"{base}{K}/keep/t")
            if r.status == 404:
                break
            await asyncio.sleep(0.25)
        assert r.status == 404, "a TTL key outlived its lease across a restart"
        assert (await fetch(session, "GET", f"{base}{K}/keep/a")).json["node"]["value"] == "kept"
    finally:
        c.close()
