"""Fixtures of the end-to-end suite. One suite, two providers (see e2e/README.md):

- `local`: the real control plane built from source (e2e/localkube) and the node agent that runs pods as
  processes on this machine; pod IPs and ClusterIPs are loopback addresses the tests reach directly.
- `kind`: a kind cluster with the images loaded; the tests reach pods and Services by port-forward.

`e2e/run.sh --provider NAME` sets E2E=1, E2E_PROVIDER and E2E_KUBECONFIG and installs the operator. Outside
run.sh (E2E unset) every test is skipped with that reason; once E2E is set, a provider that cannot be reached
fails the run, it never turns into skips.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # robustness/ (traffic and the linearizability checker)
sys.path.insert(0, str(ROOT / "e2e"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("E2E"):
        return
    skip = pytest.mark.skip(reason="E2E is not set: run the suite through e2e/run.sh --provider local|kind")
    for item in items:
        item.add_marker(skip)


from e2elib import PROVIDERS, Kubectl, Provider, assert_pod_security_restricted, namespace_name, wait


@pytest.fixture(scope="session")
def provider() -> Provider:
    name = os.environ.get("E2E_PROVIDER", "")
    kubeconfig = os.environ.get("E2E_KUBECONFIG", "")
    if name not in PROVIDERS:
        pytest.fail(f"E2E_PROVIDER={name!r}: expected one of {', '.join(PROVIDERS)}", pytrace=False)
    if not kubeconfig or not os.path.exists(kubeconfig):
        pytest.fail(f"E2E_KUBECONFIG={kubeconfig!r} does not name a kubeconfig", pytrace=False)
    p = PROVIDERS[name](kubeconfig)
    try:
        p.check_reachable()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    return p


@pytest.fixture
def kubectl(request, provider) -> Iterator[Kubectl]:
    """A namespace of the test's own, labelled to enforce Pod Security `restricted`."""
    ns = namespace_name(request.node.name)
    k = Kubectl(provider.kubeconfig, ns)
    # A namespace of the same name left terminating by an earlier run must be gone first.
    wait(
        f"namespace {ns} from an earlier run deleted",
        lambda: (
            "Terminating"
            not in k("get", "namespace", ns, "-o", "jsonpath={.status.phase}", "--ignore-not-found")
        ),
        600,
        2.0,
    )
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    assert_pod_security_restricted(k)
    yield k
    if not os.environ.get("E2E_KEEP_NAMESPACES"):
        k("delete", "etcdcluster,etcdbackup", "--all", "--wait=false", check=False)
        k("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def engine() -> str:
    return os.environ.get("E2E_MEMBER_ENGINE", "etcdstore")
