"""TLS and other security plumbing."""
