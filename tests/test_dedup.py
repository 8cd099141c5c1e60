"""Idempotent publishing (dedup_key) and counted maxlen trimming: both run the producer's publish script."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
import structlog
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq.producer import PublishResult


class Placed(streamq.Event, tag="test.dedup.placed"):
    order: int


async def _totals(client: redis.asyncio.Redis, stream: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await client.hgetall(keys.totals_key(stream))).items()}


async def test_a_repeated_key_returns_the_first_id_and_appends_nothing(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The second publish of a key returns the first's entry id and writes nothing; publish_result says
    which one was the duplicate; the stream's `deduplicated` total and the producer's counter count it."""
    async with streamq.Producer(redis_url) as producer:
        first = await producer.publish(unique, Placed(1), dedup_key="order-1:placed")
        again = await producer.publish_result(unique, Placed(99), dedup_key="order-1:placed")
        other = await producer.publish_result(unique, Placed(2), dedup_key="order-2:placed")
        assert producer.duplicates == 1
    assert again == PublishResult(first, duplicate=True, scheduled=False)
    assert other.duplicate is False and other.id != first
    entries = await client.xrange(unique)
    assert [e[0].decode() for e in entries] == [first, other.id]
    assert (await _totals(client, unique))["deduplicated"] == 1
    with streamq.SyncProducer(redis_url) as sync_producer:
        assert sync_producer.publish(unique, Placed(1), dedup_key="order-1:placed") == first
        assert sync_producer.duplicates == 1
    assert await client.xlen(unique) == 2


