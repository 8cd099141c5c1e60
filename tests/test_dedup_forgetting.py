"""Expired dedup keys are forgotten by the workers' trims too, not only by later keyed publishes: after a
stream's last keyed publish, nothing else would ever remove them from its index."""

from __future__ import annotations

import asyncio

import redis

import streamq
from helpers import async_wait_until
from streamq import keys
from streamq.retention import trim_sync


class Order(streamq.Event, tag="test.dedup_forgetting.order"):
    n: int


async def _publish_keyed(url: str, stream: str, count: int) -> None:
    async with streamq.Producer(url, dedup_ttl_ms=1) as producer:
        await producer.publish_many(
            stream, [Order(n=n) for n in range(count)], dedup_key=lambda e: f"order-{e.n}"
        )


def _remembered(sync_client: redis.Redis, stream: str) -> tuple[int, int]:
    return sync_client.hlen(keys.dedup_index_key(stream)), sync_client.zcard(keys.dedup_expiry_key(stream))


async def test_a_running_worker_forgets_expired_dedup_keys(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    await _publish_keyed(redis_url, unique, 50)
    assert _remembered(sync_client, unique) == (50, 50)  # expired within 1 ms, but nobody publishes again
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", block_ms=100, trim_interval_ms=50)
    async def handle(batch: streamq.Batch[Order]) -> None:
        pass

    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(
            lambda: _remembered(sync_client, unique) == (0, 0) or task.done(),
            message="the expired dedup keys forgotten",
        )
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)
    assert _remembered(sync_client, unique) == (0, 0)


async def test_streamq_trim_forgets_expired_dedup_keys_but_a_dry_run_does_not(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    async with streamq.Producer(redis_url) as producer:  # a key of the default day's ttl: kept
        await producer.publish(unique, Order(n=-1), dedup_key="still-good")
    await _publish_keyed(redis_url, unique, 20)  # last: a keyed publish forgets what expired before it
    sync_client.xgroup_create(unique, "g", "0")
    trim_sync(sync_client, unique, dry_run=True)
    assert _remembered(sync_client, unique) == (21, 21)
    trim_sync(sync_client, unique)
    assert _remembered(sync_client, unique) == (1, 1)
    assert sync_client.hexists(keys.dedup_index_key(unique), "still-good")
