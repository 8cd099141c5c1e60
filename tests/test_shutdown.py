"""Graceful shutdown: a signal lets the batch in hand finish and settle; a second one stops at once, and
what was left is reclaimed by another worker. Workers run as subprocesses (tests/worker_proc.py), which
call streamq.app.run_app as a deployed worker does."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until, wait_until
from worker_proc import Job, SpawnWorker, read_ledger

import streamq
import streamq.app
from streamq import keys
from streamq.exit_codes import ABANDONED


def _publish(url: str, stream: str, count: int) -> list[str]:
    with streamq.SyncProducer(url) as producer:
        return producer.publish_many(stream, [Job(n) for n in range(count)])


def _pending(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    summary = client.xpending(stream, group)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or ()}


def _stats(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.stats_key(stream, group)).items()}


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_sigterm_finishes_and_settles_the_batch_in_hand(
    mode: str, spawn_worker: SpawnWorker, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """SIGTERM in the middle of a slow batch: the handler completes, the batch is acknowledged, the worker
    removes its consumer from the group and exits 0, leaving nothing pending."""
    _publish(redis_url, unique, 10)
    worker = spawn_worker(stream=unique, group="g", ledger=unique, mode=mode, sleep_ms=1_500, lease_ms=1_000)
    wait_until(
        lambda: (
            len(read_ledger(sync_client, unique, "started")) == 10
            and sum(_pending(sync_client, unique, "g").values()) == 10
        ),
        message="the worker to hold all 10 entries inside its handler",
    )
    assert read_ledger(sync_client, unique, "done") == {}
    worker.send(signal.SIGTERM)
    assert worker.wait() == 0, worker.log()

    assert read_ledger(sync_client, unique, "done") == dict.fromkeys(range(10), 1)
    assert _pending(sync_client, unique, "g") == {}
    assert _stats(sync_client, unique, "g")["acked"] == 10
    assert sync_client.xinfo_consumers(unique, "g") == []  # it left no consumer behind


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_second_signal_stops_at_once_and_entries_are_reclaimed(
    mode: str,
    spawn_worker: SpawnWorker,
    redis_url: str,
    client: redis.asyncio.Redis,
    sync_client: redis.Redis,
    unique: str,
) -> None:
    """A second SIGTERM during the grace period stops the worker without waiting for its handler (exit
    130), even one running in a thread; the unsettled entries stay pending, given back, and another worker
    reclaims and handles them (their second delivery, still their first attempt)."""
    ids = _publish(redis_url, unique, 5)
    worker = spawn_worker(
        stream=unique, group="g", ledger=unique, mode=mode, sleep_ms=120_000, lease_ms=1_000
    )
    await async_wait_until(
        lambda: len(read_ledger(sync_client, unique, "started")) == 5, message="the handler to start"
    )
    worker.send(signal.SIGTERM)
    await async_wait_until(lambda: "stopping: finishing batches" in worker.log(), message="the first signal")
    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 130, worker.log()
    assert sum(_pending(sync_client, unique, "g").values()) == 5

    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(message: streamq.Message[Job]) -> None:
        seen.append((message.event.n, message.attempt, message.lost_deliveries, message.id))

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert sorted(seen) == [(n, 1, 1, ids[n]) for n in range(5)]
    assert read_ledger(sync_client, unique, "done") == {}
    assert _pending(sync_client, unique, "g") == {}


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_grace_period_bounds_how_long_shutdown_waits(
    mode: str, spawn_worker: SpawnWorker, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A handler still running when the grace period after SIGTERM ends is abandoned: the worker exits
    with the named code ABANDONED (3) without settling it, and the entries stay pending for another worker
    to reclaim."""
    _publish(redis_url, unique, 3)
    worker = spawn_worker(
        stream=unique, group="g", ledger=unique, mode=mode, sleep_ms=120_000, lease_ms=1_000, grace_ms=300
    )
    await async_wait_until(
        lambda: len(read_ledger(sync_client, unique, "started")) == 3, message="the handler to start"
    )
    worker.send(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == ABANDONED, worker.log()
    assert "grace period over" in worker.log()
    assert sum(_pending(sync_client, unique, "g").values()) == 3
    assert read_ledger(sync_client, unique, "done") == {}


@pytest.mark.parametrize(("read_ahead", "in_hand"), [(False, 6), (True, 9)])
async def test_stop_lets_the_batches_in_hand_settle(
    redis_url: str, client: redis.asyncio.Redis, unique: str, read_ahead: bool, in_hand: int
) -> None:
    """App.stop() called while a handler runs (here from inside it, in the second batch) lets that batch
    finish and settle, and the batch already read ahead of it (read-ahead on: it is delivered, so it is
    handled rather than left pending until its lease runs out); then run() returns without reading more;
    stop() is idempotent."""
    await asyncio.to_thread(_publish, redis_url, unique, 12)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=3, lease_ms=1_000, block_ms=100, read_ahead=read_ahead)
    async def handle(batch: streamq.Batch[Job]) -> None:
        if handled:
            app.stop()
            app.stop()
            await asyncio.sleep(0)  # give the loop a chance to act on the stop before the batch is settled
        handled.extend(batch_event.n for batch_event in batch.events)

    await asyncio.wait_for(app.run(), 30)
    assert handled == list(range(in_hand))
    assert int((await client.xpending(unique, "g"))["pending"]) == 0
    assert await client.hget(keys.stats_key(unique, "g"), "acked") == str(in_hand).encode()
    app.stop()  # after run() returned: still harmless


