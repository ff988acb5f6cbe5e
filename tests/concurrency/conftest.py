"""Servers for the lock/election tests: one single-member cluster per binary, shared by a module.

Every test uses lock and election names of its own, so tests can share a server; the
`binary` parameter runs each test against our etcdstore and against the real etcd 3.4.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testlib import Cluster, have_etcd

BINARIES = ["etcdstore", "etcd"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # etcdctl is the client under test everywhere here, so every test needs the real 3.4 tools.
    for item in items:
        if "tests/concurrency/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.etcd)
            if not have_etcd():
                item.add_marker(pytest.mark.skip(reason="etcd/etcdctl 3.4 not installed"))


@pytest.fixture(scope="module", params=BINARIES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running single member of `etcdstore` or `etcd`."""
    if not have_etcd():
        pytest.skip("etcd/etcdctl 3.4 not installed")
    with Cluster.start(tmp_path_factory.mktemp(request.param), 1, binary=request.param) as c:
        yield c
