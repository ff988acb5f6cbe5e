"""grpc.health.v1.Health on the client port answers as etcd 3.4's (grpc-go's health server, "" SERVING).

Kubernetes `grpc:` probes and gRPC clients' health checking call it. Each case is asked of a real
etcd 3.4 member and of an etcdstore member; the answers (status, or code and message) must be equal.
"""

from __future__ import annotations

import grpc
import pytest
from etcdstore.api.health import HealthCheckRequest, HealthCheckResponse
from testlib import Member, have_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.skipif(not have_etcd(), reason="etcd 3.4 not installed")]

_CHECK = "/grpc.health.v1.Health/Check"
_WATCH = "/grpc.health.v1.Health/Watch"


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("health")
    with Member.single(base / "etcd", binary="etcd") as real, Member.single(base / "ours") as ours:
        yield {"etcd": real.endpoint, "etcdstore": ours.endpoint}


def _outcome(fn) -> tuple:
    try:
        return ("OK", fn())
    except grpc.RpcError as e:
        return (e.code().name, e.details())


def check(endpoint: str, service: str, metadata=()) -> tuple:
    with grpc.insecure_channel(endpoint) as ch:
        call = ch.unary_unary(
            _CHECK,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        return _outcome(
            lambda: HealthCheckResponse.ServingStatus.Name(
                call(HealthCheckRequest(service=service), timeout=10, metadata=metadata).status
            )
        )


# How a Watch that stays open ends at the client's deadline: grpc-go's health Watch ends the call with
# CANCELLED "Stream has ended." when its context is done, which races the client's own deadline timer.
_ENDED_AT_DEADLINE = {
    ("CANCELLED", "Stream has ended."),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded"),
    ("DEADLINE_EXCEEDED", "Stream removed (Deadline Exceeded)"),
}


def first_watch(endpoint: str, service: str) -> tuple:
    """The first message of a Watch, and what follows until a 1 s deadline (nothing: it stays open)."""
    with grpc.insecure_channel(endpoint) as ch:
        call = ch.unary_stream(
            _WATCH,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        stream = call(HealthCheckRequest(service=service), timeout=1)
        first = _outcome(lambda: HealthCheckResponse.ServingStatus.Name(next(stream).status))
        rest = _outcome(lambda: [HealthCheckResponse.ServingStatus.Name(m.status) for m in stream])
        return first, "open until the deadline" if rest in _ENDED_AT_DEADLINE else rest


def raw_check(endpoint: str, body: bytes) -> tuple:
    with grpc.insecure_channel(endpoint) as ch:
        call = ch.unary_unary(_CHECK, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return _outcome(lambda: call(body, timeout=10))


CASES = {
    'Check("")': lambda ep: check(ep, ""),
    'Check("nonexistent")': lambda ep: check(ep, "nonexistent"),
    'Check("etcdserverpb.KV")': lambda ep: check(ep, "etcdserverpb.KV"),
    "Check with hasleader": lambda ep: check(ep, "", metadata=(("hasleader", "true"),)),
    'Watch("")': lambda ep: first_watch(ep, ""),
    'Watch("nonexistent")': lambda ep: first_watch(ep, "nonexistent"),
    "Check of an undecodable request": lambda ep: raw_check(ep, b"\xff\xff\xff\xff garbage"),
}


@pytest.mark.parametrize("case", CASES)
def test_same_answer_as_etcd(endpoints, case):
    got = {name: CASES[case](ep) for name, ep in endpoints.items()}
    if case == "Check of an undecodable request":
        # Same code and prefix; the decoder's own words differ (Go's protobuf vs Python's), as in
        # test_bad_input.py.
        prefix = "grpc: error unmarshalling request: "
        got = {name: (code, details.startswith(prefix)) for name, (code, details) in got.items()}
    assert got["etcdstore"] == got["etcd"], got


def test_expected_answers(endpoints):
    """What etcd 3.4 answers, spelled out (so a change on either side shows what it was)."""
    for ep in endpoints.values():
        assert check(ep, "") == ("OK", "SERVING")
        assert check(ep, "nonexistent") == ("NOT_FOUND", "unknown service")
        assert first_watch(ep, "") == (("OK", "SERVING"), "open until the deadline")
        assert first_watch(ep, "x") == (("OK", "SERVICE_UNKNOWN"), "open until the deadline")


def test_grpc_health_checking_client(endpoints):
    """A channel with client-side health checking (what gRPC clients enable with a service config)
    reaches READY and serves calls on both."""
    config = '{"healthCheckConfig": {"serviceName": ""}, "loadBalancingConfig": [{"round_robin": {}}]}'
    for ep in endpoints.values():
        with grpc.insecure_channel(ep, options=[("grpc.service_config", config)]) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            assert check(ep, "") == ("OK", "SERVING")
