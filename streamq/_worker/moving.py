"""The loop both movers share: move what is due, sleep until the next is due, wait out pauses and errors.

A mover (retries.py: due retries into a group's retry stream; scheduling.py: due delayed events into
their stream) runs one script that moves what is due, atomically, and says when the next thing falls
due. Between calls it sleeps until then, never longer than its poll interval (something may be made due
sooner meanwhile, by a worker elsewhere), and `wake(when)` can cut that sleep short for something made
due sooner in this process. While paused it moves nothing; after a connection error it waits a little;
after a server error (out of memory) it waits for the operator. It runs under supervision.py: an error it
does not expect restarts it, one it cannot get past stops the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _wire
from ..errors import ServerError, describe_error

TRANSIENT = _wire.TRANSIENT
MOVE_LIMIT = 1000  # moved per script call: bounds how long one call holds the server
SERVER_ERROR_WAIT_S = 1.0


class Moved:
    """What one move did: how many it moved, and ms until the next one is due (-1: none waits)."""

    __slots__ = ("moved", "next_ms")

    def __init__(self, moved: int, next_ms: int) -> None:
        self.moved = moved
        self.next_ms = next_ms


class DueMover:
    """The loop; a subclass says what one move is (`move`) and what it is called in logs (`what`)."""

    what = "mover"

    def __init__(
        self,
        client: Any,
        *,
        poll_ms: int,
        log: Any,
        paused: Callable[[], bool],
        wait_resumed: Callable[[float], Awaitable[None]] | None,
    ) -> None:
        self.client = client
        self.poll_s = poll_ms / 1000
        self.log = log
        self.paused = paused
        self.wait_resumed = wait_resumed
        self.done = asyncio.Event()
        self._wakeup = asyncio.Event()
        self.wake_at = 0.0  # when it next looks (monotonic)

    async def move(self, link: _wire.Link) -> Moved:
        raise NotImplementedError

    def wake(self, when: float) -> None:
        """Something falls due at `when` (monotonic): look then, if that is before the planned time."""
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
                    # Until resumed (or until the pause state is first known, a moment after start), at
                    # most a poll interval.
                    self.wake_at = time.monotonic() + wait_s
                    if self.wait_resumed is not None:
                        await self.wait_resumed(wait_s)
                    if self.paused():
                        # Still paused: wait_resumed returns at once while the consumer stops (before
                        # this loop is told to), and looping on it would never give the event loop back.
                        await self._sleep(wait_s)
                    continue
                try:
                    step = await self.move(link)
                    if step.moved:
                        self.log.debug(f"{self.what}: moved what was due", count=step.moved)
                        if step.moved >= MOVE_LIMIT:
                            continue  # more may be due right now
                    if step.next_ms >= 0:
                        wait_s = min(self.poll_s, step.next_ms / 1000)
                except TRANSIENT as exc:
                    self.log.debug(f"{self.what} waiting for redis", error=describe_error(exc))
                    wait_s = min(1.0, self.poll_s * 2)
                except ServerError as exc:  # out of memory: settling fails too; wait for the operator
                    self.log.warning(f"{self.what} waiting for the server", error=str(exc))
                    wait_s = SERVER_ERROR_WAIT_S
                await self._sleep(wait_s)
        finally:
            await link.close()

    async def _sleep(self, wait_s: float) -> None:
        self.wake_at = time.monotonic() + wait_s
        while not self.done.is_set() and (left_s := self.wake_at - time.monotonic()) > 0:
            # Woken early only by something due before the planned wake-up (see wake), not by everything
            # made due: most is due later, and the next move says when.
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
