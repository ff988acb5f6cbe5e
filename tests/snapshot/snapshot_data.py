"""Helpers for the snapshot tests: fill a member with every kind of state, and dump all of it.

`populate` writes through the real etcdctl (keys in transactions with several changes per
revision, overwrites, deletes, a compaction, leases with and without keys, a value larger than a
bbolt page, users and roles with permissions, then auth enabled). `dump` reads everything back
through the raw gRPC stubs: every key at every revision from the compaction on, the leases with
their keys, the users and roles; two members holding the same data give equal dumps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import ETCDCTL_BIN, Member, etcdctl, free_port, wait_serving

ROOT = ("root", "rootpw")
BIG = "B" * 60_000  # spans overflow pages in bbolt


def populate(ep: str) -> dict:
    """Write the test data; returns {"compacted": revision, "leases": [...], "revision": last}."""
    for t in range(12):  # 10 puts per revision: sub revisions 0..9
        ops = "".join(f"put k{t * 10 + i:03d} v{t * 10 + i}\n" for i in range(10))
        etcdctl(ep, "txn", input=f"\n{ops}\n\n")
    for i in range(0, 120, 3):
        etcdctl(ep, "put", f"k{i:03d}", f"w{i}")
    etcdctl(ep, "put", "k000", "third")
    l1 = etcdctl(ep, "lease", "grant", "600").stdout.split()[1]
    l2 = etcdctl(ep, "lease", "grant", "900").stdout.split()[1]
    l3 = etcdctl(ep, "lease", "grant", "1200").stdout.split()[1]  # no keys
    etcdctl(ep, "put", "leased/a", "x", "--lease", l1)
    etcdctl(ep, "put", "leased/b", "y", "--lease", l1)
    etcdctl(ep, "put", "leased/b", "y2", "--ignore-lease")  # keeps l1
    etcdctl(ep, "put", "k050", "--ignore-value", "--lease", l2)  # keeps its value, now on l2
    etcdctl(ep, "del", "k001")
    etcdctl(ep, "del", "k01", "--prefix")
    rev = json.loads(etcdctl(ep, "get", "k000", "-w", "json").stdout)["header"]["revision"]
    etcdctl(ep, "compact", str(rev - 5), "--physical")
    etcdctl(ep, "put", "after/compact", "1")
    etcdctl(ep, "put", "k002", "again")
    etcdctl(ep, "del", "k003")
    etcdctl(ep, "put", "big", BIG)
    etcdctl(ep, "put", "sp ace/é", "ünïcode")
    etcdctl(ep, "txn", input="\nput t/1 a\ndel k004\nput t/2 b\n\n\n")
    # Users and roles, then auth on.
    etcdctl(ep, "user", "add", f"{ROOT[0]}:{ROOT[1]}")
    etcdctl(ep, "user", "grant-role", "root", "root")
    etcdctl(ep, "role", "add", "reader")
    etcdctl(ep, "role", "grant-permission", "reader", "read", "k000", "k100")
    etcdctl(ep, "role", "grant-permission", "reader", "readwrite", "after/", "--prefix")
    etcdctl(ep, "role", "add", "writer")
    etcdctl(ep, "role", "grant-permission", "writer", "write", "big")
    etcdctl(ep, "role", "add", "nothing")
    etcdctl(ep, "user", "add", "alice:alicepw")
    etcdctl(ep, "user", "grant-role", "alice", "reader")
    etcdctl(ep, "user", "add", "bob:bobpw")
    etcdctl(ep, "user", "grant-role", "bob", "reader")
    etcdctl(ep, "user", "grant-role", "bob", "writer")
    etcdctl(ep, "auth", "enable")
    last = json.loads(etcdctl(ep, "--user", ":".join(ROOT), "put", "last", "1", "-w", "json").stdout)
    return {
        "compacted": rev - 5,
        "leases": [int(l1, 16), int(l2, 16), int(l3, 16)],
        "revision": last["header"]["revision"],
    }


def _token(ch: grpc.Channel, user: str, password: str) -> list[tuple[str, str]]:
    resp = rpc_pb2_grpc.AuthStub(ch).Authenticate(
        rpc_pb2.AuthenticateRequest(name=user, password=password), timeout=10
    )
    return [("token", resp.token)]


def _kvs(resp: rpc_pb2.RangeResponse) -> list[tuple]:
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in resp.kvs]


def dump(ep: str, compacted: int) -> dict:
    """All state of a member with auth enabled (read as root), comparable across members."""
    with grpc.insecure_channel(ep) as ch:
        md = _token(ch, *ROOT)
        kv = rpc_pb2_grpc.KVStub(ch)
        everything = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")
        now = kv.Range(everything, metadata=md, timeout=10)
        rev = now.header.revision
        history = {}
        for r in range(compacted, rev + 1):
            req = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=r)
            history[r] = _kvs(kv.Range(req, metadata=md, timeout=10))
        try:
            kv.Range(
                rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=compacted - 1),
                metadata=md,
                timeout=10,
            )
            below = "readable"
        except grpc.RpcError as e:
            below = e.details()
        lease = rpc_pb2_grpc.LeaseStub(ch)
        leases = {}
        for item in lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), metadata=md, timeout=10).leases:
            ttl = lease.LeaseTimeToLive(
                rpc_pb2.LeaseTimeToLiveRequest(ID=item.ID, keys=True), metadata=md, timeout=10
            )
            leases[item.ID] = (ttl.grantedTTL, sorted(ttl.keys))
        auth = rpc_pb2_grpc.AuthStub(ch)
        users = {}
        for name in auth.UserList(rpc_pb2.AuthUserListRequest(), metadata=md, timeout=10).users:
            users[name] = sorted(
                auth.UserGet(rpc_pb2.AuthUserGetRequest(name=name), metadata=md, timeout=10).roles
            )
        roles = {}
        for name in auth.RoleList(rpc_pb2.AuthRoleListRequest(), metadata=md, timeout=10).roles:
            perms = auth.RoleGet(rpc_pb2.AuthRoleGetRequest(role=name), metadata=md, timeout=10).perm
            roles[name] = sorted((p.permType, p.key, p.range_end) for p in perms)
        # Passwords and permissions work: alice reads k0.., may not write there.
        alice = _token(ch, "alice", "alicepw")
        alice_read = _kvs(
            kv.Range(rpc_pb2.RangeRequest(key=b"k000", range_end=b"k100"), metadata=alice, timeout=10)
        )
        try:
            kv.Put(rpc_pb2.PutRequest(key=b"k000", value=b"no"), metadata=alice, timeout=10)
            alice_write = "allowed"
        except grpc.RpcError as e:
            alice_write = e.details()
        try:
            kv.Range(everything, timeout=10)
            anonymous = "allowed"
        except grpc.RpcError as e:
            anonymous = e.details()
    return {
        "revision": rev,
        "kvs": _kvs(now),
        "history": history,
        "below_compaction": below,
        "leases": leases,
        "users": users,
        "roles": roles,
        "alice_read": alice_read,
        "alice_write": alice_write,
        "anonymous": anonymous,
    }


def without_lease_ids(d: dict, leases: list[int]) -> dict:
    """`d` with lease IDs replaced by their grant order (each server picks its own IDs)."""
    name = {lid: f"lease{i}" for i, lid in enumerate(leases)}
    name[0] = 0

    def kvs(rows: list[tuple]) -> list[tuple]:
        return [(*r[:5], name[r[5]]) for r in rows]

    out = dict(d)
    if "history" in d:
        out["history"] = {r: kvs(rows) for r, rows in d["history"].items()}
        out["kvs"] = kvs(d["kvs"])
        out["alice_read"] = kvs(d["alice_read"])
        out["leases"] = {name[k]: v for k, v in d["leases"].items()}
    else:
        out["kvs"] = [{**kv, "lease": name[kv["lease"]]} if "lease" in kv else kv for kv in d["kvs"]]
        out["leases"] = len(d["leases"])
    return out


def etcdctl_view(ep: str) -> dict:
    """What etcdctl prints of the same state (keys as JSON, lease list, user and role lists)."""
    user = ["--user", ":".join(ROOT)]
    kvs = json.loads(etcdctl(ep, *user, "get", "", "--from-key", "-w", "json").stdout)
    return {
        "kvs": kvs["kvs"],
        "revision": kvs["header"]["revision"],
        "leases": sorted(etcdctl(ep, *user, "lease", "list").stdout.splitlines()),
        "users": etcdctl(ep, *user, "user", "list").stdout,
        "roles": etcdctl(ep, *user, "role", "list").stdout,
    }


def restore_and_start(
    tool: str, snapshot: Path, base: Path, binary: str, name: str = "r0", extra: tuple[str, ...] = ()
) -> Member:
    """Restore `snapshot` with `tool` ("etcdctl" or "etcdstore") into a new one-member cluster run
    by `binary`; returns the started member."""
    m = Member(
        name=name,
        data_dir=base / f"{name}.etcd",
        client_port=free_port(),
        peer_port=free_port(),
        binary=binary,
    )
    m.initial_cluster = f"{name}={m.peer_url}"
    args = [
        "snapshot",
        "restore",
        str(snapshot),
        "--name",
        name,
        "--data-dir",
        str(m.data_dir),
        "--initial-cluster",
        m.initial_cluster,
        "--initial-cluster-token",
        m.cluster_token,
        "--initial-advertise-peer-urls",
        m.peer_url,
        *extra,
    ]
    cmd = [ETCDCTL_BIN, *args] if tool == "etcdctl" else etcdstore_cmd(*args)
    out, m.restore_peak_rss = run_measured(cmd)  # type: ignore[attr-defined]  # an ad-hoc attribute on Member
    assert out.returncode == 0, f"{tool} snapshot restore: {out.stderr}"
    m.spawn()
    try:
        wait_serving([m])
    except BaseException:
        m.kill()
        raise
    return m


_MEASURE = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def run_measured(cmd: list[str], timeout: float = 1800) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cmd`; returns its completed process and its peak resident set size in bytes."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = out.stderr.rstrip("\n").split("\n")
    out.stderr = "\n".join(lines[:-1])
    return out, int(lines[-1]) * 1024


def etcdstore_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "etcdstore", *args]


def etcdstore(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(etcdstore_cmd(*args), capture_output=True, text=True, timeout=600, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"etcdstore {' '.join(args)}: {out.stderr}")
    return out
