"""`etcdstore bench`: a load generator for any etcd v3 endpoint set (etcd itself or etcdstore).

    python -m etcdstore.bench put|range|txn|watch --endpoints A,B,C --clients N[,N2,...]
        [--conns M] [--procs P] [--total T | --duration S] [--key-size 8] [--val-size 256]
        [--key-space K] [--consistency l|s] [--txn-ops 1] [--rate R] [--prefill]
        [--watchers W --watch-streams S] [--compare LABEL=EPS ...] [--json PATH]

Workloads: put (random keys of the key space), range (one existing key per request, after
--prefill which is on by default), txn (etcd's txn-put: --txn-ops puts, no compares), watch
(W watchers on a prefix over S streams while the clients put; reports put throughput/latency
and event delivery throughput and put-to-event latency). Each client is a coroutine issuing
one request at a time; clients share --conns gRPC connections and are spread over --procs
processes (uvloop), whose latency samples are merged. Requests are prebuilt bytes sent through
raw gRPC callables. `--compare etcd=A --compare etcdstore=B` runs the same workloads on both
and prints them side by side. `main(argv) -> int` is the entry point (`etcdstore bench`).

`etcdstore bench compare` (compare.py) is separate: it starts real etcd 3.4 and etcdstore itself and
measures both with etcd's own Go benchmark tool, alternating rounds (docs/performance.md).
"""

from etcdstore.bench.cli import main

__all__ = ["main"]
