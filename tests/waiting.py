"""
Waiting for a condition instead of sleeping for a time, which is either too short on a
loaded machine or wasted on a fast one. ``wait_until`` blocks, for plain test code that
drives services in subprocesses; ``eventually`` yields to the reactor, so a service
running in the test's own reactor keeps working while the test waits.

The reactor is imported inside the functions: ``conftest`` imports this module before
pytest-twisted has installed its reactor.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import TypeVar

T = TypeVar("T")


class _Deadline:
    """``timeout`` seconds from now; ``check()`` fails the test, naming ``what``, once they are over."""

    def __init__(self, timeout: float, what: str) -> None:
        self.at = time.monotonic() + timeout
        self.message = f"{what} did not hold within {timeout}s"

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise AssertionError(self.message)


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = 0.05) -> T:
    """Block until ``predicate()`` returns something true, and return it."""
    deadline = _Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
    return value


async def eventually(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, what: str = "condition", interval: float = 0.01
) -> T:
    """
    Poll ``predicate`` without blocking the reactor until it returns something true, and
    return it; a predicate may be a coroutine function (a page evaluation, an HTTP probe).
    """
    deadline = _Deadline(timeout, what)
    while not (value := await _result(predicate)):
        deadline.check()
        await sleep(interval)
    return value


async def _result(predicate: Callable[[], T | Awaitable[T]]) -> T:
    value = predicate()
    return await value if isawaitable(value) else value


async def sleep(seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
