"""The retry mover: retries and deferrals whose time has come move from the group's delayed set into its
retry stream, where the group's consumers read them like new entries.

The loop is moving.py's: it sleeps until the next retry is due (the MOVE_DUE script says when), or until a
settlement in this worker schedules one due sooner (`due_at`). While the group is paused, retries wait in
the delayed set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from .. import _wire
from .moving import MOVE_LIMIT, DueMover, Moved


class RetryMover(DueMover):
    """Moves due retries of one group into its retry stream; `run()` returns once `done` is set."""

    what = "retry mover"

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
        super().__init__(client, poll_ms=poll_ms, log=log, paused=paused, wait_resumed=wait_resumed)
        self.delayed_key = delayed_key
        self.retry_key = retry_key

    def due_at(self, when: float) -> None:
        """A retry was scheduled for `when` (monotonic): look then if that is before the planned time."""
        self.wake(when)

    async def move(self, link: _wire.Link) -> Moved:
        moved, next_ms = await _wire.move_due(link, self.delayed_key, self.retry_key, MOVE_LIMIT)
        return Moved(moved, next_ms)
