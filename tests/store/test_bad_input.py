"""Bad input gets etcd's gRPC status code and message, and the server keeps serving."""

from __future__ import annotations

import time

import grpc
import pytest
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from testlib import Cluster, have_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="etcd 3.4 not installed")]


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    real = Cluster.start(base, 1, binary="etcd")
    ours = Cluster.start(base, 1, binary="etcdstore")
    # etcd answers membership changes "unhealthy cluster" during its first 5 seconds.
    time.sleep(5.5)
    try:
        yield real.endpoints[0], ours.endpoints[0]
    finally:
        real.close()
        ours.close()


def outcome(endpoint: str, call) -> tuple[str, str]:
    with grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        try:
            call(ch)
        except grpc.RpcError as e:
            return e.code().name, e.details()
    return "OK", ""


def kv(ch):
    return rpc_pb2_grpc.KVStub(ch)


def raw(method: str, body: bytes):
    def call(ch):
        return ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)(
            body, timeout=10
        )

    return call


CASES = {
    "empty key": lambda ch: kv(ch).Put(rpc_pb2.PutRequest(key=b"", value=b"v"), timeout=10),
    "empty range key": lambda ch: kv(ch).Range(rpc_pb2.RangeRequest(key=b""), timeout=10),
    "oversized put": lambda ch: kv(ch).Put(
        rpc_pb2.PutRequest(key=b"big", value=b"x" * (1536 * 1024 + 100)), timeout=10
    ),
    "unknown sort order": lambda ch: kv(ch).Range(rpc_pb2.RangeRequest(key=b"a", sort_order=7), timeout=10),
    "far oversized put": lambda ch: kv(ch).Put(
        rpc_pb2.PutRequest(key=b"big", value=b"x" * (3 << 20)), timeout=10
    ),
    "too many txn ops": lambda ch: kv(ch).Txn(
        rpc_pb2.TxnRequest(
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k%d" % i)) for i in range(129)]
        ),
        timeout=10,
    ),
    "ignore_value on missing key": lambda ch: kv(ch).Put(
        rpc_pb2.PutRequest(key=b"missing", ignore_value=True), timeout=10
    ),
    "lease too large": lambda ch: rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(
        rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001), timeout=10
    ),
    "revoke unknown lease": lambda ch: rpc_pb2_grpc.LeaseStub(ch).LeaseRevoke(
        rpc_pb2.LeaseRevokeRequest(ID=42), timeout=10
    ),
    "future revision": lambda ch: kv(ch).Range(rpc_pb2.RangeRequest(key=b"a", revision=1 << 40), timeout=10),
    "compact future": lambda ch: kv(ch).Compact(rpc_pb2.CompactionRequest(revision=1 << 40), timeout=10),
    "undecodable protobuf": raw("/etcdserverpb.KV/Put", b"\xff\xff\xff\xff garbage"),
    "unknown method": raw("/etcdserverpb.KV/NoSuchMethod", b""),
    "unknown service": raw("/etcdserverpb.Nope/Put", b""),
    "member remove unknown": lambda ch: rpc_pb2_grpc.ClusterStub(ch).MemberRemove(
        rpc_pb2.MemberRemoveRequest(ID=12345), timeout=10
    ),
    "promote non-learner": lambda ch: rpc_pb2_grpc.ClusterStub(ch).MemberPromote(
        rpc_pb2.MemberPromoteRequest(ID=12345), timeout=10
    ),
    "member add bad url": lambda ch: rpc_pb2_grpc.ClusterStub(ch).MemberAdd(
        rpc_pb2.MemberAddRequest(peerURLs=["not a url"]), timeout=10
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_status_as_etcd(endpoints, case):
    real, ours = endpoints
    want = outcome(real, CASES[case])
    got = outcome(ours, CASES[case])
    if case == "undecodable protobuf":
        # Same code and prefix; the decoder's own words differ (Go's protobuf vs Python's).
        prefix = "grpc: error unmarshalling request: "
        assert got[0] == want[0] == "INTERNAL" and got[1].startswith(prefix) and want[1].startswith(prefix)
    else:
        assert got == want
    # ...and the member still serves.
    assert outcome(ours, lambda ch: kv(ch).Put(rpc_pb2.PutRequest(key=b"alive", value=b"1"), timeout=10)) == (
        "OK",
        "",
    )


def test_unknown_sort_target_is_refused_not_a_crash(endpoints):
    # Real etcd 3.4 panics (nil sorter in sort.Sort) on this; we answer as etcd 3.5 does.
    _, ours = endpoints
    req = rpc_pb2.RangeRequest(key=b"a", sort_target=9)
    assert outcome(ours, lambda ch: kv(ch).Range(req, timeout=10)) == (
        "INVALID_ARGUMENT",
        "etcdserver: invalid sort option",
    )
    assert outcome(ours, lambda ch: kv(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=10)) == ("OK", "")
