"""App.run's start: what it logs while the server it was given is not there yet, and the heap it freezes."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
from collections.abc import Iterator

import pytest
import structlog
from helpers import async_wait_until

import streamq


class Ping(streamq.Event, tag="test.app.ping"):
    n: int


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port that refuses connections: bound, so nothing else takes it, but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_waiting_for_the_server_logs_the_error_message(refusing_port: int, unique: str) -> None:
    """While the server refuses connections at start, run() logs that it retries, with the error's type and
    message (which host, what failed), not redis-py's repr, which leaves the message out. stop() ends the
    wait, and run() then returns like any stopped run (a SIGTERM while waiting exits cleanly)."""
    app = streamq.App(f"redis://127.0.0.1:{refusing_port}/0")

    @app.consumer(unique, group="g")
    async def handle(batch: streamq.Batch[Ping]) -> None:
        return None

    with structlog.testing.capture_logs() as logs:
        run = asyncio.create_task(app.run())
        retrying = await async_wait_until(
            lambda: [e for e in logs if e["event"] == "redis unavailable at start, retrying"],
            message="the app to log that it waits for the server",
        )
        app.stop()
        await asyncio.wait_for(run, 10)
    error = retrying[0]["error"]
    assert re.fullmatch(
        rf"ConnectionError: Error \d+ connecting to 127\.0\.0\.1:{refusing_port}\. .+", error
    ), error


@pytest.mark.parametrize("freeze_gc", [True, False])
async def test_run_freezes_the_start_up_heap_unless_told_not_to(
    redis_url: str, unique: str, freeze_gc: bool
) -> None:
    """Once started, run() moves what exists into the collector's permanent generation (gc.freeze), so full
    collections stop pausing the worker over it; freeze_gc=False leaves the process's collector alone."""
    gc.unfreeze()
    seen: list[int] = []
    app = streamq.App(redis_url, freeze_gc=freeze_gc)

    @app.consumer(unique, group="g")
    async def handle(batch: streamq.Batch[Ping]) -> None:
        seen.extend(e.n for e in batch.events)

    try:
        async with streamq.Producer(redis_url) as producer:
            await producer.publish(unique, Ping(1))
        await app.run_until_idle()
        assert seen == [1]
        assert (gc.get_freeze_count() > 0) is freeze_gc
    finally:
        gc.unfreeze()
