"""The JSON gateway (/v3/...) against a real etcd 3.4: same requests, same answers after
normalising IDs, revisions (by label), sizes and hashes."""

from __future__ import annotations

import base64

import pytest
from httpdiff import Differ, Reply, open_stream, read_lines

pytestmark = pytest.mark.etcd


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


async def test_kv_put_range_delete_txn(v3: Differ) -> None:
    await v3.same("POST", "/v3/kv/put", json={"key": b64("foo"), "value": b64("bar")})
    await v3.same("POST", "/v3/kv/range", json={"key": b64("foo")})
    await v3.same("POST", "/v3/kv/range", json={"key": b64("foo"), "range_end": b64("fop")})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("foo"), "value": b64("baz"), "prev_kv": True})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("foo2"), "value": b64("x"), "prevKv": True})
    await v3.same(
        "POST",
        "/v3/kv/range",
        json={
            "key": b64("foo"),
            "range_end": b64("fop"),
            "sort_order": "DESCEND",
            "sort_target": "MOD",
            "limit": 1,
        },
    )
    await v3.same("POST", "/v3/kv/range", json={"key": b64("foo"), "range_end": "AA==", "count_only": True})
    await v3.same(
        "POST",
        "/v3/kv/range",
        json={"key": b64("foo"), "range_end": b64("fop"), "keys_only": True, "limit": "1"},
    )
    # etcd's README examples (camelCase names are accepted too)
    await v3.same(
        "POST",
        "/v3/kv/txn",
        json={
            "compare": [{"target": "CREATE", "key": b64("foo"), "createRevision": "2"}],
            "success": [{"requestPut": {"key": b64("foo"), "value": b64("bar")}}],
        },
    )
    await v3.same(
        "POST",
        "/v3/kv/txn",
        json={
            "compare": [{"version": "4", "result": "EQUAL", "target": "VERSION", "key": b64("foo")}],
            "success": [{"requestRange": {"key": b64("foo")}}],
        },
    )
    await v3.same(
        "POST",
        "/v3/kv/txn",
        json={
            "compare": [{"target": "VALUE", "key": b64("foo"), "value": b64("bar")}],
            "success": [
                {"request_range": {"key": b64("foo")}},
                {"request_put": {"key": b64("t1"), "value": b64("1")}},
                {"request_delete_range": {"key": b64("foo2"), "prev_kv": True}},
            ],
            "failure": [{"request_put": {"key": b64("t2"), "value": b64("2")}}],
        },
    )
    await v3.same(
        "POST",
        "/v3/kv/txn",
        json={
            "compare": [{"target": "MOD", "result": "GREATER", "key": b64("foo"), "mod_revision": "1000"}],
            "failure": [{"request_txn": {"success": [{"request_range": {"key": b64("t1")}}]}}],
        },
    )
    await v3.same(
        "POST", "/v3/kv/deleterange", json={"key": b64("t"), "range_end": b64("u"), "prev_kv": True}
    )
    await v3.same("POST", "/v3/kv/deleterange", json={"key": b64("nothing")})
    await v3.same("POST", "/v3beta/kv/range", json={"key": b64("foo")})
    await v3.same("POST", "/v3/kv/range", json={"key": b64("foo"), "revision": 100000})
    await v3.same(
        "POST",
        "/v3/kv/txn",
        json={
            "success": [
                {"request_put": {"key": b64("d"), "value": b64("1")}},
                {"request_put": {"key": b64("d"), "value": b64("2")}},
            ]
        },
    )
    await v3.same("POST", "/v3/kv/put", json={"key": b64("foo"), "ignore_value": True, "value": b64("x")})


async def test_compaction(v3: Differ) -> None:
    for i in range(3):
        await v3.same("POST", "/v3/kv/put", json={"key": b64("c"), "value": b64(str(i))})
    await v3.same(
        "POST", "/v3/kv/compaction", json=lambda st: {"revision": st["last"].json["header"]["revision"]}
    )
    await v3.same("POST", "/v3/kv/compaction", json={"revision": "2"})
    await v3.same("POST", "/v3/kv/range", json={"key": b64("c"), "revision": "2"})
    await v3.same("POST", "/v3/kv/compaction", json={"revision": "1000000"})


