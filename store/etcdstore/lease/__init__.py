"""Leases: TTL-bound groups of keys."""
