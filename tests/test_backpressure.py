"""Producer backpressure: max_backlog, backlog_timeout_ms, backlog_check_ms and BacklogFull."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._wire import publishing
from streamq.errors import BacklogFull


class Job(streamq.Event, tag="test.backpressure.job"):
    n: int


def _jobs(count: int, start: int = 0) -> list[Job]:
    return [Job(n) for n in range(start, start + count)]


async def _backlog_reads(client: redis.asyncio.Redis) -> int:
    """EVALSHA calls the server has run. The tests that count them publish on the fast path (no script)
    and run no worker, so the calls they add are the producer's backlog reads."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_lagging_group_refuses_at_once_with_timeout_0(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """With a group owing more than max_backlog and no timeout, publish, publish_many and a delayed
    publish raise BacklogFull naming the group and its figures, and nothing of them is written."""
    await client.xgroup_create(unique, "slow", "0", mkstream=True)
    await client.xgroup_create(unique, "fast", "$")
    async with streamq.Producer(redis_url) as plain:
        await plain.publish_many(unique, _jobs(10))
    # "fast" read everything and acknowledged half (owes 5); "slow" has read nothing (owes 10).
    reply = await client.xreadgroup("fast", "c", {unique: ">"})
    await client.xack(unique, "fast", *[entry_id for entry_id, _ in reply[0][1][:5]])
    async with streamq.Producer(redis_url, max_backlog=9, backlog_timeout_ms=0) as producer:
        with pytest.raises(
            BacklogFull, match=r"group 'slow' owes 10 entries \(10 not delivered, 0 pending\)"
        ) as refused:
            await producer.publish(unique, Job(100))
        figures = refused.value
        assert (figures.stream, figures.group, figures.backlog, figures.lag, figures.pending) == (
            unique, "slow", 10, 10, 0,
        )  # fmt: skip
        assert figures.max_backlog == 9
        with pytest.raises(BacklogFull, match="max_backlog=9"):
            await producer.publish_many(unique, _jobs(3, 100), dedup_key=lambda j: str(j.n))
        with pytest.raises(BacklogFull):
            await producer.publish(unique, Job(101), delay_ms=0)
    with (
        streamq.SyncProducer(redis_url, max_backlog=9, backlog_timeout_ms=0) as sync_producer,
        pytest.raises(BacklogFull, match="'slow'"),
    ):
        sync_producer.publish_many(unique, _jobs(3, 100))
    assert await client.xlen(unique) == 10
    assert await client.exists(keys.scheduled_key(unique), keys.dedup_index_key(unique)) == 0
    # At the limit is not over it.
    async with streamq.Producer(redis_url, max_backlog=10, backlog_timeout_ms=0) as producer:
        await producer.publish(unique, Job(102))
    assert await client.xlen(unique) == 11


async def test_a_publish_waits_until_a_consumer_catches_up(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Over max_backlog, a publish waits (re-reading the backlog) instead of failing, and goes through
    once the group's consumer has read and acknowledged enough."""
    await client.xgroup_create(unique, "g", "0", mkstream=True)
    async with streamq.Producer(redis_url) as plain:
        await plain.publish_many(unique, _jobs(20))
    async with streamq.Producer(
        redis_url, max_backlog=5, backlog_timeout_ms=60_000, backlog_check_ms=20
    ) as producer:
        reads_before = await _backlog_reads(client)
        publishing_task = asyncio.create_task(producer.publish(unique, Job(999)))
        # It has read the backlog more than once (so it is waiting, not failing) and written nothing.
        await async_wait_until(
            lambda: _reads_since(client, reads_before, 3), message="the producer re-reading the backlog"
        )
        assert not publishing_task.done()
        assert await client.xlen(unique) == 20
        # The consumer catches up: reads and acknowledges 16 of 20, leaving 4 owed.
        reply = await client.xreadgroup("g", "c", {unique: ">"}, count=16)
        ids = [entry_id for entry_id, _ in reply[0][1]]
        await client.xack(unique, "g", *ids)
        entry_id = await asyncio.wait_for(publishing_task, 30)
    ((last_id, _),) = await client.xrevrange(unique, count=1)
    assert last_id.decode() == entry_id
    assert await client.xlen(unique) == 21


