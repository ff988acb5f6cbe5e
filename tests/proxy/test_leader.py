"""`hasleader: true` streams through the proxy end with "etcdserver: no leader" when the cluster
loses its leader, and new ones are refused: what etcd's grpcproxy leader.go is written for.
(etcd 3.4's proxy itself never does it: it looks for `hasleader` in the *outgoing* metadata of the
server stream, which is always empty; seen here: such a watch through etcd's proxy outlived 90 s
without a leader. So this is checked on ours only; docs/grpc-proxy.md lists the difference.)"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proxyprocs import Proxy
from testlib import Cluster


def _watch(endpoint: str, hold: threading.Event):
    ch = grpc.insecure_channel(endpoint)

    def reqs():
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"k"))
        hold.wait()

    return ch, rpc_pb2_grpc.WatchStub(ch).Watch(reqs(), metadata=(("hasleader", "true"),), timeout=60)


def test_hasleader_streams_end_when_the_leader_is_lost(tmp_path):
    kind = "etcdstore"
    with Cluster.start(tmp_path / "c", size=3, binary=kind) as c:
        first = c.members[0]
        with Proxy(kind, [first.endpoint], tmp_path / "p.log").start() as p:
            hold = threading.Event()
            deadline = time.monotonic() + 30
            while True:  # until the proxy's own leader watch is up
                ch, call = _watch(p.endpoint, hold)
                try:
                    assert next(call).created
                    break
                except grpc.RpcError as e:
                    ch.close()
                    assert "no leader" in (e.details() or "") and time.monotonic() < deadline
                    time.sleep(0.2)
            try:
                for m in c.members[1:]:
                    m.kill()  # the member the proxy uses keeps running, without a leader
                with pytest.raises(grpc.RpcError) as err:
                    for _ in call:
                        pass
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert err.value.details() == "etcdserver: no leader"
                ch2, call2 = _watch(p.endpoint, hold)
                with pytest.raises(grpc.RpcError) as err2:
                    next(call2)
                assert err2.value.details() == "etcdserver: no leader"
                ch2.close()
            finally:
                hold.set()
                ch.close()
