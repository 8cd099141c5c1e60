"""The retry mover: retries and deferrals whose time has come move from the group's delayed set into its
retry stream, where the group's consumers read them like new entries.

It sleeps until the next one is due (the MOVE_DUE script says when) or until `wake_by` is moved earlier
by a settlement that scheduled a retry due sooner. It runs under supervision.py: an error it does not
expect restarts it, one it cannot get past stops the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _wire
from ..errors import ServerError, describe_error

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
MOVE_LIMIT = 1000  # retries moved per script call


class RetryMover:
    """Moves due retries of one group into its retry stream; `run()` returns once `done` is set."""

    def __init__(
        self,
        client: aioredis.Redis,
        delayed_key: str,
        retry_key: str,
        *,
        poll_ms: int,
        log: Any,
        paused: Callable[[], bool] = lambda: False,
        wait_resumed: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.delayed_key = delayed_key
        self.retry_key = retry_key
        self.poll_s = poll_ms / 1000
        self.log = log
        self.paused = paused  # the group is paused: retries wait in the delayed set
        self.wait_resumed = wait_resumed
        self.done = asyncio.Event()
        self._wakeup = asyncio.Event()
        self.wake_at = 0.0  # when it next looks for due retries (monotonic)

    def due_at(self, when: float) -> None:
        """A retry was scheduled for `when` (monotonic): wake up then if that is before the planned time."""
        if when < self.wake_at:
            self.wake_at = when
            self._wakeup.set()

    def stop(self) -> None:
        self.done.set()
        self._wakeup.set()

    async def run(self) -> None:
        link = _wire.Link(self.client)
        try:
            while not self.done.is_set():
                wait_s = self.poll_s
                if self.paused():
                    # Until resumed (or the pause state is first known, a moment after start), at most a
                    # poll interval.
                    if self.wait_resumed is not None:
                        self.wake_at = time.monotonic() + wait_s
                        await self.wait_resumed(wait_s)
                    else:
                        await self._sleep(wait_s)
                    continue
                try:
                    moved, next_ms = await _wire.move_due(link, self.delayed_key, self.retry_key, MOVE_LIMIT)
                    if moved:
                        self.log.debug("retries due", count=moved)
                        continue
                    if next_ms >= 0:
                        wait_s = min(self.poll_s, next_ms / 1000)
                except TRANSIENT as exc:
                    self.log.debug("retry mover waiting for redis", error=describe_error(exc))
                    wait_s = min(1.0, self.poll_s * 2)
                except ServerError as exc:  # out of memory: settling fails too; wait for the operator
                    self.log.warning("retry mover waiting for the server", error=str(exc))
                    wait_s = 1.0
                await self._sleep(wait_s)
        finally:
            await link.close()

    async def _sleep(self, wait_s: float) -> None:
        self.wake_at = time.monotonic() + wait_s
        while not self.done.is_set() and (left_s := self.wake_at - time.monotonic()) > 0:
            # Woken early only by a retry due before the planned wake-up (see due_at), not by every batch
            # that schedules one: most are due later and the delayed set says when.
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
