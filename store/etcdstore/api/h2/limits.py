"""Every limit of the client HTTP/2 server, in one place (see docs/h2.md for each one's reason).

Defaults follow etcd 3.5 (whose gRPC server is grpc-go, fronted by Go's net/http2 on TLS) where
etcd has a flag, and grpc-go's or Go's net/http2's own defaults otherwise. `Limits.from_config`
maps etcd's flags onto them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcdstore.config import ServerConfig

UNLIMITED_STREAMS = 2**32 - 1  # etcd's --max-concurrent-streams default (math.MaxUint32)
GRPC_OVERHEAD = 512 * 1024  # etcd: MaxRecvMsgSize = --max-request-bytes + this


@dataclass(frozen=True, slots=True)
class Limits:
    # -- streams -------------------------------------------------------------------------------
    # etcd --max-concurrent-streams. Advertised as SETTINGS_MAX_CONCURRENT_STREAMS unless unlimited
    # (grpc-go leaves the setting out at MaxUint32); a HEADERS beyond it gets RST_STREAM REFUSED_STREAM.
    max_concurrent_streams: int = UNLIMITED_STREAMS
    # Rapid reset (CVE-2023-44487): the client may reset streams whose call is still running this many
    # times in a burst, refilled at `reset_rate` per second; past that, GOAWAY ENHANCE_YOUR_CALM.
    reset_burst: int = 1000
    reset_rate: float = 100.0
    # -- header blocks -------------------------------------------------------------------------
    # SETTINGS_MAX_HEADER_LIST_SIZE, advertised; the HPACK decoder stops past it (and so does the
    # reassembly of HEADERS + CONTINUATION, counted in compressed bytes): GOAWAY ENHANCE_YOUR_CALM.
    max_header_list_size: int = 128 << 10
    # One call's metadata above this is refused with RESOURCE_EXHAUSTED (that call only, as grpcio).
    max_call_metadata: int = 64 << 10
    # CONTINUATION frames in one header block (CVE-2024-27316-like floods of empty ones).
    max_continuation_frames: int = 64
    # A call refused because its metadata is over `max_call_metadata` spends reset tokens (below):
    # one, plus one per this many bytes of its header list, so a client that keeps sending oversized
    # header lists gets GOAWAY ENHANCE_YOUR_CALM as a rapid resetter does (each one cost an HPACK
    # decode of up to `max_header_list_size`; a legit client meets the refusal once).
    oversized_header_cost_bytes: int = 1024
    # -- flow control and buffers --------------------------------------------------------------
    stream_window: int = 4 << 20  # SETTINGS_INITIAL_WINDOW_SIZE we grant each stream
    conn_window: int = 16 << 20  # what we grant the connection
    # gRPC request message limit: a length prefix above it is RESOURCE_EXHAUSTED at once (grpc-go's
    # MaxRecvMsgSize, which etcd sets to --max-request-bytes + 512 KiB).
    max_recv_message: int = 1536 * 1024 + GRPC_OVERHEAD
    # Bytes held in unfinished request messages of one connection; the call whose DATA goes past it
    # is refused (RESOURCE_EXHAUSTED).
    max_buffered_request_bytes: int = 64 << 20
    # Output handed to the transport while its buffer is below this; more waits on the streams.
    write_high_water: int = 256 << 10
    # Control frames answered (SETTINGS/PING ACKs, RST_STREAMs) not yet taken by the kernel: past
    # it, GOAWAY ENHANCE_YOUR_CALM (Go's net/http2: maxQueuedControlFrames 10000).
    max_queued_control_frames: int = 10_000
    # -- fairness ------------------------------------------------------------------------------
    # Work one connection may do per event loop turn before it yields (reading paused until the
    # next turn): frames, and bytes of frames.
    frames_per_turn: int = 256
    bytes_per_turn: int = 256 << 10
    # Header-block bytes (compressed, as received) HPACK-decoded per turn. Decoding is pure Python
    # (Huffman: ~0.4-0.7 us per byte, about a hundred times the cost of a DATA byte), so header blocks
    # have their own budget: a block larger than what is left is still decoded whole (HPACK state is
    # the connection's), and the excess is a debt the connection pays by sitting out later turns
    # without reading. Legit calls send tens of bytes per HEADERS (HPACK indexes repeated fields).
    header_bytes_per_turn: int = 16 << 10
    # -- timeouts (seconds; 0 disables) --------------------------------------------------------
    preface_timeout: float = 10.0  # Go net/http2 prefaceTimeout: client preface + first SETTINGS
    settings_ack_timeout: float = 10.0  # our SETTINGS unacknowledged: GOAWAY SETTINGS_TIMEOUT
    idle_timeout: float = 0.0  # no open stream for this long: GOAWAY NO_ERROR (grpc-go MaxConnectionIdle)
    # -- keepalive (etcd's --grpc-keepalive-* flags, grpc-go's enforcement) ------------------------
    keepalive_min_time: float = 5.0  # --grpc-keepalive-min-time
    keepalive_interval: float = 2 * 3600.0  # --grpc-keepalive-interval
    keepalive_timeout: float = 20.0  # --grpc-keepalive-timeout
    max_ping_strikes: int = 2  # grpc-go: the third bad ping is one too many
    # -- shutdown ------------------------------------------------------------------------------
    shutdown_grace: float = 2.0  # a stopping member waits this long for unary calls in flight

    def replace(self, **changes: object) -> Limits:
        # field types checked by dataclasses
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> Limits:
        return cls(
            max_concurrent_streams=cfg.max_concurrent_streams,
            max_recv_message=cfg.max_request_bytes + GRPC_OVERHEAD,
            keepalive_min_time=cfg.grpc_keepalive_min_time,
            keepalive_interval=cfg.grpc_keepalive_interval,
            keepalive_timeout=cfg.grpc_keepalive_timeout,
        )


DEFAULT = Limits()
