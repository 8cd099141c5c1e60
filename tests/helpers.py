"""Waiting on conditions with a deadline, so no test sleeps and hopes.

Import from any test module as ``from helpers import wait_until, async_wait_until``: under pytest's default
("prepend") import mode, the directory holding tests/conftest.py is on sys.path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 0.02


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message} (last: {result!r})")
        time.sleep(interval_s)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: str = "condition",
) -> T:
    """Like wait_until, for a sync or async predicate, yielding to the event loop between tries."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = predicate()
        result = await outcome if inspect.isawaitable(outcome) else outcome
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message} (last: {result!r})")
        await asyncio.sleep(interval_s)
