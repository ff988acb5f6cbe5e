"""The same etcdctl 3.4 commands against real etcd 3.4 and against etcdstore give the same output.

Both servers start empty, so revisions line up exactly; what differs by nature (member and
cluster IDs, Raft terms and indexes, lease IDs, timings, DB sizes, hash values) is normalised.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading

import pytest
from testlib import ETCDCTL_BIN, Cluster, etcdctl, eventually, have_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="etcd/etcdctl 3.4 not installed")]


class Side:
    """One server plus what is needed to normalise its output."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.endpoint = cluster.endpoints[0]
        self.peer = cluster.members[0].peer_url
        st = cluster.members[0].status()
        self.ids = {st.header.member_id: "MEMBER_ID", st.header.cluster_id: "CLUSTER_ID"}
        self.leases: dict[str, str] = {}

    def run(self, *args: str, input: str | None = None) -> str:
        out = etcdctl(self.endpoint, *args, input=input, check=False)
        text = out.stdout + (
            "" if out.returncode == 0 else f"\n[exit {out.returncode}] {_error_line(out.stderr)}"
        )
        return self.normalise(text)

    def normalise(self, text: str) -> str:
        for number, (value, name) in enumerate(self.ids.items(), start=1):
            # Decimal IDs appear in JSON: keep them numbers so the document still parses.
            text = (
                text.replace(str(value), str(number))
                .replace(f"{value:016x}", name)
                .replace(f"{value:x}", name)
            )
        text = text.replace(self.endpoint, "ENDPOINT").replace(self.peer, "PEER")
        text = re.sub(r'"raft_term":\d+', '"raft_term":0', text)
        text = re.sub(r"took = [0-9.]+[µmn]?s", "took = D", text)
        text = re.sub(r"remaining\(\d+s\)", "remaining(Ns)", text)

        def lease(m: re.Match) -> str:
            return self.leases.setdefault(m.group(0), f"LEASE{len(self.leases)}")

        for raw in re.findall(r"\b[0-9a-f]{16}\b", text):
            text = re.sub(rf"\b{raw}\b", lease(re.match(raw, raw)), text)
        return text

    def lease_id(self, name: str) -> str:
        for raw, n in self.leases.items():
            if n == name:
                return raw
        raise KeyError(name)


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("Error:") or "Error" in line]
    return lines[-1] if lines else stderr.strip().splitlines()[-1] if stderr.strip() else ""


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    base = tmp_path_factory.mktemp("compat")
    real = Cluster.start(base, 1, binary="etcd")
    ours = Cluster.start(base, 1, binary="etcdstore")
    try:
        yield Side(real), Side(ours)
    finally:
        real.close()
        ours.close()


def both(sides, *args: str, input: str | None = None) -> str:
    real, ours = sides
    want = real.run(*args, input=input)
    got = ours.run(*args, input=input)
    assert got == want, f"etcdctl {' '.join(args)}\n--- etcd:\n{want}\n--- etcdstore:\n{got}"
    return got


def both_json(sides, *args: str) -> dict:
    """Compare -w json output with header fields that legitimately differ removed."""
    real, ours = sides
    docs = []
    for side in (real, ours):
        doc = json.loads(side.run(*args, "-w", "json"))
        doc.get("header", {}).pop("raft_term", None)
        docs.append(doc)
    assert docs[1] == docs[0], f"etcdctl {' '.join(args)} -w json"
    return docs[1]


def test_kv_put_get_del_txn(sides):
    for k, v in [
        ("foo", "bar"),
        ("foo2", "bar2"),
        ("fop", "x"),
        ("a", "1"),
        ("b", "2"),
        ("b1", "21"),
        ("c", "3"),
    ]:
        assert both(sides, "put", k, v) == "OK\n"
    both(sides, "put", "foo", "bar-again", "--prev-kv")
    both(sides, "get", "foo")
    both(sides, "get", "foo", "--prefix")
    both(sides, "get", "a", "c")
    both(sides, "get", "", "--prefix", "--limit", "2")
    both(sides, "get", "", "--from-key", "--sort-by", "MODIFY", "--order", "DESCEND")
    both(sides, "get", "", "--from-key", "--sort-by", "VALUE", "--order", "ASCEND", "--limit", "3")
    both(sides, "get", "f", "--prefix", "--keys-only")
    both(sides, "get", "f", "--prefix", "--print-value-only")
    both(sides, "get", "foo", "--rev", "2")
    both(sides, "get", "foo", "--rev", "999")  # future revision error
    both(sides, "get", "nothing-here")
    doc = both_json(sides, "get", "", "--prefix", "--limit", "3")
    assert doc["count"] == 7 and doc["more"] is True
    both_json(sides, "get", "a", "--consistency", "s")
    both_json(sides, "get", "b", "--prefix", "--rev", "6")
    both(sides, "get", "", "--prefix", "--min-mod-rev", "4", "--max-mod-rev", "6", "--keys-only")
    both(sides, "get", "", "--prefix", "--min-create-rev", "3", "--keys-only")
    both(sides, "del", "fop")
    both(sides, "del", "foo2", "--prev-kv")
    both(sides, "del", "b", "--prefix")
    both(sides, "del", "nope")
    both_json(sides, "put", "j", "v", "--prev-kv")
    both_json(sides, "del", "j", "--prev-kv")
    txn = 'mod("foo") > "0"\n\nput foo from-txn\nget foo\n\nput foo failed\n\n'
    both(sides, "txn", input=txn)
    txn = 'value("foo") = "nope"\n\nput foo ok\n\nget foo\nget a\n\n'
    both(sides, "txn", input=txn)
    txn = 'create("missing") = "0"\nversion("foo") > "1"\n\nput t1 1\nput t2 2\n\n\n'
    both(sides, "txn", input=txn)
    both(sides, "get", "t", "--prefix")
    # Errors etcd reports for bad txns.
    both(sides, "txn", input="\n\nput d 1\nput d 2\n\n\n")  # duplicate key
    both(sides, "put", "k", "v", "--ignore-value")  # key not found
    both(sides, "put", "foo", "v", "--ignore-lease")  # no lease on the key -> still OK, etcd semantics


