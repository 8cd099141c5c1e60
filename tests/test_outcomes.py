"""What a handler's result does to its events: ack, fail and retry with backoff, dead-letter at
max_attempts, and the explicit per-event outcomes (batch.retry / batch.dead_letter, Retry, Reject)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import redis.asyncio
from group_state import assert_nothing_left as _assert_nothing_left
from group_state import stats as _stats
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq.events import PAYLOAD_FIELD


class Order(streamq.Event, tag="test.outcomes.order"):
    n: int


# retention off: the tests read the stream afterwards, and the trimmer would have removed what was acked.
FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 10, "retry_max_ms": 20,
                        "retention": False}  # fmt: skip


async def _publish(url: str, stream: str, count: int) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Order(n) for n in range(count)])


async def test_returning_normally_acks_every_event(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A handler that returns acknowledges the whole batch: nothing pending, retried or dead-lettered."""
    await _publish(redis_url, unique, 12)
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=5, **FAST)
    async def handle(batch: streamq.Batch[Order]) -> None:
        return None

    await app.run_until_idle()
    assert await _stats(client, unique) == {"acked": 12}
    assert await client.xlen(keys.dlq_key(unique)) == 0
    await _assert_nothing_left(client, unique)


async def test_raising_fails_every_event_until_it_is_dead_lettered(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A handler that raises fails its whole batch: each event is retried after a backoff with attempt
    1, 2, 3, then dead-lettered with the error's type, message and traceback, its attempts, first and last
    failure times, and its payload byte for byte."""
    ids = await _publish(redis_url, unique, 3)
    attempts: dict[int, list[int]] = defaultdict(list)
    previous: list[str] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=3, **FAST)
    async def handle(batch: streamq.Batch[Order]) -> None:
        for message in batch:
            attempts[message.event.n].append(message.attempt)
            previous.append(message.previous_error)
        raise ValueError("payment service said no")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert dict(attempts) == {0: [1, 2, 3], 1: [1, 2, 3], 2: [1, 2, 3]}
    assert "ValueError: payment service said no" in previous[-1]

    letters = await streamq.DeadLetters(client).list(unique)
    assert sorted(letter.id for letter in letters) == sorted(ids)  # in the order their retries ran out
    originals = {i.decode(): fields[PAYLOAD_FIELD] for i, fields in await client.xrange(unique)}
    for letter in letters:
        assert (letter.stream, letter.group, letter.reason, letter.attempts) == (
            unique,
            "g",
            "max_attempts",
            3,
        )
        assert (letter.error_type, letter.error) == ("ValueError", "payment service said no")
        assert "raise ValueError" in letter.traceback and "in handle" in letter.traceback
        assert 0 < letter.first_failure_ms < letter.last_failure_ms
        assert letter.payload == originals[letter.id]
    assert await _stats(client, unique) == {"retried": 6, "dead": 3}
    await _assert_nothing_left(client, unique)


async def test_acked_messages_stay_acked_when_the_handler_then_raises(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """batch.ack(message) settles that message even if the handler raises afterwards; only the others
    are retried."""
    await _publish(redis_url, unique, 4)
    calls: list[list[int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Order]) -> None:
        calls.append([m.event.n for m in batch])
        if len(calls) == 1:
            batch.ack(batch[0])
            batch.ack(batch[2])
            raise RuntimeError("half done")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert calls[0] == [0, 1, 2, 3]
    assert sorted(n for call in calls[1:] for n in call) == [1, 3]  # retries may come back apart (jitter)
    assert await _stats(client, unique) == {"acked": 4, "retried": 2}


async def test_batch_retry_and_dead_letter_choose_per_message(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Inside a batch handler, batch.retry sends one message back for another attempt and
    batch.dead_letter sends one to the dead-letter stream with the reason given; the rest are acked."""
    ids = await _publish(redis_url, unique, 3)
    seen: list[tuple[int, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Order]) -> None:
        for message in batch:
            seen.append((message.event.n, message.attempt))
            if message.attempt == 1 and message.event.n == 0:
                batch.retry(message, delay_ms=0, reason="stock not there yet")
            elif message.event.n == 1:
                batch.dead_letter(message, "customer unknown")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert seen == [(0, 1), (1, 1), (2, 1), (0, 2)]
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.detail, letter.attempts) == (
        ids[1],
        "rejected",
        "customer unknown",
        1,
    )
    assert await _stats(client, unique) == {"acked": 2, "retried": 1, "dead": 1}
    await _assert_nothing_left(client, unique)


