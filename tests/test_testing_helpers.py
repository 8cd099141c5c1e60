"""streamq.testing: unit-testing a handler's decisions without Redis, and that what it reports is what a
real worker does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio

import streamq
from streamq import keys
from streamq.errors import Defer  # not exported as streamq.Defer (yet)
from streamq.testing import make_batch, outcomes


class Charge(streamq.Event, tag="test.testing.charge"):
    cents: int


async def _handler(batch: streamq.Batch[Charge]) -> None:
    for message in batch:
        if message.event.cents < 0:
            batch.dead_letter(message, "negative amount")
        elif message.event.cents == 0:
            batch.retry(message, delay_ms=10)


async def test_outcomes_report_what_the_handler_chose() -> None:
    """Each message's chosen outcome is visible; untouched messages are acks."""
    batch = make_batch([Charge(5), Charge(-1), Charge(0)])
    await _handler(batch)
    assert outcomes(batch) == ["ack", "dead", "retry"]
    assert [m.id for m in batch] == ["1-0", "2-0", "3-0"]


def test_untouched_messages_fail_when_the_handler_raised() -> None:
    """With handler_raised, messages without an explicit outcome count as failed attempts."""
    batch = make_batch([Charge(1), Charge(2)])
    batch.ack(batch[0])
    assert outcomes(batch, handler_raised=True) == ["ack", "fail"]


# ------------------------------------------------------------ outcomes() agrees with a real worker


async def _succeed(batch: streamq.Batch[Charge]) -> None:
    return None


async def _retry_first(batch: streamq.Batch[Charge]) -> None:
    batch.retry(batch[0], delay_ms=0)


async def _defer_first(batch: streamq.Batch[Charge]) -> None:
    batch.defer(batch[0], 0)


async def _dead_letter_first(batch: streamq.Batch[Charge]) -> None:
    batch.dead_letter(batch[0], "bad card")


async def _raise_retry(batch: streamq.Batch[Charge]) -> None:
    raise streamq.Retry(delay_ms=0)


async def _raise_reject(batch: streamq.Batch[Charge]) -> None:
    raise streamq.Reject("bad card")


async def _raise_defer(batch: streamq.Batch[Charge]) -> None:
    raise Defer(0)


async def _raise_value_error(batch: streamq.Batch[Charge]) -> None:
    raise ValueError("gateway down")


async def _ack_first_then_raise(batch: streamq.Batch[Charge]) -> None:
    batch.ack(batch[0])
    raise ValueError("gateway down")


HANDLERS: dict[str, Callable[[streamq.Batch[Charge]], Awaitable[None]]] = {
    "success": _succeed,
    "batch.retry": _retry_first,
    "batch.defer": _defer_first,
    "batch.dead_letter": _dead_letter_first,
    "raise Retry": _raise_retry,
    "raise Reject": _raise_reject,
    "raise Defer": _raise_defer,
    "raise ValueError": _raise_value_error,
    "batch.ack, then raise": _ack_first_then_raise,
}


async def _outcomes_of(handler: Callable[[streamq.Batch[Charge]], Awaitable[None]]) -> list[str]:
    """outcomes() of a handler's call on a batch of two, told what it raised, as a user's test would."""
    batch = make_batch([Charge(1), Charge(2)])
    raised: BaseException | None = None
    try:
        await handler(batch)
    except Exception as exc:
        raised = exc
    return list(outcomes(batch, raised=raised))


async def _what_the_worker_did(
    handler: Callable[[streamq.Batch[Charge]], Awaitable[None]],
    redis_url: str,
    client: redis.asyncio.Redis,
    stream: str,
) -> tuple[list[str], dict[str, int]]:
    """Run `handler` on a batch of two events in a real App, on their first delivery (later deliveries
    succeed), and read back what became of each event: "dead" if it is in the dead letters, "attempt" if
    it came back as a second attempt, "defer" if it came back still on its first, "ack" if handled once.
    Also returns the consumer's stats."""
    async with streamq.Producer(redis_url) as producer:
        ids = await producer.publish_many(stream, [Charge(1), Charge(2)])
    attempts: dict[str, list[int]] = {}
    app = streamq.App(redis_url)

    @app.consumer(stream, group="g", retry_base_ms=10, retry_max_ms=20, retry_poll_ms=10, block_ms=100)
    async def handle(batch: streamq.Batch[Charge]) -> None:
        first_delivery = not attempts
        for message in batch:
            attempts.setdefault(message.id, []).append(message.attempt)
        if first_delivery:
            await handler(batch)

    await asyncio.wait_for(app.run_until_idle(), 30)
    dead = {letter.id: letter.reason for letter in await streamq.DeadLetters(client).list(stream)}
    assert set(dead.values()) <= {"rejected"}
    seen = {(1,): "ack", (1, 2): "attempt", (1, 1): "defer"}
    kinds = [("dead" if entry_id in dead else seen[tuple(attempts[entry_id])]) for entry_id in ids]
    raw = await client.hgetall(keys.stats_key(stream, "g"))
    return kinds, {k.decode(): int(v) for k, v in raw.items()}


@pytest.mark.parametrize("case", list(HANDLERS))
async def test_outcomes_agree_with_what_a_real_worker_does(
    case: str, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """For every way a handler can end (return, batch.retry / defer / dead_letter, raising Retry, Reject,
    Defer or another error, acking one message and then raising), outcomes(batch, raised=...) reports per
    message what a real worker does with the same handler: "ack" is acknowledged once, "retry" and "fail"
    come back as a second attempt (a failed attempt either way), "defer" comes back still on its first
    attempt, "dead" is dead-lettered; and the worker's stats count exactly those."""
    handler = HANDLERS[case]
    predicted = await _outcomes_of(handler)
    done, stats = await _what_the_worker_did(handler, redis_url, client, unique)
    as_seen = {"retry": "attempt", "fail": "attempt"}
    assert [as_seen.get(kind, kind) for kind in predicted] == done
    expected = {
        "acked": 2 - predicted.count("dead"),
        "retried": predicted.count("retry") + predicted.count("fail"),
        "deferred": predicted.count("defer"),
        "dead": predicted.count("dead"),
    }
    assert stats == {name: count for name, count in expected.items() if count}


async def test_outcomes_follow_the_outcome_exception_the_handler_raised() -> None:
    """Told what the handler raised, outcomes() gives the messages it left alone the outcome that
    exception chooses, as the worker does: Retry retries, Defer defers, Reject dead-letters and anything
    else fails; an outcome chosen inside the batch wins. (It used to report "fail" for all of them.)"""
    batch = make_batch([Charge(1), Charge(2)])
    batch.ack(batch[0])
    assert outcomes(batch, raised=streamq.Retry()) == ["ack", "retry"]
    assert outcomes(batch, raised=Defer(1_000)) == ["ack", "defer"]
    assert outcomes(batch, raised=streamq.Reject()) == ["ack", "dead"]
    assert outcomes(batch, raised=KeyError("sku")) == ["ack", "fail"]
    assert outcomes(batch) == ["ack", "ack"]


def test_handler_raised_still_means_a_failure() -> None:
    """The older form, handler_raised=True, stands for an ordinary error: untouched messages fail, chosen
    outcomes (a deferral here) stand."""
    batch = make_batch([Charge(1), Charge(2)])
    batch.defer(batch[0], 50)
    assert outcomes(batch, handler_raised=True) == ["defer", "fail"]
