"""Pause, resume and rate limits of one group, as the consumer sees them (STUB: to be built).

Interface the consumer relies on: Control(client, settings, log=..., counts=...), `paused` (this group
or the whole stream is paused: read nothing new, move no retries), `wait_resumed(timeout_s)`, `limited`
(a rate limit is set), `read_count(count)`, `admit(n)` (waits until n more events may be handled, by
the group-wide limit), `run()` (polls the pause state; returns once `done` is set), `stop()`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from ..settings import ConsumerSettings


class Control:
    """Whether the group may read, and how fast it may handle."""

    def __init__(
        self, client: aioredis.Redis, settings: ConsumerSettings, *, log: Any, counts: dict[str, int]
    ) -> None:
        self.client = client
        self.settings = settings
        self.log = log
        self.counts = counts
        self.done = asyncio.Event()
        self.paused = False
        self.limited = settings.rate_limit is not None

    def stop(self) -> None:
        self.done.set()

    def read_count(self, count: int) -> int:
        """How many entries one read may ask for."""
        return count

    async def wait_resumed(self, timeout_s: float) -> None:
        """Wait until resumed, or at most timeout_s."""
        await asyncio.sleep(0)

    async def admit(self, n: int) -> None:
        """Wait until n more events may be handled under the group's rate limit."""

    async def run(self) -> None:
        await self.done.wait()
