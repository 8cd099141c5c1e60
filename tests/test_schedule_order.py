"""Delayed events due at the same moment enter the stream in the order they were published: the scheduled
set orders equal due times by schedule id, so ids must sort in publish order (random ids shuffled a
`publish_many(..., at=T)`, and so the per-key order of an ordered partitioned stream)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from helpers import async_wait_until

import streamq
from streamq._publish_plan import new_schedule_id


class Step(streamq.Event, tag="test.schedule_order.step"):
    n: int


def test_schedule_ids_sort_in_the_order_they_are_made() -> None:
    made = [new_schedule_id() for _ in range(10_000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(len(sid) == len("sched-") + 32 for sid in made)


async def test_events_due_together_enter_the_stream_in_publish_order(redis_url: str, unique: str) -> None:
    due = datetime.now(UTC) + timedelta(milliseconds=200)
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Step(n=n) for n in range(300)], at=due)
        await producer.publish_many(unique, [Step(n=n) for n in range(300, 400)], at=due)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", block_ms=100, scheduled_poll_ms=50)
    async def handle(batch: streamq.Batch[Step]) -> None:
        handled.extend(step.n for step in batch.events)

    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: len(handled) >= 400 or task.done(), message="400 events handled")
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)
    assert handled == list(range(400))
