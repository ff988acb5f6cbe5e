"""Durable storage: the RocksDB backend and the Raft log kept in it."""
