"""A peer recreated with a new IP under the same DNS name is reached again within about a second
(issue 14 item 14): the peer transport's gRPC channels re-resolve a name when its connection
breaks, at most every `grpc.dns_min_time_between_resolutions_ms` (gRPC's default: 30 s).

A small DNS server on loopback answers for `peer.test`; the channel, made with the peer
transport's own options, names it as its resolver (`dns://127.0.0.1:PORT/peer.test:PORT`). The
peer moves from 127.0.0.2 to 127.0.0.3; the channel must follow well within gRPC's default.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import grpc
from etcdstore.transport import peer
from testlib import eventually_async, free_port

MOVE_DEADLINE = 10.0  # seconds: far below gRPC's default 30 s between resolutions


class _DNS(asyncio.DatagramProtocol):
    """Answers every A query with `self.ip` (TTL 0); other types with no records."""

    def __init__(self) -> None:
        self.ip = "127.0.0.2"
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        qid = struct.unpack(">H", data[:2])[0]
        i = 12
        while data[i] != 0:
            i += data[i] + 1
        question, qtype = data[12 : i + 5], struct.unpack(">H", data[i + 1 : i + 3])[0]
        answers = b""
        if qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + socket.inet_aton(self.ip)
        header = struct.pack(">HHHHHH", qid, 0x8180, 1, 1 if answers else 0, 0, 0)
        assert self.transport is not None
        self.transport.sendto(header + question + answers, addr)


async def _server(ip: str, port: int) -> grpc.aio.Server:
    srv = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: ip.encode(), lambda b: b, lambda b: b)
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Where": handler}),))
    srv.add_insecure_port(f"{ip}:{port}")
    await srv.start()
    return srv


async def test_peer_channel_follows_a_new_address_of_the_same_name():
    loop = asyncio.get_running_loop()
    dns = _DNS()
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    port = free_port()
    old = await _server("127.0.0.2", port)
    channel = grpc.aio.insecure_channel(
        f"dns://127.0.0.1:{dns_port}/peer.test:{port}", options=peer._GRPC_OPTIONS
    )
    new = None
    try:
        where = channel.unary_unary(
            "/t.T/Where", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        assert await where(b"", timeout=5) == b"127.0.0.2"
        await old.stop(0)  # the pod is gone...
        dns.ip = "127.0.0.3"  # ...and comes back elsewhere under the same name
        new = await _server("127.0.0.3", port)
        answer = await eventually_async(
            lambda: where(b"", timeout=1),
            MOVE_DEADLINE,
            ignoring=(grpc.aio.AioRpcError,),
            message="the channel dials the new address",
        )
        assert answer == b"127.0.0.3"
    finally:
        await channel.close()
        if new is not None:
            await new.stop(0)
        transport.close()
