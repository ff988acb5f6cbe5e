"""The client-facing gRPC server: HTTP/2 and gRPC framing on the event loop (see connection.py for why)."""

from etcdstore.api.h2.calls import CallContext, Router
from etcdstore.api.h2.connection import Connections, H2Connection, certificate_cn

__all__ = ["CallContext", "Connections", "H2Connection", "Router", "certificate_cn"]