BAD_BODIES = [
    "{bad",
    '{"key":',
    '{"key":"Zm9v" "limit":3}',
    '{"key":"Zm9v","limit":3,}',
    '{"key":"Zm9v\\x"}',
    '{"key":"Zm9v","limit":NaN}',
    '{"key":"Zm9v","limit":01}',
    '{"key":"Zm9v","limit":-}',
    '{"key":"Zm9v","limit":tru}',
    '{"key":"Zm9v\n"}',
    "[]",
    '""',
    "null",
    "",
    " ",
    '[{"key":"Zm9v"}]',
    '{"key":"Zm9v"} trailing garbage',
    '{"key":"Zm9v"}{"key":1}',
    '{"key":"Zm9v!"}',
    '{"key":"Zm9"}',
    '{"key":"Zg="}',
    '{"key":"Zg=a"}',
    '{"key":"Zm 9v"}',
    '{"key":"Zm9v===="}',
    '{"key":"Zm-_"}',
    '{"key":"Zm9\\nv"}',
    '{"key":5}',
    '{"key":"Zm9v","limit":1.5}',
    '{"key":"Zm9v","limit":"1.5"}',
    '{"key":"Zm9v","limit":1e3}',
    '{"key":"Zm9v","limit":99999999999999999999}',
    '{"key":"Zm9v","limit":true}',
    '{"key":"Zm9v","limit":{}}',
    '{"key":"Zm9v","limit":"abc"}',
    '{"key":"Zm9v","limit":""}',
    '{"key":"Zm9v","limit":"  3"}',
    '{"key":"Zm9v","limit":"0x10"}',
    '{"key":"Zm9v","serializable":"true"}',
    '{"key":"Zm9v","keys_only":1}',
    '{"key":"Zm9v","sort_order":true}',
    '{"key":"Zm9v","sort_order":7}',
    '{"key":"Zm9v","sort_order":"7"}',
    '{"key":"Zm9v","sort_order":"NOPE"}',
    '{"Key":"Zm9v"}',
    '{"key":"Zm9v","bogus":{"deep":[1,2]}}',
    '{"key":"Zm9v","range_end":null}',
    '{"key":"Zm9v","key":"YQ=="}',
    "\ufeff{}",
    '{"key":"\\u0041\\u00"}',
    '{"key":"Zm9v","limit":-1}',
    '{"key":"Zm9v","revision":"-5"}',
    "[" * 10000,
    "[" * 10001,
    '{"key":"\xe9t\xe9"}',
    '{"key":"Zm9v","range_end":"\u00ff"}',
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
async def test_request_body_decoding(v3: Differ, body: str) -> None:
    await v3.same("POST", "/v3/kv/range", data=body.encode())


@pytest.mark.parametrize(
    "body",
    [
        '{"compare":5}',
        '{"compare":[5]}',
        '{"compare":[{"key":"YQ==","target":"VALUE","value":5}]}',
        '{"success":[{"request_put":{"key":"YQ==","lease":"x"}}]}',
        '{"compare":[{"target":"BOGUS"}]}',
    ],
)
async def test_nested_body_decoding(v3: Differ, body: str) -> None:
    await v3.same("POST", "/v3/kv/txn", data=body.encode())


async def test_routes_methods_and_headers(v3: Differ) -> None:
    await v3.same("GET", "/v3/kv/range")
    await v3.same("PUT", "/v3/kv/range", data=b"{}")
    await v3.same("POST", "/v3/kv/nothing", data=b"{}")
    await v3.same("POST", "/v3/kv/range/", data=b"{}")
    await v3.same("POST", "/v3/auth/status", data=b"{}")  # not in etcd 3.4
    await v3.same("POST", "/v3beta/kv/nothing", data=b"{}")
    await v3.same("OPTIONS", "/v3/kv/range")
    await v3.same("POST", "/v3/kv/range", data=b'{"key":"Zm9v"}', headers={"Content-Type": "text/plain"})
    await v3.same("POST", "/v3/kv/range", data=b'{"key":"Zm9v"}', headers={"Grpc-Timeout": "1n"})
    await v3.same("POST", "/v3//kv/range", data=b'{"key":"Zm9v"}')  # unclean path: 301


async def test_oversized_requests(v3: Differ) -> None:
    # over --max-request-bytes (1.5 MiB) but within the gRPC limit: etcd's own error
    await v3.same("POST", "/v3/kv/put", json={"key": b64("big"), "value": b64(b"x" * 1_600_000)})
    # over the gRPC limit (max-request-bytes + 512 KiB): grpc's refusal, HTTP 429
    await v3.same("POST", "/v3/kv/put", json={"key": b64("big"), "value": b64(b"x" * 2_200_000)})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("after"), "value": b64("still serving")})


