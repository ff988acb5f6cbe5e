"""The client-facing gRPC server: HTTP/2 and gRPC framing on the event loop (see connection.py for why)."""

from etcdstore.api.h2.calls import CallContext, Router
from etcdstore.api.h2.connection import H2Connection

__all__ = ["CallContext", "H2Connection", "Router"]
