"""Leader-side bookkeeping for ReadIndex requests awaiting a heartbeat quorum.

Each request is keyed by its context bytes (the caller makes them unique; a duplicate
context while the first is pending is ignored). A heartbeat round carrying a context
confirms leadership for that request and for every request queued before it.
"""

from __future__ import annotations

from etcdstore.raft.records import Message


class ReadIndexStatus:
    __slots__ = ("acks", "index", "request")

    def __init__(self, request: Message, index: int) -> None:
        self.request = request
        self.index = index
        self.acks: set[int] = set()


class ReadOnly:
    __slots__ = ("pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.entries[0].data
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, node_id: int, ctx: bytes) -> set[int] | None:
        status = self.pending.get(ctx)
        if status is None:
            return None
        status.acks.add(node_id)
        return status.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop and return every request up to and including `ctx` (all are now confirmed)."""
        try:
            k = self.queue.index(ctx)
        except ValueError:
            return []
        done = self.queue[: k + 1]
        del self.queue[: k + 1]
        return [self.pending.pop(c) for c in done]

    def last_pending_context(self) -> bytes:
        return self.queue[-1] if self.queue else b""
