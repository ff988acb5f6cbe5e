"""Pure manifest builders: typed spec in, Kubernetes object (a dict) out. No I/O here."""
