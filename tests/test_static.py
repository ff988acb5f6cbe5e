"""Lint and types, as CI runs them (docs/testing.md): mypy with the configuration in pyproject.toml
(strict on raft/, storage/, mvcc/ and the operator's planner), `ruff check` over the whole tree,
and `ruff format --check` over the whole tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORMATTED = ["."]  # the whole tree ([tool.ruff] in pyproject.toml excludes generated code and Markdown)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


def _tool(module: str) -> None:
    if _run(module, "--version").returncode != 0:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]' (it is in the test extras)")


def test_mypy() -> None:
    _tool("mypy")
    out = _run("mypy")  # what to check, and how strictly: [tool.mypy] in pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_testlib() -> None:
    """The test-support package is typed too (non-strict: grpc's generated stubs are untyped)."""
    _tool("mypy")
    out = _run("mypy", "tests/testlib", env={**os.environ, "MYPYPATH": "tests"})
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_check() -> None:
    _tool("ruff")
    out = _run("ruff", "check", "--output-format", "concise", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    _tool("ruff")
    out = _run("ruff", "format", "--check", *FORMATTED)
    assert out.returncode == 0, out.stdout + out.stderr
