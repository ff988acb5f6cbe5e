"""Endpoints, TLS settings and the lazily created gRPC channel per endpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from etcdstore.client.methods import Method

DEFAULT_PORT = 2379

# Reconnect quickly after a member restarts: gRPC's default backoff grows to 120 s, during which
# every call to that member fails at once. Message sizes are left to the server to police, so a
# too-large request gets etcd's own "request is too large" rather than a client-side error.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True)
class TLSConfig:
    """Files for a TLS connection. All optional: no CA means the system roots; cert+key enable
    client-certificate auth; server_name overrides the name checked against the server cert."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: str | Path | None) -> bytes | None:
            return Path(p).read_bytes() if p is not None else None

        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLSConfig needs both cert_file and key_file, or neither")
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


@dataclass(frozen=True)
class Endpoint:
    target: str  # "host:port" as gRPC dials it
    secure: bool

    def __str__(self) -> str:
        return self.target


def parse_endpoint(text: str, *, tls: TLSConfig | None) -> Endpoint:
    """ "host:port", "http://host:port" or "https://host:port" (a path after the port is ignored)."""
    text = text.strip()
    secure = tls is not None
    if "://" in text:
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported endpoint scheme {scheme!r} in {text!r}")
        secure = scheme == "https"
        text = rest
    text = text.split("/", 1)[0]
    if not text:
        raise ValueError("empty endpoint")
    if text.startswith("["):
        has_port = "]:" in text
    elif text.count(":") > 1:  # a bare IPv6 address
        text, has_port = f"[{text}]", False
    else:
        has_port = ":" in text
    if not has_port:
        text = f"{text}:{DEFAULT_PORT}"
    return Endpoint(text, secure)


def parse_endpoints(endpoints: Sequence[str] | str, *, tls: TLSConfig | None) -> list[Endpoint]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = [parse_endpoint(e, tls=tls) for e in items if e.strip()]
    if not parsed:
        raise ValueError("no endpoints given")
    return parsed


class Connection:
    """One endpoint's channel and its method callables (built once, reused for every call)."""

    __slots__ = ("_calls", "channel", "endpoint")

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self._calls: dict[str, Callable[..., Any]] = {}

    def callable(self, method: Method) -> Callable[..., Any]:
        call = self._calls.get(method.path)
        if call is None:
            factory = getattr(self.channel, method.kind)
            call = factory(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            self._calls[method.path] = call
        return call


class ChannelPool:
    """Channels by endpoint target, created on first use inside the running event loop."""

    def __init__(self, tls: TLSConfig | None, options: Sequence[tuple[str, Any]] = ()) -> None:
        self._tls = tls
        self._credentials: grpc.ChannelCredentials | None = None
        merged = dict(DEFAULT_CHANNEL_OPTIONS)
        merged.update(dict(options))
        if tls is not None and tls.server_name:
            merged["grpc.ssl_target_name_override"] = tls.server_name
        self._options = tuple(merged.items())
        self._conns: dict[str, Connection] = {}

    def get(self, endpoint: Endpoint) -> Connection:
        conn = self._conns.get(endpoint.target)
        if conn is None:
            if endpoint.secure:
                if self._credentials is None:
                    self._credentials = (self._tls or TLSConfig()).credentials()
                channel = grpc.aio.secure_channel(endpoint.target, self._credentials, self._options)
            else:
                channel = grpc.aio.insecure_channel(endpoint.target, self._options)
            conn = Connection(endpoint, channel)
            self._conns[endpoint.target] = conn
        return conn

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.channel.close()
