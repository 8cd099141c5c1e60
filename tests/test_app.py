"""App.run's start: what it logs while the server it was given is not there yet."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator

import pytest
import redis.exceptions
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
    wait."""
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
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(run, 10)
    error = retrying[0]["error"]
    assert re.fullmatch(
        rf"ConnectionError: Error \d+ connecting to 127\.0\.0\.1:{refusing_port}\. .+", error
    ), error
