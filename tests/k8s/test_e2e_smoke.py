"""The end-to-end suite's short form on the local provider, as `e2e/run.sh --provider local -m smoke` runs it:
the real control plane and node agent, the operator installed with Helm (lint, template, install), a cluster
of 3 created, written, a pod deleted and its data checked; then uninstalled and installed again with
`kubectl apply -k deploy/` and the same test run there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1600)
def test_e2e_smoke_on_local_provider(k8s_bin: Path) -> None:
    env = {**os.environ, "PATH": f"{k8s_bin}:{os.environ['PATH']}", "E2E_SERVICE_CIDR": "127.99.0.0/16"}
    r = subprocess.run(
        [str(ROOT / "e2e" / "run.sh"), "--provider", "local", "-m", "smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert r.returncode == 0, (
        f"e2e/run.sh --provider local -m smoke exited {r.returncode}:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    )
    assert "test_create_write_delete_pod PASSED" in r.stdout
