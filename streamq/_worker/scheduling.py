"""The scheduled mover: delayed events (Producer.publish(delay_ms=..., at=...)) whose time has come move
from the stream's scheduled set into the stream, where every group reads them like any new entry.

Every worker of every group of the stream runs one. They race over the same due events safely: the
MOVE_SCHEDULED script (streamq/_wire/publishing.py) reads what is due, appends it and removes it in one
atomic step, so each event enters the stream exactly once, and a worker killed at any moment has moved a
whole step or nothing.

The loop is moving.py's: it sleeps until the next event is due (the script says when, on the server's
clock), never longer than scheduled_poll_ms, so an event scheduled meanwhile for sooner than the planned
wake-up is seen within that time. While the whole stream is paused it moves nothing; a pause of one group
does not hold delayed events back (the other groups need them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from .. import _wire
from .._wire import publishing
from .moving import MOVE_LIMIT, DueMover, Moved


class ScheduledMover(DueMover):
    """Moves the stream's due delayed events into it; `run()` returns once `done` is set."""

    what = "scheduled mover"

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
        super().__init__(client, poll_ms=poll_ms, log=log, paused=paused, wait_resumed=wait_resumed)
        self.stream = stream
        self.counts = counts  # the consumer's: "scheduled_moved" counts what this worker moved

    async def move(self, link: _wire.Link) -> Moved:
        # Called through the module, so that a test (or the chaos harness's sabotage) can replace it.
        moved, next_ms = await publishing.move_scheduled(link, self.stream, MOVE_LIMIT)
        if moved:
            self.counts["scheduled_moved"] = self.counts.get("scheduled_moved", 0) + moved
        return Moved(moved, next_ms)
