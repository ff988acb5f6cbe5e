"""N watchers of one key through the proxy hold one watch on the cluster (etcd's grpcproxy watch
broadcast), and each still gets exactly what it asked for."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import grpc
import pytest
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proxyprocs import Proxy
from testlib import Cluster, etcdctl, eventually, have_etcd

N = 20


def metric(endpoint: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


class WatchClient:
    """One client: its own connection and Watch stream."""

    def __init__(self, endpoint: str, create: rpc_pb2.WatchCreateRequest) -> None:
        self._closed = threading.Event()
        self.channel = grpc.insecure_channel(endpoint)
        self.create = rpc_pb2.WatchRequest(create_request=create)
        self.call = rpc_pb2_grpc.WatchStub(self.channel).Watch(self._requests())
        self.responses: list[rpc_pb2.WatchResponse] = []

    def _requests(self):
        yield self.create
        self._closed.wait()  # keep the request side open until close()

    def read(self, n: int = 1, timeout: float = 10.0) -> list[rpc_pb2.WatchResponse]:
        got = []
        deadline = time.monotonic() + timeout
        for resp in self.call:
            got.append(resp)
            self.responses.append(resp)
            if len(got) >= n or time.monotonic() > deadline:
                break
        return got

    def close(self) -> None:
        self._closed.set()
        self.call.cancel()
        self.channel.close()


def _coalescing_run(tmp_path, binary: str, proxy_kind: str) -> tuple[int, int, int]:
    """(upstream watchers before, with N proxy watchers, after they closed) on the member's metrics."""
    with Cluster.start(tmp_path / binary, size=1, binary=binary) as c:
        member = c.endpoints[0]
        with Proxy(proxy_kind, c.endpoints, tmp_path / f"{proxy_kind}.log").start() as p:
            # the proxy's own `__lostleader` watches: etcd's proxy holds two, ours one
            eventually(
                lambda: (
                    metric(member, "etcd_debugging_mvcc_watcher_total") >= (2 if proxy_kind == "etcd" else 1)
                ),
                20,
                message="proxy's own watches",
            )
            before = int(metric(member, "etcd_debugging_mvcc_watcher_total"))
            clients: list[WatchClient] = []
            try:
                # One after another (each created before the next is asked for): etcd's rules then put
                # them all on one upstream watch. (Created all at once, several broadcasts can fill
                # up to etcd's 5 receivers before their first answer and then never merge: etcd's
                # proxy does the same; docs/grpc-proxy.md has the numbers.)
                for _ in range(N):
                    w = WatchClient(p.endpoint, rpc_pb2.WatchCreateRequest(key=b"k"))
                    clients.append(w)
                    created = w.read(1)[0]
                    assert created.created and not created.canceled
                eventually(
                    lambda: metric(member, "etcd_debugging_mvcc_watcher_total") == before + 1,
                    20,
                    message=lambda: (
                        "coalesced upstream watch: member counts "
                        f"{metric(member, 'etcd_debugging_mvcc_watcher_total')}"
                        + (
                            f", proxy holds {metric(p.endpoint, 'etcdstore_grpc_proxy_upstream_watches')}"
                            if proxy_kind == "etcdstore"
                            else ""
                        )
                    ),
                )
                during = int(metric(member, "etcd_debugging_mvcc_watcher_total"))
                etcdctl(p.endpoint, "put", "k", "v1")
                for w in clients:
                    (ev,) = w.read(1)[0].events
                    assert (ev.kv.key, ev.kv.value) == (b"k", b"v1")
                    assert not ev.HasField(
                        "prev_kv"
                    )  # the upstream watch has prev_kv; this watcher did not ask
            finally:
                for w in clients:
                    w.close()
            eventually(
                lambda: metric(member, "etcd_debugging_mvcc_watcher_total") == before,
                20,
                message="upstream watch closed",
            )
            after = int(metric(member, "etcd_debugging_mvcc_watcher_total"))
    return before, during, after


def test_n_watchers_one_upstream_watch_etcdstore(tmp_path):
    before, during, after = _coalescing_run(tmp_path, "etcdstore", "etcdstore")
    assert (before, during, after) == (1, 2, 1)


@pytest.mark.etcd
@pytest.mark.skipif(not have_etcd(), reason="needs etcd 3.4")
def test_n_watchers_one_upstream_watch_ours_over_etcd_like_etcds_proxy(tmp_path):
    ours = _coalescing_run(tmp_path / "ours", "etcd", "etcdstore")
    theirs = _coalescing_run(tmp_path / "theirs", "etcd", "etcd")
    assert ours[1] - ours[0] == theirs[1] - theirs[0] == 1


def test_start_revision_and_options_per_watcher(tmp_path):
    """A watcher from an old revision gets the history (its own upstream watch until it catches up);
    a later revision-0 watcher only new events; prev_kv and NOPUT filters apply per watcher."""
    with (
        Cluster.start(tmp_path / "s", size=1, binary="etcdstore") as c,
        Proxy("etcdstore", c.endpoints, tmp_path / "p.log").start() as p,
    ):
        etcdctl(p.endpoint, "put", "k", "a")
        etcdctl(p.endpoint, "put", "k", "b")  # revision 3
        live = WatchClient(p.endpoint, rpc_pb2.WatchCreateRequest(key=b"k"))
        hist = WatchClient(p.endpoint, rpc_pb2.WatchCreateRequest(key=b"k", start_revision=2, prev_kv=True))
        noput = WatchClient(
            p.endpoint, rpc_pb2.WatchCreateRequest(key=b"k", filters=[rpc_pb2.WatchCreateRequest.NOPUT])
        )
        try:
            assert live.read(1)[0].created
            h = hist.read(2)
            assert h[0].created
            assert [(e.kv.value, e.prev_kv.value) for e in h[1].events] == [(b"a", b""), (b"b", b"a")]
            assert noput.read(1)[0].created
            etcdctl(p.endpoint, "put", "k", "c")
            etcdctl(p.endpoint, "del", "k")
            lv = [e for r in live.read(2) for e in r.events]
            assert [(e.type, e.kv.value) for e in lv] == [(0, b"c"), (1, b"")]
            hv = [e for r in hist.read(2) for e in r.events]
            assert [(e.kv.value, e.prev_kv.value) for e in hv] == [(b"c", b"b"), (b"", b"c")]
            nv = [e for r in noput.read(1) for e in r.events]
            assert [e.type for e in nv] == [1]
            eventually(
                lambda: metric(c.endpoints[0], "etcd_debugging_mvcc_watcher_total") == 2,  # + __lostleader
                20,
                message="the history watcher's broadcast merged into the live one",
            )
        finally:
            for w in (live, hist, noput):
                w.close()
