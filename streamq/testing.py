"""Helpers for testing your own handlers.

Unit-test a handler's decisions without Redis:

    batch = streamq.testing.make_batch([OrderPlaced(1, 999), OrderPlaced(2, -5)])
    await bill(batch)
    assert streamq.testing.outcomes(batch) == ["ack", "dead"]

For the Redis side, run the real App against a real server (streamq.embedded.EmbeddedServer starts a
throwaway one) and `await app.run_until_idle()`, which returns once everything is settled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from .batch import Batch, Message
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


def outcomes(batch: Batch[E], *, handler_raised: bool = False) -> list[str]:
    """What settlement each message would get: "ack", "retry", "fail" or "dead".

    Messages the handler left alone are "ack", or "fail" when the handler raised (pass handler_raised).
    """
    default = "fail" if handler_raised else "ack"
    found = []
    for message in batch:
        outcome = batch.outcome(message)
        found.append(outcome.kind if outcome is not None else default)
    return found