async def test_leases(v3: Differ) -> None:
    await v3.same("POST", "/v3/lease/grant", json={"TTL": 60, "ID": 1000})
    await v3.same("POST", "/v3/lease/grant", json={"TTL": 60, "ID": 1000})  # exists
    await v3.same("POST", "/v3/lease/grant", json={"TTL": "30"})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("leased"), "value": b64("v"), "lease": "1000"})
    await v3.same("POST", "/v3/lease/keepalive", data=b'{"ID":1000}{"ID":"1000"}')
    await v3.same("POST", "/v3/lease/keepalive", data=b'{"ID":999}')
    await v3.same("POST", "/v3/lease/keepalive", data=b"{bad")
    await v3.same("POST", "/v3/lease/keepalive", data=b"")
    await v3.same("POST", "/v3/lease/timetolive", json={"ID": 1000, "keys": True})
    await v3.same("POST", "/v3/kv/lease/timetolive", json={"ID": 999})
    await v3.same("POST", "/v3/lease/leases", json={})
    await v3.same("POST", "/v3/kv/lease/leases", json={})
    await v3.same("POST", "/v3/kv/lease/revoke", json={"ID": 1000})
    await v3.same("POST", "/v3/lease/revoke", json={"ID": 1000})
    await v3.same("POST", "/v3/kv/range", json={"key": b64("leased")})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("leased"), "value": b64("v"), "lease": "1000"})


async def test_watch_stream(v3: Differ) -> None:
    watches = {}
    for who in ("ours", "etcd"):
        body = (
            b'{"create_request":{"key":"%s","prev_kv":true}}{"create_request":{"key":"%s","range_end":"%s"}}'
            % (b64("w").encode(), b64("w").encode(), b64("x").encode())
        )
        watches[who] = await open_stream(v3.session, "POST", v3.urls[who] + "/v3/watch", data=body)
    created = {who: await read_lines(w, 2) for who, w in watches.items()}
    v3.compare(_lines(created["ours"]), _lines(created["etcd"]), "created")
    await v3.same("POST", "/v3/kv/put", json={"key": b64("w"), "value": b64("1")})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("w"), "value": b64("2")})
    await v3.same("POST", "/v3/kv/put", json={"key": b64("wz"), "value": b64("3")})
    await v3.same("POST", "/v3/kv/deleterange", json={"key": b64("w")})
    events = {who: await read_lines(w, 7) for who, w in watches.items()}
    for w in watches.values():
        w.close()
    # two watchers on one stream: each revision reaches each watcher in its own message
    key = lambda d: (d["result"]["header"]["revision"], d["result"].get("watch_id", "0"))
    v3.compare(_lines(sorted(events["ours"], key=key)), _lines(sorted(events["etcd"], key=key)), "events")


async def test_watch_history_progress_and_errors(v3: Differ) -> None:
    await v3.same("POST", "/v3/kv/put", json={"key": b64("h"), "value": b64("1")})
    rev = {who: int(st["last"].json["header"]["revision"]) for who, st in v3.state.items()}
    await v3.same("POST", "/v3/kv/put", json={"key": b64("h"), "value": b64("2")})
    streams = {}
    for who in ("ours", "etcd"):
        body = (
            f'{{"create_request":{{"key":"{b64("h")}","start_revision":"{rev[who]}"}}}}'
            '{"cancel_request":{"watch_id":"77"}}'
        ).encode()
        streams[who] = await open_stream(v3.session, "POST", v3.urls[who] + "/v3/watch", data=body)
    got = {who: await read_lines(w, 2) for who, w in streams.items()}
    for w in streams.values():
        w.close()
    v3.compare(_lines(got["ours"]), _lines(got["etcd"]), "history")
    # a progress request on a stream whose watchers are all synced
    streams = {
        who: await open_stream(
            v3.session,
            "POST",
            v3.urls[who] + "/v3/watch",
            data=b'{"create_request":{"key":"aA=="}}{"progress_request":{}}',
        )
        for who in ("ours", "etcd")
    }
    got = {who: await read_lines(w, 2) for who, w in streams.items()}
    for w in streams.values():
        w.close()
    v3.compare(_lines(got["ours"]), _lines(got["etcd"]), "progress")
    # a first request that does not decode: gRPC code Unknown (2), HTTP 500
    await v3.same("POST", "/v3/watch", data=b"{bad")


