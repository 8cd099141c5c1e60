"""Supervision of a worker's background loops (the retry mover): none may die silently.

A loop that raises something unexpected is logged with its context, counted (`loop_restarts`) and started
again after a backoff. A ConfigurationError (an ACL rule missing, a key of the wrong type) will not go away
by waiting, and neither will a loop that keeps failing (MAX_FAILURES_IN_A_ROW in a row): either is handed
to `on_fatal`, which stops the worker with an error, and so a non-zero exit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .._wire import passes
from ..errors import ConfigurationError, WorkerFailed, describe_error


class Chore(Protocol):
    """A background loop beside a consumer's (retry mover, trimmer, ...): `run()` returns once `done`."""

    done: asyncio.Event

    async def run(self) -> None: ...

    def stop(self) -> None: ...


MAX_FAILURES_IN_A_ROW = 8
HEALTHY_AFTER_S = 60.0  # a loop that ran this long before failing starts its count of failures afresh
MAX_BACKOFF_S = 5.0


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    done: asyncio.Event,
    log: Any,
    counts: dict[str, int],
    on_fatal: Callable[[BaseException], None],
) -> None:
    """Run `body` (a loop that returns once `done` is set), restarting it when it fails."""
    failures = 0
    waits = 0  # the server said in a row that it cannot serve for now (BUSY, READONLY): not failures
    while not done.is_set():
        started = time.monotonic()
        try:
            await body()
            return
        except ConfigurationError as exc:
            log.error("background loop cannot work, stopping the worker", loop=name, error=str(exc))
            on_fatal(exc)
            return
        except Exception as exc:
            if passes(exc):
                # Another client's long script, a failover under way: it ends by itself, and a worker
                # must not stop for it. Waited out like an unreachable server, and not counted as a failure.
                waits += 1
                log.warning("server cannot serve for now, waiting", loop=name, error=describe_error(exc))
                try:
                    async with asyncio.timeout(min(MAX_BACKOFF_S, 0.05 * 2**waits)):
                        await done.wait()
                except TimeoutError:
                    pass
                continue
            waits = 0
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            counts["loop_restarts"] = counts.get("loop_restarts", 0) + 1
            log.error(
                "background loop failed, restarting it",
                loop=name,
                error=describe_error(exc),
                failures_in_a_row=failures,
                exc_info=exc,
            )
            if failures >= MAX_FAILURES_IN_A_ROW:
                on_fatal(WorkerFailed(f"the {name} failed {failures} times in a row: {describe_error(exc)}"))
                return
            try:
                async with asyncio.timeout(min(MAX_BACKOFF_S, 0.05 * 2**failures)):
                    await done.wait()
            except TimeoutError:
                pass
