"""The sequential specification the linearizability search checks against: etcd's keys with revisions.

A partition of the history covers a group of keys (usually one). Its state is a tuple with one
entry per key of the group:

    (value, mod, create, version, lease, floor)

`value` is None when the key is absent (then mod = create = version = lease = 0). `floor` is the
highest revision of any operation linearized on this key so far: a write at revision R needs
R > floor, a read served at header revision R needs R >= floor. So inside a key, the linearization
order is also revision order, which is what makes per-key partitions sound for a store whose
revisions are one global clock (see linearizability.py).

A write whose revision is unknown (its response was lost and the event log could not place it)
stores mod = -(floor + 1): "some revision >= floor + 1". The first read that observes the key
binds it to the revision it saw; an equality compare may bind it too. This loses a little
precision (later writes are only checked against the floor), never soundness.

Each operation is compiled to a `Step`: compares and the two branches of requests, restricted to
this group's keys, with `ki` = index of the key in the group.
"""

from __future__ import annotations

from typing import Any

from .history import KV

GET, PUT, DEL, REVOKE = 0, 1, 2, 3

NO_OBS: Any = object()  # a GET whose result is unknown (indeterminate operation)

KeyState = tuple  # (value, mod, create, version, lease, floor)
State = tuple  # tuple[KeyState, ...]


def absent(floor: int = 0) -> KeyState:
    return (None, 0, 0, 0, 0, floor)


def from_kv(kv: KV | None, floor: int = 0) -> KeyState:
    if kv is None:
        return absent(floor)
    return (kv.value, kv.mod, kv.create, kv.version, kv.lease, max(floor, kv.mod))


class Step:
    """One operation (or its share on this partition's keys) as the model executes it."""

    __slots__ = ("cmps", "fail", "invoke", "keys", "op_id", "outcome", "ret", "revision", "succ")

    def __init__(
        self,
        op_id: int,
        invoke: int,
        ret: int,
        outcome: bool | None,
        revision: int,
        cmps: tuple[tuple[int, str, str, Any], ...],
        succ: tuple[tuple[int, int, Any, Any], ...],
        fail: tuple[tuple[int, int, Any, Any], ...],
    ) -> None:
        self.op_id = op_id
        self.invoke = invoke
        self.ret = ret
        self.outcome = outcome  # which branch ran: True / False / None = unknown, decided by compares
        self.revision = revision  # header revision, 0 = unknown
        self.cmps = cmps  # (ki, target, op, operand)
        self.succ = succ  # (kind, ki, a, b): GET obs / PUT value,lease / DEL deleted|-1 / REVOKE lease
        self.fail = fail

    def __repr__(self) -> str:
        return f"Step(op={self.op_id}, rev={self.revision}, outcome={self.outcome})"


def _cmp(a: Any, op: str, b: Any) -> bool:
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    return a > b


def _compare_options(ks: KeyState, target: str, op: str, operand: Any) -> list[tuple[KeyState, bool]]:
    """Possible (state, result) of one compare; two options only when a revision is still unknown."""
    value, mod, create, version, lease, floor = ks
    if target == "value":
        # etcd: a value compare on a missing key is always false
        return [(ks, False)] if value is None else [(ks, _cmp(value, op, operand))]
    if target == "version":
        return [(ks, _cmp(version, op, operand))]
    if target == "lease":
        return [(ks, _cmp(lease, op, operand))]
    x = mod if target == "mod" else create
    if x >= 0:  # known (0 when absent, as etcd compares a missing key's zero kv)
        return [(ks, _cmp(x, op, operand))]
    lb = -x  # unknown revision, known to be >= lb

    def bound() -> KeyState:
        if target == "mod":
            return (value, operand, create, version, lease, floor)
        return (value, mod, operand, version, lease, floor)

    if op in ("=", "!="):
        if operand < lb:
            return [(ks, op == "!=")]
        eq = bound()
        return [(eq, op == "="), (ks, op == "!=")]
    if op == "<":
        return [(ks, True), (ks, False)] if operand > lb else [(ks, False)]
    return [(ks, True), (ks, False)] if operand >= lb else [(ks, True)]


