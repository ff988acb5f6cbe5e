"""Fixtures for the operator's tests.

`--member-binary` picks what member pods run in the integration scenarios:
  etcd (default)  the real etcd 3.4 from Debian (/usr/bin/etcd), EtcdClusters use engine: etcd;
  etcdstore       this project's store (`etcdstore` on PATH), engine: etcdstore;
  a path          another etcd binary, engine: etcd.
The same can be set with ETCDOPERATOR_TEST_MEMBER.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from kubeharness.world import VENV_BIN, World


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--member-binary",
        default=os.environ.get("ETCDOPERATOR_TEST_MEMBER", "etcd"),
        help="what member pods run in operator scenarios: etcd, etcdstore, or a path to an etcd binary",
    )


def _engine(member: str) -> tuple[str, str]:
    if member == "etcdstore":
        # on PATH, or installed next to this interpreter (the project's virtualenv)
        if shutil.which("etcdstore", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}") is None:
            pytest.skip("etcdstore is not on PATH: the store's server cannot be run as a member")
        return "etcdstore", "etcdstore"
    binary = shutil.which(member) or member
    if not os.path.exists(binary):
        pytest.skip(f"member binary {member!r} not found (install etcd-server)")
    return "etcd", binary


@pytest.fixture
def member_engine(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(engine, binary); tests may pin it with indirect parametrization."""
    return _engine(getattr(request, "param", None) or request.config.getoption("--member-binary"))


@pytest.fixture
async def world(member_engine, request):
    engine, binary = member_engine
    root = Path(tempfile.mkdtemp(prefix="op-world-"))
    w = World(root, engine, binary)
    async with w:
        yield w
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(f"\n--- world dir: {root}\n--- operator log tail ---\n{w.operator.tail(120)}")
    rep = getattr(request.node, "rep_call", None)
    if os.environ.get("ETCDOPERATOR_TEST_KEEP"):
        print(f"\n--- kept world dir: {root}")
    elif rep is None or not rep.failed:
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_configure(config: pytest.Config) -> None:
    # kmock 0.8 loads its bundled resource list with a deprecated importlib call.
    config.addinivalue_line("filterwarnings", "ignore:read_binary is deprecated:DeprecationWarning")
