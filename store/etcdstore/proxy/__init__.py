"""`etcdstore grpc-proxy start`: etcd 3.4's gRPC proxy (etcd's proxy/grpcproxy semantics).

server.py     flags, wiring (api.h2 on --listen-addr, HTTP/1 beside it), /health, /metrics
upstream.py   channels to the cluster, failover, the client's token forwarded
kv.py         KV with the range cache (cache.py) and --namespace (namespace.py)
watch.py      watch coalescing: watchers of one range share one upstream watch
lease.py      leases; keepalives of all clients sent upstream once per lease
leader.py     the `__lostleader` watch: `hasleader` client streams end when the cluster has no leader
cluster.py    MemberList as etcd's proxy answers it; registration under --resolver-prefix
rpc.py        forwarding helpers; Maintenance, Auth, Lock, Election pass through as bytes
"""
