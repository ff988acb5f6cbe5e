"""The real etcd 3.4 binaries the suite uses as oracles, and their version check.

Differential tests compare this project with Debian's etcd 3.4 (`etcd`, `etcdctl`). A different
etcd would make them compare with the wrong thing, so when the binaries are present they must be
3.4.x; when they are absent the etcd tests skip (tests/run installs them, so CI never skips).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
WANT = "3.4."
INSTALL = (
    "install Debian's etcd 3.4 (what tests/run does): "
    "apt-get install etcd-server etcd-client  (the Debian 12/13 packages are 3.4.23)"
)


def _version(cmd: list[str], pattern: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    m = re.search(pattern, out.stdout + out.stderr)
    if m is None:
        raise AssertionError(f"`{' '.join(cmd)}` printed no version (exit {out.returncode}): {out.stdout!r}")
    return m.group(1)


@functools.cache
def etcd_versions() -> tuple[str, str]:
    """(etcd's version, etcdctl's version), e.g. ("3.4.23", "3.4.23")."""
    return (
        _version([ETCD_BIN, "--version"], r"etcd Version:\s*(\S+)"),
        _version([ETCDCTL_BIN, "version"], r"etcdctl version:\s*(\S+)"),
    )


def check_etcd_oracle() -> None:
    """Assert that etcd and etcdctl are installed and are 3.4.x; the message says how to install them."""
    for path in (ETCD_BIN, ETCDCTL_BIN):
        if not os.access(path, os.X_OK):
            raise AssertionError(f"{path} is not installed: {INSTALL}")
    etcd, etcdctl = etcd_versions()
    if not (etcd.startswith(WANT) and etcdctl.startswith(WANT)):
        raise AssertionError(
            f"the oracle must be etcd {WANT}x, found etcd {etcd} ({ETCD_BIN}) and etcdctl {etcdctl} "
            f"({ETCDCTL_BIN}): {INSTALL}"
        )


def have_etcd() -> bool:
    """Whether the oracle is installed (tests skip without it). Installed but not 3.4.x fails loudly
    (AssertionError): comparing with another etcd would test the wrong thing."""
    if not (os.path.exists(ETCD_BIN) and os.path.exists(ETCDCTL_BIN)):
        return False
    check_etcd_oracle()
    return True


def etcdctl(
    endpoints: list[str] | str,
    *args: str,
    input: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the real etcdctl (API v3) and return the completed process; raises on failure if check."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    cmd = [ETCDCTL_BIN, "--endpoints", ",".join(endpoints), "--command-timeout", "10s", *args]
    env = dict(os.environ, ETCDCTL_API="3")
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input, check=False
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out
