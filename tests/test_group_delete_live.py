"""`streamq group delete` refuses while a worker of the group runs, even one that reads nothing: a paused
worker (and on Redis 7.0 a worker of a quiet stream) never resets its consumer's idle time, so the idle
time alone let a delete through under it, dropping its waiting retries. Workers give their word in the
group's live set (keys.live_key), renewed while they run and taken back when they stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq.control import pause
from streamq.errors import GroupInUse
from streamq.retention import delete_group


class Tick(streamq.Event, tag="test.group_delete_live.tick"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100}


@asynccontextmanager
async def _running(app: streamq.App) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: bool(app.consumers) or task.done(), message="the app's consumers")
        yield task
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)


def _idle_ms(sync_client: redis.Redis, stream: str, group: str) -> float:
    """How long the group's most recently seen consumer has been idle (inf: it has none: a worker started
    while paused has never read, so the server knows no consumer of it)."""
    return min((int(c["idle"]) for c in sync_client.xinfo_consumers(stream, group)), default=float("inf"))


async def test_a_paused_worker_keeps_its_group_from_being_deleted_until_it_stops(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        pass

    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Tick(n=1))
    await pause(client, unique, "g")
    async with _running(app):
        (consumer,) = app.consumers
        name = consumer.name
        live = keys.live_key(unique, "g")
        await async_wait_until(
            lambda: sync_client.zscore(live, name) is not None, message="the worker's word"
        )
        # Paused, it reads nothing: no consumer of the group looks live to the server by its idle time.
        await async_wait_until(
            lambda: _idle_ms(sync_client, unique, "g") >= 300, message="the consumer idle 300 ms"
        )
        with pytest.raises(GroupInUse) as refused:
            await delete_group(client, unique, "g", live_idle_ms=200)
        assert name in [who for who, _ in refused.value.live]
        assert [g["name"] for g in await client.xinfo_groups(unique)] == [b"g"]
    # Stopped, its word is taken back at once (not after it lapses): the delete goes ahead.
    assert sync_client.zscore(keys.live_key(unique, "g"), name) is None
    await async_wait_until(
        lambda: _idle_ms(sync_client, unique, "g") >= 300, message="the consumer idle 300 ms"
    )
    deleted = await delete_group(client, unique, "g", live_idle_ms=200)
    assert (deleted.existed, deleted.forced) == (True, False)
    assert not await client.exists(keys.live_key(unique, "g"))


async def test_a_forced_delete_removes_the_live_set_with_the_group(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """A word given by a worker that then died without taking it back is the group's too: --force removes
    it, and a word that lapsed no longer refuses anything."""
    sync_client.xadd(unique, {"d": b"x"})
    sync_client.xgroup_create(unique, "g", "0")
    live = keys.live_key(unique, "g")
    now_ms = int(sync_client.time()[0]) * 1000
    sync_client.zadd(live, {"gone-long-ago": now_ms - 1_000, "just-died": now_ms + 60_000})
    with pytest.raises(GroupInUse) as refused:
        await delete_group(client, unique, "g")
    assert [who for who, _ in refused.value.live] == ["just-died"]
    deleted = await delete_group(client, unique, "g", force=True)
    assert deleted.forced and not await client.exists(live)
