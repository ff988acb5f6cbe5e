"""Client-facing APIs: gRPC services, the client-port multiplexer, HTTP endpoints."""