def test_batch_refuses_foreign_messages_and_negative_delays() -> None:
    """A batch only settles its own messages, and a retry delay cannot be negative."""
    mine = streamq.Message(0, "s", b"1-0", "1-0", 1, b"")
    other = streamq.Message(0, "s", b"2-0", "2-0", 1, b"")
    batch = streamq.Batch("s", "g", "c", [mine])
    with pytest.raises(ValueError, match="not part of this batch"):
        batch.ack(other)
    with pytest.raises(ValueError, match="delay_ms"):
        batch.retry(mine, delay_ms=-1)


async def test_retry_exception_waits_the_delay_it_asks_for(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """streamq.Retry(delay_ms) raised by an event handler schedules only that event, due delay_ms later
    (held in Redis meanwhile); once due it comes back as attempt 2 under its original id."""
    ids = await _publish(redis_url, unique, 3)
    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(message: streamq.Message[Order]) -> None:
        seen.append((message.event.n, message.attempt, message.id))
        if message.event.n == 1 and message.attempt == 1:
            raise streamq.Retry(delay_ms=60_000, reason="rate limited")

    delayed = keys.delayed_key(unique, "g")
    run = asyncio.create_task(app.run())
    await async_wait_until(lambda: client.zcard(delayed), message="the retry to be scheduled")
    app.stop()
    await asyncio.wait_for(run, 10)
    ((_, due_ms),) = await client.zrange(delayed, 0, -1, withscores=True)
    seconds, micros = await client.time()
    assert 50_000 < due_ms - (seconds * 1000 + micros // 1000) <= 60_000
    assert await _stats(client, unique) == {"acked": 2, "retried": 1}

    await client.zadd(delayed, {member: 0 for member in await client.zrange(delayed, 0, -1)})  # due now
    await asyncio.wait_for(app.run_until_idle(), 30)
    assert seen == [(0, 1, ids[0]), (1, 1, ids[1]), (2, 1, ids[2]), (1, 2, ids[1])]
    await _assert_nothing_left(client, unique)


async def test_reject_and_errors_in_event_handlers_settle_one_event(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """In a per-event handler, streamq.Reject dead-letters that event at once (no retries) and any other
    error fails only that event; the events around them are acknowledged."""
    ids = await _publish(redis_url, unique, 4)
    seen: list[tuple[int, int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=5, **FAST)
    async def handle(message: streamq.Message[Order]) -> None:
        seen.append((message.event.n, message.attempt))
        if message.event.n == 1:
            raise streamq.Reject("malformed order")
        if message.event.n == 2 and message.attempt == 1:
            raise KeyError("sku")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert seen == [(0, 1), (1, 1), (2, 1), (3, 1), (2, 2)]
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.error_type, letter.detail) == (
        ids[1],
        "rejected",
        "Reject",
        "malformed order",
    )
    assert letter.attempts == 1
    assert await _stats(client, unique) == {"acked": 3, "retried": 1, "dead": 1}


@pytest.mark.parametrize("outcome", ["retry", "reject"])
async def test_outcome_exceptions_raised_by_a_batch_handler_apply_to_the_batch(
    outcome: str, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Retry raised by a batch handler retries every unsettled message; Reject dead-letters them all."""
    await _publish(redis_url, unique, 3)
    calls: list[list[int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Order]) -> None:
        calls.append([m.attempt for m in batch])
        if len(calls) == 1:
            raise streamq.Retry(delay_ms=0) if outcome == "retry" else streamq.Reject("whole batch is bad")

    await asyncio.wait_for(app.run_until_idle(), 30)
    if outcome == "retry":
        assert calls == [[1, 1, 1], [2, 2, 2]]
        assert await _stats(client, unique) == {"acked": 3, "retried": 3}
    else:
        assert calls == [[1, 1, 1]]
        letters = await streamq.DeadLetters(client).list(unique)
        assert [(d.reason, d.detail) for d in letters] == [("rejected", "whole batch is bad")] * 3
    await _assert_nothing_left(client, unique)


async def test_sync_handler_failures_are_retried_too(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A plain def handler's exception fails its batch exactly as an async one's does."""
    await _publish(redis_url, unique, 2)
    attempts: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    def handle(batch: streamq.Batch[Order]) -> None:
        attempts.extend(m.attempt for m in batch)
        if batch[0].attempt == 1:
            raise OSError("disk full")

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert attempts == [1, 1, 2, 2]
    assert await _stats(client, unique) == {"acked": 2, "retried": 2}
