"""Helpers for the auth process tests: etcdctl scripts with normalised outcomes, raw gRPC calls."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import ETCDCTL_BIN, etcdctl

_HEX_ID = re.compile(r"\b[0-9a-f]{16}\b")


@dataclass(frozen=True)
class Step:
    args: tuple[str, ...]
    stdin: str | None = None
    watch: bool = False  # a watch: collect what it prints for a moment, then stop it


def step(*args: str, stdin: str | None = None) -> Step:
    return Step(tuple(args), stdin)


def watch(*args: str) -> Step:
    return Step(("watch", *args), watch=True)


def _normalise(text: str, endpoint: str) -> list[str]:
    # etcdctl's client logs JSON warnings with timestamps and connection names: not output.
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("{")]
    return [_HEX_ID.sub("<id>", ln.rstrip().replace(endpoint, "<endpoint>")) for ln in lines]


def run(endpoint: str, s: Step) -> tuple[int | str, list[str], list[str]]:
    """(exit code, stdout lines, stderr lines), normalised for comparison across servers."""
    if s.watch:
        cmd = [ETCDCTL_BIN, "--endpoints", endpoint, "--command-timeout", "10s", *s.args]
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=2.5, env={"ETCDCTL_API": "3"}, check=False)
            return (
                out.returncode,
                _normalise(out.stdout.decode(), endpoint),
                _normalise(out.stderr.decode(), endpoint),
            )
        except subprocess.TimeoutExpired as e:  # still watching: that is the expected outcome
            return (
                "watching",
                _normalise((e.stdout or b"").decode(), endpoint),
                _normalise((e.stderr or b"").decode(), endpoint),
            )
    out = etcdctl(endpoint, *s.args, input=s.stdin, check=False)
    return out.returncode, _normalise(out.stdout, endpoint), _normalise(out.stderr, endpoint)


def run_script(endpoint: str, steps: list[Step]) -> list[tuple[Step, tuple[int | str, list[str], list[str]]]]:
    return [(s, run(endpoint, s)) for s in steps]


def call(
    endpoint: str, service: str, method: str, request: object, token: str | None = None, timeout: float = 10.0
) -> tuple[str, object]:
    """One unary RPC: ("OK", response) or (status code name, details)."""
    stub_cls = getattr(rpc_pb2_grpc, f"{service}Stub")
    md = [("token", token)] if token is not None else None
    with grpc.insecure_channel(endpoint) as ch:
        try:
            return "OK", getattr(stub_cls(ch), method)(request, metadata=md, timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name, e.details()


def authenticate(endpoint: str, name: str, password: str) -> str:
    code, resp = call(
        endpoint, "Auth", "Authenticate", rpc_pb2.AuthenticateRequest(name=name, password=password)
    )
    assert code == "OK", resp
    return resp.token  # type: ignore[attr-defined]  # resp is an AuthenticateResponse


def watch_create(
    endpoint: str, key: bytes, range_end: bytes = b"", token: str | None = None
) -> rpc_pb2.WatchResponse:
    """The first response to one watch create request."""
    md = [("token", token)] if token is not None else None
    done = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=range_end))
        done.wait(10)  # keep our side open: a half-closed stream may end before it is answered

    with grpc.insecure_channel(endpoint) as ch:
        stream = rpc_pb2_grpc.WatchStub(ch).Watch(requests(), metadata=md, timeout=5)
        try:
            return next(stream)
        finally:
            done.set()
            stream.cancel()
