"""Deferring is not failing: batch.defer(message, delay_ms) and a raised Defer(delay_ms) put an event back
for later without using an attempt, bounded in time by max_defer_ms; batch.retry still uses attempts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from group_state import assert_nothing_left as _assert_nothing_left
from group_state import stats as _stats

import streamq
from streamq.errors import Defer  # the same class as streamq.Defer


class Parcel(streamq.Event, tag="test.defer.parcel"):
    n: int


FAST: dict[str, Any] = {
    "lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 10, "retry_max_ms": 20, "retry_poll_ms": 10,
}  # fmt: skip


async def _publish(url: str, stream: str, count: int) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Parcel(n) for n in range(count)])


@pytest.mark.parametrize("how", ["batch.defer", "raise Defer"])
async def test_deferring_uses_no_attempt(
    how: str, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """With max_attempts=2, an event deferred five times (by batch.defer or by raising Defer from the
    batch handler) and then acknowledged is never dead-lettered: it comes back each time under its own id
    with message.attempt still 1, and the stats hash counts five deferrals and one ack."""
    (entry_id,) = await _publish(redis_url, unique, 1)
    seen: list[tuple[str, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=2, **FAST)
    async def handle(batch: streamq.Batch[Parcel]) -> None:
        for message in batch:
            seen.append((message.id, message.attempt))
            if len(seen) <= 5:
                if how == "raise Defer":
                    raise Defer(10, reason="not ready")
                batch.defer(message, 10, reason="not ready")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert seen == [(entry_id, 1)] * 6
    assert await streamq.DeadLetters(client).list(unique) == []
    assert await _stats(client, unique) == {"deferred": 5, "acked": 1}
    await _assert_nothing_left(client, unique)


async def test_deferring_after_a_failure_keeps_the_attempts_used(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A deferral neither uses nor gives back attempts: an event that failed once, then was deferred
    twice, comes back as attempt 2 each time, and a failure after that is its third attempt, which with
    max_attempts=3 dead-letters it as max_attempts."""
    (entry_id,) = await _publish(redis_url, unique, 1)
    attempts: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=3, **FAST)
    async def handle(message: streamq.Message[Parcel]) -> None:
        attempts.append(message.attempt)
        if len(attempts) in (2, 3):
            raise Defer(10)
        raise RuntimeError("still broken")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert attempts == [1, 2, 2, 2, 3]
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.attempts) == (entry_id, "max_attempts", 3)
    assert await _stats(client, unique) == {"retried": 2, "deferred": 2, "dead": 1}
    await _assert_nothing_left(client, unique)


async def test_an_event_deferred_longer_than_max_defer_ms_is_dead_lettered(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """max_defer_ms bounds deferring: an event deferred again and again (100 ms each time, max_defer_ms=300)
    is dead-lettered with reason deferred_too_long once its first deferral is more than 300 ms old, having
    used no attempt; every deferral before that is counted."""
    (entry_id,) = await _publish(redis_url, unique, 1)
    handled = 0
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=2, max_defer_ms=300, **FAST)
    async def handle(batch: streamq.Batch[Parcel]) -> None:
        nonlocal handled
        handled += 1
        for message in batch:
            batch.defer(message, 100, reason="waiting for the warehouse")

    await asyncio.wait_for(app.run_until_idle(), 30)
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.error_type, letter.attempts) == (
        entry_id,
        "deferred_too_long",
        "Defer",
        1,
    )
    assert "max_defer_ms=300" in letter.detail and "waiting for the warehouse" in letter.detail
    stats = await _stats(client, unique)
    assert stats == {"deferred": handled - 1, "dead": 1}
    assert handled >= 2
    await _assert_nothing_left(client, unique)


