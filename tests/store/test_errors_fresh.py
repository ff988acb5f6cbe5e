"""etcd's error constants are values, never raised themselves: each raise is a fresh exception.

A module-level exception object raised from many places collects the traceback (and cause and
context) of every raise, from every task, keeping their frames alive. `errors.X()` is a fresh
exception equal to the constant, so comparisons and the gRPC status mapping are unchanged.

Three checks: raising fresh errors keeps each traceback as short as its own raise while a shared
object's grows (the control); no code in store/ or operator/ raises, returns, stores or fails a
future with a constant itself (read from the source); and after a member has answered requests
that fail in many ways (gRPC and the JSON gateway), no constant holds a traceback, cause or context.
"""

from __future__ import annotations

import ast
import base64
import importlib
import pkgutil
import types
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import etcdstore
import grpc
import pytest
import pytest_asyncio
from etcdstore import errors
from etcdstore.config import parse_args
from etcdstore.member import Member
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import eventually_async, lone_member_args

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "store" / "etcdstore", REPO / "operator" / "etcdoperator"]


def _tb_len(e: BaseException) -> int:
    n, tb = 0, e.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def _deep(make: types.FunctionType, depth: int = 2) -> BaseException:
    """Raise `make()` through `depth` frames and catch it."""

    def level(n: int) -> None:
        if n == 0:
            raise make()
        level(n - 1)

    try:
        level(depth)
    except errors.EtcdError as e:
        return e
    raise AssertionError("not raised")


def test_fresh_raises_do_not_grow_a_traceback() -> None:
    shared = errors.EtcdError(errors.NO_SPACE.code, errors.NO_SPACE.message)
    # The control: one object raised 1,000 times keeps every raise's frames.
    for _ in range(1000):
        caught = _deep(lambda: shared)
    assert caught is shared
    assert _tb_len(shared) >= 1000
    # The constants' way: each raise is a new exception with its own short traceback.
    seen = [_deep(errors.NO_SPACE) for _ in range(1000)]
    lengths = {_tb_len(e) for e in seen}
    assert lengths == {_tb_len(seen[0])} and _tb_len(seen[0]) <= 4
    assert len({id(e) for e in seen}) == len(seen)
    assert errors.NO_SPACE.__traceback__ is None


def test_a_fresh_error_equals_its_constant() -> None:
    e = errors.LEASE_NOT_FOUND()
    assert e is not errors.LEASE_NOT_FOUND
    assert e == errors.LEASE_NOT_FOUND and e != errors.LEASE_EXIST
    assert e in (errors.LEASE_NOT_FOUND,) and e in {errors.LEASE_NOT_FOUND: 1}
    assert (e.code, e.message) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert isinstance(e, errors.EtcdError)
    known = errors.from_message("etcdserver: mvcc: database space exceeded")
    assert known == errors.NO_SPACE and known is not errors.NO_SPACE
    assert errors.from_message("no such message") is None


# -- the source: every use of a constant is a comparison, a table entry, `.code`/`.message`, or a call


def _constants() -> tuple[set[str], set[str]]:
    """Names bound at module level to an EtcdError: (those of etcdstore.errors, used as `errors.X`;
    the other server modules' own, used by name). The client library has its own rule (it raises
    `fresh(X)`), so its constants are not listed."""
    shared: set[str] = set()
    local: set[str] = set()
    for root in SOURCES:
        for path in root.rglob("*.py"):
            if "client" in path.relative_to(root).parts:
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    func = node.value.func
                    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if called == "EtcdError":
                        names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                        (
                            shared if path.name == "errors.py" and path.parent.name == "etcdstore" else local
                        ).update(names)
    return shared, local


_ERRORS_MODULE_NAMES = {"errors", "etcd_errors"}  # how store/ and operator/ import etcdstore.errors


def _misuses(path: Path, shared: set[str], local: set[str]) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent
    top_level = {id(stmt) for stmt in tree.body}
    bad = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and node.attr in shared
            and isinstance(node.value, ast.Name)
            and node.value.id in _ERRORS_MODULE_NAMES
            or isinstance(node, ast.Name)
            and node.id in local
            and isinstance(node.ctx, ast.Load)
        ):
            continue
        parent = parents[node]
        if isinstance(parent, ast.Call) and parent.func is node:
            continue  # errors.X(): a fresh exception
        if isinstance(parent, ast.Call) and getattr(parent.func, "id", "") == "fresh":
            continue  # the client's fresh(X): a fresh exception
        if isinstance(parent, ast.Attribute):
            continue  # errors.X.code, errors.X.message
        if isinstance(parent, ast.Compare):
            continue  # e == errors.X, e in ...
        if isinstance(parent, (ast.Tuple, ast.Set, ast.List)) and isinstance(
            parents.get(parent), ast.Compare
        ):
            continue  # e in (errors.X, errors.Y)
        stmt = node
        while id(stmt) not in top_level and stmt in parents:
            stmt = parents[stmt]
        if id(stmt) in top_level and isinstance(parent, (ast.Dict, ast.Set, ast.Tuple, ast.List)):
            continue  # a module-level table of errors (dict keys, frozensets)
        bad.append(f"{path}:{node.lineno}: {ast.get_source_segment(source, parent)}")
    return bad


