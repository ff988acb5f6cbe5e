"""Every RPC of etcd's API, read from the generated descriptors (so paths can never drift)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory

from etcdstore.proto.etcdserverpb import rpc_pb2
from etcdstore.proto.v3electionpb import v3election_pb2
from etcdstore.proto.v3lockpb import v3lock_pb2


@dataclass(frozen=True, slots=True)
class Method:
    path: str  # "/etcdserverpb.KV/Range"
    kind: str  # the grpc.aio.Channel factory: unary_unary, unary_stream, stream_stream
    request: Any  # message class
    response: Any


def _table() -> dict[str, Method]:
    table: dict[str, Method] = {}
    for module in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kind = {
                    (False, False): "unary_unary",
                    (False, True): "unary_stream",
                    (True, True): "stream_stream",
                }[(m.client_streaming, m.server_streaming)]
                table[f"{service.name}.{m.name}"] = Method(
                    f"/{service.full_name}/{m.name}",
                    kind,
                    message_factory.GetMessageClass(m.input_type),
                    message_factory.GetMessageClass(m.output_type),
                )
    return table


METHODS = _table()


def method(name: str) -> Method:
    """By "Service.Method", e.g. method("KV.Range")."""
    return METHODS[name]
