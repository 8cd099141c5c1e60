"""Helpers for testing your own handlers.

Unit-test a handler's decisions without Redis:

    batch = streamq.testing.make_batch([OrderPlaced(1, 999), OrderPlaced(2, -5)])
    await bill(batch)
    assert streamq.testing.outcomes(batch) == ["ack", "dead"]

A handler that raises: pass what it raised, and outcomes() says what the worker would make of it.

    with pytest.raises(streamq.Retry) as raised:
        await bill(batch)
    assert streamq.testing.outcomes(batch, raised=raised.value) == ["retry", "retry"]

For the Redis side, run the real App against a real server (streamq.embedded.EmbeddedServer starts a
throwaway one) and `await app.run_until_idle()`, which returns once everything is settled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from .batch import Batch, Message, OutcomeKind, resolve_outcome
from .events import Encoder, Event

E = TypeVar("E", bound=Event)


def make_batch(
    events: Sequence[E], *, stream: str = "test", group: str = "test", attempt: int = 1
) -> Batch[E]:
    """A Batch as a worker would hand it over: ids 1-0, 2-0, ...; payloads encoded for real."""
    encode = Encoder().encode
    messages: list[Message[E]] = []
    for index, event in enumerate(events):
        entry_id = f"{index + 1}-0"
        message: Message[E] = Message(index, stream, entry_id.encode(), entry_id, attempt, encode(event))
        message.event = event
        messages.append(message)
    return Batch(stream, group, "test-consumer", messages)


def outcomes(
    batch: Batch[E], *, raised: BaseException | None = None, handler_raised: bool = False
) -> list[OutcomeKind]:
    """What the worker would do with each message, by the worker's own rule (streamq.batch.resolve_outcome).

    raised: what the handler raised; None if it returned. Each message gets the outcome chosen for it
    inside the batch, else the one its handler's end implies:
        "ack"    acknowledged
        "retry"  a failed attempt the handler asked for (batch.retry, raise Retry): back after its
                 delay_ms, or the consumer's backoff when it gave none
        "fail"   a failed attempt (any other error): back after the consumer's backoff
        "defer"  not yet (batch.defer, raise Defer): back after its delay, no attempt used
        "dead"   dead-lettered now (batch.dead_letter, raise Reject)
    A "retry" or "fail" on a message's last attempt (message.attempt == max_attempts) is dead-lettered
    as max_attempts instead, and a "defer" past max_defer_ms as deferred_too_long.

    handler_raised=True (the older form) stands for a handler that raised an error other than Retry,
    Defer or Reject: the messages it left alone are "fail".
    """
    if raised is None and handler_raised:
        raised = Exception("the handler raised")
    return [resolve_outcome(batch.outcome(message), raised).kind for message in batch]