def _watch_history_then_live(endpoint: str, start: int) -> str:
    """What `etcdctl watch w --prefix --rev start --prev-kv` prints: the history from `start`, then
    two puts made once the history is printed (the watch is live by then)."""
    cmd = [ETCDCTL_BIN, "--endpoints", endpoint, "watch", "w", "--prefix", "--rev", str(start), "--prev-kv"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={"ETCDCTL_API": "3"}
    )
    assert proc.stdout is not None
    lines: list[str] = []

    def read(out=proc.stdout) -> None:  # as it comes: the waits below look at it
        while line := out.readline():
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The history ends with the delete of w1.
        eventually(lambda: "DELETE\n" in lines, 10, message="the watch printed its history")
        etcdctl(endpoint, "put", "w3", "live")
        etcdctl(endpoint, "put", "w3", "live2")
        eventually(lambda: "live2\n" in lines, 10, message="the watch printed the live puts")
    finally:
        proc.terminate()
        proc.wait(10)
    reader.join(10)
    return "".join(lines)


def test_watch_history_and_live(sides):
    for side in sides:
        etcdctl(side.endpoint, "put", "w1", "a")
        etcdctl(side.endpoint, "put", "w2", "b")
        etcdctl(side.endpoint, "del", "w1")
    outs = []
    for side in sides:
        rev = json.loads(etcdctl(side.endpoint, "get", "w2", "-w", "json").stdout)["kvs"][0]["mod_revision"]
        outs.append(side.normalise(_watch_history_then_live(side.endpoint, rev - 1)))
    assert outs[1] == outs[0]
    assert "live2" in outs[1] and "w1" in outs[1]


def test_lease_lifecycle(sides):
    both(sides, "lease", "grant", "100")
    both(sides, "lease", "grant", "1")  # raised to the minimum TTL
    lids = [(s.lease_id("LEASE0"), s) for s in sides]
    for lid, side in lids:
        etcdctl(side.endpoint, "put", "leased", "v", "--lease", lid)
        etcdctl(side.endpoint, "put", "leased2", "v", "--lease", lid)
    for args in (
        ["lease", "timetolive", "{}", "--keys"],
        ["lease", "keep-alive", "--once", "{}"],
        ["lease", "list"],
        ["lease", "revoke", "{}"],
        ["get", "leased", "--prefix"],
        ["lease", "timetolive", "{}"],
    ):
        got = []
        for lid, side in lids:
            out = side.run(*[a.replace("{}", lid) for a in args])
            if args == ["lease", "list"]:
                out = "\n".join(sorted(out.splitlines()))  # etcd lists leases in Go map order
            # ...and a lease's attached keys too.
            out = re.sub(
                r"attached keys\(\[([^\]]*)\]\)",
                lambda m: f"attached keys([{' '.join(sorted(m.group(1).split()))}])",
                out,
            )
            got.append(out)
        assert got[1] == got[0], f"{args}\n{got[0]}\n{got[1]}"
    both(sides, "put", "x", "y", "--lease", "1234")  # unknown lease


def test_compaction_defrag_status_alarms(sides):
    for side in sides:
        for i in range(5):
            etcdctl(side.endpoint, "put", "ck", str(i))
    rev = json.loads(sides[0].run("get", "ck", "-w", "json"))["header"]["revision"]
    assert rev == json.loads(sides[1].run("get", "ck", "-w", "json"))["header"]["revision"]
    both(sides, "compaction", str(rev - 2))
    both(sides, "get", "ck", "--rev", str(rev - 3))  # compacted
    both(sides, "get", "ck", "--rev", str(rev - 2))
    both(sides, "compaction", str(rev - 3))  # already compacted
    both(sides, "compaction", "--physical", str(rev))
    both(sides, "defrag")
    both(sides, "alarm", "list")
    both(sides, "endpoint", "health")
    both_json(sides, "member", "list")
    status = [json.loads(s.run("endpoint", "status", "-w", "json"))[0]["Status"] for s in sides]
    for st in status:
        assert st["version"] == "3.4.23" and st["leader"] == st["header"]["member_id"]
        assert st["raftAppliedIndex"] == st["raftIndex"] and st["dbSize"] > 0
    hashes = [json.loads(s.run("endpoint", "hashkv", "-w", "json"))[0]["HashKV"] for s in sides]
    assert all(h["hash"] > 0 and h["compact_revision"] == rev for h in hashes)


def test_snapshot_save(sides, tmp_path):
    outs = []
    for i, side in enumerate(sides):
        path = tmp_path / f"snap{i}.db"
        out = side.run("snapshot", "save", str(path)).replace(str(path), "PATH")
        assert path.stat().st_size > 0
        outs.append(out)
    assert outs[1] == outs[0]
