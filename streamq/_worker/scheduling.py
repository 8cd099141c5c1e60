"""The scheduled mover: delayed events (Producer.publish(delay_ms=..., at=...)) whose time has come move
from the stream's scheduled set into the stream, where every group reads them like any new entry.

Every worker of every group of the stream runs one. They race over the same due events safely: the
MOVE_SCHEDULED script (streamq/_wire/publishing.py) reads what is due, appends it and removes it in one
atomic step, so each event enters the stream exactly once, and a worker killed at any moment has moved a
whole step or nothing.

It sleeps until the next event is due (the script says when, on the server's clock), never longer than
scheduled_poll_ms: an event scheduled meanwhile for sooner than the planned wake-up is seen within that
time. It runs under supervision.py: an error it does not expect restarts it, one it cannot get past stops
the worker. While the whole stream is paused it moves nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _wire
from .._wire import publishing
from ..errors import ServerError, describe_error

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
MOVE_LIMIT = 1000  # delayed events moved per script call: bounds how long one call holds the server


class ScheduledMover:
    """Moves the stream's due delayed events into it; `run()` returns once `done` is set."""

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        *,
        poll_ms: int,
        log: Any,
        counts: dict[str, int],
        paused: Callable[[], bool] = lambda: False,
        wait_resumed: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        # The whole stream is paused (`streamq pause STREAM`): delayed events wait in the scheduled set. A
        # pause of one group does not hold them back: the other groups need them.
        self.paused = paused
        self.wait_resumed = wait_resumed
        self.poll_s = poll_ms / 1000
        self.log = log
        self.counts = counts  # the consumer's: "scheduled_moved" counts what this worker moved
        self.done = asyncio.Event()

    def stop(self) -> None:
        self.done.set()

    async def run(self) -> None:
        link = _wire.Link(self.client)
        try:
            while not self.done.is_set():
                wait_s = self.poll_s
                if self.paused():
                    # Until resumed (or the pause state is first known, a moment after start), at most a
                    # poll interval.
                    if self.wait_resumed is not None:
                        await self.wait_resumed(wait_s)
                    else:
                        await self._sleep(wait_s)
                    continue
                try:
                    moved, next_ms = await publishing.move_scheduled(link, self.stream, MOVE_LIMIT)
                    if moved:
                        self.counts["scheduled_moved"] = self.counts.get("scheduled_moved", 0) + moved
                        self.log.debug("delayed events due", count=moved)
                        if moved == MOVE_LIMIT:
                            continue  # more may be due right now
                    if next_ms >= 0:
                        wait_s = min(self.poll_s, next_ms / 1000)
                except TRANSIENT as exc:
                    self.log.debug("scheduled mover waiting for redis", error=describe_error(exc))
                    wait_s = min(1.0, self.poll_s * 2)
                except ServerError as exc:  # out of memory: appends fail too; wait for the operator
                    self.log.warning("scheduled mover waiting for the server", error=str(exc))
                    wait_s = 1.0
                await self._sleep(wait_s)
        finally:
            await link.close()

    async def _sleep(self, wait_s: float) -> None:
        if wait_s <= 0:
            return
        try:
            async with asyncio.timeout(wait_s):
                await self.done.wait()
        except TimeoutError:
            pass
