"""Free loopback ports for the processes a test starts."""

from __future__ import annotations

import random
import socket
import threading

HOST = "127.0.0.1"

# Below Linux's ephemeral range (32768-60999): the outgoing connections of the many processes in
# a test run take ports from that range, and could take ours between this check and the bind.
_LOW, _HIGH = 20000, 32000
_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = HOST) -> int:
    """A port that is free on `host` now and that this process has not handed out before."""
    for _ in range(500):
        port = random.randint(_LOW, _HIGH)
        with _lock:
            if port in _given:
                continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        with _lock:
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError(f"no free port found in {_LOW}-{_HIGH} on {host}")


def free_ports(n: int, host: str = HOST) -> list[int]:
    """`n` distinct free ports."""
    return [free_port(host) for _ in range(n)]
