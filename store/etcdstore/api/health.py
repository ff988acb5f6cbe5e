"""grpc.health.v1.Health: the standard gRPC health service, as etcd 3.4 serves it on its client port.

etcd 3.4 (etcdserver/api/v3rpc/grpc.go) registers grpc-go's health server (grpc v1.26.0,
health/server.go) with one entry, `""` -> SERVING, and never changes it (it keeps no handle to
call Shutdown with; the NOT_SERVING notifier of later etcd 3.5 releases is not in 3.4). So:

- Check("") -> SERVING; any other name -> NOT_FOUND "unknown service";
- Watch("") streams SERVING once, then nothing until the call ends; Watch(other) streams
  SERVICE_UNKNOWN (not an error) the same way.

etcd's interceptors run before the health server as before any service: a learner refuses both
("rpc not supported for learner"), `hasleader: true` without a leader fails fast, and a Watch with
`hasleader: true` is cancelled after three election timeouts without a leader, which grpc-go's
health Watch reports as CANCELLED "Stream has ended.". etcd's grpc-proxy registers no health
service (etcdmain/grpc_proxy.go), so the proxy here serves none either.

The two messages are built here from a descriptor (in a pool of their own, so that grpcio's
grpc_health package can be imported beside them): no generated code, no extra dependency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from etcdstore import errors, metrics
from etcdstore.api.common import _CODE_NAMES, _Undecodable, abort_with, gate, metadata_value, unary

if TYPE_CHECKING:
    from etcdstore.server.api import ServerAPI

SERVICE = "grpc.health.v1.Health"


def _messages() -> tuple[type, type]:
    f = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    T = descriptor_pb2.FieldDescriptorProto
    req = f.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    resp = f.message_type.add(name="HealthCheckResponse")
    status = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    resp.field.add(
        name="status",
        number=1,
        type=T.TYPE_ENUM,
        label=T.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _messages()
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3
_serialize: Callable[[Any], bytes] = HealthCheckResponse.SerializeToString

# grpc-go's health server: its status map as etcd 3.4 leaves it, and its words.
_STATUS = {"": SERVING}
_UNKNOWN_SERVICE = "unknown service"
_STREAM_ENDED = "Stream has ended."
# etcd's monitorLeader (v3rpc/interceptor.go): hasleader streams end after this many election
# timeouts in a row without a leader.
_MAX_NO_LEADER_COUNT = 3


class HealthService:
    def __init__(self, server: ServerAPI) -> None:
        self.s = server

    @unary
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        gate(self.s, context)
        status = _STATUS.get(request.service)
        if status is None:
            raise errors.EtcdError(grpc.StatusCode.NOT_FOUND, _UNKNOWN_SERVICE)
        return HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started, handling, handled = metrics.rpc_metrics(SERVICE, "Watch", "server_stream")
        started.inc()
        t = time.perf_counter()
        code = "OK"
        try:
            if type(request) is _Undecodable:
                raise errors.EtcdError(
                    grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {request.reason}"
                )
            s = self.s
            gate(s, context)
            yield HealthCheckResponse(status=_STATUS.get(request.service, SERVICE_UNKNOWN))
            # The status never changes: the stream stays open until the client (or the member's
            # shutdown) ends it, or, for `hasleader: true`, until the leader has been gone too long.
            try:
                await _until_no_leader(s, metadata_value(context, "hasleader") == "true")
            except asyncio.CancelledError:
                # grpc-go's health Watch ends the stream itself when its context ends; at the
                # call's deadline that is the status the client gets (not DEADLINE_EXCEEDED).
                remaining = context.time_remaining()
                if remaining is None or remaining > 0:
                    raise
            raise errors.EtcdError(grpc.StatusCode.CANCELLED, _STREAM_ENDED)
        except errors.EtcdError as e:
            code = e.code.name
            await abort_with(context, e)
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        finally:
            if handling is not None:
                handling.observe(time.perf_counter() - t)
            handled(_CODE_NAMES.get(code, code)).inc()


async def _until_no_leader(s: ServerAPI, watch_leader: bool) -> None:
    """Returns when etcd's monitorLeader would cancel a `hasleader: true` stream; never otherwise."""
    if not watch_leader:
        await asyncio.get_running_loop().create_future()
    interval = s.cfg.election_timeout_ms / 1000.0
    missed = 0
    while missed < _MAX_NO_LEADER_COUNT:
        await asyncio.sleep(interval)
        missed = missed + 1 if s.leader_id == 0 else 0


def add_HealthServicer_to_server(servicer: HealthService, server: Any) -> None:
    """Register like a generated `add_*Servicer_to_server` (api.common.service_handlers reads it)."""
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check,
            request_deserializer=HealthCheckRequest.FromString,
            response_serializer=_serialize,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch,
            request_deserializer=HealthCheckRequest.FromString,
            response_serializer=_serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
