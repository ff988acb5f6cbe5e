"""etcd's client-visible errors: each a gRPC status code and an exact message.

Clients (etcdctl, clientv3, Kubernetes) match on the message text, so every layer
raises one of these constants (or `EtcdError(code, message)` for a new one) and the
API layer turns it into the gRPC status unchanged. Codes and messages follow etcd 3.4.

A constant is a value, never raised itself: `raise errors.NO_SPACE()` raises a fresh
exception equal to it (same code and message; `==`, `in` and dict lookups by the
constant keep working). Raising the shared object would make every raise, from every
task, write its traceback, cause and context into it, keeping the frames alive.
"""

from __future__ import annotations

from grpc import StatusCode


class EtcdError(Exception):
    """An error with the gRPC status a client must see."""

    __slots__ = ("code", "message")

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable across processes
        return (EtcdError, (self.code, self.message))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"

    def __call__(self) -> EtcdError:
        """A fresh exception equal to this one, to raise: `raise errors.TIMEOUT()`."""
        return EtcdError(self.code, self.message)


_C = StatusCode

# KV / MVCC
EMPTY_KEY = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
COMPACTED = EtcdError(_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = EtcdError(_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = EtcdError(_C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
# etcd 3.5's answer to an unknown sort order or target (etcd 3.4 crashes on them).
INVALID_SORT_OPTION = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: invalid sort option")

# Lease
LEASE_NOT_FOUND = EtcdError(_C.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = EtcdError(_C.OUT_OF_RANGE, "etcdserver: too large lease TTL")

# Watch
WATCH_CANCELED = EtcdError(_C.CANCELLED, "etcdserver: watch canceled")

# Membership
MEMBER_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED = EtcdError(
    _C.FAILED_PRECONDITION, "etcdserver: re-configuration failed due to not enough started members"
)
MEMBER_BAD_URLS = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = EtcdError(_C.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = EtcdError(
    _C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member which is in sync with leader"
)
TOO_MANY_LEARNERS = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster")

# Request limits
REQUEST_TOO_LARGE = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_REQUESTS = EtcdError(_C.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

# Auth
ROOT_USER_NOT_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_EMPTY = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_ALREADY_EXIST = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: role name is empty")
AUTH_FAILED = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = EtcdError(_C.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = EtcdError(
    _C.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
AUTH_NOT_ENABLED = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = EtcdError(_C.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: invalid auth management")
AUTH_OLD_REVISION = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")

# Server / cluster state
NO_LEADER = EtcdError(_C.UNAVAILABLE, "etcdserver: no leader")
NOT_LEADER = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: not leader")
LEADER_CHANGED = EtcdError(_C.UNAVAILABLE, "etcdserver: leader changed")
NOT_CAPABLE = EtcdError(_C.UNAVAILABLE, "etcdserver: not capable")
STOPPED = EtcdError(_C.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT = EtcdError(_C.UNAVAILABLE, "etcdserver: request timed out")
TIMEOUT_DUE_TO_LEADER_FAIL = EtcdError(
    _C.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"
)
TIMEOUT_DUE_TO_CONNECTION_LOST = EtcdError(
    _C.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"
)
TIMEOUT_WAIT_APPLIED_INDEX = EtcdError(
    _C.UNAVAILABLE, "etcdserver: request timed out, waiting for the applied index took too long"
)
UNHEALTHY = EtcdError(_C.UNAVAILABLE, "etcdserver: unhealthy cluster")
CORRUPT = EtcdError(_C.DATA_LOSS, "etcdserver: corrupt cluster")
# etcd 3.4 answers Unavailable here (3.5 changed it to FailedPrecondition); we follow 3.4.
NOT_SUPPORTED_FOR_LEARNER = EtcdError(_C.UNAVAILABLE, "etcdserver: rpc not supported for learner")
BAD_LEADER_TRANSFEREE = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
REQUEST_CANCELED = EtcdError(_C.CANCELLED, "etcdserver: request canceled")

_BY_MESSAGE = {e.message: e for e in list(globals().values()) if isinstance(e, EtcdError)}


def from_message(message: str) -> EtcdError | None:
    """A fresh error equal to the known one with this exact message (used by clients to map
    server errors back), or None."""
    known = _BY_MESSAGE.get(message)
    return known() if known is not None else None
