"""Delayed events: moved into the stream when due, by any worker of any group (STUB: to be built).

Interface the consumer relies on: ScheduledMover(client, stream, poll_ms=..., log=..., counts=...),
`run()` (a loop that returns once `done` is set), `stop()`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis


class ScheduledMover:
    """Moves the stream's due delayed events into it; `run()` returns once `done` is set."""

    def __init__(
        self, client: aioredis.Redis, stream: str, *, poll_ms: int, log: Any, counts: dict[str, int]
    ) -> None:
        self.client = client
        self.stream = stream
        self.poll_s = poll_ms / 1000
        self.log = log
        self.counts = counts
        self.done = asyncio.Event()

    def stop(self) -> None:
        self.done.set()

    async def run(self) -> None:
        await self.done.wait()
