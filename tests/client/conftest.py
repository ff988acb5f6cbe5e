"""Fixtures starting real etcd 3.4 members (see etcd_procs.py) and clients for them.

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

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from etcd_procs import ETCD_BIN, EtcdCluster, TLSFiles, make_tls_files
from etcdstore.client import Client
from procs import BINARIES


def _require_etcd() -> None:
    if not Path(ETCD_BIN).exists():
        pytest.skip("needs the real etcd 3.4 binary (tests/run installs etcd-server)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "etcd_args(*args): extra command-line flags for the etcd fixtures")


def _extra_args(request: pytest.FixtureRequest) -> list[str]:
    _require_etcd()
    marker = request.node.get_closest_marker("etcd_args")
    return list(marker.args) if marker else []


@pytest.fixture
def etcd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    with EtcdCluster.start(tmp_path / "etcd", 1, extra_args=_extra_args(request)) as cluster:
        yield cluster


@pytest.fixture
def etcd3(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    with EtcdCluster.start(tmp_path / "etcd3", 3, extra_args=_extra_args(request)) as cluster:
        yield cluster


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def etcd_tls(tmp_path: Path, tls_files: TLSFiles, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    with EtcdCluster.start(
        tmp_path / "etcd-tls", 1, tls=tls_files, extra_args=_extra_args(request)
    ) as cluster:
        yield cluster


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[Client]:
    async with Client(etcd.endpoints, timeout=10) as c:
        yield c


@pytest.fixture(params=BINARIES)
def server(request: pytest.FixtureRequest) -> str:
    if request.param == "etcd":
        _require_etcd()
    return request.param


def _start(tmp_path: Path, request: pytest.FixtureRequest, server: str, size: int, **kw) -> EtcdCluster:
    marker = request.node.get_closest_marker("etcd_args")
    extra = list(marker.args) if marker else []
    return EtcdCluster.start(tmp_path / f"{server}{size}", size, binary=server, extra_args=extra, **kw)


@pytest.fixture
def cluster1(tmp_path: Path, request: pytest.FixtureRequest, server: str) -> Iterator[EtcdCluster]:
    with _start(tmp_path, request, server, 1) as cluster:
        yield cluster


@pytest.fixture
def cluster3(tmp_path: Path, request: pytest.FixtureRequest, server: str) -> Iterator[EtcdCluster]:
    with _start(tmp_path, request, server, 3) as cluster:
        yield cluster


@pytest.fixture
def tls_cluster(
    tmp_path: Path, request: pytest.FixtureRequest, server: str, tls_files: TLSFiles
) -> Iterator[EtcdCluster]:
    with _start(tmp_path, request, server, 1, tls=tls_files) as cluster:
        yield cluster
