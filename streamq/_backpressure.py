"""The backlog gate a producer with `max_backlog=N` passes before each publish call.

A call may go ahead while no group of the stream owes more than N entries (not delivered + pending). The
backlog is read from the server (publishing.backlog, one script) at most once per `backlog_check_ms` per
stream: publishing thousands of calls a second must not add a read to each. While the backlog is over N
the gate waits, reading again every `backlog_check_ms`, up to `backlog_timeout_ms`; then it raises
BacklogFull, before anything of the call is written.

The decisions (is a reading fresh, is it over, how long to wait, when to give up) live in BacklogGate,
shared by the asyncio gate and the blocking one, which differ only in how they read, lock and sleep. A
producer without max_backlog has no gate at all, so plain publishing pays nothing for this.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Self

import redis

from . import _wire
from ._wire import publishing
from .errors import BacklogFull
from .settings import ProducerSettings


class BacklogGate:
    """The last backlog reading per stream, and what a reading means for a waiting call."""

    def __init__(self, limit: int, check_ms: int, timeout_ms: int) -> None:
        self.limit = limit
        self.check_s = check_ms / 1000
        self.timeout_s = timeout_ms / 1000
        self.readings: dict[str, tuple[float, publishing.Backlog]] = {}  # stream -> (monotonic, reading)

    @classmethod
    def for_settings(cls, settings: ProducerSettings) -> Self | None:
        """The gate of a producer with these settings; None without max_backlog (nothing to check)."""
        if settings.max_backlog is None:
            return None
        return cls(settings.max_backlog, settings.backlog_check_ms, settings.backlog_timeout_ms)

    def fresh(self, stream: str) -> publishing.Backlog | None:
        """The stream's last reading if it is recent enough to go by, else None (read again)."""
        found = self.readings.get(stream)
        if found is None or time.monotonic() - found[0] >= self.check_s:
            return None
        return found[1]

    def note(self, stream: str, reading: publishing.Backlog) -> None:
        self.readings[stream] = (time.monotonic(), reading)

    def over(self, reading: publishing.Backlog) -> bool:
        return reading.backlog > self.limit

    def pause_s(self, stream: str, reading: publishing.Backlog, started: float) -> float | None:
        """None when `reading` leaves room; else how long to sleep before reading again. BacklogFull once
        the wait that began at `started` (monotonic) has used up backlog_timeout_ms."""
        if not self.over(reading):
            return None
        waited_s = time.monotonic() - started
        if waited_s >= self.timeout_s:
            raise self.refuse(stream, reading, waited_s)
        return min(self.check_s, self.timeout_s - waited_s)

    def refuse(self, stream: str, reading: publishing.Backlog, waited_s: float) -> BacklogFull:
        return BacklogFull(
            f"stream {stream!r}: group {reading.group!r} owes {reading.backlog} entries ({reading.lag} not"
            f" delivered, {reading.pending} pending), over max_backlog={self.limit}; waited"
            f" {round(waited_s * 1000)} ms (backlog_timeout_ms={round(self.timeout_s * 1000)})",
            stream=stream, group=reading.group, backlog=reading.backlog, lag=reading.lag,
            pending=reading.pending, max_backlog=self.limit, waited_ms=round(waited_s * 1000),
        )  # fmt: skip


class AsyncBacklogGate(BacklogGate):
    """The gate for Producer: reads on the call's link, waits with asyncio.sleep."""

    def __init__(self, limit: int, check_ms: int, timeout_ms: int) -> None:
        super().__init__(limit, check_ms, timeout_ms)
        # Made at the first read, not here: building a producer touches no event loop.
        self._reading: asyncio.Lock | None = None

    async def wait_for_room(self, link: _wire.Link, stream: str) -> None:
        """Return once the stream's worst group owes at most max_backlog; BacklogFull after the timeout."""
        reading = self.fresh(stream)
        if reading is not None and not self.over(reading):
            return
        started = time.monotonic()
        while True:
            if reading is None:
                reading = await self._read(link, stream)
            pause_s = self.pause_s(stream, reading, started)
            if pause_s is None:
                return
            await asyncio.sleep(pause_s)
            reading = None

    async def _read(self, link: _wire.Link, stream: str) -> publishing.Backlog:
        # One reader at a time: many tasks publishing at once find the reading stale together, and one
        # read serves them all.
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            reading = self.fresh(stream)
            if reading is None:
                # limit + 1: where the server does not give a group's lag, counting past the limit would
                # not change the answer.
                reading = await publishing.backlog(link, stream, self.limit + 1)
                self.note(stream, reading)
            return reading


class SyncBacklogGate(BacklogGate):
    """The gate for SyncProducer: reads on the blocking client, waits with time.sleep. Thread-safe."""

    def __init__(self, limit: int, check_ms: int, timeout_ms: int) -> None:
        super().__init__(limit, check_ms, timeout_ms)
        self._reading = threading.Lock()

    def wait_for_room(self, client: redis.Redis, stream: str) -> None:
        """Return once the stream's worst group owes at most max_backlog; BacklogFull after the timeout."""
        reading = self.fresh(stream)
        if reading is not None and not self.over(reading):
            return
        started = time.monotonic()
        while True:
            if reading is None:
                reading = self._read(client, stream)
            pause_s = self.pause_s(stream, reading, started)
            if pause_s is None:
                return
            time.sleep(pause_s)
            reading = None

    def _read(self, client: redis.Redis, stream: str) -> publishing.Backlog:
        # One reader at a time, as in AsyncBacklogGate: threads finding the reading stale together share
        # one read.
        with self._reading:
            reading = self.fresh(stream)
            if reading is None:
                reading = publishing.backlog_sync(client, stream, self.limit + 1)
                self.note(stream, reading)
            return reading
