"""Retention inside the worker: every trim_interval_ms one TRIM script call (see _wire/retention.py) trims
what every group of the stream has acknowledged, applies the hard cap max_len, and expires dead letters.

Every worker of every group of the stream runs one: the script is atomic and trims only below what all
groups acknowledged, so any number of them racing is safe; the jitter keeps them from all calling at once.
It runs under supervision.py. Transient errors are waited out. A user the server will not let trim (an
ACL without XTRIM or XINFO) turns retention off in this worker with an error logged, instead of stopping
the worker: processing matters more than trimming.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import redis.asyncio as aioredis

from .._wire import TRANSIENT
from .._wire import retention as wire
from ..errors import ConfigurationError, ServerError, describe_error
from ..settings import ConsumerSettings

JITTER = 0.25  # each wait is the interval give or take this fraction of it
MAX_ERROR_WAIT_S = 5.0


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

    @property
    def has_work(self) -> bool:
        s = self.settings
        return (
            s.retention or s.max_len is not None or s.dlq_max_age_ms is not None or s.dlq_max_len is not None
        )

    def stop(self) -> None:
        self.done.set()

    async def run(self) -> None:
        if not self.has_work:
            await self.done.wait()
            return
        # A random first wait: workers started together (a deploy) spread out from the first interval.
        wait_s = random.uniform(0, self.settings.trim_interval_ms / 1000)
        while not await self._sleep(wait_s):
            wait_s = self._interval_s()
            try:
                await self.trim_once()
            except TRANSIENT as exc:
                self.log.debug("trimmer waiting for redis", error=describe_error(exc))
                wait_s = min(wait_s * 2, MAX_ERROR_WAIT_S)
            except ServerError as exc:  # out of memory: a trim frees memory, but the counters cannot be kept
                self.log.warning("trimmer waiting for the server", error=str(exc))
                wait_s = min(wait_s * 2, MAX_ERROR_WAIT_S)
            except ConfigurationError as exc:
                self.log.error(
                    "retention is off in this worker: the stream cannot be trimmed", error=str(exc)
                )
                await self.done.wait()
                return

    async def trim_once(self) -> wire.TrimReply:
        """One TRIM call with this consumer's settings; counts and logs what it removed."""
        s = self.settings
        reply = await wire.trim(
            self.client, s.stream, retention=s.retention, keep_acked_ms=s.keep_acked_ms, max_len=s.max_len,
            dlq_max_age_ms=s.dlq_max_age_ms, dlq_max_len=s.dlq_max_len,
        )  # fmt: skip
        self._count("trimmed", reply.removed)
        self._count("dropped_over_max_len", reply.dropped)
        self._count("dead_letters_expired", reply.dead_letters_expired)
        if reply.removed:
            self.log.debug("trimmed acknowledged entries", count=reply.removed, below=reply.cut_id)
        if reply.dropped:
            self.log.warning(
                "stream over max_len: dropped its oldest entries, some not acknowledged by every group",
                count=reply.dropped,
                max_len=s.max_len,
                first_id=reply.dropped_first,
                kept_from_id=reply.dropped_until,
                held_by=reply.held_by,
            )
        if reply.dead_letters_expired:
            self.log.info("dead letters expired", count=reply.dead_letters_expired)
        return reply

    def _count(self, name: str, amount: int) -> None:
        if amount:
            self.counts[name] = self.counts.get(name, 0) + amount

    def _interval_s(self) -> float:
        return self.settings.trim_interval_ms / 1000 * random.uniform(1 - JITTER, 1 + JITTER)

    async def _sleep(self, wait_s: float) -> bool:
        """Wait `wait_s`; True if stopped meanwhile."""
        try:
            async with asyncio.timeout(wait_s):
                await self.done.wait()
        except TimeoutError:
            pass
        return self.done.is_set()