def test_no_code_raises_a_constant_itself() -> None:
    shared, local = _constants()
    assert {"NO_SPACE", "TIMEOUT", "STOPPED"} <= shared and {"NO_PASSWORD_USER", "LOST_WATCHER"} <= local
    bad = [
        m for root in SOURCES for path in sorted(root.rglob("*.py")) for m in _misuses(path, shared, local)
    ]
    assert not bad, "use errors.X() (a fresh exception):\n" + "\n".join(bad)


def test_the_source_check_finds_a_bare_raise(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from etcdstore import errors\n"
        "def f(e):\n"
        "    if e == errors.NO_SPACE or e in (errors.TIMEOUT,):\n"
        "        raise errors.NO_SPACE()\n"
        "    fut.set_exception(errors.STOPPED)\n"
        "    raise errors.TIMEOUT from None\n"
        "    return LOST_WATCHER if e else LOST_WATCHER()\n"
    )
    found = _misuses(sample, {"NO_SPACE", "TIMEOUT", "STOPPED"}, {"LOST_WATCHER"})
    assert sorted(line.split(":")[1] for line in found) == ["5", "6", "7"]


# -- a member answering failing requests leaves every constant untouched


def _all_constants() -> list[tuple[str, errors.EtcdError]]:
    out = []
    for info in pkgutil.walk_packages(etcdstore.__path__, "etcdstore."):
        if ".proto." in info.name or info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001, S112 - optional parts (k8s, bench extras) may not import here
            continue
        for name, value in vars(module).items():
            if isinstance(value, errors.EtcdError):
                out.append((f"{info.name}.{name}", value))
    return out


@pytest_asyncio.fixture
async def member(tmp_path: Path) -> AsyncIterator[tuple[Member, int]]:
    client, flags = lone_member_args(tmp_path / "n1")
    cfg = parse_args(
        [
            *flags,
        ],
        environ={},
    )
    m = Member(cfg)
    await m.start()
    try:
        assert m.server is not None
        await eventually_async(lambda: m.server.is_leader, 20, interval=0.02, message="a leader")
        yield m, client
    finally:
        await m.stop()


def _b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


async def test_after_failing_requests_no_constant_holds_a_traceback(member: tuple[Member, int]) -> None:
    _, port = member
    constants = _all_constants()
    assert len(constants) >= 60
    base = f"http://127.0.0.1:{port}"
    expected = {
        # path, body -> the message etcd answers with
        ("/v3/kv/put", '{"value":"eA=="}'): errors.EMPTY_KEY.message,
        ("/v3/kv/range", '{"key":"eA==","revision":"1000"}'): errors.FUTURE_REV.message,
        ("/v3/kv/put", '{"key":"eA==","lease":"12345"}'): errors.LEASE_NOT_FOUND.message,
        ("/v3/lease/revoke", '{"ID":"12345"}'): errors.LEASE_NOT_FOUND.message,
        ("/v3/kv/put", '{"key":"eA==","ignore_value":true}'): errors.KEY_NOT_FOUND.message,
        ("/v3/auth/disable", "{}"): None,  # answered OK by etcd 3.4 when auth is off
        ("/v3/auth/user/get", '{"name":"nobody"}'): errors.USER_NOT_FOUND.message,
        ("/v3/cluster/member/remove", '{"ID":"1"}'): errors.MEMBER_NOT_FOUND.message,
        ("/v3/kv/compaction", '{"revision":"1000"}'): errors.FUTURE_REV.message,
    }
    async with aiohttp.ClientSession() as http:
        for _ in range(20):  # many raises of each
            for (path, body), message in expected.items():
                async with http.post(base + path, data=body) as resp:
                    got = await resp.json()
                assert got.get("message") == message, (path, body, got)
        # NO_SPACE: with the NOSPACE alarm raised, a put is refused.
        alarm = {"action": "ACTIVATE", "memberID": "0", "alarm": "NOSPACE"}
        async with http.post(base + "/v3/maintenance/alarm", json=alarm) as resp:
            assert resp.status == 200, await resp.text()
        for _ in range(20):
            async with http.post(base + "/v3/kv/put", json={"key": _b64(b"k"), "value": _b64(b"v")}) as resp:
                assert (await resp.json())["message"] == errors.NO_SPACE.message
        async with http.post(base + "/v3/maintenance/alarm", json=dict(alarm, action="DEACTIVATE")) as resp:
            assert resp.status == 200
    # The same through the client gRPC server (api.h2).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        kv, lease = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await kv.Range(rpc_pb2.RangeRequest(key=b"x", revision=1000))
            assert e.value.details() == errors.FUTURE_REV.message
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=777))
            assert e.value.details() == errors.LEASE_NOT_FOUND.message
            ttl = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=777))
            assert ttl.TTL == -1  # LEASE_NOT_FOUND, caught and compared in the service
    touched = [
        name
        for name, e in constants
        if e.__traceback__ is not None or e.__context__ is not None or e.__cause__ is not None
    ]
    assert not touched, f"constants raised themselves: {touched}"
