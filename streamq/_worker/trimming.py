"""Retention inside the worker: trims what every group of the stream has acknowledged (STUB: to be built).

Interface the consumer relies on: Trimmer(client, settings, log=..., counts=...), `run()` (a loop that
returns once `done` is set), `stop()`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from ..settings import ConsumerSettings


class Trimmer:
    """Trims the stream (and its dead-letter stream) every trim_interval_ms; `run()` ends once `done`."""

    def __init__(
        self, client: aioredis.Redis, settings: ConsumerSettings, *, log: Any, counts: dict[str, int]
    ) -> None:
        self.client = client
        self.settings = settings
        self.log = log
        self.counts = counts
        self.done = asyncio.Event()

    def stop(self) -> None:
        self.done.set()

    async def run(self) -> None:
        await self.done.wait()
