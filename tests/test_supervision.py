"""Supervision of the worker's background loops: an unexpected error restarts the loop (counted as
loop_restarts), and one that keeps failing stops the app with WorkerFailed rather than let it run on
without that loop.

The failures are injected by wrapping what the loop calls (the retry mover's `_wire.move_due`, the lease
keeper's client factory); the limits of failures in a row and the backoff are made small so the tests are
quick, never the behaviour itself.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, NoReturn

import pytest
import redis
import redis.asyncio
from helpers import wait_until
from worker_proc import Job

import streamq
import streamq.app
from streamq import _wire, keys
from streamq._worker import leases, supervision
from streamq._worker.leases import LeaseKeeper
from streamq.errors import WorkerFailed

FAILURES_ALLOWED = 3


@pytest.fixture
def quick_supervision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up after FAILURES_ALLOWED failures in a row, with backoffs of a few milliseconds."""
    monkeypatch.setattr(supervision, "MAX_FAILURES_IN_A_ROW", FAILURES_ALLOWED)
    monkeypatch.setattr(supervision, "MAX_BACKOFF_S", 0.01)
    monkeypatch.setattr(leases, "MAX_FAILURES_IN_A_ROW", FAILURES_ALLOWED)
    monkeypatch.setattr(leases, "MAX_BACKOFF_S", 0.01)


def _fail_move_due(monkeypatch: pytest.MonkeyPatch, failures: int | None) -> list[int]:
    """Make the first `failures` calls of _wire.move_due raise RuntimeError (None: every call); returns
    the list that counts the calls."""
    original = _wire.move_due
    calls: list[int] = []

    async def move_due(*args: Any, **kwargs: Any) -> tuple[int, int]:
        calls.append(1)
        if failures is None or len(calls) <= failures:
            raise RuntimeError(f"injected failure of move_due call {len(calls)}")
        return await original(*args, **kwargs)

    monkeypatch.setattr(_wire, "move_due", move_due)
    return calls


async def _publish(url: str, stream: str, count: int) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Job(n) for n in range(count)])


async def test_retry_mover_is_restarted_after_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The retry mover's first move fails with an error nobody planned for: the mover is restarted (one
    loop_restart in app.counts()), and the retries scheduled afterwards come back as second attempts and
    are acknowledged."""
    calls = _fail_move_due(monkeypatch, failures=1)
    await _publish(redis_url, unique, 3)
    seen: list[tuple[int, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100, retry_poll_ms=50)
    async def handle(message: streamq.Message[Job]) -> None:
        seen.append((message.event.n, message.attempt))
        if message.attempt == 1:
            raise streamq.Retry(delay_ms=0)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert sorted(seen) == [(n, attempt) for n in range(3) for attempt in (1, 2)]
    assert len(calls) > 1
    assert app.counts()["loop_restarts"] == 1
    assert await client.zcard(keys.delayed_key(unique, "g")) == 0
    assert await client.xlen(keys.dlq_key(unique)) == 0
    assert int((await client.hgetall(keys.stats_key(unique, "g")))[b"acked"]) == 3


async def test_retry_mover_that_keeps_failing_stops_the_app_with_an_error(
    quick_supervision: None, monkeypatch: pytest.MonkeyPatch, redis_url: str, unique: str
) -> None:
    """A retry mover that fails MAX_FAILURES_IN_A_ROW times in a row stops the app: run() (not burst, so
    nothing else would end it) raises WorkerFailed naming the loop, after restarting it each time but the
    last."""
    _fail_move_due(monkeypatch, failures=None)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        return None

    with pytest.raises(WorkerFailed, match="retry mover failed 3 times in a row"):
        await asyncio.wait_for(app.run(), 30)
    assert app.counts()["loop_restarts"] == FAILURES_ALLOWED


def test_lease_keeper_whose_client_cannot_be_made_is_restarted_then_gives_up(quick_supervision: None) -> None:
    """A lease keeper whose client factory raises is restarted, asking for a new client each time, and
    after MAX_FAILURES_IN_A_ROW failures in a row it reports WorkerFailed through on_fatal (and keeps it as
    `fatal`): leases can no longer be trusted."""
    made: list[int] = []
    reported: list[BaseException] = []
    lock = threading.Lock()

    def make_client() -> NoReturn:
        with lock:
            made.append(1)
        raise RuntimeError("injected: no client can be made")

    keeper = LeaseKeeper(make_client, reported.append)
    keeper.hold("s", "g", "c", [b"1-0"], renew_every_ms=10)  # due almost at once: a client is needed
    keeper.start()
    try:
        wait_until(lambda: reported, message="the lease keeper to give up")
    finally:
        keeper.stop()
    assert len(made) == FAILURES_ALLOWED
    assert keeper.restarts == FAILURES_ALLOWED
    (error,) = reported
    assert isinstance(error, WorkerFailed)
    assert keeper.fatal is error


async def test_lease_keeper_that_keeps_failing_stops_the_app_with_an_error(
    quick_supervision: None, monkeypatch: pytest.MonkeyPatch, redis_url: str, unique: str
) -> None:
    """Through App.run: while a handler holds its batch past a renewal, the lease keeper's client factory
    keeps raising; the keeper is restarted each time and, after MAX_FAILURES_IN_A_ROW failures, the app
    stops: run() raises WorkerFailed (the handler still running is abandoned once the grace period is
    over)."""
    made: list[int] = []

    def no_client(*args: Any, **kwargs: Any) -> redis.Redis:
        made.append(1)
        raise RuntimeError("injected: no client for the lease keeper")

    monkeypatch.setattr(streamq.app, "sync_client", no_client)
    await _publish(redis_url, unique, 3)
    handling = asyncio.Event()
    app = streamq.App(redis_url, shutdown_grace_ms=100)

    @app.consumer(unique, group="g", lease_ms=300, block_ms=100)  # renewals due every 100 ms
    async def handle(batch: streamq.Batch[Job]) -> None:
        handling.set()
        await asyncio.sleep(3_600)

    with pytest.raises(WorkerFailed, match="lease keeper failed 3 times in a row"):
        await asyncio.wait_for(app.run(), 30)
    assert handling.is_set()
    assert len(made) == FAILURES_ALLOWED
    assert app.consumers[0].lease_keeper.restarts == FAILURES_ALLOWED


async def test_loop_restarts_are_counted_per_consumer(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, unique: str
) -> None:
    """Each consumer supervises its own retry mover: with two consumers whose first move fails, each
    counts one loop_restart and app.counts() sums them; the app goes on and drains."""
    _fail_move_due(monkeypatch, failures=2)
    app = streamq.App(redis_url)
    for group in ("a", "b"):

        @app.consumer(unique, group=group, lease_ms=1_000, block_ms=100, retry_poll_ms=50)
        async def handle(batch: streamq.Batch[Job]) -> None:
            return None

    await _publish(redis_url, unique, 2)
    await asyncio.wait_for(app.run_until_idle(), 30)
    assert [c.counts["loop_restarts"] for c in app.consumers] == [1, 1]
    assert app.counts()["loop_restarts"] == 2