async def test_watch_compacted(v3: Differ) -> None:
    for i in range(3):
        await v3.same("POST", "/v3/kv/put", json={"key": b64("cw"), "value": b64(str(i))})
    await v3.same(
        "POST", "/v3/kv/compaction", json=lambda st: {"revision": st["last"].json["header"]["revision"]}
    )
    streams = {
        who: await open_stream(
            v3.session,
            "POST",
            v3.urls[who] + "/v3/watch",
            data=b'{"create_request":{"key":"Y3c=","start_revision":"2"}}',
        )
        for who in ("ours", "etcd")
    }
    got = {who: await read_lines(w, 2) for who, w in streams.items()}
    for w in streams.values():
        w.close()
    v3.compare(_lines(got["ours"]), _lines(got["etcd"]), "compacted watch")


async def test_maintenance_and_cluster(v3: Differ) -> None:
    await v3.same("POST", "/v3/maintenance/status", json={})
    await v3.same("POST", "/v3/maintenance/hash", json={})
    await v3.same("POST", "/v3/maintenance/alarm", json={"action": "BOGUS"})
    await v3.same("POST", "/v3/maintenance/transfer-leadership", json={"targetID": "5"})
    await v3.same("POST", "/v3/cluster/member/list", json={})
    await v3.same("POST", "/v3/cluster/member/promote", json={"ID": "1"})
    await v3.same("POST", "/v3/cluster/member/remove", json={"ID": "1"})
    await v3.same("POST", "/v3/cluster/member/update", json={"ID": "1", "peerURLs": ["http://127.0.0.1:2"]})
    await v3.same(
        "POST", "/v3/cluster/member/add", json={"peerURLs": ["http://127.0.0.1:1"], "isLearner": True}
    )
    await v3.same(
        "POST", "/v3/cluster/member/remove", json=lambda st: {"ID": st["last"].json["member"]["ID"]}
    )
    await v3.same("POST", "/v3/cluster/member/add", json={"peerURLs": ["not a url"]})


async def test_alarm_and_defragment_bodies(v3: Differ) -> None:
    await v3.same("POST", "/v3/maintenance/alarm", json={})
    await v3.same("POST", "/v3/maintenance/alarm", json={"action": "GET"})
    await v3.same("POST", "/v3/maintenance/defragment", json={})


async def test_snapshot_stream(v3: Differ) -> None:
    """The framing only (the file format is compared with etcd's tools in tests/snapshot)."""
    ours, etcd = await v3.both("POST", "/v3/maintenance/snapshot", data=b"{}")
    for r in (ours, etcd):
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert r.headers["Transfer-Encoding"] == "chunked" and r.text.endswith("}}\n")
        assert r.lines and all(set(x) == {"result"} and "blob" in x["result"] for x in r.lines)
        assert sum(len(base64.b64decode(x["result"]["blob"])) for x in r.lines) > 1000


async def test_lock_and_election(v3: Differ) -> None:
    await v3.same("POST", "/v3/lease/grant", json={"TTL": 60, "ID": 4242})
    await v3.same("POST", "/v3/lock/lock", json={"name": b64("lk"), "lease": "4242"})
    await v3.same("POST", "/v3/lock/unlock", json=lambda st: {"key": st["last"].json["key"]})
    await v3.same("POST", "/v3/lock/lock", json={"name": b64("lk"), "lease": ""})
    await v3.same("POST", "/v3/election/leader", json={"name": b64("el")})
    await v3.same(
        "POST", "/v3/election/campaign", json={"name": b64("el"), "lease": "4242", "value": b64("v1")}
    )
    for st in v3.state.values():
        st["leader"] = st["last"].json["leader"]
    await v3.same("POST", "/v3/election/leader", json={"name": b64("el")})
    await v3.same(
        "POST", "/v3/election/proclaim", json=lambda st: {"leader": st["leader"], "value": b64("v2")}
    )
    observers = {
        who: await open_stream(
            v3.session, "POST", v3.urls[who] + "/v3/election/observe", json={"name": b64("el")}
        )
        for who in ("ours", "etcd")
    }
    first = {who: await read_lines(w, 1) for who, w in observers.items()}
    for w in observers.values():
        w.close()
    v3.compare(_lines(first["ours"]), _lines(first["etcd"]), "observe")
    await v3.same("POST", "/v3/election/resign", json=lambda st: {"leader": st["leader"]})
    await v3.same("POST", "/v3/election/leader", json={"name": b64("el")})
    await v3.same("POST", "/v3/lease/revoke", json={"ID": 4242})


