"""grpc-proxy processes (etcd 3.4's `etcd grpc-proxy start` or `etcdstore grpc-proxy start`) and the
etcdctl battery both are judged by."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import ETCD_BIN, ETCDCTL_BIN, HOST, etcdctl, free_port


def proxy_command(kind: str) -> list[str]:
    if kind == "etcd":
        return [ETCD_BIN, "grpc-proxy", "start"]
    return [sys.executable, "-m", "etcdstore", "grpc-proxy", "start"]


@dataclass
class Proxy:
    kind: str
    endpoints: list[str]
    log_path: Path
    port: int = 0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    ready_args: list[str] | None = None  # etcdctl flags to check readiness with (TLS); None: plain gRPC

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> Proxy:
        self.port = self.port or free_port()
        cmd = (
            proxy_command(self.kind)
            + ["--endpoints", ",".join(self.endpoints), "--listen-addr", self.endpoint]
            + self.extra
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} proxy exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.ready_args is not None:
                    ok = (
                        etcdctl(
                            f"https://{self.endpoint}",
                            *self.ready_args,
                            "--dial-timeout",
                            "1s",
                            "endpoint",
                            "status",
                            check=False,
                        ).returncode
                        == 0
                    )
                    if ok:
                        return self
                    raise grpc.RpcError()
                with grpc.insecure_channel(self.endpoint) as ch:
                    rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1.0)
                return self
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.kind} proxy not serving: {self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the battery ------------------------------------------------------------------------------------

_HEX_ID = re.compile(r"\b[0-9a-f]{14,16}\b")
_TOOK = re.compile(r"took = [0-9.]+[µmn]?s")
_REMAINING = re.compile(r"remaining\(-?\d+s\)")


def _normalize(text: str, endpoint: str) -> str:
    text = text.replace(endpoint, "<ep>")
    text = _HEX_ID.sub("<id>", text)
    text = _TOOK.sub("took = <t>", text)
    text = _REMAINING.sub("remaining(<n>s)", text)
    lines = [ln for ln in text.splitlines() if '"level":"warn"' not in ln]  # clientv3's retry logs
    return "\n".join(lines)


def _json_header_free(text: str) -> str:
    """A -w json answer without what differs between clusters (ids, terms, sizes, indexes)."""
    volatile = {
        "cluster_id",
        "member_id",
        "raft_term",
        "dbSize",
        "raftIndex",
        "raftAppliedIndex",
        "leader",
        "raftTerm",
        "dbSizeInUse",
        "ID",
        "id",
        "hash",
        "compact_revision",
        "hash_revision",
    }

    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in volatile}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    try:
        return json.dumps(clean(json.loads(text)), sort_keys=True)
    except ValueError:
        return text


def _watch(
    endpoint: str,
    args: list[str],
    sentinel: str,
    timeout: float = 10.0,
    before_read: list[list[str]] | None = None,
) -> str:
    """Run `etcdctl watch ARGS` until the line `sentinel` appears (or timeout); its output."""
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.Popen(
        [ETCDCTL_BIN, "--endpoints", endpoint, "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    lines: list[str] = []
    try:
        for cmd in before_read or []:
            etcdctl(endpoint, *cmd)
        deadline = time.monotonic() + timeout
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        buf = ""
        while time.monotonic() < deadline:
            try:
                chunk = os.read(p.stdout.fileno(), 65536)
            except BlockingIOError:
                chunk = b""
            if chunk:
                buf += chunk.decode("utf-8", "replace")
                if sentinel in buf.splitlines():
                    break
            else:
                time.sleep(0.02)
        lines = buf.splitlines()
    finally:
        p.kill()
        p.wait()
    return "\n".join(lines)


def battery(endpoint: str) -> list[tuple[str, str]]:
    """The same etcdctl commands against `endpoint` (a fresh cluster behind a proxy): a list of
    (command, normalized output with the exit status)."""
    out: list[tuple[str, str]] = []

    def run(*args: str, json_out: bool = False, stdin: str | None = None) -> str:
        p = etcdctl(endpoint, *args, check=False, input=stdin)
        text = p.stdout if not json_out else _json_header_free(p.stdout)
        err = "\n".join(ln for ln in p.stderr.splitlines() if not ln.startswith("{"))  # not clientv3's logs
        result = _normalize(f"{text.strip()}\n{err}".strip() + f"\n[rc={p.returncode}]", endpoint)
        out.append((_normalize(" ".join(args), endpoint), result))
        return p.stdout

    run("put", "foo", "bar")
    run("get", "foo")
    run("put", "foo/1", "a")
    run("put", "foo/2", "b")
    run("get", "foo", "--prefix")
    run("get", "foo", "--prefix", "--keys-only")
    run("get", "foo", "--prefix", "-w", "json", json_out=True)
    run("get", "--from-key", "foo/1")
    run("get", "foo", "--prefix", "--limit", "1", "--sort-by", "modify", "--order", "descend")
    run("get", "foo", "--consistency", "s")
    run("get", "foo", "--consistency", "s")
    run("put", "foo", "baz", "--prev-kv")
    run("get", "foo", "--consistency", "s")  # the cache was invalidated by the put through the proxy
    run("get", "foo", "--rev", "2")
    run("get", "nothing")
    run("del", "foo/1")
    run("del", "nothing")
    run("get", "foo", "--prefix", "--consistency", "s")
    run("txn", stdin='value("foo") = "baz"\n\nput foo txn-yes\nget foo\n\nput foo txn-no\n\n')
    run("txn", stdin='value("foo") = "other"\n\nput foo no\n\nput foo/3 else\nget foo --prefix\n\n')
    run("txn", stdin='mod("foo") > "0"\n\ndel foo/3 --prev-kv\n\n\n')
    run("get", "foo", "--prefix", "--consistency", "s")
    # watches: history from revision 1, then a live one from the next revision
    out.append(
        (
            "watch foo --prefix --rev 1 --prev-kv",
            _normalize(_watch(endpoint, ["foo", "--prefix", "--rev", "1", "--prev-kv"], "txn-yes"), endpoint),
        )
    )
    status = json.loads(etcdctl(endpoint, "get", "foo", "-w", "json").stdout)
    nxt = str(status["header"]["revision"] + 1)
    live = _watch(
        endpoint,
        ["live", "--prefix", "--rev", nxt],
        "end",
        before_read=[["put", "live", "1"], ["put", "live", "2"], ["del", "live"], ["put", "live/x", "end"]],
    )
    out.append(("watch live --prefix --rev NEXT", _normalize(live, endpoint)))
    # leases
    grant = run("lease", "grant", "100")
    lease_id = grant.split()[1]
    run("put", "leased", "v", "--lease", lease_id)
    run("lease", "timetolive", lease_id, "--keys")
    run("lease", "keep-alive", "--once", lease_id)
    run("lease", "list")
    run("lease", "revoke", lease_id)
    run("lease", "timetolive", lease_id)
    run("get", "leased")
    run("lease", "revoke", "1234")
    # cluster and maintenance
    run("member", "list")
    run("member", "list", "-w", "json", json_out=True)
    run("endpoint", "health")
    run("endpoint", "status", "-w", "json", json_out=True)
    run("alarm", "list")
    run("lock", "mylock", "echo", "locked")
    snap = f"/tmp/proxy-battery-{endpoint.rsplit(':', 1)[1]}-{os.getpid()}.db"
    try:
        p = etcdctl(endpoint, "snapshot", "save", snap, check=False)
        out.append(("snapshot save", f"{p.stdout.replace(snap, '<file>').strip()} [rc={p.returncode}]"))
    finally:
        if os.path.exists(snap):
            os.unlink(snap)
    # compaction
    run("compaction", "3")
    run("get", "foo", "--rev", "2")
    run("get", "foo", "--rev", "2", "--consistency", "s")
    # auth
    run("user", "add", "root:rootpw")
    run("role", "add", "r1")
    run("role", "grant-permission", "r1", "--prefix=true", "readwrite", "foo")
    run("user", "add", "u1:u1pw")
    run("user", "grant-role", "u1", "r1")
    run("user", "get", "u1")
    run("role", "get", "r1")
    run("user", "list")
    run("role", "list")
    run("auth", "enable")
    run("get", "foo", "--user", "u1:u1pw")
    run("get", "zzz", "--user", "u1:u1pw")
    run("put", "zzz", "v", "--user", "u1:u1pw")
    run("get", "foo")
    run("user", "get", "u1", "--user", "root:rootpw")
    run("auth", "disable", "--user", "root:rootpw")
    run("get", "foo")
    run("member", "promote", "1234")
    return out
