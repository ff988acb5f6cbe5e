"""/v2/members, /v2/machines and /v2/stats against a real etcd 3.4 (--enable-v2)."""

from __future__ import annotations

import json
import re

import pytest
from httpdiff import Differ

pytestmark = pytest.mark.etcd

JSON = {"Content-Type": "application/json"}


def _shape(doc: object) -> object:
    """Keys and value types only (IDs, times and counters differ between two servers)."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_shape(x) for x in doc]
    return type(doc).__name__


async def test_members_and_machines(v2: Differ) -> None:
    ours, etcd = await v2.both("GET", "/v2/members")
    for r, who in ((ours, "ours"), (etcd, "etcd")):
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert r.json["members"][0]["clientURLs"] == [v2.urls[who]]
        assert re.fullmatch(r"[0-9a-f]+", r.headers["X-Etcd-Cluster-Id"])
        (m,) = r.json["members"]
        assert m["name"] == "m0" and len(m["peerURLs"]) == 1
    assert _shape(ours.json) == _shape(etcd.json)
    assert ours.text.endswith("\n") and etcd.text.endswith("\n")
    ours, etcd = await v2.both("GET", "/v2/members/leader")
    assert ours.status == etcd.status == 200 and _shape(ours.json) == _shape(etcd.json)
    assert ours.json["id"] == (await v2.one("ours", "GET", "/v2/members")).json["members"][0]["id"]
    ours, etcd = await v2.both("GET", "/v2/machines")
    for r, who in ((ours, "ours"), (etcd, "etcd")):
        assert r.status == 200 and r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert r.text == v2.urls[who]


async def test_member_requests_refused(v2: Differ) -> None:
    await v2.same("POST", "/v2/members", data="x")  # not JSON: 415
    await v2.same("POST", "/v2/members", data="{bad", headers=JSON)
    await v2.same("POST", "/v2/members", data='{"peerURLs":["foo"]}', headers=JSON)
    await v2.same("POST", "/v2/members", data='{"peerURLs":["http://127.0.0.1"]}', headers=JSON)
    await v2.same("POST", "/v2/members", data='{"peerURLs":["http://127.0.0.1:1/path"]}', headers=JSON)
    # a peer URL already in use
    for who, st in v2.state.items():
        st["peer"] = (await v2.one(who, "GET", "/v2/members")).json["members"][0]["peerURLs"][0]
    await v2.same("POST", "/v2/members", data=lambda st: json.dumps({"peerURLs": [st["peer"]]}), headers=JSON)
    await v2.same("DELETE", "/v2/members/zz")
    await v2.same("DELETE", "/v2/members/123")
    await v2.same("DELETE", "/v2/members")
    await v2.same("PUT", "/v2/members/123", data='{"peerURLs":["http://127.0.0.1:9"]}', headers=JSON)
    await v2.same("GET", "/v2/members/x/y")
    await v2.same("PATCH", "/v2/members")
    await v2.same("POST", "/v2/machines")


async def test_stats(v2: Differ) -> None:
    for path in ("/v2/stats/self", "/v2/stats/leader", "/v2/stats/store"):
        ours, etcd = await v2.both("GET", path)
        assert ours.status == etcd.status == 200
        assert ours.headers["Content-Type"] == etcd.headers["Content-Type"] == "application/json"
        assert _shape(ours.json) == _shape(etcd.json), path
    ours = (await v2.one("ours", "GET", "/v2/stats/self")).json
    assert ours["state"] == "StateLeader" and ours["leaderInfo"]["leader"] == ours["id"]
    assert re.fullmatch(r"(\d+h)?(\d+m)?\d+(\.\d+)?(s|ms|µs|ns)", ours["leaderInfo"]["uptime"])
    before = (await v2.one("ours", "GET", "/v2/stats/store")).json
    await v2.one("ours", "PUT", "/v2/keys/stats/a", data={"value": "1"})
    await v2.one("ours", "GET", "/v2/keys/stats/a")
    await v2.one("ours", "GET", "/v2/keys/stats/missing")
    after = (await v2.one("ours", "GET", "/v2/stats/store")).json
    assert after["setsSuccess"] == before["setsSuccess"] + 1
    assert after["getsSuccess"] == before["getsSuccess"] + 1
    assert after["getsFail"] == before["getsFail"] + 1
    await v2.same("POST", "/v2/stats/self")
    await v2.same("DELETE", "/v2/stats/store")
