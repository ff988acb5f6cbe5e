"""Where the Kubernetes binaries are: the cache that `e2e/toolchain/build.sh` fills.

    bin_dir()               # builds when missing (unless ETCDSTORE_K8S_BUILD=0), returns the bin dir
    bin_dir(build=False)    # None when not built

`LOCALKUBE_BIN_DIR=DIR` points at a directory holding the binaries instead.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

E2E = Path(__file__).resolve().parents[1]
REPO = E2E.parent
BUILD_SH = E2E / "toolchain" / "build.sh"
GO_MOD = E2E / "toolchain" / "k8s" / "go.mod"
K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


class ToolchainMissing(RuntimeError):
    pass


def k8s_version() -> str:
    m = re.search(r"^require\s+k8s\.io/kubernetes\s+(\S+)", GO_MOD.read_text(), re.MULTILINE)
    if not m:
        raise ToolchainMissing(f"no k8s.io/kubernetes requirement in {GO_MOD}")
    return m.group(1)


def _complete(d: Path) -> bool:
    return all(os.access(d / b, os.X_OK) for b in K8S_BINARIES)


def cached_bin_dir() -> Path | None:
    """The newest cached bin dir of the pinned Kubernetes release holding all four binaries."""
    if os.environ.get("LOCALKUBE_BIN_DIR"):
        d = Path(os.environ["LOCALKUBE_BIN_DIR"])
        return d if _complete(d) else None
    root = Path(
        os.environ.get("K8S_TOOLCHAIN_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "etcdstore-toolchain"
    )
    found = [d / "bin" for d in root.glob(f"k8s-{k8s_version()}-*") if _complete(d / "bin")]
    return max(found, key=lambda d: (d / "kube-apiserver").stat().st_mtime) if found else None


def builds_wanted() -> bool:
    return os.environ.get("ETCDSTORE_K8S_BUILD", "1").lower() not in ("0", "no", "false")


def bin_dir(build: bool | None = None) -> Path | None:
    """The bin dir; builds it with e2e/toolchain/build.sh when missing and `build` (default: unless
    ETCDSTORE_K8S_BUILD=0). None only when not built and not building."""
    d = cached_bin_dir()
    if d is not None:
        return d
    if build is None:
        build = builds_wanted()
    if not build:
        return None
    out = subprocess.run(["bash", str(BUILD_SH)], check=True, stdout=subprocess.PIPE, text=True).stdout
    d = Path(out.strip().splitlines()[-1])
    if not _complete(d):
        raise ToolchainMissing(f"{BUILD_SH} printed {d}, which lacks some of {K8S_BINARIES}")
    return d


def require_bin_dir() -> Path:
    d = bin_dir()
    if d is None:
        raise ToolchainMissing(
            "Kubernetes binaries are not built (e2e/toolchain/build.sh) and "
            "ETCDSTORE_K8S_BUILD=0 forbids building them"
        )
    return d
