"""Pure builders and parsing (no server needed)."""

from __future__ import annotations

import grpc
import pytest
from etcdstore import errors
from etcdstore.client import Compare, Op, TLSConfig, prefix_end
from etcdstore.client.channels import parse_endpoint, parse_endpoints
from etcdstore.client.requests import range_request, txn_is_read_only, txn_request
from etcdstore.client.rpc_errors import error_from_reason
from etcdstore.proto.etcdserverpb import rpc_pb2


def test_prefix_end() -> None:
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_range_options_on_the_wire() -> None:
    assert range_request("k").range_end == b""
    assert range_request("k", prefix=True).range_end == b"l"
    assert range_request("k", from_key=True).range_end == b"\0"
    assert range_request("k", range_end="m").range_end == b"m"
    with pytest.raises(ValueError):
        range_request("k", prefix=True, range_end="z")


def test_parse_endpoints() -> None:
    assert parse_endpoint("127.0.0.1:2379", tls=None) == parse_endpoint("http://127.0.0.1:2379", tls=None)
    assert parse_endpoint("https://h:1/", tls=None).secure
    assert parse_endpoint("h:1", tls=TLSConfig()).secure
    assert not parse_endpoint("http://h:1", tls=TLSConfig()).secure  # the scheme wins
    assert parse_endpoint("h", tls=None).target == "h:2379"
    assert parse_endpoint("[::1]:5", tls=None).target == "[::1]:5"
    assert parse_endpoint("::1", tls=None).target == "[::1]:2379"
    assert [e.target for e in parse_endpoints("a:1, b:2", tls=None)] == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        parse_endpoint("unix:///x", tls=None)
    with pytest.raises(ValueError):
        parse_endpoints([], tls=None)


def test_compare_builders() -> None:
    c = Compare.mod_revision("k") == 5
    assert (c.result, c.target, c.key, c.mod_revision) == (
        rpc_pb2.Compare.EQUAL,
        rpc_pb2.Compare.MOD,
        b"k",
        5,
    )
    c = Compare.version("k") == 0  # a zero operand is still sent (oneof presence)
    assert c.WhichOneof("target_union") == "version"
    assert c.SerializeToString() == rpc_pb2.Compare(key=b"k", version=0).SerializeToString()
    assert b"\x20\x00" in c.SerializeToString()
    c = Compare.value("k") != "v"
    assert (c.result, c.value) == (rpc_pb2.Compare.NOT_EQUAL, b"v")
    assert (Compare.create_revision("k") < 3).result == rpc_pb2.Compare.LESS
    assert (Compare.lease("k") > 3).result == rpc_pb2.Compare.GREATER
    assert (Compare.version("p/", prefix=True) > 0).range_end == b"p0"
    with pytest.raises(TypeError):
        Compare.version("k") == "x"  # noqa: B015


def test_txn_read_only_detection() -> None:
    assert txn_is_read_only(txn_request([], [Op.get("a")], [Op.txn([], [Op.get("b")])]))
    assert not txn_is_read_only(txn_request([], [Op.get("a")], [Op.txn([], [Op.delete("b")])]))
    assert not txn_is_read_only(txn_request([], [Op.put("a", "1")]))


def test_cancel_reason_mapping() -> None:
    e = error_from_reason(
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied", grpc.StatusCode.UNKNOWN
    )
    assert e == errors.PERMISSION_DENIED
    e = error_from_reason(
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token", grpc.StatusCode.UNKNOWN
    )
    assert e == errors.INVALID_AUTH_TOKEN
    assert (
        error_from_reason("etcdserver: mvcc: required revision has been compacted", grpc.StatusCode.UNKNOWN)
        == errors.COMPACTED
    )
    assert (
        error_from_reason("odd", grpc.StatusCode.FAILED_PRECONDITION).code
        == grpc.StatusCode.FAILED_PRECONDITION
    )
