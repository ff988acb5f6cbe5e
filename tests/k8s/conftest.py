"""Fixtures for tests on the real Kubernetes control plane (e2e/localkube).

The binaries come from e2e/toolchain/build.sh's cache; when missing they are built (many minutes
the first time) unless ETCDSTORE_K8S_BUILD=0, in which case these tests skip; with
ETCDSTORE_REQUIRE_K8S=1 (CI) a missing toolchain is a failure, never a skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "e2e"
if str(E2E) not in sys.path:
    sys.path.insert(0, str(E2E))

from localkube import toolchain
from localkube.controlplane import ControlPlane


def k8s_bin_dir() -> Path:
    d = toolchain.cached_bin_dir()
    if d is not None:
        return d
    required = os.environ.get("ETCDSTORE_REQUIRE_K8S") == "1"
    if not toolchain.builds_wanted():
        msg = "Kubernetes binaries not built (e2e/toolchain/build.sh) and ETCDSTORE_K8S_BUILD=0"
        if required:
            pytest.fail(msg + ", but ETCDSTORE_REQUIRE_K8S=1")
        pytest.skip(msg)
    d = toolchain.bin_dir(build=True)
    assert d is not None
    return d


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    return k8s_bin_dir()


@pytest.fixture(scope="session")
def control_plane(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """One control plane on a single etcdstore member for the session."""
    cp = ControlPlane(tmp_path_factory.mktemp("localkube"), store="etcdstore", members=1, bin_dir=k8s_bin)
    cp.start()
    yield cp
    cp.stop()
