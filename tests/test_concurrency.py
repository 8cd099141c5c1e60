"""concurrency=N: a consumer runs as N lanes in one process, each a consumer of the group with its own name,
leases and settlement; one copy of the background loops serves them all; stop, pause and handler_timeout_ms
act on every lane."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq._connection import DEFAULT_MAX_CONNECTIONS
from streamq.control import pause, resume
from streamq.errors import ConfigurationError
from streamq.settings import MAX_CONCURRENCY, ConsumerSettings


class Job(streamq.Event, tag="test.concurrency.job"):
    n: int


async def _publish(url: str, stream: str, count: int) -> None:
    async with streamq.Producer(url) as producer:
        await producer.publish_many(stream, [Job(n) for n in range(count)])


async def _pending_by_consumer(client: redis.asyncio.Redis, stream: str, group: str) -> dict[str, int]:
    summary = await client.xpending(stream, group)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or ()}


class Gate:
    """Handler calls that wait until `n` of them have entered: only batches in flight at once get through."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.entered: list[str] = []  # the consumer (lane) name of each call, in the order they entered
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()  # set by the test to let the calls that entered finish

    async def enter(self, consumer: str) -> None:
        self.entered.append(consumer)
        if len(self.entered) >= self.n:
            self.all_in.set()
        await self.all_in.wait()
        await self.release.wait()