async def test_one_deferral_longer_than_max_defer_ms_comes_back_when_the_bound_is_over(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A single deferral far longer than max_defer_ms (Defer(10**12), about 31 years) is cut to the bound:
    the event is back once max_defer_ms (300 ms) is over, and deferred again it is dead-lettered as
    deferred_too_long. (It used to wait out the whole delay in the delayed set, unseen, and keep burst mode
    from ever ending.)"""
    (entry_id,) = await _publish(redis_url, unique, 1)
    handled = 0
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_defer_ms=300, **FAST)
    async def handle(message: streamq.Message[Parcel]) -> None:
        nonlocal handled
        handled += 1
        raise Defer(10**12)

    await asyncio.wait_for(app.run_until_idle(), 30)
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.attempts) == (entry_id, "deferred_too_long", 1)
    assert handled == 2
    assert await _stats(client, unique) == {"deferred": 1, "dead": 1}
    await _assert_nothing_left(client, unique)


async def test_batch_retry_still_uses_attempts(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """batch.retry is a failed attempt, unlike defer: with max_attempts=2 an event retried every time is
    handled as attempt 1, then 2, then dead-lettered as max_attempts."""
    (entry_id,) = await _publish(redis_url, unique, 1)
    attempts: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=2, **FAST)
    async def handle(batch: streamq.Batch[Parcel]) -> None:
        for message in batch:
            attempts.append(message.attempt)
            batch.retry(message, delay_ms=10, reason="not ready")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert attempts == [1, 2]
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.attempts) == (entry_id, "max_attempts", 2)
    assert await _stats(client, unique) == {"retried": 1, "dead": 1}
    await _assert_nothing_left(client, unique)


@pytest.mark.parametrize("shape", ["message", "event", "sync message"])
async def test_defer_raised_by_a_per_event_handler_defers_only_its_event(
    shape: str, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A one-at-a-time handler (taking a Message or an event, async or plain def) that raises Defer for
    one event of a batch of four defers that event alone, still as its first attempt; the other three are
    acknowledged once each."""
    await _publish(redis_url, unique, 4)
    seen: list[int] = []
    attempts: list[int] = []
    app = streamq.App(redis_url)

    def decide(event: Parcel) -> None:
        seen.append(event.n)
        if event.n == 2 and seen.count(2) == 1:
            raise Defer(10, reason="address not verified yet")

    if shape == "message":

        async def handle_message(message: streamq.Message[Parcel]) -> None:
            attempts.append(message.attempt)
            decide(message.event)

        app.add_consumer(handle_message, unique, group="g", max_attempts=1, **FAST)
    elif shape == "event":

        async def handle_event(event: Parcel) -> None:
            decide(event)

        app.add_consumer(handle_event, unique, group="g", max_attempts=1, **FAST)
    else:

        def handle_sync(message: streamq.Message[Parcel]) -> None:
            attempts.append(message.attempt)
            decide(message.event)

        app.add_consumer(handle_sync, unique, group="g", max_attempts=1, **FAST)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert seen == [0, 1, 2, 3, 2]
    assert attempts == ([] if shape == "event" else [1] * 5)  # max_attempts=1: no attempt to spare
    assert await streamq.DeadLetters(client).list(unique) == []
    assert await _stats(client, unique) == {"acked": 4, "deferred": 1}
    await _assert_nothing_left(client, unique)


def test_a_deferral_waits_at_least_min_defer_ms() -> None:
    """Defer(0) waits MIN_DEFER_MS (100 ms), so an event deferred with no delay again and again cannot keep
    a worker spinning on it for the whole of max_defer_ms."""
    from streamq._worker.settling import MIN_DEFER_MS, Settlement
    from streamq.batch import Message
    from streamq.settings import ConsumerSettings

    settings = ConsumerSettings(stream="s", group="g")
    settlement = Settlement(settings, "c", {"s": (b"1-0", b"1-0")})
    settlement.defer(Message(0, "s", b"1-0", "1-0", 1, b"payload"), 1_000_000, 0, "not yet")
    ((_, delay_ms, _),) = settlement.plans()[0].defers
    assert delay_ms == MIN_DEFER_MS == 100
