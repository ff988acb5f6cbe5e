"""Fixtures for the kind end-to-end suite (see e2e/run.sh). Without a cluster every test skips."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REQUIRED = ("docker", "kind", "kubectl", "helm")


def _missing() -> str | None:
    absent = [t for t in REQUIRED if shutil.which(t) is None]
    if absent:
        return f"needs {', '.join(absent)} (no container engine or Kubernetes on this machine); run e2e/run.sh elsewhere"
    if not os.environ.get("E2E"):
        return "E2E is not set: run the suite through e2e/run.sh, which creates the kind cluster"
    kubeconfig = os.environ.get("E2E_KUBECONFIG")
    if not kubeconfig or not os.path.exists(kubeconfig):
        return "E2E_KUBECONFIG does not point at the kind cluster's kubeconfig"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


class Kubectl:
    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        cmd = ["kubectl", f"--kubeconfig={self.kubeconfig}", f"--namespace={self.namespace}", *args]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=300, check=False)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {p.stderr}")
        return p.stdout


@pytest.fixture
def kubectl(request):
    ns = f"e2e-{request.node.name.replace('_', '-')[5:40].strip('-')}"
    k = Kubectl(os.environ["E2E_KUBECONFIG"], ns)
    k("create", "namespace", ns, check=False)
    yield k
    k("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def engine() -> str:
    return os.environ.get("E2E_MEMBER_ENGINE", "etcdstore")
