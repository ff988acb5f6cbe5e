"""HTTP/2 frame layout (RFC 9113) and the few header blocks a gRPC server sends.

Responses never use HPACK's dynamic table: every block below is a fixed byte string or
literals "without indexing", so the encoder keeps no state and a block costs one join.
Request blocks are decoded by the `hpack` library (Huffman strings, dynamic table).
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
(DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION) = (
    range(10)
)

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# Settings.
S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5
S_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

# length (24 bits, as 16 + 8), type, flags, stream id (the top bit is reserved).
HEAD = struct.Struct(">HBBBI")
_u32 = struct.Struct(">I")
_setting = struct.Struct(">HI")
_msg_prefix = struct.Struct(">BI")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_setting.pack(k, v) for k, v in values.items()))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _u32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _u32.pack(code))


def ping(payload: bytes, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, payload)


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _u32.pack(last_stream_id) + _u32.pack(code) + debug)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    return [_setting.unpack_from(payload, i) for i in range(0, len(payload) - len(payload) % 6, 6)]


def grpc_message(data: bytes) -> bytes:
    """A gRPC length-prefixed message (not compressed)."""
    return _msg_prefix.pack(0, len(data)) + data


# -- header blocks ------------------------------------------------------------------------------


def _int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK integer (RFC 7541 5.1); `first` carries the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


# ":status: 200" (static index 8) and "content-type: application/grpc" (name: static index 31).
RESPONSE_HEADERS = b"\x88" + _int(31, 4) + _int(16, 7) + b"application/grpc"
_OK_TRAILERS = _literal(b"grpc-status", b"0")

# Percent-encode what gRPC's spec says a grpc-message may not carry as is.
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}
_MAX_MESSAGE = 4096  # keep any trailer block well inside one 16 KiB frame


def _percent(message: str) -> bytes:
    raw = message.encode("utf-8", "replace")[:_MAX_MESSAGE]
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes([b]) if b in _PLAIN else b"%%%02X" % b for b in raw)


def trailers(code: int, message: str = "") -> bytes:
    """The trailing header block of a call: grpc-status and, on error, grpc-message."""
    if code == 0 and not message:
        return _OK_TRAILERS
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        block += _literal(b"grpc-message", _percent(message))
    return block


# A unary answer's bytes around its message, each in one pack: the response HEADERS frame and the
# DATA frame's header with the gRPC length prefix (before the message), the trailers HEADERS frame
# (after it). See Stream.respond.
_UNARY_START = struct.Struct(f">HBBBI{len(RESPONSE_HEADERS)}sHBBBIBI")
_DATA_START = struct.Struct(">HBBBIBI")
_OK_END = struct.Struct(f">HBBBI{len(_OK_TRAILERS)}s")


def unary_start(stream_id: int, size: int, headers: bool) -> bytes:
    """The bytes before a `size`-byte message that is a stream's whole answer: the response
    headers (if not sent yet), the DATA frame header and the gRPC message prefix."""
    n = size + 5
    if headers:
        return _UNARY_START.pack(
            0, len(RESPONSE_HEADERS), HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS,
            n >> 8, n & 0xFF, DATA, 0, stream_id, 0, size,
        )  # fmt: skip
    return _DATA_START.pack(n >> 8, n & 0xFF, DATA, 0, stream_id, 0, size)


def end_frame(stream_id: int, trailer: bytes) -> bytes:
    """The HEADERS frame that ends a stream with this trailer block."""
    if trailer is _OK_TRAILERS:
        return _OK_END.pack(0, len(_OK_TRAILERS), HEADERS, END_HEADERS | END_STREAM, stream_id, trailer)
    return frame(HEADERS, END_HEADERS | END_STREAM, stream_id, trailer)


def trailers_only(code: int, message: str) -> bytes:
    """A whole response in one header block: status 200, content type, grpc-status/-message."""
    return RESPONSE_HEADERS + trailers(code, message)
