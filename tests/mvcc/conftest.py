"""Fixtures for the MVCC tests (real RocksDB in temp dirs; a real etcd 3.4 for differential tests).

node    a Node (mvcc_support): Backend + KVStore + a lessor, driven like the apply loop
etcd    a fresh single-member etcd 3.4 with gRPC stubs (skipped if the binary is missing)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mvcc_support import Etcd, Node
from testlib import have_etcd


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "db")
    yield n
    n.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    if not have_etcd():
        pytest.skip("needs the real etcd 3.4 binary")
    e = Etcd(tmp_path / "etcd")
    yield e
    e.close()