async def _reads_since(client: redis.asyncio.Redis, before: int, at_least: int) -> bool:
    return await _backlog_reads(client) - before >= at_least


async def test_the_backlog_is_read_once_per_check_interval_not_per_event(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Two hundred publishes within one backlog_check_ms read the backlog once; the fast path runs no
    script at all, so every EVALSHA the server counts is a backlog read."""
    await client.xgroup_create(unique, "g", "0", mkstream=True)
    async with streamq.Producer(redis_url, max_backlog=1_000_000, backlog_check_ms=60_000) as producer:
        before = await _backlog_reads(client)
        for n in range(200):
            await producer.publish(unique, Job(n))
        await producer.publish_many(unique, _jobs(50))
        assert await _backlog_reads(client) - before == 1
    assert await client.xlen(unique) == 250


async def test_a_stream_without_groups_has_no_backlog(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """No groups (or no stream yet): backlog 0, nothing is refused."""
    assert publishing.backlog_sync(sync_client, unique, 2) == publishing.Backlog("", 0, 0, 0)
    async with streamq.Producer(redis_url, max_backlog=1, backlog_timeout_ms=0) as producer:
        await producer.publish_many(unique, _jobs(5))
    assert publishing.backlog_sync(sync_client, unique, 2) == publishing.Backlog("", 0, 0, 0)
    assert await client.xlen(unique) == 5


async def test_the_lag_is_counted_when_the_server_cannot_say(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """After a deletion inside a group's unread range, XINFO GROUPS gives no lag (nil): the entries after
    the group's last-delivered id are counted instead, up to the cap."""
    async with streamq.Producer(redis_url) as producer:
        ids = await producer.publish_many(unique, _jobs(10))
    await client.xgroup_create(unique, "g", ids[1])  # delivered up to the second entry
    await client.xdel(unique, ids[5])
    (info,) = await client.xinfo_groups(unique)
    assert info.get("lag") is None  # what the count stands in for (Redis 7 and Valkey 8 alike)
    assert publishing.backlog_sync(sync_client, unique, 100) == publishing.Backlog("g", 7, 7, 0)
    assert publishing.backlog_sync(sync_client, unique, 4).backlog == 4  # capped: enough to compare


async def test_a_lag_the_server_overstates_after_trimming_does_not_hold_producers_back(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Entries trimmed past a group's position (a max_len cap, an operator's XTRIM) leave the server's lag
    too high for good (its read counter is not corrected): here 7 with only 5 entries left. Neither
    backpressure nor status believes more entries undelivered than the stream holds."""
    from streamq import inspect

    for n in range(1, 11):
        await client.xadd(unique, {"d": b"x"}, id=f"{n}-0")
    await client.xgroup_create(unique, "g", "0")
    await client.xreadgroup("g", "c", {unique: ">"}, count=2)
    await client.xack(unique, "g", "1-0", "2-0")
    await client.xtrim(unique, minid="6-0", approximate=False)
    await client.xreadgroup("g", "c", {unique: ">"}, count=1)
    await client.xack(unique, "g", "6-0")
    (info,) = await client.xinfo_groups(unique)
    if info["lag"] is None or int(info["lag"]) <= 5:
        pytest.skip(f"this server counts lag right after trimming (lag {info['lag']})")
    async with streamq.Producer(redis_url, max_backlog=5, backlog_timeout_ms=0) as producer:
        await producer.publish(unique, Job(1))  # 5 entries, all but one undelivered: not over 5
    (group,) = (await inspect.stream_status(client, unique)).groups
    assert group.lag is not None and group.lag <= await client.xlen(unique)
