"""What a robustness run records: client operations, watch streams and the store's event log.

Pure data, no I/O besides (de)serialisation to JSON so a failed run's history can be saved and
re-checked offline (`python -m robustness.checker history.json`).

Every key-value request is stored as a transaction (`Operation` with compares and two branches):
a plain Range/Put/DeleteRange is a transaction with no compares whose success branch holds that
one request. That keeps the checker's model to one shape; `label` remembers what was really sent.

Times are `time.monotonic_ns()` of the recording process. An operation whose outcome is unknown
(timeout, connection lost) keeps `ret = INF` and `status = UNKNOWN`: it may or may not have taken
effect, at any point after its invocation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

INF = 1 << 62  # return time of an operation that never returned

OK = "ok"  # the server answered: results and header revision are known
FAIL = "fail"  # a definite error: the request had no effect (e.g. lease not found, connection refused)
UNKNOWN = "unknown"  # timeout / connection lost: may or may not have taken effect

TXN = "txn"
LEASE_GRANT = "lease_grant"
LEASE_REVOKE = "lease_revoke"

GET = "get"
PUT = "put"
DELETE = "delete"


class KV(NamedTuple):
    key: bytes
    value: bytes
    create: int
    mod: int
    version: int
    lease: int


class Compare(NamedTuple):
    key: bytes
    target: str  # "value" | "mod" | "create" | "version" | "lease"
    op: str  # "=" | "!=" | "<" | ">"
    operand: bytes | int


class Request(NamedTuple):
    """One request inside a transaction branch."""

    kind: str  # GET | PUT | DELETE
    key: bytes
    range_end: bytes = b""  # GET only: b"" is the single key, else the range [key, range_end)
    value: bytes = b""
    lease: int = 0


class Event(NamedTuple):
    """One watch event: PUT carries the new key-value, DELETE a kv with only key and mod set."""

    type: str  # PUT | DELETE
    kv: KV

    @property
    def revision(self) -> int:
        return self.kv.mod


@dataclass(slots=True)
class Operation:
    id: int
    client: int
    kind: str  # TXN | LEASE_GRANT | LEASE_REVOKE
    invoke: int
    ret: int = INF
    status: str = UNKNOWN
    error: str = ""
    label: str = ""  # what was sent: get / put / delete / cas / list / txn2 / ...
    compares: tuple[Compare, ...] = ()
    success: tuple[Request, ...] = ()
    failure: tuple[Request, ...] = ()
    lease: int = 0  # LEASE_GRANT: the granted id; LEASE_REVOKE: the revoked id
    revision: int = 0  # response header revision, 0 when unknown
    succeeded: bool | None = None  # TXN: which branch ran (plain requests: True)
    # per request of the branch that ran: GET -> tuple[KV, ...]; PUT -> None; DELETE -> deleted count
    results: tuple[Any, ...] = ()

    def branch(self) -> tuple[Request, ...]:
        return self.success if self.succeeded is not False else self.failure

    def writes_values(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of every put either branch may perform."""
        return [(r.key, r.value) for r in (*self.success, *self.failure) if r.kind == PUT]


@dataclass(slots=True)
class WatchResponse:
    time: int
    header_revision: int
    events: tuple[Event, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    progress: bool = False  # no events, not created/canceled: a progress notification


@dataclass(slots=True)
class WatchSession:
    """One watch stream: from its creation until it ended (error, cancel, or end of run)."""

    endpoint: str
    key: bytes
    range_end: bytes
    start_revision: int  # as requested; 0 means "from now"
    responses: list[WatchResponse] = field(default_factory=list)
    end: str = ""  # why it ended: "" (still open at the end of the run), or the error


@dataclass(slots=True)
class Watcher:
    """A client-side watcher that resumes after each broken stream from the last revision it saw + 1."""

    id: int
    sessions: list[WatchSession] = field(default_factory=list)


@dataclass(slots=True)
class History:
    operations: list[Operation] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)
    # the store's complete event log (a watch from revision 1 after the run), one list per member
    logs: dict[str, list[Event]] = field(default_factory=dict)
    final_revision: int = 0
    # each member's content at final_revision (a serializable range) and its HashKV there
    final_state: dict[str, list[KV]] = field(default_factory=dict)
    hash_kv: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # run parameters, faults injected, timings

    def log(self) -> list[Event]:
        """The event log all members agree on (the first member's; `checker` compares them)."""
        return next(iter(self.logs.values()), [])

    # -- serialisation ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "operations": [_op_to_json(o) for o in self.operations],
            "watchers": [
                {"id": w.id, "sessions": [_session_to_json(s) for s in w.sessions]} for w in self.watchers
            ],
            "logs": {m: [_event_to_json(e) for e in evs] for m, evs in self.logs.items()},
            "final_revision": self.final_revision,
            "final_state": {m: [_kv_to_json(kv) for kv in kvs] for m, kvs in self.final_state.items()},
            "hash_kv": self.hash_kv,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> History:
        return cls(
            operations=[_op_from_json(o) for o in d["operations"]],
            watchers=[
                Watcher(w["id"], [_session_from_json(s) for s in w["sessions"]]) for w in d["watchers"]
            ],
            logs={m: [_event_from_json(e) for e in evs] for m, evs in d["logs"].items()},
            final_revision=d["final_revision"],
            final_state={m: [_kv_from_json(kv) for kv in kvs] for m, kvs in d.get("final_state", {}).items()},
            hash_kv=d.get("hash_kv", {}),
            meta=d.get("meta", {}),
        )

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, separators=(",", ":"))

    @classmethod
    def load(cls, path: str) -> History:
        with open(path) as f:
            return cls.from_json(json.load(f))


