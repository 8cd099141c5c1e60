"""Cancelling the task that runs App.run: nothing of the app runs on after it, and what it held is given back.

The run is cancelled while a handler call is in progress, in the ways a program does it: a deadline
(asyncio.timeout, which asyncio.wait_for is built on) expiring, the task awaiting asyncio.wait_for being
cancelled, and a sibling task in an asyncio.TaskGroup failing. The deadline is set to expire the moment a
handler call has begun, so the cancel never lands anywhere else, however slowly the test machine starts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
from helpers import async_wait_until
from worker_proc import Job

import streamq
from streamq import keys

HOW = ["timeout", "wait_for", "taskgroup"]
# Long enough that nothing in a test can be reclaimed by the lease running out: only entries given back
# (marked idle past any lease) can be reclaimed.
LONG_LEASE_MS = 600_000


class GroupFailed(Exception):
    """Raised by a sibling task to make its TaskGroup cancel the run."""


async def _publish(url: str, stream: str, numbers: range) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Job(n) for n in numbers])


async def _cancel_while_handling(app: streamq.App, how: str, handling: Callable[[], bool]) -> None:
    """Run `app` until idle and cancel that run once `handling()` says a handler call has begun, the way
    `how` names; return once the cancelled run has ended."""
    if how == "timeout":

        async def expire(deadline: asyncio.Timeout) -> None:
            await async_wait_until(handling, message="a handler call to begin")
            deadline.reschedule(asyncio.get_running_loop().time())

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as deadline:
                expiry = asyncio.create_task(expire(deadline))
                await app.run_until_idle()
        await expiry
    elif how == "wait_for":
        run = asyncio.create_task(asyncio.wait_for(app.run_until_idle(), 3_600))
        await async_wait_until(handling, message="a handler call to begin")
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    else:

        async def fail_the_group() -> None:
            await async_wait_until(handling, message="a handler call to begin")
            raise GroupFailed

        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.TaskGroup() as group:
                group.create_task(app.run_until_idle())
                group.create_task(fail_the_group())
        assert [type(e) for e in caught.value.exceptions] == [GroupFailed]


async def _drain_with_second_app(
    redis_url: str, stream: str
) -> tuple[list[tuple[int, int, int]], dict[str, int]]:
    """Run another app (lease far longer than the test) in group 'g' until idle; returns what it handled,
    as (n, attempt, lost_deliveries), and its counts."""
    seen: list[tuple[int, int, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(stream, group="g", lease_ms=LONG_LEASE_MS, block_ms=100)
    async def handle(message: streamq.Message[Job]) -> None:
        seen.append((message.event.n, message.attempt, message.lost_deliveries))

    await asyncio.wait_for(app.run_until_idle(), 60)
    return seen, app.counts()


async def _pending_of(client: redis.asyncio.Redis, stream: str, consumer: str) -> int:
    summary = await client.xpending(stream, "g")
    return sum(int(c["pending"]) for c in summary["consumers"] or () if c["name"].decode() == consumer)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("shape", ["async", "sync"])
async def test_cancelled_run_stops_its_consumers_and_gives_back_what_they_held(
    how: str, shape: str, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A run cancelled while its handler (async, or a plain def in a thread) holds a batch ends only once
    its consumers have stopped: when the handler is then let go, no handler call starts, and events
    published afterwards are never delivered to the cancelled app's consumer. The batch it held unhandled
    is given back: another app whose lease is far longer than the test reclaims it at once (a second
    delivery, still the first attempt) and handles the later events too; every event is acknowledged
    once, nothing is dead-lettered (a plain def handler never fails with "cannot schedule new futures
    after shutdown")."""
    await _publish(redis_url, unique, range(3))
    calls: list[list[int]] = []
    began = threading.Event()  # a handler call has begun
    release = threading.Event()  # lets a handler call that is still running go on
    app = streamq.App(redis_url)
    # max_attempts=1: a spurious failure after the cancel would dead-letter its events at once, and show.
    settings: dict[str, Any] = {"group": "g", "batch_size": 3, "lease_ms": LONG_LEASE_MS, "block_ms": 100,
                                "max_attempts": 1}  # fmt: skip

    if shape == "async":

        async def handle(batch: streamq.Batch[Job]) -> None:
            calls.append([job.n for job in batch.events])
            began.set()
            await async_wait_until(release.is_set, timeout_s=60, message="the test to release the handler")

        app.add_consumer(handle, unique, **settings)
    else:

        def handle_sync(batch: streamq.Batch[Job]) -> None:
            calls.append([job.n for job in batch.events])
            began.set()
            assert release.wait(60), "the test never released the handler"

        app.add_consumer(handle_sync, unique, **settings)

    await _cancel_while_handling(app, how, began.is_set)
    (consumer,) = app.consumers
    assert calls == [[0, 1, 2]]
    assert consumer.counts["given_back"] == 3
    release.set()
    await _publish(redis_url, unique, range(3, 6))

    seen, counts = await _drain_with_second_app(redis_url, unique)
    assert calls == [[0, 1, 2]]  # the cancelled app called no handler after its run ended
    assert sorted(seen) == [(0, 1, 1), (1, 1, 1), (2, 1, 1), (3, 1, 0), (4, 1, 0), (5, 1, 0)]
    assert counts["reclaimed"] == 3
    assert await _pending_of(client, unique, consumer.name) == 0
    assert await client.xlen(keys.dlq_key(unique)) == 0
    stats = await client.hgetall(keys.stats_key(unique, "g"))
    assert int(stats[b"acked"]) == 6


