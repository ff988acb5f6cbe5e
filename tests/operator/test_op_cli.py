"""The operator's command line: with no cluster to talk to it says so in one line (issue 14 item 12)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from etcdoperator.cli import NoCluster, find_cluster

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: k, cluster: {server: "https://10.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
current-context: c
"""


def test_find_cluster(tmp_path):
    with pytest.raises(NoCluster, match="no Kubernetes cluster configured"):
        find_cluster({}, str(tmp_path))
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG)
    assert find_cluster({"KUBECONFIG": str(kc)}, str(tmp_path)) == ("https://10.0.0.1:6443", str(kc))
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(KUBECONFIG)
    assert find_cluster({}, str(tmp_path))[0] == "https://10.0.0.1:6443"
    token = tmp_path / "token"
    token.write_text("x")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert find_cluster(env, str(tmp_path), token_file=str(token)) == (
        "https://10.96.0.1:443",
        "the pod's service account",
    )
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(NoCluster, match="no usable current context"):
        find_cluster({"KUBECONFIG": str(bad)}, str(tmp_path))


def test_run_without_a_cluster_prints_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(HOME=str(tmp_path), KUBECONFIG="")
    proc = subprocess.run(
        [sys.executable, "-m", "etcdoperator", "run", "--standalone"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcdoperator: no Kubernetes cluster configured"), (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_run_with_an_unreachable_api_server_prints_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG.replace("https://10.0.0.1:6443", f"https://127.0.0.1:{port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(kc))
    proc = subprocess.run(
        [sys.executable, "-m", "etcdoperator", "run", "--standalone"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"etcdoperator: cannot reach the Kubernetes API server https://127.0.0.1:{port} (from {kc})"
    ), proc.stderr
    assert "Traceback" not in proc.stderr
