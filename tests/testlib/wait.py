"""Waiting on conditions instead of sleeping.

    eventually(lambda: member.status().leader != 0, timeout=30)
    value = eventually(lambda: get(key), ignoring=(grpc.RpcError,))        # the first truthy result
    await eventually_async(lambda: client.get(b"k"), ignoring=(EtcdError,))  # sync or async predicate

A test that sleeps "long enough" for replication or a watch to register is slow when the machine is
idle and flaky when it is loaded; these poll a real condition and fail with what they last saw.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


Message = str | Callable[[], str]


def _failure(message: Message, timeout: float, last: object, error: BaseException | None) -> AssertionError:
    what = (message() if callable(message) else message) or "condition"
    seen = f"last error: {error!r}" if error is not None else f"last result: {last!r}"
    return AssertionError(f"{what} not met within {timeout}s ({seen})")


def eventually(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    ignoring: tuple[type[BaseException], ...] = (AssertionError,),
    message: Message = "",
) -> T:
    """Call `predicate` until it returns a truthy value and return that value.

    An exception of a type in `ignoring` counts as "not yet" (so a predicate may `assert`); any other
    exception propagates. After `timeout` seconds, raises AssertionError naming `message` (a function
    is called then, for what the state is at the time) and the last result or error. The predicate runs
    at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: object = None
        error: BaseException | None = None
        try:
            last = predicate()
        except ignoring as e:
            error = e
        else:
            if last:
                return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(message, timeout, last, error) from error
        time.sleep(min(interval, remaining))


async def eventually_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    ignoring: tuple[type[BaseException], ...] = (AssertionError,),
    message: Message = "",
) -> T:
    """`eventually` for a coroutine: `predicate` may be a plain function or return an awaitable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last: object = None
        error: BaseException | None = None
        try:
            got = predicate()
            last = await got if inspect.isawaitable(got) else got
        except ignoring as e:
            error = e
        else:
            if last:
                return last
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _failure(message, timeout, last, error) from error
        await asyncio.sleep(min(interval, remaining))
