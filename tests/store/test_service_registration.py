"""How the gRPC services are registered: every method reachable, none as a grpc.aio registered method.

grpc.aio's server keeps a pending request task per registered method and runs asyncio.wait over
all of them on every incoming call; with etcd's ~50 methods that cost each request tens of
microseconds. Generic handlers only keep the per-call work independent of the method count.
"""

from __future__ import annotations

from typing import Any

import grpc
from etcdstore.api.common import register_service
from etcdstore.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc


class _RecordingServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.registered.append(service)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _resolve(server: _RecordingServer, method: str) -> Any:
    for h in server.generic:
        found = h.service(_Details(method))
        if found is not None:
            return found
    return None


def test_services_are_generic_handlers_only() -> None:
    server = _RecordingServer()
    register_service(server, rpc_pb2_grpc.add_KVServicer_to_server, rpc_pb2_grpc.KVServicer())
    register_service(server, rpc_pb2_grpc.add_LeaseServicer_to_server, rpc_pb2_grpc.LeaseServicer())
    assert server.registered == []
    for method in ("Range", "Put", "DeleteRange", "Txn", "Compact"):
        assert _resolve(server, f"/etcdserverpb.KV/{method}") is not None, method
    assert _resolve(server, "/etcdserverpb.Lease/LeaseGrant") is not None
    assert _resolve(server, "/etcdserverpb.KV/Nope") is None


def test_registered_handlers_decode_safely() -> None:
    """The deserializer wrapped by register_service turns garbage into a stand-in, not an exception."""
    server = _RecordingServer()
    register_service(server, rpc_pb2_grpc.add_KVServicer_to_server, rpc_pb2_grpc.KVServicer())
    put = _resolve(server, "/etcdserverpb.KV/Put")
    ok = put.request_deserializer(rpc_pb2.PutRequest(key=b"k").SerializeToString())
    assert ok.key == b"k"
    bad = put.request_deserializer(b"\xff\xff\xff")
    assert type(bad).__name__ == "_Undecodable"
