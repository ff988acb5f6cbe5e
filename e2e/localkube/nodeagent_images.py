"""THE image table of the node agent: which local programs stand for which container image.

An image reference (`repo[:tag]`, a registry host and `@digest` allowed) is matched against the patterns below,
first match wins (fnmatch on the reference without the digest; a pattern without a tag matches any tag). Each
entry gives what the image would: its ENTRYPOINT and CMD, the user it runs as (the Dockerfiles' USER), its
HOME, the PATH its programs are found on, and `commands`, the programs of the image (a container's command[0]
is looked up there, by name or by the image's path), and `needs`, the host paths those programs read (the
venv, the editable install's sources, the interpreter behind the venv: `program_paths()`), which a container
keeps seeing whatever volumes it mounts over their ancestors (podexec.py's `pin`), as a real container always
sees its image's files. An image not in the table is "not pullable": the pod gets ErrImagePull then
ImagePullBackOff, as when a registry has no such image.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _which(name: str) -> str:
    return shutil.which(name, path=SYSTEM_PATH) or f"/usr/bin/{name}"


@dataclass(frozen=True)
class Image:
    pattern: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    uid: int = 0
    gid: int = 0
    home: str = "/"
    path: str = SYSTEM_PATH
    env: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # name in the image -> local program
    users: tuple[tuple[str, int, int, str], ...] = ()  # (name, uid, gid, home): the image's useradd lines
    needs: tuple[str, ...] = ()  # host paths the programs need, kept visible in the container (program_paths)

    def passwd_group(self) -> tuple[str, str]:
        """/etc/passwd and /etc/group as the image has them: the host's, plus the image's own users."""
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        known_uids = {line.split(":")[2] for line in passwd.splitlines() if line.count(":") >= 6}
        known_gids = {line.split(":")[2] for line in group.splitlines() if line.count(":") >= 3}
        for name, uid, gid, home in self.users:
            if str(uid) not in known_uids:
                passwd += f"{name}:x:{uid}:{gid}::{home}:/usr/sbin/nologin\n"
            if str(gid) not in known_gids:
                group += f"{name}:x:{gid}:\n"
        return passwd, group

    def program(self, name: str) -> str | None:
        """The local program for command[0] `name` (a bare name, or a path inside the image)."""
        if name in self.commands:
            return self.commands[name]
        base = name.rsplit("/", 1)[-1]
        if base in self.commands:
            return self.commands[base]
        if name.startswith("/") and Path(name).exists():  # /bin/sh and friends: the host's
            return name
        found = shutil.which(name, path=self.path)
        return found


_STORE_BIN = str(VENV_BIN / "etcdstore")
_OPERATOR_BIN = str(VENV_BIN / "etcdoperator")
_PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable


def _interpreter() -> set[Path]:
    """The Python installation behind the venv (its base prefix), e.g. pyenv's under /root."""
    return {Path(sys.base_prefix).resolve(), Path(os.path.realpath(_PY)).parent.parent}


def program_paths() -> tuple[str, ...]:
    """What the project's programs (`.venv/bin/etcdstore`, `etcdoperator`, `python`) read on the host: the venv,
    the sources of its editable install (`store/`, `operator/`) and the interpreter behind the venv; each as
    named and, when a symlink is on the way, also where it really is. Only existing paths."""
    out: list[str] = []
    for p in (REPO / ".venv", REPO / "store", REPO / "operator", *sorted(_interpreter())):
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if os.path.isdir(q) and q not in out:
                out.append(q)
    return tuple(out)


PROGRAM_PATHS = program_paths()