@pytest.mark.parametrize("how", HOW)
async def test_cancelled_run_leaves_no_sync_handler_calling_on_in_its_thread(
    how: str, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A plain def handler that takes one event at a time runs the batch's events one after the other in a
    thread, which a cancel cannot interrupt. Cancelled during the first event, the run ends; once that call
    returns, the thread calls the handler for no further event of the batch: all three are given back and
    handled by the next app, none by the cancelled one."""
    await _publish(redis_url, unique, range(3))
    calls: list[int] = []
    threads: list[threading.Thread] = []
    began = threading.Event()
    release = threading.Event()
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=3, lease_ms=LONG_LEASE_MS, block_ms=100)
    def handle(event: Job) -> None:
        calls.append(event.n)
        threads.append(threading.current_thread())
        began.set()
        assert release.wait(60), "the test never released the handler"

    await _cancel_while_handling(app, how, began.is_set)
    release.set()
    # The run shut its executor down: once the thread has done all it would do, it ends.
    await async_wait_until(lambda: not threads[0].is_alive(), message="the handler's thread to end")

    seen, counts = await _drain_with_second_app(redis_url, unique)
    assert calls == [0]
    assert sorted(seen) == [(0, 1, 1), (1, 1, 1), (2, 1, 1)]
    assert counts["reclaimed"] == 3
    assert await client.xlen(keys.dlq_key(unique)) == 0


async def test_stop_before_run_makes_that_run_return_at_once(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """stop() called before run() makes that run() return at once, without handling or even reading
    anything; the run after it works as usual."""
    await _publish(redis_url, unique, range(3))
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        handled.extend(job.n for job in batch.events)

    app.stop()
    await asyncio.wait_for(app.run(), 30)  # not burst: only the stop can end it
    assert handled == []
    groups = await client.xinfo_groups(unique)
    assert all(int(g["pending"]) == 0 and g["last-delivered-id"] == b"0-0" for g in groups)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert handled == [0, 1, 2]


async def test_cancel_gives_back_a_read_ahead_whose_reply_was_never_parsed(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Cancelled while a batch is handled with the next one read ahead (sent, its reply not parsed yet), the
    run gives back both: another worker with a ten-minute lease handles every event at once, instead of the
    read-ahead's entries waiting out the lease."""
    await _publish(redis_url, unique, range(40))
    calls = 0
    stuck = asyncio.Event()
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=10, lease_ms=LONG_LEASE_MS, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # two quick batches turned read-ahead on: the fourth batch is on its way
            stuck.set()
            await asyncio.Event().wait()

    run = asyncio.create_task(app.run_until_idle())
    await async_wait_until(stuck.is_set, message="the third batch to be in hand")
    await async_wait_until(lambda: _pending_is(client, unique, 20), message="the fourth batch read ahead")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert app.counts()["given_back"] == 20

    seen: list[int] = []
    second = streamq.App(redis_url)

    @second.consumer(unique, group="g", batch_size=10, lease_ms=LONG_LEASE_MS, block_ms=100)
    async def again(batch: streamq.Batch[Job]) -> None:
        seen.extend(m.event.n for m in batch)

    await asyncio.wait_for(second.run_until_idle(), 60)
    assert sorted(seen) == list(range(20, 40))


async def _pending_is(client: redis.asyncio.Redis, stream: str, count: int) -> bool:
    return int((await client.xpending(stream, "g"))["pending"]) == count