# JSON has no bytes: keys and values travel as latin-1 strings, which round-trip every byte.


def _b(x: bytes) -> str:
    return x.decode("latin-1")


def _ub(x: str) -> bytes:
    return x.encode("latin-1")


def _kv_to_json(kv: KV) -> list[Any]:
    return [_b(kv.key), _b(kv.value), kv.create, kv.mod, kv.version, kv.lease]


def _kv_from_json(x: list[Any]) -> KV:
    return KV(_ub(x[0]), _ub(x[1]), x[2], x[3], x[4], x[5])


def _req_to_json(r: Request) -> list[Any]:
    return [r.kind, _b(r.key), _b(r.range_end), _b(r.value), r.lease]


def _req_from_json(x: list[Any]) -> Request:
    return Request(x[0], _ub(x[1]), _ub(x[2]), _ub(x[3]), x[4])


def _cmp_to_json(c: Compare) -> list[Any]:
    operand = _b(c.operand) if isinstance(c.operand, bytes) else c.operand
    return [_b(c.key), c.target, c.op, operand]


def _cmp_from_json(x: list[Any]) -> Compare:
    operand = _ub(x[3]) if isinstance(x[3], str) else x[3]
    return Compare(_ub(x[0]), x[1], x[2], operand)


def _result_to_json(r: Any) -> Any:
    if isinstance(r, tuple):
        return [_kv_to_json(kv) for kv in r]
    return r


def _result_from_json(r: Any) -> Any:
    if isinstance(r, list):
        return tuple(_kv_from_json(kv) for kv in r)
    return r


def _op_to_json(o: Operation) -> dict[str, Any]:
    return {
        "id": o.id,
        "client": o.client,
        "kind": o.kind,
        "invoke": o.invoke,
        "ret": o.ret,
        "status": o.status,
        "error": o.error,
        "label": o.label,
        "compares": [_cmp_to_json(c) for c in o.compares],
        "success": [_req_to_json(r) for r in o.success],
        "failure": [_req_to_json(r) for r in o.failure],
        "lease": o.lease,
        "revision": o.revision,
        "succeeded": o.succeeded,
        "results": [_result_to_json(r) for r in o.results],
    }


def _op_from_json(d: dict[str, Any]) -> Operation:
    return Operation(
        id=d["id"],
        client=d["client"],
        kind=d["kind"],
        invoke=d["invoke"],
        ret=d["ret"],
        status=d["status"],
        error=d["error"],
        label=d["label"],
        compares=tuple(_cmp_from_json(c) for c in d["compares"]),
        success=tuple(_req_from_json(r) for r in d["success"]),
        failure=tuple(_req_from_json(r) for r in d["failure"]),
        lease=d["lease"],
        revision=d["revision"],
        succeeded=d["succeeded"],
        results=tuple(_result_from_json(r) for r in d["results"]),
    )


def _event_to_json(e: Event) -> list[Any]:
    return [e.type, _kv_to_json(e.kv)]


def _event_from_json(x: list[Any]) -> Event:
    return Event(x[0], _kv_from_json(x[1]))


def _session_to_json(s: WatchSession) -> dict[str, Any]:
    return {
        "endpoint": s.endpoint,
        "key": _b(s.key),
        "range_end": _b(s.range_end),
        "start_revision": s.start_revision,
        "end": s.end,
        "responses": [
            [
                r.time,
                r.header_revision,
                [_event_to_json(e) for e in r.events],
                r.created,
                r.canceled,
                r.compact_revision,
                r.progress,
            ]
            for r in s.responses
        ],
    }


def _session_from_json(d: dict[str, Any]) -> WatchSession:
    return WatchSession(
        endpoint=d["endpoint"],
        key=_ub(d["key"]),
        range_end=_ub(d["range_end"]),
        start_revision=d["start_revision"],
        end=d["end"],
        responses=[
            WatchResponse(r[0], r[1], tuple(_event_from_json(e) for e in r[2]), r[3], r[4], r[5], r[6])
            for r in d["responses"]
        ],
    )