async def _running(app: streamq.App, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    task = asyncio.create_task(run())
    await async_wait_until(lambda: app.consumers or task.done(), message="the app to start its consumers")
    return task


async def _finish(app: streamq.App, task: asyncio.Task[None]) -> None:
    """Stop the app and wait for its run; cancel it if a failed assertion left batches waiting on a gate."""
    app.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 15)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_n_batches_are_handled_at_once_each_by_its_own_lane(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """With concurrency=4, four batches are in their handler at the same time (the handler waits until four
    calls have entered, which one batch at a time never reaches), each in a lane of its own consumer name;
    then everything is acknowledged once and no lane is left in the group."""
    await _publish(redis_url, unique, 8)
    gate = Gate(4)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=2, concurrency=4, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        if not gate.all_in.is_set():
            await gate.enter(batch.consumer)
        handled.extend(event.n for event in batch.events)

    gate.release.set()
    run = asyncio.create_task(app.run_until_idle())
    try:
        await async_wait_until(gate.all_in.is_set, message="four batches in their handler at once")
        await asyncio.wait_for(asyncio.shield(run), 30)
    finally:
        await _finish(app, run)
    assert len(app.consumers) == 4
    lanes = {consumer.name for consumer in app.consumers}
    assert len(lanes) == 4
    assert set(gate.entered) == lanes  # one batch per lane, four lanes
    assert sorted(handled) == list(range(8))
    assert app.counts()["acked"] == 8
    assert await _pending_by_consumer(client, unique, "g") == {}
    assert await client.xinfo_consumers(unique, "g") == []  # every lane left the group on its way out


async def test_each_lane_holds_its_entries_under_its_own_name_and_keeps_them_past_the_lease(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """While three lanes each hold a batch in a handler that outlasts the lease many times, the entries are
    pending under each lane's own consumer name, and their leases are renewed: a rival worker reclaiming
    alongside, scanning after two leases have passed, takes none of them. Each event is handled once."""
    lease_ms = 300
    await _publish(redis_url, unique, 6)
    gate = Gate(3)
    seen: list[tuple[str, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=2, concurrency=3, lease_ms=lease_ms, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        await gate.enter(batch.consumer)
        seen.extend((batch.consumer, event.n) for event in batch.events)

    rival_seen: list[int] = []
    rival = streamq.App(redis_url)

    @rival.consumer(unique, group="g", batch_size=2, lease_ms=lease_ms, block_ms=100)
    async def take(batch: streamq.Batch[Job]) -> None:
        rival_seen.extend(event.n for event in batch.events)

    run = asyncio.create_task(app.run())
    rival_run: asyncio.Task[None] | None = None
    try:
        await async_wait_until(gate.all_in.is_set, message="three batches in their handler at once")
        began = time.monotonic()
        lanes = {consumer.name for consumer in app.consumers}
        assert await _pending_by_consumer(client, unique, "g") == dict.fromkeys(lanes, 2)

        rival_run = await _running(rival, rival.run)

        def rival_scanned_after_two_leases() -> bool:
            # A full XAUTOCLAIM scan ended more than two leases after the handlers began: without renewals
            # the lanes' entries would have been idle long enough to be taken by it.
            reclaimer = rival.consumers[0].reclaimer
            return reclaimer.next_due - reclaimer.every_s > began + 2 * lease_ms / 1000

        await async_wait_until(rival_scanned_after_two_leases, message="the rival to scan for idle entries")
        assert await _pending_by_consumer(client, unique, "g") == dict.fromkeys(lanes, 2)
        assert rival_seen == []
        gate.release.set()
        await async_wait_until(lambda: len(seen) == 6, message="the lanes to finish their batches")
        await async_wait_until(
            lambda: app.counts()["acked"] == 6, message="the lanes to settle their batches"
        )
    finally:
        gate.release.set()
        await _finish(app, run)
        if rival_run is not None:
            await _finish(rival, rival_run)
    assert sorted(n for _, n in seen) == list(range(6))
    assert {name for name, _ in seen} == lanes
    assert rival_seen == []
    counts = app.counts()
    assert counts["lease_lost"] == 0 and rival.counts()["reclaimed"] == 0
    assert await _pending_by_consumer(client, unique, "g") == {}


async def test_stop_settles_every_batch_in_flight(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """stop() while four lanes each have a batch in their handler lets all four finish and settle (each
    acknowledged once, nothing left pending), reads nothing more, and every lane leaves the group."""
    await _publish(redis_url, unique, 16)
    gate = Gate(4)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=2, concurrency=4, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        await gate.enter(batch.consumer)
        handled.extend(event.n for event in batch.events)

    run = asyncio.create_task(app.run())
    try:
        await async_wait_until(gate.all_in.is_set, message="four batches in their handler at once")
        app.stop()
        gate.release.set()
        await asyncio.wait_for(asyncio.shield(run), 30)
    finally:
        gate.release.set()
        await _finish(app, run)
    assert len(handled) == 8 and len(set(handled)) == 8  # the four batches in hand, nothing more
    assert app.counts()["acked"] == 8
    assert await _pending_by_consumer(client, unique, "g") == {}
    assert await client.xinfo_consumers(unique, "g") == []


async def test_cancel_gives_back_what_every_lane_holds(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Cancelling run() while four lanes each hold a batch gives back every lane's entries (marked idle so
    any worker reclaims them at once), and another worker then handles each of them."""
    await _publish(redis_url, unique, 8)
    gate = Gate(4)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=2, concurrency=4, block_ms=100, read_ahead=False)
    async def handle(batch: streamq.Batch[Job]) -> None:
        await gate.enter(batch.consumer)

    run = asyncio.create_task(app.run())
    try:
        await async_wait_until(gate.all_in.is_set, message="four batches in their handler at once")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert run.cancelled()
    assert app.counts()["given_back"] == 8

    later: list[int] = []
    after = streamq.App(redis_url)

    @after.consumer(unique, group="g", batch_size=10, block_ms=100)
    async def take(batch: streamq.Batch[Job]) -> None:
        later.extend(event.n for event in batch.events)

    await asyncio.wait_for(after.run_until_idle(), 30)
    assert sorted(later) == list(range(8))
    assert await _pending_by_consumer(client, unique, "g") == {}


async def test_handler_timeout_applies_to_each_batch(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """handler_timeout_ms ends each lane's call on its own: three batches whose first attempt never returns
    all time out (while in flight together), are retried and acknowledged, and the run drains."""
    await _publish(redis_url, unique, 3)
    first_attempts: list[str] = []
    in_flight = 0
    most_in_flight = 0
    done: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(
        unique, group="g", batch_size=1, concurrency=3, block_ms=100, handler_timeout_ms=2_000,
        retry_base_ms=0, retry_max_ms=0, retry_poll_ms=10,
    )  # fmt: skip
    async def handle(batch: streamq.Batch[Job]) -> None:
        nonlocal in_flight, most_in_flight
        # A read takes up to batch_size from each of the stream and the retry stream: look at every message.
        done.extend(message.event.n for message in batch if message.attempt > 1)
        if all(message.attempt > 1 for message in batch):
            return
        first_attempts.append(batch.consumer)
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.Event().wait()  # never returns: only the time limit ends this call
        finally:
            in_flight -= 1

    await asyncio.wait_for(app.run_until_idle(), 60)
    assert sorted(done) == [0, 1, 2]
    assert len(first_attempts) == 3 and len(set(first_attempts)) == 3
    assert most_in_flight == 3
    counts = app.counts()
    assert counts["retried"] == 3 and counts["acked"] == 3 and counts["dead"] == 0
    assert await _pending_by_consumer(client, unique, "g") == {}


@pytest.mark.parametrize("value", [0, -1, MAX_CONCURRENCY + 1, True, "2", 1.5, None])
def test_concurrency_is_validated(value: Any) -> None:
    """concurrency must be an integer from 1 to MAX_CONCURRENCY: anything else is a ConfigurationError naming
    it, raised when the consumer is registered."""
    app = streamq.App()

    async def handle(batch: streamq.Batch[Job]) -> None:
        return None

    with pytest.raises(ConfigurationError, match="concurrency"):
        app.add_consumer(handle, "orders", group="g", concurrency=value)
    assert ConsumerSettings(stream="s", group="g").concurrency == 1
    assert ConsumerSettings(stream="s", group="g", concurrency=MAX_CONCURRENCY).concurrency == MAX_CONCURRENCY


async def test_a_pause_holds_every_lane(redis_url: str, client: redis.asyncio.Redis, unique: str) -> None:
    """A paused group is read by none of the lanes: each goes round its loop seeing the pause and nothing is
    delivered; once resumed, all three lanes take batches (three in flight at once)."""
    await pause(client, unique, "g", reason="test")
    await _publish(redis_url, unique, 12)
    gate = Gate(3)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=2, concurrency=3, block_ms=50)
    async def handle(batch: streamq.Batch[Job]) -> None:
        if not gate.all_in.is_set():
            await gate.enter(batch.consumer)
        handled.extend(event.n for event in batch.events)

    gate.release.set()
    run = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: len(app.consumers) == 3, message="the lanes to start")
        # Two turns of each lane's loop past the pause check (the first waits for the pause state to be
        # known): a lane that ignored the pause would have read the waiting entries by then.
        await async_wait_until(
            lambda: all(lane._idle_reads >= 2 for lane in app.consumers),
            message="every lane to go round its loop while paused",
        )
        assert handled == []
        assert await _pending_by_consumer(client, unique, "g") == {}
        await resume(client, unique, "g")
        await async_wait_until(gate.all_in.is_set, message="three lanes to take batches once resumed")
        await async_wait_until(lambda: len(handled) == 12, message="every event handled")
    finally:
        await _finish(app, run)
    assert set(gate.entered) == {lane.name for lane in app.consumers}
    assert sorted(handled) == list(range(12))


async def test_one_copy_of_the_background_loops_serves_every_lane(redis_url: str, unique: str) -> None:
    """With concurrency=4 the process runs four lanes but one retry mover, one scheduled mover, one trimmer
    and one pause reader for the consumer; they stop once the last lane has ended."""
    await _publish(redis_url, unique, 8)
    gate = Gate(4)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=2, concurrency=4, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        await gate.enter(batch.consumer)

    def tasks_named(prefix: str) -> int:
        return sum(task.get_name().startswith(prefix) and not task.done() for task in asyncio.all_tasks())

    run = asyncio.create_task(app.run())
    try:
        await async_wait_until(gate.all_in.is_set, message="four batches in their handler at once")
        lanes = [f"streamq-{consumer.name}" for consumer in app.consumers]
        assert sum(tasks_named(name) for name in lanes) == 4
        for loop in ("retry-mover", "scheduled-mover", "trimmer", "control"):
            assert tasks_named(f"streamq-{loop}-") == 1, loop
        lead = app.consumers[0]
        assert all(lane.mover is lead.mover and lane.trimmer is lead.trimmer for lane in app.consumers)
    finally:
        gate.release.set()
        await _finish(app, run)
    for loop in ("retry-mover", "scheduled-mover", "trimmer", "control"):
        assert tasks_named(f"streamq-{loop}-") == 0, loop


async def test_plain_def_handlers_get_a_thread_per_lane(redis_url: str, unique: str) -> None:
    """With executor_workers unset, the handler thread pool has a thread for every lane: eight lanes of a
    plain `def` handler are all in their threads at once (more than the pool's default on a small machine),
    so no lane queues for a thread."""
    lanes = 8
    await _publish(redis_url, unique, lanes)
    barrier = threading.Barrier(lanes)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=1, concurrency=lanes, block_ms=100, max_attempts=1)
    def handle(batch: streamq.Batch[Job]) -> None:
        barrier.wait(timeout=10)  # BrokenBarrierError (the call fails) unless all eight are in at once

    await asyncio.wait_for(app.run_until_idle(), 60)
    counts = app.counts()
    assert counts["acked"] == lanes and counts["dead"] == 0


async def test_lanes_beyond_the_default_pool_size_each_get_a_connection(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Every lane keeps a connection for its reads: with more lanes than the pool of an app built from a URL
    holds by default, the pool grows, and all of them have a batch in their handler at once."""
    lanes = DEFAULT_MAX_CONNECTIONS + 16
    await _publish(redis_url, unique, lanes)
    gate = Gate(lanes)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=1, concurrency=lanes, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        if not gate.all_in.is_set():
            await gate.enter(batch.consumer)

    gate.release.set()
    run = asyncio.create_task(app.run_until_idle())
    try:
        await async_wait_until(gate.all_in.is_set, timeout_s=20, message="a batch in every lane at once")
        await asyncio.wait_for(asyncio.shield(run), 30)
    finally:
        await _finish(app, run)
    assert len(set(gate.entered)) == lanes
    assert app.counts()["acked"] == lanes
    assert await _pending_by_consumer(client, unique, "g") == {}
