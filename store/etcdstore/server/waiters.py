"""Futures that the apply loop resolves: by request ID, and by applied index."""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
from typing import Any


class RequestWaiters:
    """Clients waiting for the entry carrying their request ID to be applied."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[Any]] = {}

    def register(self, req_id: int) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        self._futures[req_id] = fut
        return fut

    def wanted(self, req_id: int) -> bool:
        return req_id in self._futures

    def resolve(self, req_id: int, result: Any) -> None:
        fut = self._futures.pop(req_id, None)
        if fut is not None and not fut.done():
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def forget(self, req_id: int) -> None:
        self._futures.pop(req_id, None)

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiter, each with its own copy of `error` (one exception object raised in many
        tasks would collect all their tracebacks)."""
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(copy.copy(error))

    def __len__(self) -> int:
        return len(self._futures)


class IndexWaiters:
    """Coroutines waiting until the applied index reaches a value."""

    __slots__ = ("_heap", "_seq", "applied")

    def __init__(self, applied: int = 0) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.applied = applied

    def wait(self, index: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        if index <= self.applied:
            fut.set_result(None)
        else:
            heapq.heappush(self._heap, (index, next(self._seq), fut))
        return fut

    def advance(self, applied: int) -> None:
        self.applied = applied
        heap = self._heap
        while heap and heap[0][0] <= applied:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiter, each with its own copy of `error`."""
        heap, self._heap = self._heap, []
        for _, _, fut in heap:
            if not fut.done():
                fut.set_exception(copy.copy(error))