async def test_auth_flow(v3: Differ) -> None:
    """Last in the module: enables auth, then disables it again."""
    await v3.same("POST", "/v3/auth/authenticate", json={"name": "root", "password": "x"})
    await v3.same("POST", "/v3/auth/user/add", json={"name": "root", "password": "pass"})
    await v3.same("POST", "/v3/auth/role/add", json={"name": "root"})
    await v3.same("POST", "/v3/auth/user/grant", json={"user": "root", "role": "root"})
    await v3.same("POST", "/v3/auth/user/add", json={"name": "u1", "password": "p"})
    await v3.same("POST", "/v3/auth/user/add", json={"name": "u1", "password": "p"})
    await v3.same("POST", "/v3/auth/role/add", json={"name": "r1"})
    await v3.same(
        "POST",
        "/v3/auth/role/grant",
        json={"name": "r1", "perm": {"permType": "READWRITE", "key": b64("a"), "range_end": b64("b")}},
    )
    await v3.same("POST", "/v3/auth/role/get", json={"role": "r1"})
    await v3.same("POST", "/v3/auth/user/grant", json={"user": "u1", "role": "r1"})
    await v3.same("POST", "/v3/auth/user/get", json={"name": "u1"})
    await v3.same("POST", "/v3/auth/user/get", json={"name": "nobody"})
    await v3.same("POST", "/v3/auth/user/list", json={})
    await v3.same("POST", "/v3/auth/role/list", json={})
    await v3.same("POST", "/v3/auth/enable", json={})
    await v3.same("POST", "/v3/kv/range", json={"key": b64("a")})  # no token
    await v3.same("POST", "/v3/kv/range", json={"key": b64("a")}, headers={"Authorization": "bogus"})
    await v3.same("POST", "/v3/auth/authenticate", json={"name": "root", "password": "wrong"})
    await v3.same("POST", "/v3/auth/authenticate", json={"name": "root", "password": "pass"})
    for st in v3.state.values():
        st["root"] = st["last"].json["token"]
    await v3.same("POST", "/v3/auth/authenticate", json={"name": "u1", "password": "p"})
    for st in v3.state.values():
        st["u1"] = st["last"].json["token"]
    root = lambda st: {"Authorization": st["root"]}
    await v3.same("POST", "/v3/kv/put", json={"key": b64("a1"), "value": b64("v")}, headers=root)
    await v3.same(
        "POST", "/v3/kv/range", json={"key": b64("a1")}, headers=lambda st: {"Authorization": st["u1"]}
    )
    await v3.same(
        "POST", "/v3/kv/range", json={"key": b64("z")}, headers=lambda st: {"Authorization": st["u1"]}
    )
    await v3.same(
        "POST", "/v3/kv/range", json={"key": b64("a1")}, headers=lambda st: {"Grpc-Metadata-Token": st["u1"]}
    )
    await v3.same("POST", "/v3/auth/user/changepw", json={"name": "u1", "password": "q"}, headers=root)
    await v3.same("POST", "/v3/auth/user/revoke", json={"name": "u1", "role": "r1"}, headers=root)
    await v3.same(
        "POST",
        "/v3/auth/role/revoke",
        json={"role": "r1", "key": b64("a"), "range_end": b64("b")},
        headers=root,
    )
    await v3.same("POST", "/v3/auth/role/delete", json={"role": "r1"}, headers=root)
    await v3.same("POST", "/v3/auth/role/delete", json={"role": "r1"}, headers=root)
    await v3.same("POST", "/v3/auth/user/delete", json={"name": "u1"}, headers=root)
    await v3.same("POST", "/v3/auth/disable", json={}, headers=root)
    await v3.same("POST", "/v3/kv/range", json={"key": b64("a1")})


def _lines(lines: list) -> Reply:
    r = Reply(200, "application/json", {}, "", None, list(lines))
    if len(lines) == 1:
        r.body = lines[0]
    return r