IMAGES: list[Image] = [
    # Dockerfile: USER 65532:65532, ENTRYPOINT ["etcdstore"], HOME /var/lib/etcd, PATH /opt/etcdstore/bin:...
    Image(
        "etcdstore",
        entrypoint=("etcdstore",),
        uid=65532,
        gid=65532,
        home="/var/lib/etcd",
        path=f"{VENV_BIN}:{SYSTEM_PATH}",
        env={"PYTHONUNBUFFERED": "1", "ETCD_DATA_DIR": "/var/lib/etcd/default.etcd"},
        users=(("etcd", 65532, 65532, "/var/lib/etcd"),),
        commands={"etcdstore": _STORE_BIN, "python": _PY, "python3": _PY},
        needs=PROGRAM_PATHS,
    ),
    # Dockerfile.operator: USER 65532:65532, ENTRYPOINT ["etcdoperator"], CMD run ...; etcdctl from Debian.
    Image(
        "etcd-operator",
        entrypoint=("etcdoperator",),
        cmd=(
            "run",
            "--all-namespaces",
            "--standalone",
            "--liveness=http://0.0.0.0:8080/healthz",
            "--metrics-port=9090",
            "--metrics-address=0.0.0.0",
        ),
        uid=65532,
        gid=65532,
        home="/nonexistent",
        path=f"{VENV_BIN}:{SYSTEM_PATH}",
        env={"PYTHONUNBUFFERED": "1", "ETCDCTL_API": "3"},
        users=(("etcdoperator", 65532, 65532, "/nonexistent"),),
        commands={
            "etcdoperator": _OPERATOR_BIN,
            "etcdstore": _STORE_BIN,
            "etcdctl": _which("etcdctl"),
            "python": _PY,
            "python3": _PY,
        },
        needs=PROGRAM_PATHS,
    ),
    # quay.io/coreos/etcd:v3.4.x: runs as root, /usr/local/bin/etcd and etcdctl (Debian's 3.4.23 here).
    Image(
        "*etcd:v3.4*",
        entrypoint=("/usr/local/bin/etcd",),
        uid=0,
        gid=0,
        home="/root",
        env={"ETCDCTL_API": "3"},
        commands={
            "etcd": _which("etcd"),
            "etcdctl": _which("etcdctl"),
            "/usr/local/bin/etcd": _which("etcd"),
            "/usr/local/bin/etcdctl": _which("etcdctl"),
        },
    ),
    # A shell image for tests and debugging pods (busybox's programs are the host's here).
    Image("busybox", entrypoint=(), cmd=("sh",), uid=0, gid=0, home="/root"),
    # A Python image: runs the project's interpreter (with its packages) as root unless the pod says otherwise.
    Image(
        "python",
        entrypoint=(),
        cmd=("python3",),
        uid=0,
        gid=0,
        home="/root",
        path=f"{VENV_BIN}:{SYSTEM_PATH}",
        env={"PYTHONUNBUFFERED": "1"},
        commands={"python": _PY, "python3": _PY},
        needs=PROGRAM_PATHS,
    ),
]


def _strip(ref: str) -> tuple[str, str]:
    """(repository without registry host, tag) of an image reference."""
    ref = ref.split("@", 1)[0]
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    return name, tag


def resolve(image: str) -> Image | None:
    name, tag = _strip(image)
    short = name.rsplit("/", 1)[-1]
    for entry in IMAGES:
        pat = entry.pattern
        if ":" in pat:
            pname, _, ptag = pat.rpartition(":")
            if (fnmatch.fnmatch(name, pname) or fnmatch.fnmatch(short, pname)) and fnmatch.fnmatch(tag, ptag):
                return entry
        elif fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(short, pat):
            return entry
    return None


def _blocked_ancestor(path: Path) -> Path | None:
    """The highest directory above `path` that others may not traverse (no o+x), if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def masks() -> list[dict[str, object]]:
    """Host directories to hide in containers and what to keep visible below them: the interpreter behind the
    venv (or the repository) may live where a non-root user cannot reach it (pyenv under /root, mode 0700),
    while images run their programs as uid 65532."""
    out: dict[Path, list[str]] = {}
    for need in map(Path, PROGRAM_PATHS):
        blocked = _blocked_ancestor(need)
        if blocked is not None:
            out.setdefault(blocked, []).append(str(need))
    return [{"path": str(k), "keep": _outermost(v)} for k, v in out.items()]


def _outermost(paths: list[str]) -> list[str]:
    """The paths not below another one of them (keeping a directory keeps what is below it)."""
    out: list[str] = []
    for p in sorted(set(paths)):
        if not any(p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out
