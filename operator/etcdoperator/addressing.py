"""How the operator turns a member's DNS name and port into something it can dial or advertise.

In a cluster this is the identity: `https://etcd-0.etcd.ns.svc.cluster.local:2380` is used as is.

Test harnesses that run members as local processes have no cluster DNS. They set
ETCDOPERATOR_ADDRESS_MAP to a JSON file `{"host:port": "ip:port", ...}`; every member URL the
operator generates (peer URLs given to MemberAdd, the initial cluster, client endpoints) and
every address it dials goes through `url()` / `endpoint()`, so members, the operator and the
harness agree on one address per member. Hosts missing from the map are left unchanged. The
file is re-read when it changes (the harness adds entries as pods appear).
"""

from __future__ import annotations

import json
import os
import threading
from urllib.parse import urlsplit

ENV_ADDRESS_MAP = "ETCDOPERATOR_ADDRESS_MAP"


class _AddressMap:
    __slots__ = ("_lock", "_mtime", "_path", "_table")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._mtime: float = -1.0
        self._table: dict[str, str] = {}

    def lookup(self, hostport: str) -> str:
        path = os.environ.get(ENV_ADDRESS_MAP)
        if not path:
            return hostport
        with self._lock:
            try:
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:
                return hostport
            if path != self._path or mtime != self._mtime:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                try:
                    self._table = json.loads(text) if text.strip() else {}
                except json.JSONDecodeError:  # a half-written file: keep the previous table
                    return self._table.get(hostport, hostport)
                self._path, self._mtime = path, mtime
            return self._table.get(hostport, hostport)


_MAP = _AddressMap()


def endpoint(host: str, port: int) -> str:
    """`host:port` to dial for a member's (host, port)."""
    return _MAP.lookup(f"{host}:{port}")


def url(scheme: str, host: str, port: int) -> str:
    """`scheme://host:port` to advertise or dial for a member's (host, port)."""
    return f"{scheme}://{endpoint(host, port)}"


def translate_url(u: str) -> str:
    """Map the host:port of an existing URL (e.g. one a user wrote) the same way."""
    parts = urlsplit(u)
    if not parts.hostname or parts.port is None:
        return u
    return url(parts.scheme, parts.hostname, parts.port)
