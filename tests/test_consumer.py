"""streamq.consumer and handlers: group creation, consumer names, handler shapes and threads, timeouts,
several consumers per app, and a group that disappears under a running worker."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgspec
import pytest
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._worker.consumer import consumer_name


class Click(streamq.Event, tag="test.consumer.click"):
    n: int


class View(streamq.Event, tag="test.consumer.view"):
    page: str


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100}


async def _publish(url: str, stream: str, events: list[Any]) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, events)


async def _pending(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


# ------------------------------------------------------------------------------------------ groups


async def test_events_published_before_the_worker_starts_are_handled(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The group is created at the stream's start, not at '$': events already in the stream are handled."""
    await _publish(redis_url, unique, [Click(n) for n in range(5)])
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        handled.extend(e.n for e in batch.events)

    await app.run_until_idle()
    assert handled == [0, 1, 2, 3, 4]
    assert await _pending(client, unique, "g") == 0


async def test_worker_may_start_before_the_stream_exists(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A worker on a stream that does not exist yet creates it with its group (MKSTREAM), so events
    published after it stopped are still waiting for that group."""
    app = streamq.App(redis_url)
    handled: list[int] = []

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        handled.extend(e.n for e in batch.events)

    await app.run_until_idle()
    assert handled == []
    assert [g["name"] for g in await client.xinfo_groups(unique)] == [b"g"]
    await _publish(redis_url, unique, [Click(1)])
    (group,) = await client.xinfo_groups(unique)
    assert group["last-delivered-id"] == b"0-0"
    await app.run_until_idle()
    assert handled == [1]


async def test_an_existing_group_is_used_as_it_is(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A group created beforehand (BUSYGROUP on creation) is fine: the worker joins it."""
    await client.xgroup_create(unique, "g", id="0", mkstream=True)
    await _publish(redis_url, unique, [Click(7)])
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        handled.extend(e.n for e in batch.events)

    await app.run_until_idle()
    assert handled == [7]


async def test_worker_recreates_a_group_that_vanished(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """If the stream and its group disappear under a running worker (a DEL, a restart without persistence),
    the worker recreates them on NOGROUP and handles what is published afterwards."""
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        handled.extend(e.n for e in batch.events)

    run = asyncio.create_task(app.run())
    await _publish(redis_url, unique, [Click(1)])
    await async_wait_until(lambda: handled == [1], message="the first event")
    await client.delete(unique)
    await _publish(redis_url, unique, [Click(2)])  # a new stream, without the group
    await async_wait_until(lambda: handled == [1, 2], message="the event published after the DEL")
    app.stop()
    await asyncio.wait_for(run, 10)
    assert await _pending(client, unique, "g") == 0


# ------------------------------------------------------------------------------------------ consumers


async def test_consumer_names_are_unique(redis_url: str, unique: str) -> None:
    """Every consumer gets a fresh name with its prefix: two consumers in one app differ, and a restarted
    worker never reuses a name (it could inherit a dead one's entries otherwise)."""
    assert consumer_name("p") != consumer_name("p")
    names: list[str] = []
    for _ in range(2):
        app = streamq.App(redis_url)

        async def handle(batch: streamq.Batch[Click]) -> None:
            return None

        for group in ("g1", "g2"):
            app.add_consumer(handle, unique, group=group, consumer_prefix="billing", **FAST)
        await app.run_until_idle()
        names += [c.name for c in app.consumers]
    assert len(set(names)) == 4
    assert all(name.startswith("billing-") for name in names)


async def test_several_consumers_in_one_app(redis_url: str, client: redis.asyncio.Redis, unique: str) -> None:
    """One app runs consumers of several streams and groups together: each group of a stream gets every
    event of that stream, and streams do not mix."""
    clicks, views = f"{unique}-clicks", f"{unique}-views"
    await _publish(redis_url, clicks, [Click(n) for n in range(3)])
    await _publish(redis_url, views, [View("home"), View("about")])
    got: dict[str, list[Any]] = {"audit": [], "billing": [], "views": []}
    app = streamq.App(redis_url)

    @app.consumer(clicks, group="audit", **FAST)
    async def audit(batch: streamq.Batch[Click]) -> None:
        got["audit"].extend(e.n for e in batch.events)

    @app.consumer(clicks, group="billing", **FAST)
    def billing(event: Click) -> None:
        got["billing"].append(event.n)

    @app.consumer(views, group="audit", **FAST)
    async def pages(event: View) -> None:
        got["views"].append(event.page)

    await app.run_until_idle()
    assert got == {"audit": [0, 1, 2], "billing": [0, 1, 2], "views": ["home", "about"]}
    for stream, group, acked in ((clicks, "audit", b"3"), (clicks, "billing", b"3"), (views, "audit", b"2")):
        assert await client.hget(keys.stats_key(stream, group), "acked") == acked


# ------------------------------------------------------------------------------------------ handler shapes


async def test_batch_handler_gets_the_batch_in_stream_order(redis_url: str, unique: str) -> None:
    """A Batch handler receives the messages of one read in stream order, with ids and first attempts."""
    ids = await _publish(redis_url, unique, [Click(n) for n in range(4)])
    batches: list[streamq.Batch[Click]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", consumer_prefix="shape", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        batches.append(batch)

    await app.run_until_idle()
    (batch,) = batches
    assert (batch.stream, batch.group, batch.consumer.startswith("shape-"), len(batch)) == (
        unique,
        "g",
        True,
        4,
    )
    assert [m.id for m in batch] == ids
    assert [m.attempt for m in batch] == [1, 1, 1, 1]
    assert batch.events == [Click(n) for n in range(4)]


async def test_message_and_event_handler_shapes(redis_url: str, unique: str) -> None:
    """A Message handler is called once per event with its id and attempt; an event handler with the
    event itself; an unannotated handler given events= gets the batch."""
    ids = await _publish(redis_url, unique, [Click(1), Click(2)])
    messages: list[tuple[str, int, Click]] = []
    events: list[Click] = []
    unannotated: list[Any] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="messages", **FAST)
    async def on_message(message: streamq.Message[Click]) -> None:
        messages.append((message.id, message.attempt, message.event))

    @app.consumer(unique, group="events", **FAST)
    async def on_event(event: Click) -> None:
        events.append(event)

    @app.consumer(unique, group="plain", events=[Click], **FAST)
    async def on_anything(batch):  # type: ignore[no-untyped-def]  # deliberately unannotated
        unannotated.extend(batch.events)

    await app.run_until_idle()
    assert messages == [(ids[0], 1, Click(1)), (ids[1], 1, Click(2))]
    assert events == [Click(1), Click(2)]
    assert unannotated == [Click(1), Click(2)]


@pytest.mark.parametrize("shape", ["batch", "event"])
async def test_sync_handlers_run_off_the_event_loop_thread(shape: str, redis_url: str, unique: str) -> None:
    """A plain def handler runs in a worker thread, never on the event loop's thread (where it would stall
    every other consumer and the loop itself)."""
    await _publish(redis_url, unique, [Click(1), Click(2)])
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    app = streamq.App(redis_url)
    if shape == "batch":

        def handle_batch(batch: streamq.Batch[Click]) -> None:
            threads.append(threading.current_thread())

        app.add_consumer(handle_batch, unique, group="g", **FAST)
    else:

        def handle_event(event: Click) -> None:
            threads.append(threading.current_thread())

        app.add_consumer(handle_event, unique, group="g", **FAST)

    await app.run_until_idle()
    assert threads and all(thread is not loop_thread for thread in threads)


async def test_async_handlers_run_on_the_event_loop(redis_url: str, unique: str) -> None:
    """An async def handler is awaited on the loop that runs the app (no thread hop)."""
    await _publish(redis_url, unique, [Click(1)])
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        threads.append(threading.current_thread())

    await app.run_until_idle()
    assert threads == [loop_thread]


# ------------------------------------------------------------------------------------------ timeouts


async def test_handler_timeout_counts_as_a_failed_attempt(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A handler that overruns handler_timeout_ms is abandoned and its batch fails that attempt: it is
    retried, and handled normally when the next attempt finishes in time."""
    await _publish(redis_url, unique, [Click(1)])
    attempts: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", handler_timeout_ms=200, retry_base_ms=0, **FAST)
    async def handle(message: streamq.Message[Click]) -> None:
        attempts.append(message.attempt)
        if message.attempt == 1:
            await asyncio.Event().wait()  # never finishes

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert attempts == [1, 2]
    stats = await client.hgetall(keys.stats_key(unique, "g"))
    assert (stats[b"retried"], stats[b"acked"]) == (b"1", b"1")
    assert await client.xlen(keys.dlq_key(unique)) == 0


@pytest.mark.parametrize("burst", [True, False])
async def test_a_cancelled_error_raised_by_the_handler_fails_its_batch_and_the_worker_goes_on(
    redis_url: str, client: redis.asyncio.Redis, unique: str, burst: bool
) -> None:
    """A handler that awaits something another task cancelled raises CancelledError although nobody
    cancelled the worker. That is the handler's failure: the batch is retried and handled on its next
    attempt, and the worker goes on. (It used to end the consumer quietly: run() returned as if stopped,
    with the batch and the one read ahead left pending.)"""
    await _publish(redis_url, unique, [Click(n) for n in range(6)])
    attempts: list[tuple[int, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=3, retry_base_ms=0, **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        attempts.extend((m.event.n, m.attempt) for m in batch)
        if len(attempts) == 3:
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled

    run = asyncio.create_task(app.run_until_idle() if burst else app.run())
    await async_wait_until(lambda: len(attempts) >= 9 or run.done(), message="the batch retried")
    if not burst:
        await asyncio.sleep(0.3)
        assert not run.done()  # still running: only stop() ends a run that is not in burst mode
        app.stop()
    await asyncio.wait_for(run, 30)
    assert sorted(attempts) == sorted([(n, 1) for n in range(6)] + [(n, 2) for n in range(3)])
    stats = await client.hgetall(keys.stats_key(unique, "g"))
    assert (stats[b"retried"], stats[b"acked"]) == (b"3", b"6")
    assert await _pending(client, unique, "g") == 0


async def test_handler_that_always_times_out_is_dead_lettered(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Timeouts use up attempts as errors do: at max_attempts the event is dead-lettered as HandlerTimeout."""
    (entry_id,) = await _publish(redis_url, unique, [Click(1)])
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", handler_timeout_ms=100, retry_base_ms=0, max_attempts=2, **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        await asyncio.Event().wait()

    await asyncio.wait_for(app.run_until_idle(), 30)
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.error_type, letter.attempts, letter.reason) == (
        entry_id,
        "HandlerTimeout",
        2,
        "max_attempts",
    )
    assert await _pending(client, unique, "g") == 0


async def test_worker_on_a_key_of_another_type_stops_with_a_configuration_error(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A stream name that holds another type (WRONGTYPE) is a configuration error the app raises, not
    something it retries forever; the key is left as it was."""
    await client.set(unique, "not a stream")
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        return None

    with pytest.raises(streamq.ConfigurationError, match=unique):
        await asyncio.wait_for(app.run_until_idle(), 30)
    assert await client.get(unique) == b"not a stream"


async def test_a_stuck_thread_pool_never_dead_letters_events_that_never_ran(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """handler_timeout_ms starts no clock for an event no handler call began on: with the only handler
    thread stuck on event 0, events 1-4 time out waiting for a thread. They are deferred (no attempt used)
    rather than failed, so once the thread is free they are handled, and nothing is dead-lettered (the old
    worker used their attempts on the wait and dead-lettered them as HandlerTimeout)."""
    await _publish(redis_url, unique, [Click(n) for n in range(5)])
    release = threading.Event()
    ran: list[int] = []
    app = streamq.App(redis_url, executor_workers=1)

    @app.consumer(
        unique, group="g", batch_size=1, handler_timeout_ms=100, max_attempts=1, retry_base_ms=10,
        retry_max_ms=20, retry_poll_ms=10, **FAST,
    )  # fmt: skip
    def handle(event: Click) -> None:
        ran.append(event.n)
        if event.n == 0:
            release.wait(30)  # a call stuck on a socket without a timeout, say

    stats = keys.stats_key(unique, "g")

    async def waited_long_enough() -> bool:
        found = await client.hgetall(stats)
        return int(found.get(b"deferred", 0)) >= 4 or int(found.get(b"dead", 0)) >= 2

    run = asyncio.create_task(app.run())
    try:
        await async_wait_until(waited_long_enough, message="events to wait out the timeout for a thread")
        release.set()
        await async_wait_until(
            lambda: set(ran) >= set(range(1, 5)) and app.counts()["acked"] >= 4, message="events 1-4 handled"
        )
    finally:
        release.set()
        app.stop()
        await asyncio.wait_for(run, 30)
    letters = await streamq.DeadLetters(client).list(unique)
    dead = {msgspec.msgpack.decode(letter.payload or b"", type=Click).n for letter in letters}
    assert dead == {0}  # event 0 timed out on its one attempt; the others never ran until the thread was free
