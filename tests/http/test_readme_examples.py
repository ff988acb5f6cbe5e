"""The curl examples of etcd's README and its gRPC-gateway guide, run as written (the address
substituted) against our server and a real etcd 3.4; outputs compared after normalisation.

The gateway guide runs first: its txn example compares a create revision of 2, and our v2 keys
live in the v3 key space (a v2 write takes a v3 revision; in etcd it does not)."""

from __future__ import annotations

import json
import select
import shlex
import shutil
import subprocess

import pytest
from httpdiff import Labels, normalize_v2, normalize_v3

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command"),
]

README_V2 = "curl -L http://127.0.0.1:2379/v2/keys/message -XPUT -d value=Hello"

GATEWAY_GUIDE = [
    """curl -L http://localhost:2379/v3/kv/put -X POST -d '{"key": "Zm9v", "value": "YmFy"}'""",
    """curl -L http://localhost:2379/v3/kv/range -X POST -d '{"key": "Zm9v"}'""",
    """curl -L http://localhost:2379/v3/kv/range -X POST -d '{"key": "Zm9v", "range_end": "Zm9w"}'""",
    (
        """curl -L http://localhost:2379/v3/kv/txn -X POST -d '{"compare":[{"target":"CREATE","key":"Zm9v","""
        """"createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}'"""
    ),
    (
        """curl -L http://localhost:2379/v3/kv/txn -X POST -d '{"compare":[{"version":"4","result":"EQUAL","""
        """"target":"VERSION","key":"Zm9v"}],"success":[{"requestRange":{"key":"Zm9v"}}]}'"""
    ),
    """curl -L http://localhost:2379/v3/auth/user/add -X POST -d '{"name": "root", "password": "pass"}'""",
    """curl -L http://localhost:2379/v3/auth/role/add -X POST -d '{"name": "root"}'""",
    """curl -L http://localhost:2379/v3/auth/user/grant -X POST -d '{"user": "root", "role": "root"}'""",
    """curl -L http://localhost:2379/v3/auth/enable -X POST -d '{}'""",
    """curl -L http://localhost:2379/v3/auth/authenticate -X POST -d '{"name": "root", "password": "pass"}'""",
    # the guide's header has a space before the colon: both servers refuse that request line
    (
        """curl -s -o /dev/null -w '%{http_code}' -L http://localhost:2379/v3/kv/put """
        """-H 'Authorization : sssvIpwfnLAcWAQH.9' -X POST -d '{"key": "Zm9v", "value": "YmFy"}'"""
    ),
]


def run(cmd: str, base: str) -> str:
    args = shlex.split(cmd.replace("http://localhost:2379", base).replace("http://127.0.0.1:2379", base))
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout


def test_gateway_guide_examples(pair: dict[str, str]) -> None:
    labels = {who: Labels() for who in pair}
    # the guide's watch example, started first in the background
    watch = """curl -N http://localhost:2379/v3/watch -X POST -d '{"create_request": {"key":"Zm9v"} }'"""
    watchers = {
        who: subprocess.Popen(
            shlex.split(watch.replace("http://localhost:2379", base)), stdout=subprocess.PIPE, text=True
        )
        for who, base in pair.items()
    }
    first: dict[str, str] = {}
    try:
        for who, w in watchers.items():  # the watch is registered once its "created" line is out
            assert w.stdout is not None
            ready, _, _ = select.select([w.stdout], [], [], 30)
            assert ready, f"{who}: the guide's watch printed nothing in 30 s"
            first[who] = w.stdout.readline()
            assert '"created":true' in first[who].replace(" ", ""), first[who]
        for cmd in GATEWAY_GUIDE:
            out = {who: run(cmd, base) for who, base in pair.items()}
            if "%{http_code}" in cmd:
                assert out["ours"] == out["etcd"] == "400", cmd
                continue
            docs = {who: normalize_v3(json.loads(o), labels[who]) for who, o in out.items()}
            assert docs["ours"] == docs["etcd"], cmd
            assert "error" not in docs["ours"], (cmd, out["ours"])
        token = {who: json.loads(run(GATEWAY_GUIDE[-2], base))["token"] for who, base in pair.items()}
        for who, base in pair.items():
            put = (
                "curl -L http://localhost:2379/v3/kv/put -H 'Authorization: TOKEN' -X POST "
                """-d '{"key": "Zm9v", "value": "YmFy"}'"""
            )
            assert "header" in json.loads(run(put.replace("TOKEN", token[who]), base))
            off = "curl -L http://localhost:2379/v3/auth/disable -H 'Authorization: TOKEN' -X POST -d '{}'"
            assert "header" in json.loads(run(off.replace("TOKEN", token[who]), base))
    finally:
        for w in watchers.values():
            w.terminate()
    lines = {
        who: [
            normalize_v3(json.loads(x), Labels())
            for x in (first[who] + w.communicate(timeout=10)[0]).splitlines()
            if x
        ]
        for who, w in watchers.items()
    }
    assert lines["ours"] == lines["etcd"]
    assert len(lines["ours"]) >= 4  # created + the puts of the guide


def test_readme_v2_example(pair: dict[str, str]) -> None:
    out = {who: run(README_V2, base) for who, base in pair.items()}
    docs = {who: normalize_v2(json.loads(o), Labels()) for who, o in out.items()}
    assert docs["ours"] == docs["etcd"]
    assert json.loads(out["ours"])["node"]["value"] == "Hello"
    get = {
        who: json.loads(run("curl -L http://127.0.0.1:2379/v2/keys/message", base))
        for who, base in pair.items()
    }
    assert get["ours"]["node"]["value"] == get["etcd"]["node"]["value"] == "Hello"
