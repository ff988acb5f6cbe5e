"""Moved to the test-support package: tests/testlib/ (procs, ports, oracles, wait).

This module re-exports the old names so that callers not yet migrated keep working; new code
imports from `testlib`.
"""

from testlib.oracles import ETCD_BIN, ETCDCTL_BIN, etcdctl, have_etcd
from testlib.ports import HOST, free_port
from testlib.procs import BINARIES, Cluster, Member, StartError, command_for, wait_serving

__all__ = [
    "BINARIES",
    "ETCDCTL_BIN",
    "ETCD_BIN",
    "HOST",
    "Cluster",
    "Member",
    "StartError",
    "command_for",
    "etcdctl",
    "free_port",
    "have_etcd",
    "wait_serving",
]
