"""The exec wrapper of the node agent: turns a root process into one container's process.

Run as root: `python3 -I -S podexec.py SPEC.json` (SPEC: see `ContainerSpec` in nodeagent_pod.py). It

1. enters new mount and UTS namespaces (unshare(2); every mount made private first, so nothing it mounts
   is seen by the host or by other pods), or joins those of a running container (`enter_pid`, for exec
   probes and `nodeagent exec`);
2. hides host directories a container could not traverse anyway (mode 0700 /root) except what the image's
   programs need below them (see `mask`), then bind-mounts every volume at its real mountPath (the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname
   too, and the container's termination-message file), read-only where asked, then remounts / read-only when
   readOnlyRootFilesystem is set;
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


def mask(spec: dict) -> None:
    """Hide host directories non-root users cannot traverse anyway (e.g. /root, mode 0700), keeping the
    paths the image's programs need below them (the Python installation behind the venv): a tmpfs replaces
    the directory and the needed paths are moved back in. A container never sees the host's /root."""
    for i, m in enumerate(spec.get("masks", [])):
        stage = os.path.join(spec["stage"], str(i))
        staged = []
        for j, keep in enumerate(m["keep"]):
            d = os.path.join(stage, str(j))
            os.makedirs(d, exist_ok=True)
            mount(keep, d, MS_BIND | MS_REC)
            staged.append((d, keep))
        mount("tmpfs", m["path"], MS_NOSUID | MS_NODEV, "tmpfs", "mode=0711")
        for d, keep in staged:
            os.makedirs(keep, exist_ok=True)
            mount(d, keep, MS_MOVE)


def _mount_point(target: str, is_file: bool, created_log: str | None) -> None:
    """Create the place to mount on: a host path shared by every pod, empty outside pods. What is created is
    logged (`created_log`) so that the agent removes it again when it stops."""
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
    if created_log:
        with open(created_log, "a") as f:
            f.writelines(f"{m}\n" for m in missing)


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
    mask(spec)
    mounts = sorted(spec.get("mounts", []), key=lambda m: m["target"].rstrip("/").count("/"))
    # open every source first: a volume mounted on /tmp must not hide the source of the next one
    fds = [os.open(m["source"], os.O_PATH) for m in mounts]
    for m, fd in zip(mounts, fds):
        dst = m["target"]
        _mount_point(dst, os.path.isfile(f"/proc/self/fd/{fd}"), spec.get("created_log"))
        mount(f"/proc/self/fd/{fd}", dst, MS_BIND | MS_REC)
        if m.get("readOnly"):
            mount(None, dst, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for fd in fds:
        os.close(fd)
    if spec.get("readOnlyRoot"):
        mount(None, "/", MS_REMOUNT | MS_BIND | MS_RDONLY)
    hostname = spec.get("hostname")
    if hostname:
        name = hostname.encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")


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
