"""A minimal HTTP/2 client side on a raw socket, for the attacks: frame encoding and parsing
(RFC 9113 section 4), request header blocks (the `hpack` library's encoder, plus a hand-made
Huffman literal and dynamic-table insert for the HPACK attacks), and a reader thread that drains
what the server sends and keeps track of the flow-control windows it grants.

Independent of the code under test (store/etcdstore/api/h2): nothing is imported from it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from hpack import Encoder
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4

S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5

CANCEL = 0x8
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1

_head = struct.Struct(">HBBBI")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _head.pack(n >> 8, n & 0xFF, ftype, flags, stream_id & 0x7FFFFFFF) + payload


def settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    body = b"".join(struct.pack(">HI", k, v) for k, v in (values or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, body)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def ping(data: bytes = b"\0" * 8) -> bytes:
    return frame(PING, 0, 0, data)


def grpc_prefix(length: int) -> bytes:
    return struct.pack(">BI", 0, length)


def grpc_message(body: bytes) -> bytes:
    return grpc_prefix(len(body)) + body


def request_headers(path: str, authority: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


# -- HPACK pieces the `hpack` encoder will not make on purpose ------------------------------------


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
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


_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def huffman_literal(name: bytes, value: bytes, *, index: bool = False) -> bytes:
    """A literal header field with a new name, both strings Huffman-coded (RFC 7541 6.2.1/6.2.2)."""
    hn = _huffman.encode(name)
    hv = _huffman.encode(value)
    return (
        (b"\x40" if index else b"\x00") + hpack_int(len(hn), 7, 0x80) + hn + hpack_int(len(hv), 7, 0x80) + hv
    )


def plain_literal(name: bytes, value: bytes, *, index: bool = False) -> bytes:
    return (b"\x40" if index else b"\x00") + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def indexed(index: int) -> bytes:
    return hpack_int(index, 7, 0x80)


# -- connections -----------------------------------------------------------------------------------


class Conn:
    """One attacking connection. `start_reader()` drains the socket in a thread and tracks the
    windows the server grants (`send_window`, `stream_windows`); without it nothing is read."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        rcvbuf: int | None = None,
        preface: bool = True,
        client_settings: dict[int, int] | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.authority = f"{host}:{port}"
        self.encoder = Encoder()
        self._blocks: dict[str, bytes] = {}
        self.next_stream = 1
        self.closed = threading.Event()
        self.goaway: tuple[int, bytes] | None = None  # (error code, debug data)
        self.rst_received = 0
        self.bytes_read = 0
        self.cond = threading.Condition()
        self.send_window = DEFAULT_WINDOW  # the server's connection window for our DATA
        self.initial_window = DEFAULT_WINDOW
        self.stream_windows: dict[int, int] = {}
        self.max_concurrent: int | None = None
        self._reader: threading.Thread | None = None
        if preface:
            self.sock.sendall(PREFACE + settings(client_settings or {}))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def new_stream(self) -> int:
        sid = self.next_stream
        self.next_stream += 2
        return sid

    def headers_block(self, path: str = "/etcdserverpb.KV/Range") -> bytes:
        """A request's header block. Once every field is in the dynamic table, the (all indexed)
        block is reused as is, so encoding costs nothing per stream; any insertion into the table
        shifts the indices and drops the reusable blocks."""
        block = self._blocks.get(path)
        if block is None:
            table = self.encoder.header_table
            before = list(table.dynamic_entries)
            block = self.encoder.encode(request_headers(path, self.authority))
            if list(table.dynamic_entries) == before:
                self._blocks[path] = block
            else:
                self._blocks.clear()
        return block

    def open_stream(
        self, path: str = "/etcdserverpb.KV/Range", *, end_stream: bool = False
    ) -> tuple[int, bytes]:
        """(stream id, the HEADERS frame that opens it)."""
        sid = self.new_stream()
        with self.cond:
            self.stream_windows[sid] = self.initial_window
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return sid, frame(HEADERS, flags, sid, self.headers_block(path))

    # -- reading ---------------------------------------------------------------------------------

    def start_reader(self, *, delay_per_read: float = 0.0, chunk: int = 1 << 16) -> None:
        self._reader = threading.Thread(target=self._read_loop, args=(delay_per_read, chunk), daemon=True)
        self._reader.start()

    def _read_loop(self, delay: float, chunk: int) -> None:
        buf = b""
        try:
            while not self.closed.is_set():
                try:
                    data = self.sock.recv(chunk)
                except TimeoutError:
                    continue
                if not data:
                    break
                self.bytes_read += len(data)
                buf += data
                pos = 0
                while len(buf) - pos >= 9:
                    hi, lo, ftype, flags, sid = _head.unpack_from(buf, pos)
                    length = (hi << 8) | lo
                    if len(buf) - pos - 9 < length:
                        break
                    payload = buf[pos + 9 : pos + 9 + length]
                    pos += 9 + length
                    self._on_frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                buf = buf[pos:]
                if delay:
                    time.sleep(delay)
        except OSError:
            pass
        finally:
            self.closed.set()
            with self.cond:
                self.cond.notify_all()

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == SETTINGS and not flags & ACK:
            with self.cond:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HI", payload, i)
                    if key == S_INITIAL_WINDOW_SIZE:
                        delta = value - self.initial_window
                        self.initial_window = value
                        for s in self.stream_windows:
                            self.stream_windows[s] += delta
                    elif key == S_MAX_CONCURRENT_STREAMS:
                        self.max_concurrent = value
                self.cond.notify_all()
            try:
                self.sock.sendall(settings(ack=True))
            except OSError:
                pass
        elif ftype == WINDOW_UPDATE and len(payload) == 4:
            inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            with self.cond:
                if sid == 0:
                    self.send_window += inc
                elif sid in self.stream_windows:
                    self.stream_windows[sid] += inc
                self.cond.notify_all()
        elif ftype == RST_STREAM:
            self.rst_received += 1
            with self.cond:
                self.stream_windows.pop(sid, None)
                self.cond.notify_all()
        elif ftype == GOAWAY and len(payload) >= 8:
            self.goaway = (struct.unpack_from(">I", payload, 4)[0], payload[8:])
        elif ftype == PING and not flags & ACK:
            try:
                self.sock.sendall(frame(PING, ACK, 0, payload))
            except OSError:
                pass

    def send_data_respecting_windows(
        self, sid: int, data: bytes, deadline: float, *, end_stream: bool = False, max_frame: int = 16_384
    ) -> int:
        """Send `data` on `sid` as the windows allow (the reader must run); returns bytes sent."""
        view = memoryview(data)
        sent = 0
        while sent < len(view) and time.monotonic() < deadline and not self.closed.is_set():
            with self.cond:
                avail = min(self.send_window, self.stream_windows.get(sid, -1), max_frame, len(view) - sent)
                if avail <= 0:
                    if sid not in self.stream_windows:
                        return sent  # reset by the server
                    self.cond.wait(0.1)
                    continue
                self.send_window -= avail
                self.stream_windows[sid] -= avail
            last = sent + avail == len(view)
            self.sock.sendall(
                frame(DATA, END_STREAM if (last and end_stream) else 0, sid, bytes(view[sent : sent + avail]))
            )
            sent += avail
        return sent

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