def _eval_compares(states: State, cmps: tuple) -> list[tuple[State, bool]]:
    options: list[tuple[State, bool]] = [(states, True)]
    for ki, target, op, operand in cmps:
        nxt: list[tuple[State, bool]] = []
        for sts, acc in options:
            if not acc:  # the transaction already fails; later compares cannot change that
                nxt.append((sts, False))
                continue
            for ks, res in _compare_options(sts[ki], target, op, operand):
                if ks is not sts[ki]:
                    sts = sts[:ki] + (ks,) + sts[ki + 1 :]
                nxt.append((sts, res))
        options = nxt
    return options


def _observe(ks: KeyState, obs: KV | None) -> KeyState | None:
    value, mod, create, version, lease, floor = ks
    if obs is None:
        return ks if value is None else None
    if value is None or obs.value != value or obs.version != version or obs.lease != lease:
        return None
    if mod > 0:
        if obs.mod != mod:
            return None
    elif obs.mod < -mod:
        return None
    if create > 0:
        if obs.create != create:
            return None
    elif obs.create < -create:
        return None
    if mod > 0 and create > 0:
        return ks
    return (value, obs.mod, obs.create, version, lease, floor)


def _apply(sts: State, reqs: tuple, revision: int, touched: int) -> State | None:
    """Run one branch; then enforce the revision rules on every key the operation touched."""
    cur = list(sts)
    written = 0
    for kind, ki, a, b in reqs:
        ks = cur[ki]
        touched |= 1 << ki
        if kind == GET:
            if a is not NO_OBS:
                ks = _observe(ks, a)
                if ks is None:
                    return None
        elif kind == PUT:
            value, _mod, create, version, _lease, floor = ks
            rev = revision if revision else -(floor + 1)
            if value is None:
                ks = (a, rev, rev, 1, b, floor)
            else:
                ks = (a, rev, create, version + 1, b, floor)
            written |= 1 << ki
        elif kind == DEL:
            present = ks[0] is not None
            if a >= 0 and a != present:
                return None
            if present:
                ks = (None, 0, 0, 0, 0, ks[5])
                written |= 1 << ki
        else:  # REVOKE: deletes the key only if it is still attached to the lease
            if ks[0] is not None and ks[4] == a:
                ks = (None, 0, 0, 0, 0, ks[5])
                written |= 1 << ki
        cur[ki] = ks
    if revision:
        ki = 0
        while touched:
            if touched & 1:
                ks = cur[ki]
                floor = ks[5]
                if (written >> ki) & 1:
                    if revision <= floor:
                        return None
                elif revision < floor:
                    return None
                if floor != revision:
                    cur[ki] = (ks[0], ks[1], ks[2], ks[3], ks[4], revision)
            touched >>= 1
            ki += 1
    return tuple(cur)


def step(states: State, s: Step) -> list[State]:
    """All states the operation can lead to from `states` (empty: it cannot be linearized here)."""
    cmps = s.cmps
    if not cmps:
        reqs = s.succ if s.outcome is not False else s.fail
        ns = _apply(states, reqs, s.revision, 0)
        return [] if ns is None else [ns]
    touched = 0
    for c in cmps:
        touched |= 1 << c[0]
    out: list[State] = []
    for sts, res in _eval_compares(states, cmps):
        if s.outcome is None:
            branch = res
        elif res is not s.outcome:
            continue
        else:
            branch = res
        ns = _apply(sts, s.succ if branch else s.fail, s.revision, touched)
        if ns is not None and ns not in out:
            out.append(ns)
    return out


def describe(states: State, keys: list[bytes]) -> str:
    parts = []
    for k, (value, mod, create, version, lease, floor) in zip(keys, states):
        if value is None:
            parts.append(f"{k!r}: absent (floor {floor})")
        else:
            parts.append(
                f"{k!r}: {value!r} mod={mod} create={create} ver={version} lease={lease} floor={floor}"
            )
    return "; ".join(parts)
