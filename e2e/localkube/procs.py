"""Processes started by localkube: each in its own session (process group), logged to a file,
recorded in a pidfile so that `python -m localkube down` (or the next `up`) can stop whatever a
crashed test left behind.

The pidfile holds one JSON object per line: pid, the process's start time (field 22 of
/proc/<pid>/stat, so a recycled pid is never killed by mistake) and a name.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_handed_out: set[int] = set()  # never the same port twice from one process


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768+), so the many outgoing
    connections of a control plane cannot take it between now and the bind."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL when the process (thread) that started us dies, so a
    SIGKILLed pytest leaves nothing behind. Kept across exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        pidfile: Path,
        *,
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.pidfile = pidfile
        self.env = env
        self.die_with_parent = die_with_parent
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        assert not self.running, f"{self.name} is running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509 - prctl only
            )
        record = {"pid": self.popen.pid, "start": _start_time(self.popen.pid), "name": self.name}
        with open(self.pidfile, "a") as f:
            f.write(json.dumps(record) + "\n")
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash) and reap."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while members of its group live on: kill the group regardless.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kill_recorded(pidfile: Path, timeout: float = 10.0) -> list[str]:
    """Stop every process group recorded in `pidfile` that still runs (same pid AND start time),
    SIGTERM first then SIGKILL; remove the pidfile. Returns the names stopped."""
    if not pidfile.exists():
        return []
    records = []
    for line in pidfile.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    alive = [r for r in records if r.get("start") and _start_time(r["pid"]) == r["start"]]
    for r in alive:
        try:
            os.killpg(r["pid"], signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_start_time(r["pid"]) == r["start"] for r in alive):
        time.sleep(0.1)
    for r in alive:
        if _start_time(r["pid"]) == r["start"]:
            try:
                os.killpg(r["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    pidfile.unlink(missing_ok=True)
    return [r["name"] for r in alive]
