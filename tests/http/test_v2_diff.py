"""The v2 keys API against a real etcd 3.4 (--enable-v2): same requests, same answers
(statuses, headers, bodies; indexes compared by label, times and TTLs by presence)."""

from __future__ import annotations

import asyncio
import time

import pytest
from httpdiff import Differ, finish, open_stream, read_lines

pytestmark = pytest.mark.etcd

K = "/v2/keys"


async def test_readme_set_get(v2: Differ) -> None:
    r = await v2.same("PUT", f"{K}/rd/message", data={"value": "Hello"})
    assert r.status == 201 and r.json["node"]["value"] == "Hello"
    await v2.same("GET", f"{K}/rd/message")
    await v2.same("PUT", f"{K}/rd/message", data={"value": "World"})
    await v2.same("GET", f"{K}/rd/message")
    await v2.same("GET", f"{K}/rd/nothere")
    await v2.same("DELETE", f"{K}/rd/message")
    await v2.same("GET", f"{K}/rd/message")


async def test_directories_and_errors(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/dd/d1?dir=true")
    await v2.same("PUT", f"{K}/dd/d1?dir=true")  # Not a file
    await v2.same("PUT", f"{K}/dd/d1", data={"value": "x"})  # Not a file
    await v2.same("PUT", f"{K}/dd/d1/f", data={"value": "x"})
    await v2.same("PUT", f"{K}/dd/d1/f/g", data={"value": "x"})  # Not a directory
    await v2.same("GET", f"{K}/dd/d1/f/g")
    await v2.same("GET", f"{K}/dd/nope/f/g")  # first missing component is the cause
    await v2.same("PUT", f"{K}/dd/d1/_hidden", data={"value": "h"})
    await v2.same("PUT", f"{K}/dd/d1/sub/deep/leaf", data={"value": "l"})  # creates dirs
    await v2.same("PUT", f"{K}/dd/d1/_hdir/x", data={"value": "under a hidden dir"})
    await v2.same("GET", f"{K}/dd/d1")
    await v2.same("GET", f"{K}/dd/d1?recursive=true&sorted=true")
    await v2.same("GET", f"{K}/dd?recursive=true")
    await v2.same("GET", f"{K}/dd/d1/_hidden")
    await v2.same("DELETE", f"{K}/dd/d1")  # Not a file
    await v2.same("DELETE", f"{K}/dd/d1?dir=true")  # Directory not empty
    await v2.same("PUT", f"{K}/dd/empty?dir=true")
    await v2.same("DELETE", f"{K}/dd/empty?dir=true")
    await v2.same("DELETE", f"{K}/dd/d1?recursive=true")
    await v2.same("GET", f"{K}/dd/d1/sub/deep/leaf")
    await v2.same("GET", f"{K}/dd?recursive=true")
    # a file replaced by a directory (set with dir=true), and the reverse refused
    await v2.same("PUT", f"{K}/dd/f2", data={"value": "v"})
    await v2.same("PUT", f"{K}/dd/f2?dir=true")
    await v2.same("PUT", f"{K}/dd/f2", data={"value": "back"})


async def test_root_is_read_only(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/", data={"value": "1"})
    await v2.same("DELETE", f"{K}/")
    await v2.same("DELETE", f"{K}/?recursive=true")
    await v2.same("POST", f"{K}/rootq", data={"value": "ok"})
    await v2.same("PUT", f"{K}/?prevExist=true", data={"value": "1"})
    await v2.same("DELETE", f"{K}/?prevValue=x")


async def test_in_order_keys(v2: Differ) -> None:
    await v2.same("POST", f"{K}/queue", data={"value": "job1"})
    await v2.same("POST", f"{K}/queue", data={"value": "job2"})
    await v2.same("POST", f"{K}/queue?dir=true")
    await v2.same("GET", f"{K}/queue?sorted=true")
    await v2.same("PUT", f"{K}/qfile", data={"value": "f"})
    await v2.same("POST", f"{K}/qfile", data={"value": "x"})  # Not a directory


async def test_compare_and_swap_and_delete(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/cas/c", data={"value": "a", "prevExist": "false"})
    await v2.same("PUT", f"{K}/cas/c", data={"value": "a", "prevExist": "false"})  # exists
    await v2.same("PUT", f"{K}/cas/c", data={"value": "b", "prevValue": "zz"})
    await v2.same("PUT", f"{K}/cas/c", data={"value": "b", "prevIndex": "1"})
    await v2.same("PUT", f"{K}/cas/c", data={"value": "b", "prevIndex": "1", "prevValue": "zz"})
    await v2.same("PUT", f"{K}/cas/c", data={"value": "b", "prevValue": "a"})
    await v2.same(
        "PUT",
        f"{K}/cas/c",
        data=lambda st: {"value": "c", "prevIndex": str(st["last"].json["node"]["modifiedIndex"])},
    )
    await v2.same("PUT", f"{K}/cas/c", data={"value": "d", "prevExist": "true"})
    await v2.same("PUT", f"{K}/cas/c", data={"value": "e", "prevExist": "true", "prevValue": "d"})
    await v2.same("PUT", f"{K}/cas/nope", data={"value": "c", "prevExist": "true"})
    await v2.same("PUT", f"{K}/cas/nope", data={"value": "c", "prevValue": "x"})
    await v2.same("DELETE", f"{K}/cas/c?prevValue=zz")
    await v2.same("DELETE", f"{K}/cas/c?prevIndex=1")
    await v2.same("DELETE", f"{K}/cas/c?prevValue=e")
    await v2.same("PUT", f"{K}/cas/d?dir=true")
    await v2.same("PUT", f"{K}/cas/d", data={"value": "x", "prevValue": "y"})  # Not a file
    await v2.same("DELETE", f"{K}/cas/d?prevValue=y")  # Not a file
    await v2.same("PUT", f"{K}/cas/d", data={"value": "x", "prevExist": "true"})  # Not a file
    await v2.same("PUT", f"{K}/cas/d", data={"prevExist": "true", "dir": "true"})  # dir update


async def test_form_parsing_errors(v2: Differ) -> None:
    bad = [
        ("PUT", f"{K}/fe?ttl=abc"),
        ("PUT", f"{K}/fe?ttl=-1"),
        ("PUT", f"{K}/fe?prevIndex=abc"),
        ("GET", f"{K}/fe?waitIndex=x&wait=true"),
        ("GET", f"{K}/fe?recursive=maybe"),
        ("GET", f"{K}/fe?sorted=2"),
        ("PUT", f"{K}/fe?wait=true"),
        ("PUT", f"{K}/fe?prevValue="),
        ("PUT", f"{K}/fe?refresh=true"),
        ("PUT", f"{K}/fe?refresh=true&ttl=5&value=1"),
        ("PUT", f"{K}/fe?prevExist=xx"),
        ("PUT", f"{K}/fe?a=%zz"),
        ("PUT", f"{K}/fe?refresh=nope"),
        ("GET", f"{K}/fe?quorum=yes"),
        ("DELETE", f"{K}/fe?dir=2"),
        ("PUT", f"{K}/fe?refresh=true&ttl=5"),  # refresh of a missing key
        ("GET", f"{K}/fe?stream=x"),
        ("PUT", f"{K}/fe?noValueOnSuccess=x"),
    ]
    for method, path in bad:
        await v2.same(method, path)
    # body form values come before query values; a bad body escape is an invalid form
    await v2.same("PUT", f"{K}/fe?value=query", data={"value": "body"})
    await v2.same(
        "PUT", f"{K}/fe2", data="value=%zz", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    # a body that is not a form is ignored
    await v2.same("PUT", f"{K}/fe3", data="value=x", headers={"Content-Type": "text/plain"})
    await v2.same("GET", f"{K}/fe3")


async def test_ttl_refresh_and_update(v2: Differ) -> None:
    r = await v2.same("PUT", f"{K}/ttl/t", data={"value": "v", "ttl": "100"})
    assert r.json["node"]["ttl"] == 100
    await v2.same("GET", f"{K}/ttl/t")
    await v2.same("PUT", f"{K}/ttl/t", data={"ttl": "200", "refresh": "true"})
    r = await v2.same("GET", f"{K}/ttl/t")
    assert r.json["node"]["value"] == "v" and 199 <= r.json["node"]["ttl"] <= 200
    await v2.same("PUT", f"{K}/ttl/t", data={"value": "w", "prevExist": "true"})  # drops the TTL
    r = await v2.same("GET", f"{K}/ttl/t")
    assert "ttl" not in r.json["node"]
    await v2.same("PUT", f"{K}/ttl/t", data={"value": "x", "prevValue": "w", "ttl": "50"})
    await v2.same("PUT", f"{K}/ttl/d?dir=true&ttl=100")
    await v2.same("PUT", f"{K}/ttl/d/child", data={"value": "c"})
    await v2.same("PUT", f"{K}/ttl/d", data={"ttl": "300", "prevExist": "true", "dir": "true"})
    await v2.same("GET", f"{K}/ttl?recursive=true")
    await v2.same("PUT", f"{K}/ttl/d", data={"prevExist": "true", "dir": "true"})  # permanent again
    await v2.same("GET", f"{K}/ttl/d?recursive=true")


async def test_expiry_of_keys_and_directories(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/exp/short", data={"value": "s", "ttl": "1"})
    await v2.same("PUT", f"{K}/exp/dir?dir=true&ttl=2")
    await v2.same("PUT", f"{K}/exp/dir/child", data={"value": "c"})
    await v2.same("PUT", f"{K}/exp/dir/longer", data={"value": "l", "ttl": "600"})
    await v2.same("PUT", f"{K}/exp/dir/sub/deep", data={"value": "d"})
    await v2.same("PUT", f"{K}/exp/keep", data={"value": "k"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ours, etcd = await v2.both("GET", f"{K}/exp?recursive=true")
        if [n["key"] for n in ours.json["node"].get("nodes", [])] == ["/exp/keep"] and [
            n["key"] for n in etcd.json["node"].get("nodes", [])
        ] == ["/exp/keep"]:
            break
        await asyncio.sleep(0.25)
    await v2.same("GET", f"{K}/exp?recursive=true")
    await v2.same("GET", f"{K}/exp/dir/longer")
    await v2.same("GET", f"{K}/exp/short")


async def test_no_value_on_success_and_head(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/nv/a?noValueOnSuccess=true", data={"value": "1"})
    await v2.same("PUT", f"{K}/nv/a?noValueOnSuccess=true", data={"value": "2"})
    await v2.same("POST", f"{K}/nv?noValueOnSuccess=true", data={"value": "3"})
    await v2.same("DELETE", f"{K}/nv/a?noValueOnSuccess=true")
    await v2.same("HEAD", f"{K}/nv")
    await v2.same("HEAD", f"{K}/nv/missing")
    await v2.same("GET", f"{K}/nv?quorum=true")


async def test_methods_paths_and_values(v2: Differ) -> None:
    await v2.same("PATCH", f"{K}/m")
    await v2.same("OPTIONS", f"{K}/m")
    await v2.same("GET", "/v2/nothing")
    await v2.same("GET", "/v2/keysfoo")
    await v2.same("GET", f"{K}//m/../n")  # redirected to the clean path
    await v2.same("PUT", f"{K}/m/sp%20ace", data={"value": '<b>&amp; \u00e9\u4e2d "q" \\ \t\n'})
    await v2.same("GET", f"{K}/m/sp%20ace")
    await v2.same("PUT", f"{K}/m/empty")
    await v2.same("GET", f"{K}/m?recursive=true")
    await v2.same("GET", f"{K}")
    ours, etcd = await v2.both("GET", "/version")  # api/http.py's; its Content-Type adds a charset
    assert ours.status == etcd.status == 200 and ours.json == etcd.json


async def _watch_pair(v2: Differ, path: str) -> dict:
    return {who: await open_stream(v2.session, "GET", v2.urls[who] + path) for who in ("ours", "etcd")}


async def _finish_pair(v2: Differ, ws: dict, what: str) -> None:
    ours, etcd = await finish(ws["ours"]), await finish(ws["etcd"])
    v2.compare(ours, etcd, what)


async def test_wait_returns_when_another_client_writes(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/w1/x", data={"value": "1"})
    ws = await _watch_pair(v2, f"{K}/w1/x?wait=true")
    rec = await _watch_pair(v2, f"{K}/w1?wait=true&recursive=true")
    other = await _watch_pair(v2, f"{K}/w1/other?wait=true")  # headers in: registered
    for w in (*ws.values(), *rec.values()):
        assert not w.content.at_eof()
    await v2.same("PUT", f"{K}/w1/x", data={"value": "2"})
    await _finish_pair(v2, ws, "exact watcher")
    await _finish_pair(v2, rec, "recursive watcher")
    await v2.same("PUT", f"{K}/w1/other", data={"value": "o"})
    await _finish_pair(v2, other, "other key")


async def test_wait_index_history(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/wh/a", data={"value": "1"})
    for st in v2.state.values():
        st["first"] = st["last"].json["node"]["modifiedIndex"]
    await v2.same("PUT", f"{K}/wh/a", data={"value": "2"})
    await v2.same("PUT", f"{K}/wh/b", data={"value": "3"})
    await v2.same("GET", lambda st: f"{K}/wh/a?wait=true&waitIndex={st['first']}")
    await v2.same("GET", lambda st: f"{K}/wh/a?wait=true&waitIndex={st['first'] + 1}")
    await v2.same("GET", lambda st: f"{K}/wh?wait=true&recursive=true&waitIndex={st['first'] + 2}")


async def test_wait_hidden_and_directory_delete(v2: Differ) -> None:
    await v2.same("PUT", f"{K}/wd/d/leaf", data={"value": "1"})
    rec = await _watch_pair(v2, f"{K}/wd?wait=true&recursive=true")
    leaf = await _watch_pair(v2, f"{K}/wd/d/leaf?wait=true")  # headers in: registered
    await v2.same("PUT", f"{K}/wd/_hidden", data={"value": "h"})  # recursive watchers skip it
    assert not rec["ours"].content.at_eof()
    await v2.same("DELETE", f"{K}/wd/d?recursive=true")
    await _finish_pair(v2, rec, "recursive watcher sees the directory delete, not the hidden key")
    await _finish_pair(v2, leaf, "a watcher inside a deleted directory is told")


async def test_wait_expire_and_stream(v2: Differ) -> None:
    streams = await _watch_pair(v2, f"{K}/ws?wait=true&recursive=true&stream=true")  # registered
    await v2.same("PUT", f"{K}/ws/a", data={"value": "1", "ttl": "1"})
    await v2.same("PUT", f"{K}/ws/a", data={"ttl": "2", "refresh": "true"})  # not notified
    await v2.same("PUT", f"{K}/ws/b", data={"value": "2"})
    ours = await read_lines(streams["ours"], 3, timeout=15)
    etcd = await read_lines(streams["etcd"], 3, timeout=15)
    for w in streams.values():
        w.close()
    assert [e["action"] for e in ours] == ["set", "set", "expire"]
    v2.compare(_reply(ours), _reply(etcd), "stream with an expiry")


def _reply(lines: list) -> object:
    from httpdiff import Reply

    return Reply(200, "application/json", {}, "", None, lines)


async def test_wait_index_cleared(v2: Differ) -> None:
    # etcd keeps the last 1000 v2 events; we keep v3 history until it is compacted.
    for i in range(1005):
        await v2.one("etcd", "PUT", f"{K}/wc/k", data={"value": str(i)})
    await v2.one("ours", "PUT", f"{K}/wc/k", data={"value": "x"})
    await v2.one("ours", "PUT", f"{K}/wc/k", data={"value": "y"})
    rev = v2.state["ours"]["last"].json["node"]["modifiedIndex"]
    r = await v2.one("ours", "POST", "/v3/kv/compaction", json={"revision": str(rev)})
    assert r.status == 200, r.text
    await v2.same("GET", f"{K}/wc/k?wait=true&waitIndex=1")
