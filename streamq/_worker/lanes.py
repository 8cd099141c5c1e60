"""The lanes of one consumer (`concurrency=N`): N consumers of one group in one process, and the background
loops (pause reader, retry mover, scheduled mover, trimmer) of which one copy serves them all.

The loops start with the first lane that runs and stop when the last one ends, not with the first lane:
in a burst run one lane may find the group drained while another has just taken a retry, and the retry
mover must outlive the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .supervision import Chore, supervise

if TYPE_CHECKING:
    from .consumer import Consumer


class Lanes:
    """The background loops one copy of which serves every lane of a consumer, and the lanes running.

    Started by the first lane that enters, stopped (and awaited) by the last one that leaves. A loop that
    fails for good stops every lane running with its error.
    """

    def __init__(self, chores: Sequence[tuple[str, Chore]], *, log: Any, counts: dict[str, int]) -> None:
        self.chores = list(chores)
        self.running: list[Consumer] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._log = log
        self._counts = counts

    def enter(self, lane: Consumer) -> None:
        self.running.append(lane)
        if self.tasks:
            return
        self.tasks = [
            asyncio.create_task(
                supervise(
                    name, chore.run, done=chore.done, log=self._log, counts=self._counts, on_fatal=self.fail
                ),
                name=f"streamq-{name.replace(' ', '-')}-{lane.name}",
            )
            for name, chore in self.chores
        ]

    def fail(self, error: BaseException) -> None:
        for lane in self.running:
            lane.fail(error)

    async def leave(self, lane: Consumer) -> None:
        self.running.remove(lane)
        if self.running:
            return
        tasks, self.tasks = self.tasks, []
        # Tell the background loops to stop as well as cancelling them: on Python 3.11 asyncio.wait_for
        # (which redis-py awaits inside its commands) can swallow a cancel that lands just as its inner
        # await completes (CPython gh-86296), and the wait below would never end.
        for _, chore in self.chores:
            chore.stop()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
