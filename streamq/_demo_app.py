"""The demo's application: a billing consumer of order events that fails on purpose.

`streamq demo` runs it in worker subprocesses, and docker-compose's worker service runs it for good:

    streamq worker streamq._demo_app:app --redis-url redis://localhost:6379/0

The handler fails in two ways, so the demo shows every path an event can take:
- about 1% of orders (order_id % 100 == 42) fail their first attempt, like a payment gateway timing out
  now and then, and succeed when retried after the backoff;
- poison orders (a negative amount) fail every attempt and end in the dead-letter stream.

Two environment variables exist for the demo's sake, both read once on import:
STREAMQ_DEMO_SLOW_MS makes every batch take that long, so the demo can kill a worker while it holds one;
STREAMQ_DEMO_STREAM renames the stream, so tests sharing one server do not share the demo's data.
"""

from __future__ import annotations

import asyncio
import os

import streamq

SLOW_ENV = "STREAMQ_DEMO_SLOW_MS"
STREAM_ENV = "STREAMQ_DEMO_STREAM"
STREAM = os.environ.get(STREAM_ENV) or "demo.orders"
GROUP = "billing"
FLAKY_REMAINDER = 42  # orders with order_id % 100 == 42 fail their first attempt
SLOW_MS = int(os.environ.get(SLOW_ENV) or 0)  # ms each batch takes on top of the work


class OrderPlaced(streamq.Event, tag="demo.order_placed"):
    order_id: int
    cents: int


class InvalidAmount(ValueError):
    """A poison order: no number of attempts will bill a negative amount."""


def is_flaky(order: OrderPlaced) -> bool:
    return order.order_id % 100 == FLAKY_REMAINDER


app = streamq.App()  # no URL: `streamq worker --redis-url` (or STREAMQ_REDIS_URL) supplies it


@app.consumer(
    STREAM, group=GROUP, batch_size=500, max_attempts=3,
    # Short backoff and lease so the demo's retries and its crash recovery finish in seconds.
    retry_base_ms=50, retry_max_ms=500, lease_ms=2_000,
)  # fmt: skip
async def bill(batch: streamq.Batch[OrderPlaced]) -> None:
    if SLOW_MS:
        await asyncio.sleep(SLOW_MS / 1000)
    for message in batch:
        order = message.event
        if order.cents < 0:
            batch.fail(message, InvalidAmount(f"order {order.order_id} has a negative amount: {order.cents}"))
        elif is_flaky(order) and message.attempt == 1:
            batch.fail(message, TimeoutError(f"payment gateway timed out billing order {order.order_id}"))
    # Returning acknowledges every message not failed above.
