"""The range cache, lease keepalive coalescing, registration under --resolver-prefix, --namespace,
failover and flag errors: each judged against etcd 3.4's grpc-proxy where it has the same thing."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import grpc
import pytest
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proxyprocs import Proxy, proxy_command
from test_watch_coalescing import WatchClient, metric
from testlib import Cluster, etcdctl, eventually, have_etcd

needs_etcd = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")]
KINDS = [pytest.param("etcd", marks=needs_etcd), "etcdstore"]


def get(endpoint: str, key: str, serializable: bool) -> str:
    args = ["get", key, "--print-value-only"] + (["--consistency", "s"] if serializable else [])
    return etcdctl(endpoint, *args).stdout.strip()


@pytest.mark.parametrize("kind", KINDS)
def test_serializable_ranges_from_the_cache(tmp_path, kind):
    """Writes that bypass the proxy are not seen by cached serializable ranges; linearizable ones
    refresh the cache, writes through the proxy invalidate it (the same with etcd's proxy)."""
    with Cluster.start(tmp_path / "c", size=1, binary="etcd" if kind == "etcd" else "etcdstore") as c:
        member = c.endpoints[0]
        with Proxy(kind, c.endpoints, tmp_path / "p.log").start() as p:
            etcdctl(member, "put", "k", "v1")
            assert get(p.endpoint, "k", True) == "v1"  # miss: fetched and cached
            etcdctl(member, "put", "k", "v2")  # behind the proxy's back
            assert get(p.endpoint, "k", True) == "v1"  # the cached answer
            assert get(member, "k", True) == "v2"
            assert get(p.endpoint, "k", False) == "v2"  # linearizable: from the cluster, and cached
            etcdctl(member, "put", "k", "v3")
            assert get(p.endpoint, "k", True) == "v2"
            etcdctl(p.endpoint, "put", "k", "v4")  # through the proxy: invalidates
            assert get(p.endpoint, "k", True) == "v4"
            # a delete of a range through the proxy invalidates the cached ranges it overlaps
            etcdctl(p.endpoint, "put", "d/1", "x")
            assert etcdctl(p.endpoint, "get", "d/", "--prefix", "--consistency", "s").stdout.split() == [
                "d/1",
                "x",
            ]
            etcdctl(member, "put", "d/2", "y")
            assert etcdctl(p.endpoint, "get", "d/", "--prefix", "--consistency", "s").stdout.split() == [
                "d/1",
                "x",
            ]
            etcdctl(p.endpoint, "del", "d/1")
            assert etcdctl(p.endpoint, "get", "d/", "--prefix", "--consistency", "s").stdout.split() == [
                "d/2",
                "y",
            ]
            if kind == "etcdstore":
                assert metric(p.endpoint, "etcd_grpc_proxy_cache_hits_total") >= 3


def test_lease_keepalives_coalesced(tmp_path):
    """Ten clients keeping one lease alive through the proxy: each gets its answers, the cluster
    sees far fewer keepalives than the clients sent."""
    with (
        Cluster.start(tmp_path / "c", size=1, binary="etcdstore") as c,
        Proxy("etcdstore", c.endpoints, tmp_path / "p.log").start() as p,
    ):
        lease = int(etcdctl(p.endpoint, "lease", "grant", "6").stdout.split()[1], 16)
        n, rounds = 10, 3
        answers: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            import queue

            q: queue.Queue = queue.Queue()

            def requests():
                for _ in range(rounds):
                    yield rpc_pb2.LeaseKeepAliveRequest(ID=lease)
                    q.get()  # the next request once this one is answered (as etcdctl does)
                done.wait()  # no half-close: etcd's proxy ends a half-closed stream

            with grpc.insecure_channel(p.endpoint) as ch:
                call = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(requests(), timeout=60)
                for got, resp in enumerate(call, start=1):
                    with lock:
                        answers.append(resp.TTL)
                    q.put(None)
                    if got == rounds:
                        break
                call.cancel()

        done = threading.Event()
        threads = [threading.Thread(target=client) for _ in range(n)]
        for t in threads:
            t.start()
        eventually(lambda: len(answers) >= n * rounds, 30, message="keepalive answers")
        done.set()
        for t in threads:
            t.join(30)
        assert all(ttl == 6 for ttl in answers)
        sent = metric(p.endpoint, "etcdstore_grpc_proxy_keepalives_sent_total")
        # 30 client requests; upstream one per lease per TTL/3 (each client waits for the next one)
        assert 1 <= sent <= n * rounds // 3
        etcdctl(p.endpoint, "lease", "revoke", f"{lease:x}")
        hold = threading.Event()

        def one():
            yield rpc_pb2.LeaseKeepAliveRequest(ID=lease)
            hold.wait()

        with grpc.insecure_channel(p.endpoint) as ch:
            call = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(one(), timeout=10)
            resp = next(call)
            hold.set()
            call.cancel()
        assert resp.TTL <= 0  # revoked: the waiting client gets TimeToLive's -1


@pytest.mark.parametrize("kind", KINDS)
def test_registers_under_resolver_prefix(tmp_path, kind):
    with Cluster.start(tmp_path / "c", size=1, binary="etcd" if kind == "etcd" else "etcdstore") as c:
        member = c.endpoints[0]
        adv = "127.0.0.1:1234"
        extra = ["--resolver-prefix", "pfx", "--resolver-ttl", "5", "--advertise-client-url", adv]
        with Proxy(kind, c.endpoints, tmp_path / "p.log", extra=extra).start() as p:
            eventually(
                lambda: etcdctl(member, "get", "pfx", "--prefix", "--keys-only").stdout.strip() != "",
                20,
                message="registration",
            )
            out = json.loads(etcdctl(member, "get", "pfx", "--prefix", "-w", "json").stdout)
            (kv,) = out["kvs"]
            import base64

            assert base64.b64decode(kv["key"]).decode() == f"pfx/{adv}"
            value = json.loads(base64.b64decode(kv["value"]))
            assert value == {
                "Op": 0,
                "Addr": adv,
                "Metadata": json.dumps({"name": socket.gethostname()}, separators=(",", ":")),
            }
            assert kv["lease"] != 0
            ml = etcdctl(p.endpoint, "member", "list").stdout.strip()
            assert ml == f"0, started, {socket.gethostname()}, , {adv}, false"


@pytest.mark.parametrize("kind", KINDS)
def test_namespace(tmp_path, kind):
    with Cluster.start(tmp_path / "c", size=1, binary="etcd" if kind == "etcd" else "etcdstore") as c:
        member = c.endpoints[0]
        with Proxy(kind, c.endpoints, tmp_path / "p.log", extra=["--namespace", "ns/"]).start() as p:
            etcdctl(p.endpoint, "put", "a", "1")
            etcdctl(member, "put", "b", "outside")
            assert etcdctl(member, "get", "ns/", "--prefix").stdout.split() == ["ns/a", "1"]
            assert etcdctl(p.endpoint, "get", "a").stdout.split() == ["a", "1"]
            assert etcdctl(p.endpoint, "get", "", "--from-key").stdout.split() == [
                "a",
                "1",
            ]  # only the namespace
            assert etcdctl(p.endpoint, "get", "a", "--prefix").stdout.split() == ["a", "1"]
            assert etcdctl(p.endpoint, "get", "b").stdout.strip() == ""
            w = WatchClient(p.endpoint, rpc_pb2.WatchCreateRequest(key=b"a", prev_kv=True))
            try:
                assert w.read(1)[0].created
                etcdctl(p.endpoint, "put", "a", "2")
                (ev,) = w.read(1)[0].events
                assert (ev.kv.key, ev.kv.value, ev.prev_kv.key, ev.prev_kv.value) == (b"a", b"2", b"a", b"1")
            finally:
                w.close()
            lease = etcdctl(p.endpoint, "lease", "grant", "60").stdout.split()[1]
            etcdctl(p.endpoint, "put", "l", "x", "--lease", lease)
            assert "attached keys([l])" in etcdctl(p.endpoint, "lease", "timetolive", lease, "--keys").stdout


def test_failover_when_the_member_in_use_dies(tmp_path):
    with (
        Cluster.start(tmp_path / "c", size=3, binary="etcdstore") as c,
        Proxy("etcdstore", c.endpoints, tmp_path / "p.log").start() as p,
    ):
        etcdctl(p.endpoint, "put", "k", "1")
        w = WatchClient(p.endpoint, rpc_pb2.WatchCreateRequest(key=b"k"))
        try:
            assert w.read(1)[0].created
            c.members[0].kill()  # the proxy's current endpoint
            # a put during the election may fail with an unknown outcome ("request timed out"): the
            # proxy, like clientv3, resends only what cannot apply twice; the client tries again
            deadline = time.monotonic() + 60
            while etcdctl(p.endpoint, "put", "k", "2", check=False).returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert etcdctl(p.endpoint, "get", "k", "--print-value-only").stdout.strip() == "2"
            events = w.read(1, timeout=30)[0].events  # the watch resumed on another member
            assert [e.kv.value for e in events][-1:] == [b"2"]
        finally:
            w.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resolver-prefix", "p"], "invalid resolver-ttl 0"),
        (["--resolver-ttl", "5"], 'invalid resolver-prefix ""'),
        (
            ["--resolver-prefix", "p", "--resolver-ttl", "5", "--advertise-client-url", ""],
            'invalid advertise-client-url ""',
        ),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_flag_errors_as_etcd(kind, args, message):
    p = subprocess.run(
        proxy_command(kind) + ["--listen-addr", "127.0.0.1:0"] + args,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert message in p.stderr
