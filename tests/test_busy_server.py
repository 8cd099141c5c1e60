"""A server busy with another client's script (past its time limit every other client gets -BUSY until
the script ends or SCRIPT KILL ends it) is waited out like a server that is down: a worker neither fails
to start nor stops for it, and goes on once the server serves again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import structlog
from helpers import async_wait_until, wait_until

import streamq
from streamq._worker import supervision
from streamq.embedded import EmbeddedServer

ENDLESS = "local i = 0 while true do i = i + 1 end"


class Job(streamq.Event, tag="test.busy_server.job"):
    n: int


def _busy(url: str) -> bool:
    try:
        redis.Redis.from_url(url).ping()
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


class EndlessScript:
    """Another client's script that never ends by itself, run from a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ended: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            redis.Redis.from_url(self.url, socket_timeout=None).eval(ENDLESS, 0)
        except redis.RedisError as exc:
            self.ended.append(str(exc))

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: _busy(self.url), message="the server to answer BUSY")

    def kill(self) -> None:
        killer = redis.Redis.from_url(self.url)

        def killed() -> bool:
            try:
                killer.script_kill()
            except redis.ResponseError as exc:  # NOTBUSY: it was killed by an earlier try
                return "NOTBUSY" in str(exc)
            return True

        wait_until(killed, message="SCRIPT KILL")
        self._thread.join(10)


@pytest.fixture
def busy_capable(own_server: EmbeddedServer) -> Iterator[str]:
    """A server of this test's own whose scripts count as running too long after 50 ms."""
    redis.Redis.from_url(own_server.url).config_set("lua-time-limit", 50)
    yield own_server.url


def _app(url: str, handled: list[int]) -> streamq.App:
    app = streamq.App(url)

    @app.consumer("jobs", group="g", block_ms=100, lease_ms=2_000, retry_poll_ms=50, trim_interval_ms=50)
    async def handle(batch: streamq.Batch[Job]) -> None:
        handled.extend(job.n for job in batch.events)

    return app


def _said(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event and "BUSY" in str(entry.get("error"))]


async def _publish(url: str, n: int) -> None:
    async with streamq.Producer(url) as producer:
        await producer.publish("jobs", Job(n=n))


async def test_a_worker_started_while_the_server_is_busy_waits_then_works(busy_capable: str) -> None:
    script = EndlessScript(busy_capable)
    script.start()
    handled: list[int] = []
    app = _app(busy_capable, handled)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(app.run())
        await async_wait_until(
            lambda: task.done() or len(_said(logs, "redis unavailable at start, retrying")) >= 2,
            message="the worker to wait for the busy server",
        )
        assert not task.done()
        script.kill()
        await _publish(busy_capable, 1)
        await async_wait_until(lambda: handled == [1] or task.done(), message="the event handled")
        app.stop()
        await asyncio.wait_for(task, 15)
    assert handled == [1]


async def test_a_running_worker_waits_out_a_busy_server_without_counting_failures(
    busy_capable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its background loops meet BUSY at once (they poll every 50 ms here): with two failures in a row
    allowed, counting BUSY as a failure would stop the worker within a second."""
    monkeypatch.setattr(supervision, "MAX_FAILURES_IN_A_ROW", 2)
    handled: list[int] = []
    app = _app(busy_capable, handled)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(app.run())
        await _publish(busy_capable, 1)
        await async_wait_until(lambda: handled == [1] or task.done(), message="the first event handled")
        script = EndlessScript(busy_capable)
        script.start()
        await async_wait_until(
            lambda: task.done() or len(_said(logs, "server cannot serve for now, waiting")) >= 4,
            message="the background loops to wait for the busy server",
        )
        assert not task.done()
        script.kill()
        await _publish(busy_capable, 2)
        await async_wait_until(lambda: handled == [1, 2] or task.done(), message="the second event")
        app.stop()
        await asyncio.wait_for(task, 15)
    assert handled == [1, 2]
    assert script.ended and "killed" in script.ended[0].lower()
