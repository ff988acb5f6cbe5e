"""Watch coalescing, measured (docs/grpc-proxy.md): N clients watch one key through etcd's
grpc-proxy, ours (over etcd and over etcdstore) and no proxy; prints the upstream watch count
(the member's etcd_debugging_mvcc_watcher_total minus the idle baseline) and delivery of one put.

    .venv/bin/python tests/proxy/measure_watch_coalescing.py 1,10,100,500 sequential|burst
"""

import os
import pathlib
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from etcdstore.proto.etcdserverpb import rpc_pb2
from proxyprocs import Proxy
from test_watch_coalescing import WatchClient, metric
from testlib import Cluster, etcdctl, eventually

base = pathlib.Path(tempfile.mkdtemp(prefix="proxy-measure-"))
NS = [int(x) for x in sys.argv[1].split(",")]
MODE = sys.argv[2]
rows = []
for label, binary, kind in [
    ("etcd grpc-proxy -> etcd", "etcd", "etcd"),
    ("etcdstore grpc-proxy -> etcd", "etcd", "etcdstore"),
    ("etcdstore grpc-proxy -> etcdstore", "etcdstore", "etcdstore"),
    ("no proxy -> etcdstore", "etcdstore", None),
]:
    with Cluster.start(base / label.replace(" ", "_").replace(">", ""), size=1, binary=binary) as c:
        m = c.endpoints[0]
        p = Proxy(kind, c.endpoints, base / f"{kind}.log").start() if kind else None
        target = p.endpoint if p else m
        try:
            time.sleep(1)  # let etcd's proxy open its two leader watches
            base_w = int(metric(m, "etcd_debugging_mvcc_watcher_total"))
            for n in NS:
                t0 = time.monotonic()
                if MODE == "burst":
                    ws = [WatchClient(target, rpc_pb2.WatchCreateRequest(key=b"k")) for _ in range(n)]
                    for w in ws:
                        assert w.read(1)[0].created
                else:
                    ws = []
                    for _ in range(n):
                        ws.append(WatchClient(target, rpc_pb2.WatchCreateRequest(key=b"k")))
                        assert ws[-1].read(1)[0].created
                t_created = time.monotonic() - t0
                # settle: until the count stops changing for 1 s (coalescing merges after first answers)
                last, stable_since = None, time.monotonic()
                while time.monotonic() - stable_since < 1.0:
                    v = int(metric(m, "etcd_debugging_mvcc_watcher_total"))
                    if v != last:
                        last, stable_since = v, time.monotonic()
                    time.sleep(0.1)
                up = last - base_w
                t1 = time.monotonic()
                etcdctl(target, "put", "k", f"v{n}")
                got = sum(1 for w in ws if [e.kv.value for e in w.read(1)[0].events] == [f"v{n}".encode()])
                t_deliver = time.monotonic() - t1
                for w in ws:
                    w.close()
                eventually(
                    lambda m=m, base_w=base_w: int(metric(m, "etcd_debugging_mvcc_watcher_total")) == base_w,
                    60,
                    message="drain",
                )
                row = (label, n, up, got, round(t_created, 2), round(t_deliver, 2), base_w)
                print(row, flush=True)
                rows.append(row)
        finally:
            if p:
                p.stop()
print(
    "| path | client watchers | upstream watchers (member's etcd_debugging_mvcc_watcher_total minus baseline) | got the event | create all (s) | put -> all delivered (s) | baseline |"
)
for r in rows:
    print("| " + " | ".join(map(str, r)) + " |")
