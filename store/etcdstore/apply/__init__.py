"""Applying committed entries to the state machine (etcd 3.6's etcdserver/apply): the `Applier`
turns one decoded request into changes of the replicated stores inside the server's apply batch.
Below the server, above the stores and request semantics it drives (docs/architecture.md)."""