async def test_run_installs_signal_handlers_only_when_asked_and_removes_them(
    redis_url: str, unique: str
) -> None:
    """Nothing is installed by building an app or by run() without handle_signals; run(handle_signals=True)
    handles SIGTERM and SIGINT while it runs and removes its handlers when it returns."""
    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGTERM)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        return None

    during: list[Any] = []
    for handle_signals in (False, True):
        run = asyncio.create_task(app.run(handle_signals=handle_signals))
        await async_wait_until(lambda: app.consumers, message="the app to start")
        during.append(signal.getsignal(signal.SIGTERM))
        app.stop()
        await asyncio.wait_for(run, 10)
        app.consumers = []
    assert during[0] == before and during[1] != before
    assert signal.getsignal(signal.SIGTERM) == before
    assert loop.remove_signal_handler(signal.SIGINT) is False  # run() left no handler behind


@pytest.fixture
def previous_handlers() -> Iterator[dict[signal.Signals, Callable[[int, FrameType | None], None]]]:
    """Handlers of the embedding program's own for SIGTERM and SIGINT, installed before a run; the handlers
    found before the test are put back after it."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_term(signum: int, frame: FrameType | None) -> None:
        return None

    def on_int(signum: int, frame: FrameType | None) -> None:
        return None

    ours: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: on_term,
        signal.SIGINT: on_int,
    }
    for sig, handler in ours.items():
        signal.signal(sig, handler)
    try:
        yield ours
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


async def test_run_restores_the_signal_handlers_it_found(
    redis_url: str,
    unique: str,
    previous_handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]],
) -> None:
    """run(handle_signals=True) replaces the program's own SIGTERM and SIGINT handlers while it runs and
    puts those same handlers back when it returns, not the defaults."""
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        return None

    run = asyncio.create_task(app.run(handle_signals=True))
    await async_wait_until(lambda: app.consumers, message="the app to start")
    assert all(signal.getsignal(sig) is not handler for sig, handler in previous_handlers.items())
    app.stop()
    await asyncio.wait_for(run, 10)
    assert {sig: signal.getsignal(sig) for sig in previous_handlers} == previous_handlers


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_run_app_restores_the_signal_handlers_it_found(
    use_uvloop: bool,
    redis_url: str,
    unique: str,
    previous_handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]],
) -> None:
    """run_app, as `streamq worker` calls it, leaves the SIGTERM and SIGINT handlers of the program that
    called it in place once it returns, on either event loop."""
    _publish(redis_url, unique, 2)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        handled.extend(job.n for job in batch.events)

    assert streamq.app.run_app(app, burst=True, use_uvloop=use_uvloop) == 0
    assert handled == [0, 1]
    assert {sig: signal.getsignal(sig) for sig in previous_handlers} == previous_handlers
