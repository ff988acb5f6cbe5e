"""Lease keepalive coalescing, measured (docs/grpc-proxy.md): CLIENTS clients each send ROUNDS
keepalives (one per answer) for one lease of TTL seconds through our proxy; prints how many
keepalives the proxy sent upstream.

    .venv/bin/python tests/proxy/measure_keepalives.py CLIENTS ROUNDS TTL
"""

import os
import pathlib
import queue
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from proxyprocs import Proxy
from test_watch_coalescing import metric
from testlib import Cluster, etcdctl

base = pathlib.Path(tempfile.mkdtemp(prefix="proxy-keepalives-"))
N, ROUNDS, TTL = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with (
    Cluster.start(base, size=1, binary="etcdstore") as c,
    Proxy("etcdstore", c.endpoints, base / "p.log").start() as p,
):
    lease = int(etcdctl(p.endpoint, "lease", "grant", str(TTL)).stdout.split()[1], 16)
    answers = []
    done = threading.Event()

    def client():
        q = queue.Queue()

        def reqs():
            for _ in range(ROUNDS):
                yield rpc_pb2.LeaseKeepAliveRequest(ID=lease)
                q.get()
            done.wait()

        with grpc.insecure_channel(p.endpoint) as ch:
            call = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(reqs(), timeout=120)
            for i, r in enumerate(call):
                answers.append(r.TTL)
                q.put(None)
                if i + 1 == ROUNDS:
                    break
            call.cancel()

    t0 = time.monotonic()
    ts = [threading.Thread(target=client) for _ in range(N)]
    for t in ts:
        t.start()
    while len(answers) < N * ROUNDS and time.monotonic() - t0 < 100:
        time.sleep(0.05)
    el = time.monotonic() - t0
    done.set()
    for t in ts:
        t.join(10)
    print(
        f"clients={N} rounds={ROUNDS} ttl={TTL}: client requests={N * ROUNDS} answers={len(answers)} "
        f"upstream keepalives sent={int(metric(p.endpoint, 'etcdstore_grpc_proxy_keepalives_sent_total'))} elapsed={el:.1f}s"
    )
