"""gRPC calls on HTTP/2 streams: routing, the servicer context, message framing, status.

The servicers are the same ones grpc.aio serves (their `grpc.RpcMethodHandler`s, as the
generated `add_*Servicer_to_server` registers them); `CallContext` offers the part of
`grpc.aio.ServicerContext` they use.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gzip
import logging
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from etcdstore.api.h2 import frames as f
from etcdstore.api.h2.connection import _good_values, check_field_name, check_field_value

if TYPE_CHECKING:
    from etcdstore.api.h2.connection import H2Connection, Stream

log = logging.getLogger(__name__)

_prefix = struct.Struct(">BI")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# Headers that are HTTP/2 or gRPC transport, not the call's metadata.
_TRANSPORT_HEADERS = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"grpc-message-type"}
)
_DECOMPRESS: dict[bytes, Callable[[bytes], bytes]] = {b"gzip": gzip.decompress, b"deflate": zlib.decompress}
_OK = f.trailers(0)
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
# Request pseudo-headers (RFC 9113 8.3.1), as bits; the first three are required.
_PSEUDO = {b":method": 1, b":scheme": 2, b":path": 4, b":authority": 8}
_REQUIRED = 7
# What Router.open does with a field, by name (one dict lookup per field): a pseudo-header's bit (1-8),
# a transport header's code (16+), or 0 for a metadata name already seen valid (added as they are
# seen, up to _NAME_KINDS_MAX; any other name is checked by check_field_name first).
_CONTENT_TYPE, _GRPC_TIMEOUT, _GRPC_ENCODING, _TE, _OTHER_TRANSPORT = 16, 17, 18, 19, 20
_NAME_KINDS: dict[bytes, int] = {
    **_PSEUDO,
    b"content-type": _CONTENT_TYPE,
    b"grpc-timeout": _GRPC_TIMEOUT,
    b"grpc-encoding": _GRPC_ENCODING,
    b"te": _TE,
    **{
        k: _OTHER_TRANSPORT
        for k in _TRANSPORT_HEADERS
        if k not in (b"content-type", b"grpc-timeout", b"grpc-encoding", b"te")
    },
}
_NAME_KINDS_MAX = 4096 + len(_NAME_KINDS)
# A checked header list (`_head`): why it is malformed (or None), its size as HTTP/2 counts it,
# :path, :method, content-type, grpc-timeout, grpc-encoding, and the call's metadata.
_Head = tuple[str | None, int, bytes, bytes, bytes, bytes, bytes, tuple[tuple[str, Any], ...]]
_HEADS_MAX = 256  # distinct repeated header lists kept by a router (cleared when full)


def _status(code: grpc.StatusCode) -> int:
    return code.value[0]


class Router:
    """Maps a call's `:path` to its method handler."""

    def __init__(self, max_message: int) -> None:
        self.methods: dict[bytes, grpc.RpcMethodHandler] = {}
        self.services: set[str] = set()
        self.max_message = max_message  # gRPC-level cap on one request message
        self._heads: dict[tuple[tuple[bytes, bytes], ...], _Head] = {}  # repeated header lists, checked

    def add(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services.add(service)
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}".encode()] = handler

    def open(self, conn: H2Connection, stream: Stream, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """A new stream's request headers arrived: check them (RFC 9113 8.2-8.3), start (or refuse) its call."""
        if type(headers) is tuple:  # a block the connection decoded before (see connection._ALL_INDEXED)
            heads = self._heads
            head = heads.get(headers)
            if head is None:
                head = _head(headers)
                if len(heads) >= _HEADS_MAX:
                    heads.clear()
                heads[headers] = head
        else:
            head = _head(headers)
        bad, size, path, method, content_type, timeout, encoding, metadata = head
        if bad is not None:  # a malformed request: stream error PROTOCOL_ERROR (8.1.1)
            conn.reset_stream(stream, f.PROTOCOL_ERROR)
            return
        if size > conn.limits.max_call_metadata:
            stream.finish(f.trailers(_RESOURCE_EXHAUSTED, "grpc: received header list larger than max"))
            conn.refuse_oversized_header_list(size)  # may end the connection (GOAWAY ENHANCE_YOUR_CALM)
            return
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            stream.finish(f.trailers(_status(grpc.StatusCode.INTERNAL), "not a gRPC request"))
            return
        handler = self.methods.get(path)
        if handler is None:
            message = unknown_method_message(self.services, path.decode("utf-8", "replace"))
            stream.finish(f.trailers(_status(grpc.StatusCode.UNIMPLEMENTED), message))
            return
        decompress = None
        if encoding and encoding != b"identity":
            decompress = _DECOMPRESS.get(encoding)
            if decompress is None:
                name = encoding.decode("latin-1")
                message = f'grpc: Decompressor is not installed for grpc-encoding "{name}"'
                stream.finish(f.trailers(_status(grpc.StatusCode.UNIMPLEMENTED), message))
                return
        ctx = CallContext(metadata, conn.peer, conn.identity)
        call = Call(conn, stream, handler, ctx, self.max_message, decompress)
        stream.call = call
        if timeout:
            call.set_deadline(timeout)
        if handler.request_streaming:
            call.ended = stream.remote_closed  # HEADERS with END_STREAM: an empty request stream
            call.start(None)
        elif stream.remote_closed:  # HEADERS with END_STREAM: no request message at all
            call.on_data(b"", True)


def _head(headers: Sequence[tuple[bytes, bytes]]) -> _Head:
    """What Router.open needs of a request's header list, checked (RFC 9113 8.2-8.3); a pure
    function of the list, so repeated lists can share one result."""
    path = b""
    method = b""
    content_type = b""
    timeout = b""
    encoding = b""
    metadata = []
    pseudo = 0
    regular = False
    size = 0
    bad = None
    good_values = _good_values
    kinds = _NAME_KINDS
    for k, v in headers:
        size += len(k) + len(v) + 32
        if v not in good_values and (bad := check_field_value(v)):
            break
        kind = kinds.get(k)
        if kind is None:  # a name not seen before
            if k[:1] == b":":
                bad = f"unknown pseudo-header {k[:32]!r}"
                break
            if bad := check_field_name(k):
                break
            if len(kinds) < _NAME_KINDS_MAX:
                kinds[k] = 0
            kind = 0
        if kind < _CONTENT_TYPE:
            if kind:  # a pseudo-header: each once, all before the regular fields
                if pseudo & kind or regular:
                    bad = f"misplaced or repeated pseudo-header {k[:32]!r}"
                    break
                pseudo |= kind
                if kind == 4:
                    path = v
                elif kind == 1:
                    method = v
                continue
            regular = True
            metadata.append((k, v))
            continue
        regular = True
        if kind == _CONTENT_TYPE:
            content_type = v
        elif kind == _GRPC_TIMEOUT:
            timeout = v
        elif kind == _GRPC_ENCODING:
            encoding = v
        elif kind == _TE and v != b"trailers":
            bad = "te other than trailers"
            break
    if bad is None and (pseudo & _REQUIRED != _REQUIRED or not path):
        bad = "missing :method, :scheme or :path"
    return (
        bad,
        size,
        path,
        method,
        content_type,
        timeout,
        encoding,
        tuple(_metadatum(k, v) for k, v in metadata) if bad is None else (),
    )


# -- the call rules, shared with the JSON gateway (api/gateway.py), which runs the same handlers ------


def handler_function(h: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function that serves `h`: a coroutine function for a unary response, an async generator
    function for a streaming one (request streaming only changes what it is given)."""
    if h.response_streaming:
        return h.unary_stream if h.unary_stream is not None else h.stream_stream
    return h.unary_unary if h.unary_unary is not None else h.stream_unary


def error_status(h: grpc.RpcMethodHandler, e: Exception, ctx: CallContext) -> tuple[grpc.StatusCode, str]:
    """The status a handler's exception answers, as grpcio's: `context.abort` -> the status it set
    (UNKNOWN without one); anything else is a handler bug -> UNKNOWN with the exception, logged."""
    if isinstance(e, grpc.aio.AbortError):
        return ctx._code or grpc.StatusCode.UNKNOWN, ctx._details
    log.error("unexpected error in gRPC handler %s", type(h).__name__, exc_info=e)
    return grpc.StatusCode.UNKNOWN, f"Unexpected {type(e)}: {e}"


def end_status(ctx: CallContext) -> tuple[grpc.StatusCode, str] | None:
    """The error status a handler that returned set on its context (`set_code`), or None for OK."""
    code = ctx._code
    if code is None or code == grpc.StatusCode.OK:
        return None
    return code, ctx._details


def unknown_method_message(services: set[str], path: str) -> str:
    """grpc-go's words for a call to a method ("/service/method") no one serves."""
    service, _, method = path.lstrip("/").rpartition("/")
    if service in services:
        return f"unknown method {method} for service {service}"
    return f"unknown service {service}"


def _metadatum(k: bytes, v: bytes) -> tuple[str, Any]:
    key = k.decode("ascii", "replace")
    if key.endswith("-bin"):
        try:
            return key, base64.b64decode(v + b"=" * (-len(v) % 4))
        except ValueError:
            return key, v
    return key, v.decode("utf-8", "replace")


class CallContext:
    """What the servicers use of `grpc.aio.ServicerContext`."""

    __slots__ = ("_cancelled", "_code", "_deadline", "_details", "_metadata", "_peer", "identity")

    def __init__(self, metadata: tuple[tuple[str, Any], ...], peer: str, identity: str | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self.identity = identity
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._deadline: float | None = None
        self._cancelled = False

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        # What grpcio reports for a verified client certificate (see security.tls.cn_from_grpc_context).
        return {"x509_common_name": [self.identity.encode()]} if self.identity else {}

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code = code
        self._details = details
        raise grpc.aio.AbortError(f"aborted with {code.name}")

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def cancelled(self) -> bool:
        return self._cancelled


class Call:
    """One call: collects the request message(s), runs the handler, sends the answer."""

    __slots__ = (
        "__weakref__",
        "buf",
        "conn",
        "ctx",
        "deadline_hit",
        "decompress",
        "ended",
        "finished",
        "handler",
        "held",
        "inbox",
        "max_message",
        "request",
        "stream",
        "task",
        "timer",
        "waiter",
    )

    def __init__(
        self,
        conn: H2Connection,
        stream: Stream,
        handler: grpc.RpcMethodHandler,
        ctx: CallContext,
        max_message: int,
        decompress: Callable[[bytes], bytes] | None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.handler = handler
        self.ctx = ctx
        self.max_message = max_message
        self.decompress = decompress
        self.task: asyncio.Task[None] | None = None
        self.buf = bytearray()
        self.request: bytes | None = None
        self.inbox: collections.deque[tuple[bytes, int]] | None = (
            collections.deque() if handler.request_streaming else None
        )
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False  # the client finished sending
        self.timer: asyncio.TimerHandle | None = None
        self.deadline_hit = False
        self.finished = False  # the handler is done: later request bytes are only credited
        self.held = 0  # request bytes received and not yet handed to the handler (conn.held's share)

    # -- receiving --------------------------------------------------------------------------------

    def on_data(self, payload: bytes, end: bool) -> None:
        if self.finished:
            return
        conn = self.conn
        n = len(payload)
        if n:
            self.held += n
            conn.held += n
            if conn.held > conn.limits.max_buffered_request_bytes:
                self.fail(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "grpc: too many request bytes buffered on this connection",
                )
                return
        stream = self.stream
        streaming = self.inbox is not None
        if end and not streaming and n > 5 and not self.buf and self.request is None:
            # The usual unary request: its one message, whole, in the frame that ends the stream.
            flag, size = _prefix.unpack_from(payload)
            if not flag and size == n - 5 and size <= self.max_message:
                conn.credit(stream, n)
                self.request = payload[5:]
                self.ended = True
                if self.task is None:
                    self._unhold(self.held)
                    self.start(self.request)
                return
        buf = self.buf  # a bytearray: appending is linear however many frames a message spans
        buf += payload
        pos = 0
        if not streaming:
            # Unary: the bytes go into a message whose length passed the check below, so they
            # count as consumed: the stream's window comes back as they arrive.
            conn.credit(stream, n)
        while len(buf) - pos >= 5:
            flag, size = _prefix.unpack_from(buf, pos)
            if size > self.max_message:
                self.fail(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"grpc: received message larger than max ({size} vs. {self.max_message})",
                )
                return
            if len(buf) - pos < 5 + size:
                break
            msg = bytes(buf[pos + 5 : pos + 5 + size])
            pos += 5 + size
            if flag:
                if self.decompress is None:
                    self.fail(
                        grpc.StatusCode.INTERNAL, "grpc: compressed flag set with identity or empty encoding"
                    )
                    return
                try:
                    msg = self.decompress(msg)
                except Exception as e:  # noqa: BLE001 - a corrupt body is the client's error, not ours
                    self.fail(
                        grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the received message: {e}"
                    )
                    return
            if streaming:
                self.inbox.append((msg, 5 + size))  # type: ignore[union-attr]  # streaming means inbox is set
            elif self.request is not None:
                self.fail(grpc.StatusCode.UNIMPLEMENTED, "grpc: received more than one request message")
                return
            else:
                self.request = msg
        if pos:
            del buf[:pos]
        if len(buf) > self.max_message + 5:
            self.fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max")
            return
        if end:
            self.ended = True
        if streaming:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif end:
            if self.buf:
                self.fail(grpc.StatusCode.INTERNAL, "grpc: request ended inside a message")
            elif self.request is None:
                self.fail(grpc.StatusCode.INTERNAL, "grpc: no request message")
            elif self.task is None:
                self._unhold(self.held)
                self.start(self.request)

    def _unhold(self, n: int) -> None:
        """`n` held request bytes were handed to the handler (or dropped)."""
        self.held -= n
        self.conn.held -= n

    async def _next(self) -> bytes:
        """The next request message of a streaming call (raises StopAsyncIteration at its end)."""
        inbox = self.inbox
        assert inbox is not None
        while not inbox:
            if self.ended or self.stream.closed:
                raise StopAsyncIteration
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        msg, size = inbox.popleft()
        self._unhold(size)
        self.conn.credit(self.stream, size)
        return msg

    # -- running ----------------------------------------------------------------------------------

    def start(self, request: bytes | None) -> None:
        self.task = self.conn.loop.create_task(self._run(request))

    def set_deadline(self, value: bytes) -> None:
        try:
            seconds = int(value[:-1]) * _TIMEOUT_UNITS[value[-1:]]
        except (ValueError, KeyError):
            return
        loop = self.conn.loop
        self.ctx._deadline = loop.time() + seconds
        self.timer = loop.call_later(seconds, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self.timer = None
        self.deadline_hit = True
        if self.task is not None:
            self.task.cancel()
        else:
            self.fail(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def cancel(self) -> None:
        """The client reset the stream or went away."""
        self.ctx._cancelled = True
        if self.task is None:
            self._release()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """End the call with an error status now (the handler, if running, is stopped)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()  # its `finally` releases what it did not read
        else:
            self._release()  # marks the call finished: no handler will start
        self.stream.finish(f.trailers(_status(code), message))

    async def _run(self, request: bytes | None) -> None:
        h = self.handler
        ctx = self.ctx
        stream = self.stream
        try:
            if request is not None:
                req = h.request_deserializer(request) if h.request_deserializer else request
            else:
                req = _Requests(self, h.request_deserializer)
            serialize = h.response_serializer
            fn = handler_function(h)
            if not h.response_streaming:
                resp = await fn(req, ctx)
                failed = end_status(ctx)
                if failed is not None:
                    stream.finish(f.trailers(_status(failed[0]), failed[1]))
                else:
                    stream.respond(serialize(resp) if serialize else resp, _OK)
            else:
                async for resp in fn(req, ctx):
                    stream.send(f.grpc_message(serialize(resp) if serialize else resp))
                    if stream.write_blocked():
                        await stream.wait_writable()
                    if stream.closed:
                        return
                failed = end_status(ctx)
                stream.finish(_OK if failed is None else f.trailers(_status(failed[0]), failed[1]))
        except asyncio.CancelledError:
            if self.deadline_hit:
                stream.finish(f.trailers(_status(grpc.StatusCode.DEADLINE_EXCEEDED), "Deadline Exceeded"))
        except Exception as e:  # noqa: BLE001 - an abort, or a handler bug (UNKNOWN, logged): error_status
            code, details = error_status(h, e, ctx)
            stream.finish(f.trailers(_status(code), details))
        finally:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._release()

    def _release(self) -> None:
        """Drop the request bytes no one will read (their windows were or will not be needed)."""
        self.finished = True
        self._unhold(self.held)
        self.buf = bytearray()
        self.request = None
        if self.inbox is not None:
            self.inbox.clear()


class _Requests:
    """The request iterator a streaming handler reads (grpc.aio hands it the same kind)."""

    __slots__ = ("call", "deserialize")

    def __init__(self, call: Call, deserialize: Callable[[bytes], Any] | None) -> None:
        self.call = call
        self.deserialize = deserialize

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        msg = await self.call._next()
        return self.deserialize(msg) if self.deserialize else msg
