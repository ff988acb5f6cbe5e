"""A gRPC server that answers etcd's KV Put and Range with no work at all.

It measures the floor under any Python etcd server on this machine: the cost of grpcio itself
(the same grpc.aio on uvloop the store runs on). Drive it with `etcdstore bench put|range`
like any endpoint:

    python -m etcdstore.bench.grpc_floor --port 23790 &
    etcdstore bench put --compare floor=127.0.0.1:23790 --compare etcd=127.0.0.1:2379 --clients 100
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from etcdstore.proto.etcdserverpb import rpc_pb2

# Minimal valid answers, encoded once: the point is to spend nothing per request but gRPC's own work.
_PUT = rpc_pb2.PutResponse(header=rpc_pb2.ResponseHeader(revision=1)).SerializeToString()
_RANGE = rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=1)).SerializeToString()


def _ident(b: bytes) -> bytes:
    return b


async def _put(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return _PUT


async def _range(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return _RANGE


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    handlers = {
        "Put": grpc.unary_unary_rpc_method_handler(_put, _ident, _ident),
        "Range": grpc.unary_unary_rpc_method_handler(_range, _ident, _ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.KV", handlers),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    print(f"no-op etcd KV gRPC server on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m etcdstore.bench.grpc_floor", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=23790)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
