"""streamq.testing: unit-testing a handler's decisions without Redis."""

from __future__ import annotations

import streamq
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
