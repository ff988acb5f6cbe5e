"""Request semantics below the server: what a Raft entry carries (`requests`) and etcd's KV
request semantics over the MVCC store (`kv_apply`), as etcd keeps them in etcdserver/txn."""
