"""The exec wrapper of the node agent: turns a root process into one container's process.

Run as root: `python3 -I -S podexec.py SPEC.json` (SPEC: see `ContainerSpec` in nodeagent_pod.py). It

1. enters new mount and UTS namespaces (unshare(2); every mount made private first, so nothing it mounts
   is seen by the host or by other pods), or joins those of a running container (`enter_pid`, for exec
   probes and `nodeagent exec`);
2. hides host directories a container could not traverse anyway (mode 0700 /root) except what the image's
   programs need below them (see `mask`), then bind-mounts every volume at its real mountPath (the pod's
   /etc/hosts, /etc/resolv.conf and /etc/hostname too, and the container's termination-message file),
   read-only where asked, and puts back on top the image's paths (`image_paths`: the venv, the sources, the
   interpreter) that a volume mounted over one of their ancestors hides (see `pin`): in a real container a
   volume at /tmp never hides the image's files, here the "image" is the host's repository, which may live
   under /tmp. Then it remounts / (and the image's paths) read-only when readOnlyRootFilesystem is set;
3. sets the hostname, then drops to the container's user: setgroups(supplementalGroups + fsGroup),
   setgid(runAsGroup), setuid(runAsUser); asks for SIGKILL when the agent dies (no orphans);
4. chdirs to the working directory and execs the command with the container's environment.

Exit status 128 with a message on stderr means the container could not start (the runtime's StartError).
Only the standard library is used (it runs with -I -S, before any venv is on the path).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import NamedTuple

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


MS_MOVE = 8192
# statvfs(3) flags -> mount(2) flags, kept when a bind mount is remounted read-only
_KEEP_ON_REMOUNT = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: 8,  # MS_NOEXEC
    os.ST_NOATIME: 1024,  # MS_NOATIME
    os.ST_NODIRATIME: 2048,  # MS_NODIRATIME
    os.ST_RELATIME: 1 << 21,  # MS_RELATIME
}


def mount(
    source: str | None, target: str, flags: int, fstype: str | None = None, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} {target}",
    )


class Layer(NamedTuple):
    """One mount made in the container's namespace, in order."""

    target: str  # where (normalized)
    kind: str  # "volume", "image" (a host path of the image: a kept or pinned one) or "mask" (a tmpfs)
    host: str | None  # the host directory shown there (None: a tmpfs)
    fd: int | None = None  # an O_PATH descriptor of `host` (volumes), opened before anything was mounted


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _top(path: str, layers: list[Layer]) -> Layer | None:
    """The mount whose contents `path` shows: the last one made at or above it (a mount on an ancestor hides
    the earlier ones below it)."""
    for layer in reversed(layers):
        if _under(path, layer.target):
            return layer
    return None


def _host_path(path: str, layers: list[Layer]) -> str | None:
    """Where `path` of the container is on the host (None: on a tmpfs of the container)."""
    top = _top(path, layers)
    if top is None:
        return path
    if top.host is None:
        return None
    return os.path.normpath(os.path.join(top.host, os.path.relpath(path, top.target)))


def _log_created(log_fd: int | None, paths: list[str | None]) -> None:
    lines = "".join(f"{p}\n" for p in paths if p)
    if log_fd is not None and lines:
        os.write(log_fd, lines.encode())


def _remount_ro(target: str) -> None:
    have = os.statvfs(target).f_flag
    flags = sum(ms for st, ms in _KEEP_ON_REMOUNT.items() if have & st)
    mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def mask(spec: dict) -> list[Layer]:
    """Hide host directories non-root users cannot traverse anyway (e.g. /root, mode 0700), keeping the
    paths the image's programs need below them (the Python installation behind the venv): a tmpfs replaces
    the directory and the needed paths are moved back in. A container never sees the host's /root."""
    layers: list[Layer] = []
    for i, m in enumerate(spec.get("masks", [])):
        stage = os.path.join(spec["stage"], str(i))
        staged = []
        for j, keep in enumerate(m["keep"]):
            d = os.path.join(stage, str(j))
            os.makedirs(d, exist_ok=True)
            mount(keep, d, MS_BIND | MS_REC)
            staged.append((d, keep))
        mount("tmpfs", m["path"], MS_NOSUID | MS_NODEV, "tmpfs", "mode=0711")
        layers.append(Layer(os.path.normpath(m["path"]), "mask", None))
        for d, keep in staged:
            os.makedirs(keep, exist_ok=True)
            mount(d, keep, MS_MOVE)
            layers.append(Layer(os.path.normpath(keep), "image", keep))
    return layers


def _mount_point(target: str, is_file: bool, log_fd: int | None, layers: list[Layer]) -> None:
    """Create the place to mount on: a host path shared by every pod, empty outside pods. What is created is
    logged (`created_log`, as host paths: inside a volume when one is mounted above) so that the agent removes
    it again when it stops."""
    if os.path.lexists(target):
        return
    missing = []
    p = target
    while not os.path.lexists(p):
        missing.append(p)
        p = os.path.dirname(p)
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if is_file:
        with open(target, "a"):
            pass
    else:
        os.makedirs(target, exist_ok=True)
    _log_created(log_fd, [_host_path(m, layers) for m in missing])


