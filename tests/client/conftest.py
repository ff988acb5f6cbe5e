"""Fixtures starting real etcd 3.4 members (testlib's Cluster) and clients for them.

    etcd        a single member (function scope: starting one takes ~0.2 s)
    etcd3       a 3-member cluster
    tls_files   CA + server + client certificates;  etcd_tls: a single member serving https
                with --client-cert-auth
    client      Client(etcd.endpoints, timeout=10)
Extra etcd flags for one test: @pytest.mark.etcd_args("--auth-token-ttl", "1").

Both servers (tests of the client options, test_client_options.py / test_client_recipes.py):
    server      "etcd" or "etcdstore" (parametrized: every test using it runs against both)
    cluster1    a single member of `server`;  cluster3: three members of `server`
    tls_cluster a single member of `server` serving https with --client-cert-auth
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcdstore.client import Client
from testlib import BINARIES, Cluster, TLSFiles, have_etcd, make_tls_files


def _require_etcd() -> None:
    if not have_etcd():
        pytest.skip("needs the real etcd 3.4 binary (tests/run installs etcd-server)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "etcd_args(*args): extra command-line flags for the etcd fixtures")


def _start(base: Path, request: pytest.FixtureRequest, binary: str, size: int, **opts: Any) -> Cluster:
    """`size` members of `binary` under `base`, with the test's etcd_args marker's flags."""
    if binary == "etcd":
        _require_etcd()
    marker = request.node.get_closest_marker("etcd_args")
    extra = list(marker.args) if marker else []
    return Cluster.start(base, size, binary=binary, extra_args=extra, **opts)


@pytest.fixture
def etcd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with _start(tmp_path / "etcd", request, "etcd", 1) as cluster:
        yield cluster


@pytest.fixture
def etcd3(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with _start(tmp_path / "etcd3", request, "etcd", 3) as cluster:
        yield cluster


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def etcd_tls(tmp_path: Path, tls_files: TLSFiles, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with _start(tmp_path / "etcd-tls", request, "etcd", 1, tls=tls_files) as cluster:
        yield cluster


@pytest.fixture
async def client(etcd: Cluster) -> AsyncIterator[Client]:
    async with Client(etcd.endpoints, timeout=10) as c:
        yield c


@pytest.fixture(params=BINARIES)
def server(request: pytest.FixtureRequest) -> str:
    if request.param == "etcd":
        _require_etcd()
    return request.param


@pytest.fixture
def cluster1(tmp_path: Path, request: pytest.FixtureRequest, server: str) -> Iterator[Cluster]:
    with _start(tmp_path / f"{server}1", request, server, 1) as cluster:
        yield cluster


@pytest.fixture
def cluster3(tmp_path: Path, request: pytest.FixtureRequest, server: str) -> Iterator[Cluster]:
    with _start(tmp_path / f"{server}3", request, server, 3) as cluster:
        yield cluster


@pytest.fixture
def tls_cluster(
    tmp_path: Path, request: pytest.FixtureRequest, server: str, tls_files: TLSFiles
) -> Iterator[Cluster]:
    with _start(tmp_path / f"{server}-tls", request, server, 1, tls=tls_files) as cluster:
        yield cluster
