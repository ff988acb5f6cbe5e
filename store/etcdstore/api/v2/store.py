"""etcd's v2 store operations, emulated on the v3 store.

Each operation reads the local v3 state, decides what etcd's v2 store would do (or which
error it would give), and writes the outcome as ONE v3 Txn through Raft. The Txn's compares
assert that everything the decision was based on is unchanged (mod revisions of the node and
its ancestors, emptiness of the levels below a directory); if another write got there first,
the operation starts over from the new state. So v2 writes are atomic and linearizable on any
member of a cluster, and survive restarts like any v3 data. A refused operation is confirmed
after a ReadIndex barrier, so a lagging member never reports a stale error.

TTLs are v3 leases granted (through Raft) before the Txn; see nodes.py for how directory
TTLs cover their contents.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from etcdstore import errors
from etcdstore.api.v2 import errors as v2e
from etcdstore.api.v2.errors import V2Error
from etcdstore.api.v2.nodes import (
    ACT_KEY,
    ROOT,
    Node,
    ancestors,
    decode,
    depth_of,
    encode,
    event_node,
    extern,
    is_hidden_name,
    level_prefix,
    node_key,
    parent_of,
    prefix_end,
)
from etcdstore.api.v2.stats import StoreStats
from etcdstore.logs import get_logger
from etcdstore.proto.etcdserverpb import rpc_pb2 as pb
from etcdstore.txn.requests import Kind

log = get_logger("etcdstore.v2")

_MAX_ATTEMPTS = 50
_MAX_ID = (1 << 63) - 1
_NS = 1_000_000_000

_C = pb.Compare
_MOD, _VERSION = _C.MOD, _C.VERSION
_EQUAL, _LESS = _C.EQUAL, _C.LESS


class Result:
    """A successful v2 operation: the event (as JSON-ready dict) and the store index after it."""

    __slots__ = ("created", "event", "index")

    def __init__(self, event: dict[str, Any], index: int, created: bool = False) -> None:
        self.event = event
        self.index = index
        self.created = created


class _Plan:
    """What one attempt of a write decided: the Txn, and how to describe its outcome."""

    __slots__ = ("compares", "drop_leases", "finish", "needs_lease", "ops")

    def __init__(self) -> None:
        self.compares: list[pb.Compare] = []
        self.ops: list[pb.RequestOp] = []
        self.finish: Callable[[int], Result] = lambda rev: Result({}, rev)
        self.drop_leases: list[int] = []
        self.needs_lease = False

    def same(self, key: bytes, mod_revision: int) -> None:
        self.compares.append(_C(target=_MOD, result=_EQUAL, key=key, mod_revision=mod_revision))

    def absent(self, key: bytes) -> None:
        self.compares.append(_C(target=_VERSION, result=_EQUAL, key=key, version=0))

    def unchanged_since(self, start: bytes, rev: int) -> None:
        """No key in the prefix range was written after `rev` (an empty range passes)."""
        self.compares.append(
            _C(target=_MOD, result=_LESS, key=start, range_end=prefix_end(start), mod_revision=rev + 1)
        )

    def empty(self, start: bytes) -> None:
        self.compares.append(
            _C(target=_VERSION, result=_EQUAL, key=start, range_end=prefix_end(start), version=0)
        )

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        self.ops.append(pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease)))

    def delete(self, key: bytes, prefix: bool = False) -> None:
        end = prefix_end(key) if prefix else b""
        self.ops.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end)))

    def act(self, action: str, path: str, now: int, refresh: bool = False) -> None:
        doc: dict[str, Any] = {"a": action, "p": path, "t": now}
        if refresh:
            doc["r"] = 1
        self.put(ACT_KEY, json.dumps(doc, separators=(",", ":")).encode())


def _eff(own_exp: int, own_lease: int, parent: tuple[int, int]) -> tuple[int, int, int]:
    """(lease, inherited expiration, effective expiration) of a node: the earlier of its own
    lease and the one its parent is attached to (the parent's wins ties)."""
    p_exp, p_lease = parent
    if own_lease and (not p_lease or own_exp < p_exp):
        return own_lease, 0, own_exp
    if p_lease:
        return p_lease, p_exp, p_exp
    return 0, 0, 0


class V2Store:
    def __init__(self, server: Any) -> None:
        self.s = server
        self.stats = StoreStats()

    # -- reads ------------------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self.s.kv.current_revision

    def lookup(self, path: str) -> Node | None:
        if path == "/":
            return ROOT
        rr = self.s.kv.range(node_key(path))
        return decode(rr.kvs[0]) if rr.kvs else None

    def _walk(self, path: str, rev: int) -> tuple[Node | None, list[tuple[str, Node | None]]]:
        """The node at `path` (None if missing) and its ancestors top-down, as far as they
        exist. Raises Not a directory if an ancestor is a file."""
        node = self.lookup(path)
        chain: list[tuple[str, Node | None]] = []
        missing = False  # below a missing directory nothing exists (no orphans are ever stored)
        for a in ancestors(path):
            n = None if missing else self.lookup(a)
            if n is None:
                missing = True
            elif not n.dir:
                raise V2Error(v2e.NOT_DIR, a, rev)
            chain.append((a, n))
        return node, chain

    def internal_get(self, path: str, rev: int) -> Node:
        """etcd's internalGet: the node, or Key not found / Not a directory naming the first
        component that is missing / a file."""
        node = self.lookup(path)
        if node is not None:
            return node
        for a in ancestors(path):
            n = self.lookup(a)
            if n is None:
                raise V2Error(v2e.KEY_NOT_FOUND, a, rev)
            if not n.dir:
                raise V2Error(v2e.NOT_DIR, a, rev)
        raise V2Error(v2e.KEY_NOT_FOUND, path, rev)

    def _level(self, dir_path: str, level: int) -> list[Node]:
        start = level_prefix(dir_path, level)
        return [decode(kv) for kv in self.s.kv.range(start, prefix_end(start)).kvs]

    def _has_children(self, path: str) -> bool:
        start = level_prefix(path, depth_of(path) + 1)
        return self.s.kv.range(start, prefix_end(start), count_only=True).count > 0

    def _subtree(self, path: str) -> list[list[Node]]:
        """Every level below `path` that has nodes, nearest first."""
        levels = []
        d = depth_of(path) + 1
        while True:
            nodes = self._level(path, d)
            if not nodes:
                return levels
            levels.append(nodes)
            d += 1

    async def get(self, path: str, recursive: bool, sorted_: bool, quorum: bool) -> Result:
        if quorum:
            await self._barrier()
        rev = self.index
        try:
            node = self.internal_get(path, rev)
        except V2Error:
            self.stats.inc("getsFail")
            raise
        now = time.time_ns()
        nodes = None
        if node.dir:
            nodes = self._listing(node, recursive, now)
        self.stats.inc("getsSuccess")
        return Result({"action": "get", "node": extern(node, now, nodes or None)}, rev)

    def _listing(self, node: Node, recursive: bool, now: int) -> list[dict]:
        """A directory's visible children (hidden ones skipped), key-ordered; with all their
        descendants if recursive (directories below show `nodes` only then)."""
        top: list[dict] = []
        if not recursive:
            for child in self._level(node.path, depth_of(node.path) + 1):
                if not is_hidden_name(child.path):
                    top.append(extern(child, now))
            return top
        shown: dict[str, list[dict]] = {node.path: top}
        for level in self._subtree(node.path):
            for child in level:
                siblings = shown.get(parent_of(child.path))
                if siblings is None or is_hidden_name(child.path):
                    continue  # under a hidden directory, or hidden itself
                if child.dir:
                    kids: list[dict] = []
                    siblings.append(extern(child, now, kids))
                    shown[child.path] = kids
                else:
                    siblings.append(extern(child, now))
        # extern() kept a reference to each `kids` list; drop the empty ones (omitempty).
        _prune_empty(top)
        return top

    # -- writes -----------------------------------------------------------------------------------

    async def set(self, path: str, is_dir: bool, value: str, expire: int | None, refresh: bool) -> Result:
        def plan(rev: int, now: int, lease: int) -> _Plan:
            p = _Plan()
            node, chain = self._walk(path, rev)
            val = value
            if refresh:
                if node is None:
                    self.internal_get(path, rev)  # raises the right Key not found
                    raise V2Error(v2e.KEY_NOT_FOUND, path, rev)
                val = node.value
            if path == "/":
                raise V2Error(v2e.ROOT_READ_ONLY, "/", rev)
            if node is not None and node.dir:
                raise V2Error(v2e.NOT_FILE, path, rev)
            parent_eff = self._create_parents(p, chain)
            own_exp, own_lease = (expire, lease) if expire is not None else (0, 0)
            p.needs_lease = expire is not None
            key = node_key(path)
            new_lease, inh, _ = _eff(own_exp, own_lease, parent_eff)
            if node is not None:
                p.same(key, node.mod_revision)
                if node.own_lease:
                    p.drop_leases.append(node.own_lease)
            else:
                p.absent(key)
            p.put(key, encode(is_dir, val, own_exp=own_exp, own_lease=own_lease, inh_exp=inh), new_lease)
            p.act("set", path, now, refresh)
            new = Node(path, is_dir, val, 0, 0, own_exp, own_lease)

            def finish(r: int) -> Result:
                new.created = new.modified = r
                ev = {"action": "set", "node": extern(new, now)}
                if node is not None:
                    ev["prevNode"] = extern(node, now)
                return Result(ev, r, created=node is None)

            p.finish = finish
            return p

        return await self._write("sets", plan, expire)

    async def create(self, path: str, is_dir: bool, value: str, unique: bool, expire: int | None) -> Result:
        def plan(rev: int, now: int, lease: int) -> _Plan:
            p = _Plan()
            target = path
            if unique:
                # etcd names in-order keys by the index they are created at. The v3 revision
                # is only known once applied, so the name is the next revision as seen now,
                # and the act key's revision is compared: no other v2 write in between, so
                # names still grow in creation order and are unique.
                target = _join(path, f"{rev + 1:020d}")
                act = self.s.kv.range(ACT_KEY).kvs
                p.same(ACT_KEY, act[0].mod_revision if act else 0)
            if target == "/":
                raise V2Error(v2e.ROOT_READ_ONLY, "/", rev)
            node, chain = self._walk(target, rev)
            parent_eff = self._create_parents(p, chain)
            if node is not None:
                raise V2Error(v2e.NODE_EXIST, target, rev)
            own_exp, own_lease = (expire, lease) if expire is not None else (0, 0)
            p.needs_lease = expire is not None
            key = node_key(target)
            p.absent(key)
            new_lease, inh, _ = _eff(own_exp, own_lease, parent_eff)
            p.put(key, encode(is_dir, value, own_exp=own_exp, own_lease=own_lease, inh_exp=inh), new_lease)
            p.act("create", target, now)
            new = Node(target, is_dir, value, 0, 0, own_exp, own_lease)

            def finish(r: int) -> Result:
                new.created = new.modified = r
                return Result({"action": "create", "node": extern(new, now)}, r, created=True)

            p.finish = finish
            return p

        return await self._write("create", plan, expire)

    async def update(self, path: str, value: str, expire: int | None, refresh: bool) -> Result:
        def plan(rev: int, now: int, lease: int) -> _Plan:
            p = _Plan()
            if path == "/":
                raise V2Error(v2e.ROOT_READ_ONLY, "/", rev)
            node = self.internal_get(path, rev)
            if node.dir and value:
                raise V2Error(v2e.NOT_FILE, path, rev)
            val = node.value if refresh else value
            own_exp, own_lease = (expire, lease) if expire is not None else (0, 0)
            p.needs_lease = expire is not None
            key = node_key(path)
            p.same(key, node.mod_revision)
            parent = self.lookup(parent_of(path)) or ROOT
            new_lease, inh, eff_exp = _eff(own_exp, own_lease, parent.effective)
            # etcd cannot write a directory's value, so its modifiedIndex stays.
            mi = node.modified if node.dir else 0
            p.put(
                key,
                encode(
                    node.dir,
                    val,
                    own_exp=own_exp,
                    own_lease=own_lease,
                    inh_exp=inh,
                    created=node.created,
                    modified=mi,
                ),
                new_lease,
            )
            if node.own_lease and node.own_lease != own_lease:
                p.drop_leases.append(node.own_lease)
            if node.dir and (new_lease, eff_exp) != (node.lease, node.effective[0]):
                self._release(p, node, (eff_exp, new_lease), rev)
            p.act("update", path, now, refresh)
            new = Node(path, node.dir, val, node.created, 0, own_exp, own_lease)

            def finish(r: int) -> Result:
                ev = {"action": "update", "node": extern(new, now, modified=r), "prevNode": extern(node, now)}
                return Result(ev, r)

            p.finish = finish
            return p

        return await self._write("update", plan, expire)

    async def compare_and_swap(
        self, path: str, prev_value: str, prev_index: int, value: str, expire: int | None, refresh: bool
    ) -> Result:
        def plan(rev: int, now: int, lease: int) -> _Plan:
            p = _Plan()
            if path == "/":
                raise V2Error(v2e.ROOT_READ_ONLY, "/", rev)
            node = self.internal_get(path, rev)
            if node.dir:
                raise V2Error(v2e.NOT_FILE, path, rev)
            _compare(node, prev_value, prev_index, rev)
            val = node.value if refresh else value
            own_exp, own_lease = (expire, lease) if expire is not None else (0, 0)
            p.needs_lease = expire is not None
            key = node_key(path)
            p.same(key, node.mod_revision)
            parent = self.lookup(parent_of(path)) or ROOT
            new_lease, inh, _ = _eff(own_exp, own_lease, parent.effective)
            p.put(
                key,
                encode(False, val, own_exp=own_exp, own_lease=own_lease, inh_exp=inh, created=node.created),
                new_lease,
            )
            if node.own_lease and node.own_lease != own_lease:
                p.drop_leases.append(node.own_lease)
            p.act("compareAndSwap", path, now, refresh)
            new = Node(path, False, val, node.created, 0, own_exp, own_lease)

            def finish(r: int) -> Result:
                new.modified = r
                return Result(
                    {"action": "compareAndSwap", "node": extern(new, now), "prevNode": extern(node, now)}, r
                )

            p.finish = finish
            return p

        return await self._write("compareAndSwap", plan, expire)

    async def delete(self, path: str, is_dir: bool, recursive: bool) -> Result:
        def plan(rev: int, now: int, lease: int) -> _Plan:
            p = _Plan()
            if path == "/":
                raise V2Error(v2e.ROOT_READ_ONLY, "/", rev)
            want_dir = is_dir or recursive
            node = self.internal_get(path, rev)
            key = node_key(path)
            p.same(key, node.mod_revision)
            p.delete(key)
            if node.own_lease:
                p.drop_leases.append(node.own_lease)
            if node.dir:
                if not want_dir:
                    raise V2Error(v2e.NOT_FILE, path, rev)
                d = depth_of(path)
                if not recursive:
                    if self._has_children(path):
                        raise V2Error(v2e.DIR_NOT_EMPTY, path, rev)
                    p.empty(level_prefix(path, d + 1))
                else:
                    levels = self._subtree(path)
                    for i, level in enumerate(levels):
                        p.delete(level_prefix(path, d + 1 + i), prefix=True)
                        p.drop_leases.extend(n.own_lease for n in level if n.own_lease)
                    # Nothing may appear below the deepest level read (it would be orphaned).
                    p.empty(level_prefix(path, d + 1 + len(levels)))
            p.act("delete", path, now)

            def finish(r: int) -> Result:
                return Result(
                    {
                        "action": "delete",
                        "node": event_node(path, node.created, r, node.dir),
                        "prevNode": extern(node, now),
                    },
                    r,
                )

            p.finish = finish
            return p

        return await self._write("delete", plan, None)

    async def compare_and_delete(self, path: str, prev_value: str, prev_index: int) -> Result:
        def plan(rev: int, now: int, lease: int) -> _Plan:
            p = _Plan()
            node = self.internal_get(path, rev)
            if node.dir:
                raise V2Error(v2e.NOT_FILE, "" if path == "/" else path, rev)
            _compare(node, prev_value, prev_index, rev)
            key = node_key(path)
            p.same(key, node.mod_revision)
            p.delete(key)
            if node.own_lease:
                p.drop_leases.append(node.own_lease)
            p.act("compareAndDelete", path, now)

            def finish(r: int) -> Result:
                return Result(
                    {
                        "action": "compareAndDelete",
                        "node": event_node(path, node.created, r, False),
                        "prevNode": extern(node, now),
                    },
                    r,
                )

            p.finish = finish
            return p

        return await self._write("compareAndDelete", plan, None)

    # -- plumbing ---------------------------------------------------------------------------------

    def _create_parents(self, p: _Plan, chain: list[tuple[str, Node | None]]) -> tuple[int, int]:
        """Compares for the existing ancestors, puts for the missing ones (plain directories
        created by this write); returns the (expiration, lease) the new node's parent has."""
        eff = (0, 0)
        for a, n in chain:
            key = node_key(a)
            if n is not None:
                p.same(key, n.mod_revision)
                eff = n.effective
            else:
                p.absent(key)
                p.put(key, encode(True, "", inh_exp=eff[0]), eff[1])
        return eff

    def _release(self, p: _Plan, top: Node, top_eff: tuple[int, int], rev: int) -> None:
        """A directory's lease changed: move every node below it to the lease it now
        inherits (or back to its own), keeping values and indexes."""
        effs = {top.path: top_eff}
        levels = self._subtree(top.path)
        d = depth_of(top.path)
        for i, level in enumerate(levels):
            p.unchanged_since(level_prefix(top.path, d + 1 + i), rev)
            for n in level:
                parent = effs.get(parent_of(n.path), (0, 0))
                lease, inh, exp = _eff(n.own_exp, n.own_lease, parent)
                effs[n.path] = (exp, lease)
                if (lease, exp) != (n.lease, n.effective[0]):
                    p.put(
                        node_key(n.path),
                        encode(
                            n.dir,
                            n.value,
                            own_exp=n.own_exp,
                            own_lease=n.own_lease,
                            inh_exp=inh,
                            created=n.created,
                            modified=n.modified,
                        ),
                        lease,
                    )
        p.empty(level_prefix(top.path, d + 1 + len(levels)))

    async def _barrier(self) -> None:
        try:
            await self.s.read_index()
        except errors.EtcdError as e:
            raise V2Error(v2e.RAFT_INTERNAL, e.message, 0) from None

    async def _write(
        self, stat: str, plan_fn: Callable[[int, int, int], _Plan], expire: int | None
    ) -> Result:
        s = self.s
        lease = 0
        confirmed = False
        try:
            for _ in range(_MAX_ATTEMPTS):
                rev = self.index
                now = time.time_ns()
                try:
                    plan = plan_fn(rev, now, lease)
                except V2Error:
                    if confirmed:
                        raise
                    # The local state may lag the leader: decide again after a barrier.
                    await self._barrier()
                    confirmed = True
                    continue
                if plan.needs_lease and not lease:
                    lease = await self._grant(expire or 0, now)
                    continue  # state may have moved while granting: plan again
                try:
                    s.quota.check(
                        sum(len(op.request_put.value) + 256 for op in plan.ops if op.HasField("request_put"))
                    )
                    resp = await s.propose(
                        Kind.TXN,
                        system=True,
                        payload=pb.TxnRequest(compare=plan.compares, success=plan.ops).SerializeToString(),
                    )
                except errors.EtcdError as e:
                    if e == errors.LEASE_NOT_FOUND:
                        # An inherited lease expired under us (its directory is going away).
                        await asyncio.sleep(0.05)
                        continue
                    raise V2Error(v2e.RAFT_INTERNAL, e.message, 0) from None
                if not resp.succeeded:
                    continue  # someone else wrote in between: decide again
                result = plan.finish(resp.header.revision)
                if plan.needs_lease:
                    lease = 0  # now owned by the node
                self._revoke_later(plan.drop_leases)
                self.stats.inc(_SUCCESS[stat])
                return result
            raise V2Error(v2e.RAFT_INTERNAL, "etcdserver: too many conflicting v2 writes", 0)
        except V2Error:
            self.stats.inc(_FAIL[stat])
            raise
        finally:
            if lease:
                self._revoke_later([lease])

    async def _grant(self, expire: int, now: int) -> int:
        lease_id = self.s.new_request_id() & _MAX_ID
        ttl = max(1, -(-(expire - now) // _NS))
        try:
            await self.s.propose(
                Kind.LEASE_GRANT, pb.LeaseGrantRequest(ID=lease_id, TTL=ttl).SerializeToString(), system=True
            )
        except errors.EtcdError as e:
            raise V2Error(v2e.RAFT_INTERNAL, e.message, 0) from None
        return lease_id

    def _revoke_later(self, leases: list[int]) -> None:
        """Leases no node uses any more go away in the background (they hold no keys)."""
        if not leases:
            return

        async def revoke() -> None:
            for lease_id in leases:
                try:
                    await self.s.propose(
                        Kind.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id).SerializeToString(), system=True
                    )
                except errors.EtcdError:
                    pass  # already expired, or the member is stopping: it expires by itself

        asyncio.get_running_loop().create_task(revoke())


_SUCCESS = {
    "sets": "setsSuccess",
    "create": "createSuccess",
    "update": "updateSuccess",
    "compareAndSwap": "compareAndSwapSuccess",
    "delete": "deleteSuccess",
    "compareAndDelete": "compareAndDeleteSuccess",
}
_FAIL = {k: v.replace("Success", "Fail") for k, v in _SUCCESS.items()}


def _compare(node: Node, prev_value: str, prev_index: int, rev: int) -> None:
    index_ok = prev_index == 0 or node.modified == prev_index
    value_ok = prev_value == "" or node.value == prev_value
    if index_ok and value_ok:
        return
    if index_ok:
        cause = f"[{prev_value} != {node.value}]"
    elif value_ok:
        cause = f"[{prev_index} != {node.modified}]"
    else:
        cause = f"[{prev_value} != {node.value}] [{prev_index} != {node.modified}]"
    raise V2Error(v2e.TEST_FAILED, cause, rev)


def _join(a: str, b: str) -> str:
    return ("" if a == "/" else a) + "/" + b


def _prune_empty(nodes: list[dict]) -> None:
    for d in nodes:
        kids = d.get("nodes")
        if kids is not None:
            if kids:
                _prune_empty(kids)
            else:
                del d["nodes"]