async def test_many_tasks_publishing_one_key_at_once_append_once(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Fifty tasks, each on its own connection, publish the same key at the same time: one entry, and
    every task gets its id."""
    async with streamq.Producer(redis_url) as producer:
        ids = await asyncio.gather(
            *(producer.publish(unique, Placed(n), dedup_key="same") for n in range(50))
        )
    assert len(set(ids)) == 1
    ((entry_id, _),) = await client.xrange(unique)
    assert entry_id.decode() == ids[0]
    assert (await _totals(client, unique))["deduplicated"] == 49


async def test_dedup_inside_publish_many(redis_url: str, client: redis.asyncio.Redis, unique: str) -> None:
    """publish_many takes a callable or an aligned sequence of keys; unkeyed events are always appended,
    keyed ones once per key, within one call (across chunks too) and across calls."""
    events = [Placed(n) for n in range(10)]
    async with streamq.Producer(redis_url, chunk_size=3) as producer:
        results = await producer.publish_many_results(
            unique, events, dedup_key=lambda e: f"k{e.order % 3}" if e.order < 6 else None
        )
        assert [r.duplicate for r in results] == [False] * 3 + [True] * 3 + [False] * 4
        assert [r.id for r in results[3:6]] == [r.id for r in results[:3]]
        ids = await producer.publish_many(unique, events[:3], dedup_key=["k0", None, "new"])
        assert ids[0] == results[0].id
        with pytest.raises(streamq.ConfigurationError, match="not one string"):
            await producer.publish_many(unique, events, dedup_key="k0")  # type: ignore[arg-type]
        with pytest.raises(streamq.ConfigurationError, match="2 keys for 3 events"):
            await producer.publish_many(unique, events[:3], dedup_key=["a", "b"])
        with pytest.raises(streamq.ConfigurationError, match="dedup key"):
            await producer.publish(unique, events[0], dedup_key="")
    assert await client.xlen(unique) == 7 + 2


async def test_a_delayed_event_with_a_key_is_scheduled_once_and_cancel_frees_the_key(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Scheduling one key twice schedules once (the second gets the first's schedule id); cancelling it
    frees the key, so it can be scheduled again."""
    async with streamq.Producer(redis_url) as producer:
        first = await producer.publish(unique, Placed(1), delay_ms=3_600_000, dedup_key="remind-1")
        again = await producer.publish_result(unique, Placed(1), delay_ms=3_600_000, dedup_key="remind-1")
        assert again == PublishResult(first, duplicate=True, scheduled=True)
        assert await client.zcard(keys.scheduled_key(unique)) == 1
        # A plain publish of the same key is a duplicate of the delayed one too.
        assert await producer.publish(unique, Placed(1), dedup_key="remind-1") == first
        assert await producer.cancel(unique, first)
        rescheduled = await producer.publish_result(
            unique, Placed(1), delay_ms=3_600_000, dedup_key="remind-1"
        )
    assert rescheduled.duplicate is False and rescheduled.id != first
    assert [m.decode() for m in await client.zrange(keys.scheduled_key(unique), 0, -1)] == [rescheduled.id]
    assert await client.xlen(unique) == 0
    totals = await _totals(client, unique)
    assert (totals["scheduled"], totals["cancelled"], totals["deduplicated"]) == (2, 1, 2)


async def test_a_key_is_forgotten_after_its_ttl(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Once dedup_ttl_ms has passed (on the server's clock) the key is new again: the next publish
    appends, and later publishes forget expired keys."""
    async with streamq.Producer(redis_url, dedup_ttl_ms=200) as producer:
        first = await producer.publish(unique, Placed(1), dedup_key="short")
        # The per-call ttl overrides the producer's: this one outlives the test.
        await producer.publish(unique, Placed(2), dedup_key="long", dedup_ttl_ms=3_600_000)

        async def republished() -> PublishResult | None:
            result = await producer.publish_result(unique, Placed(1), dedup_key="short")
            return None if result.duplicate else result

        fresh = await async_wait_until(republished, interval_s=0.05, message="the key to expire")
        assert fresh.id != first
        assert (await producer.publish_result(unique, Placed(2), dedup_key="long")).duplicate
    assert await client.xlen(unique) == 3
    # Expired keys are purged by the publishes that find them: only live keys are left.
    assert await client.hget(keys.dedup_index_key(unique), "short") == fresh.id.encode()
    with pytest.raises(streamq.ConfigurationError, match="dedup_ttl_ms"):
        streamq.Producer(redis_url, dedup_ttl_ms=0)


async def test_expired_keys_are_purged_a_bounded_number_per_call(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A keyed publish of one event forgets at most 100 expired keys (a call of more events, one per
    event): bounded work per call, and the index shrinks."""
    index, expiry = keys.dedup_index_key(unique), keys.dedup_expiry_key(unique)
    async with streamq.Producer(redis_url, dedup_ttl_ms=1) as producer:
        await producer.publish_many(
            unique, [Placed(n) for n in range(150)], dedup_key=lambda e: f"k{e.order}"
        )
        assert await client.hlen(index) == 150

        async def all_expired() -> bool:
            ((_, last),) = await client.zrange(expiry, -1, -1, withscores=True)
            seconds, micros = await client.time()
            return int(seconds) * 1000 + int(micros) // 1000 > last

        await async_wait_until(all_expired, message="the keys to expire")
        await producer.publish(unique, Placed(-1), dedup_key="probe")
        assert await client.hlen(index) == 150 - 100 + 1
        await producer.publish(unique, Placed(-2), dedup_key="probe-2")
        assert await client.hlen(index) <= 2  # the other 50, and "probe" if it had expired too
    assert await client.zcard(expiry) == await client.hlen(index)


async def test_maxlen_drops_are_counted_and_logged(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """Trimming by maxlen drops entries nobody may have read: the drop count lands in the stream's
    `dropped_by_maxlen` total and in a warning, from both producers."""
    with structlog.testing.capture_logs() as logs:
        async with streamq.Producer(redis_url, maxlen=5, approximate_trim=False) as producer:
            ids = await producer.publish_many(unique, [Placed(n) for n in range(20)], chunk_size=7)
        with streamq.SyncProducer(redis_url, maxlen=5, approximate_trim=False) as sync_producer:
            sync_producer.publish(f"{unique}-sync", Placed(0))
            sync_producer.publish_many(f"{unique}-sync", [Placed(n) for n in range(8)])
    assert [e[0].decode() for e in await client.xrange(unique)] == ids[-5:]
    assert (await _totals(client, unique))["dropped_by_maxlen"] == 15
    assert (await _totals(client, f"{unique}-sync"))["dropped_by_maxlen"] == 4
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("stream") == unique]
    # The first chunk of 7 dropped 2 and was logged at once; later drops wait for the next warning.
    assert [w["dropped"] for w in warnings] == [2]
    assert any(e.get("stream") == f"{unique}-sync" and e["dropped"] == 4 for e in logs)
