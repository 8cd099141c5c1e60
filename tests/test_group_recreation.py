"""A consumer group or stream that vanishes under a running worker: the group is recreated after the last
entry whose settlement the worker saw confirmed, so nothing it settled is handled again and nothing in flight
is lost, unless the stream itself is gone, when every entry of the stream that takes its place is new and is
handled.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import redis.asyncio
from helpers import async_wait_until
from worker_proc import Job

import streamq
from streamq import keys
from streamq.events import PAYLOAD_FIELD, Encoder


async def _publish(url: str, stream: str, numbers: range) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Job(n) for n in numbers])


async def _settled(client: redis.asyncio.Redis, stream: str, group: str, acked: int) -> bool:
    """Nothing is pending, and at least `acked` acknowledgements are counted."""
    pending = int((await client.xpending(stream, group))["pending"])
    count = await client.hget(keys.stats_key(stream, group), "acked")
    return pending == 0 and count is not None and int(count) >= acked


async def _has_group(client: redis.asyncio.Redis, stream: str, group: str) -> bool:
    if not await client.exists(stream):
        return False
    return any(g["name"].decode() == group for g in await client.xinfo_groups(stream))


def _run(app: streamq.App) -> asyncio.Task[None]:
    return asyncio.create_task(app.run(), name="worker under test")


async def test_group_destroyed_under_a_running_worker_is_recreated_where_it_had_read_up_to(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A worker (App.run in a task, not burst) handles and settles 50 events; then XGROUP DESTROY removes
    its group. The worker recreates the group where it had read up to and handles the 10 events published
    next: the handler saw exactly 60 events, each once (the group recreated at 0 handled all 50 again)."""
    seen: Counter[int] = Counter()
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=20, lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        seen.update(job.n for job in batch.events)

    await _publish(redis_url, unique, range(50))
    run = _run(app)
    try:
        await async_wait_until(lambda: len(seen) == 50, message="the first 50 events handled")
        await async_wait_until(lambda: _settled(client, unique, "g", 50), message="the first 50 settled")
        await client.xgroup_destroy(unique, "g")
        await _publish(redis_url, unique, range(50, 60))
        await async_wait_until(lambda: len(seen) == 60, message="the 10 events published after the destroy")
        await async_wait_until(lambda: _settled(client, unique, "g", 60), message="all 60 settled")
    finally:
        app.stop()
        await asyncio.wait_for(run, 30)
    assert sorted(seen) == list(range(60))
    assert set(seen.values()) == {1}, {n: c for n, c in seen.items() if c > 1}
    assert int(await client.hget(keys.stats_key(unique, "g"), "acked")) == 60
    assert await client.xlen(keys.dlq_key(unique)) == 0


async def test_stream_deleted_under_a_running_worker_is_read_from_its_start_again(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The stream itself is deleted (DEL) under a running worker that had handled its 20 events; the worker
    recreates the group on a new, empty stream at its start, so every entry appended to it is handled, even
    entries whose ids are lower than those read before (written with ids of their own, as a restore does);
    the 20 earlier events are not handled again."""
    seen: Counter[int] = Counter()
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=20, lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        seen.update(job.n for job in batch.events)

    await _publish(redis_url, unique, range(20))
    run = _run(app)
    try:
        await async_wait_until(lambda: len(seen) == 20, message="the first 20 events handled")
        await async_wait_until(lambda: _settled(client, unique, "g", 20), message="the first 20 settled")
        await client.delete(unique)
        await async_wait_until(
            lambda: _has_group(client, unique, "g"), message="the worker to recreate stream and group"
        )
        encode = Encoder().encode
        for n in range(100, 110):
            await client.xadd(unique, {PAYLOAD_FIELD: encode(Job(n))}, id=f"{n}-1")
        await async_wait_until(lambda: len(seen) == 30, message="the 10 entries of the new stream")
        await async_wait_until(lambda: _settled(client, unique, "g", 30), message="the new entries settled")
    finally:
        app.stop()
        await asyncio.wait_for(run, 30)
    assert sorted(seen) == [*range(20), *range(100, 110)]
    assert set(seen.values()) == {1}
    assert int(await client.hget(keys.stats_key(unique, "g"), "acked")) == 30


async def test_group_destroyed_mid_batch_loses_no_failed_event(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """XGROUP DESTROY while a batch is being handled: that batch's settlement fails on the missing group, so
    the group is recreated after the last entry whose settlement was confirmed, not after what was read.
    With a handler that fails every event (max_attempts=1), every event still ends in the dead-letter
    stream: the batch in flight is delivered again rather than lost (recreated at the read position, its
    failures were neither retried nor dead-lettered)."""
    await _publish(redis_url, unique, range(300))
    app = streamq.App(redis_url)
    calls = 0

    @app.consumer(unique, group="g", batch_size=50, max_attempts=1, block_ms=100, read_ahead=False)
    async def handle(batch: streamq.Batch[Job]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await client.execute_command("XGROUP", "DESTROY", unique, "g")
        raise RuntimeError("fails every event")

    await asyncio.wait_for(app.run_until_idle(), 60)
    dead = await streamq.DeadLetters(client).page(unique, limit=1000)
    numbers = {msgspec.msgpack.decode(letter.payload or b"", type=Job).n for letter in dead.letters}
    assert numbers == set(range(300))
    assert int((await client.xpending(unique, "g"))["pending"]) == 0
