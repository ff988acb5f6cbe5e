"""Snapshots: the file format, and the snapshot restore/status tool."""
