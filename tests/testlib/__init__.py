"""The test suite's support package: one place for what many tests need.

- `ports`: `free_port()`, `free_ports(n)`: free loopback ports, never handed out twice.
- `wait`: `eventually(predicate, timeout, interval)` and `eventually_async`: wait on a condition
  instead of sleeping.
- `oracles`: the real etcd 3.4 (`ETCD_BIN`, `ETCDCTL_BIN`, `etcdctl(...)`), `have_etcd()` and
  `check_etcd_oracle()`, which fail with how to install etcd 3.4 when another version is found.
- `procs`: the process harness for etcd and etcdstore members and clusters (`Member`, `Cluster`,
  `wait_serving`, `wait_applied` (every member applied what is committed), and the pieces
  `member_args`, `lone_member_args` and `spawn` for harnesses of their own); `tls=` serves clients over https.
- `tls`: throwaway certificates: `make_tls_files(dir)` (a CA, server and client certificates as
  `TLSFiles`), `CA(dir).issue(...)` for others.

tests/conftest.py puts tests/ on sys.path, so every test directory imports it as `testlib`.
"""

from testlib.oracles import ETCD_BIN, ETCDCTL_BIN, check_etcd_oracle, etcdctl, have_etcd
from testlib.ports import HOST, free_port, free_ports
from testlib.procs import (
    BINARIES,
    Cluster,
    Member,
    StartError,
    command_for,
    lone_member_args,
    member_args,
    spawn,
    status_of,
    wait_applied,
    wait_serving,
)
from testlib.tls import CA, TLSFiles, make_tls_files
from testlib.wait import eventually, eventually_async

__all__ = [
    "BINARIES",
    "CA",
    "ETCDCTL_BIN",
    "ETCD_BIN",
    "HOST",
    "Cluster",
    "Member",
    "StartError",
    "TLSFiles",
    "check_etcd_oracle",
    "command_for",
    "etcdctl",
    "eventually",
    "eventually_async",
    "free_port",
    "free_ports",
    "have_etcd",
    "lone_member_args",
    "make_tls_files",
    "member_args",
    "spawn",
    "status_of",
    "wait_applied",
    "wait_serving",
]
