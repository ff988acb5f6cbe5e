"""etcd-compatible authentication and authorization: the auth store (replicated through Raft),
tokens (simple and JWT), and the permission checks the server makes on every request."""

from etcdstore.auth.hooks import AuthHooks, hooks_of, install

__all__ = ["AuthHooks", "hooks_of", "install"]