def pin(target: str, fd: int, layers: list[Layer], log_fd: int | None) -> Layer | None:
    """Put the image's directory `target` (the host's, open as `fd`) back where a volume mounted over one of its
    ancestors hid it: its mount point is made inside that volume, through the volume's directory on the host
    (so a read-only volume works too; logged, removed by the agent), then the directory is bind-mounted
    there. Nothing is done when `target` still shows the host's directory."""
    cover = _top(target, layers)
    if cover is None or cover.kind == "image":
        return None
    if cover.fd is None:  # a tmpfs of the container's own
        os.makedirs(target, exist_ok=True)
    else:
        cur, host = cover.fd, cover.host or ""
        owned: list[int] = []
        created: list[str | None] = []
        try:
            for name in os.path.relpath(target, cover.target).split("/"):
                host = os.path.join(host, name)
                try:
                    os.mkdir(name, 0o755, dir_fd=cur)
                    created.append(host)
                except FileExistsError:
                    pass
                # never follow a symlink the pod may have left in its volume
                cur = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=cur)
                owned.append(cur)
        finally:
            for o in owned:
                os.close(o)
            _log_created(log_fd, created)
    mount(f"/proc/self/fd/{fd}", target, MS_BIND | MS_REC)
    return Layer(target, "image", target)


def setup_namespaces(spec: dict) -> None:
    enter = spec.get("enter_pid")
    if enter:
        for ns in ("mnt", "uts"):
            fd = os.open(f"/proc/{enter}/ns/{ns}", os.O_RDONLY)
            try:
                _check(_libc.setns(fd, 0), f"setns {ns}")
            finally:
                os.close(fd)
        return
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", MS_REC | MS_PRIVATE)
    created_log = spec.get("created_log")
    # opened before anything is mounted: the agent's directory may be under a volume's mountPath (/tmp)
    log_fd = os.open(created_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if created_log else None
    fds: list[int] = []
    try:
        layers = _mount_all(spec, log_fd, fds)
    finally:
        for fd in fds:
            os.close(fd)
        if log_fd is not None:
            os.close(log_fd)  # before / is made read-only: a file open for writing there makes that EBUSY
    if spec.get("readOnlyRoot"):
        mount(None, "/", MS_REMOUNT | MS_BIND | MS_RDONLY)
        # the image's files are the root filesystem's: the mask's tmpfs, what it keeps and what was pinned
        for layer in layers:
            if layer.kind != "volume" and _top(layer.target, layers) is layer:
                _remount_ro(layer.target)
    hostname = spec.get("hostname")
    if hostname:
        name = hostname.encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")


def _mount_all(spec: dict, log_fd: int | None, fds: list[int]) -> list[Layer]:
    mounts = [{**m, "target": os.path.normpath(m["target"])} for m in spec.get("mounts", [])]
    at = {m["target"] for m in mounts}
    # the image's paths, but not where the pod mounts a volume right there (below them is fine: mounted later)
    images = [os.path.normpath(p) for p in spec.get("image_paths", [])]
    mounts += [{"source": p, "target": p, "image": True} for p in images if p not in at]
    # open every source first: a volume mounted on /tmp must not hide the source of the next one, nor the
    # image's paths below it; the mask (/root) must not hide what is below it either
    todo = []
    for m in mounts:
        try:
            fd = os.open(m["source"], os.O_PATH)
        except FileNotFoundError:
            if m.get("image"):
                continue  # not on this host: nothing to keep
            raise
        fds.append(fd)
        todo.append((m, fd))
    layers = mask(spec)
    todo.sort(key=lambda t: t[0]["target"].count("/"))  # parents first; volumes before images at one depth
    for m, fd in todo:
        dst = m["target"]
        if m.get("image"):
            layer = pin(dst, fd, layers, log_fd)
            if layer is not None:
                layers.append(layer)
            continue
        _mount_point(dst, os.path.isfile(f"/proc/self/fd/{fd}"), log_fd, layers)
        mount(f"/proc/self/fd/{fd}", dst, MS_BIND | MS_REC)
        if m.get("readOnly"):
            mount(None, dst, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        layers.append(Layer(dst, "volume", m["source"], fd))
    return layers


def drop_privileges(spec: dict) -> None:
    uid, gid = int(spec.get("uid", 0)), int(spec.get("gid", 0))
    groups = sorted({int(g) for g in spec.get("groups", [])} - {gid})
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    if spec.get("die_with_parent", True):
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the agent is already gone
            os._exit(128)
    os.umask(0o022)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        setup_namespaces(spec)
        drop_privileges(spec)
        cwd = spec.get("cwd") or "/"
        try:
            os.chdir(cwd)
        except OSError:
            if not spec.get("cwd_from_image"):
                raise
            os.chdir("/")  # the image's WORKDIR exists in the image; the host's copy may not be ours
        argv = spec["argv"]
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(argv[0], argv, spec.get("env", {}))
    except OSError as e:
        sys.stderr.write(f"podexec: failed to start container: {e}\n")
        sys.stderr.flush()
        os._exit(128)


if __name__ == "__main__":
    main()
