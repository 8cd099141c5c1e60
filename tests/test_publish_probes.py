"""Publishing probed as a hostile caller would: dedup keys that are not valid text, partitioned calls
refused whole."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio

import streamq
from streamq import keys
from streamq.errors import BacklogFull, ConfigurationError, EventTooLarge
from streamq.partitions import partition_of, partition_streams


class Item(streamq.Event, tag="test.publish_probes.item"):
    n: int
    pad: str = ""


def _items(count: int) -> list[Item]:
    return [Item(n) for n in range(count)]


async def _written(client: redis.asyncio.Redis, stream: str, partitions: int | None = None) -> int:
    """Entries in the stream (all its partitions), scheduled events and dedup keys: all a call writes."""
    streams = [stream] if partitions is None else partition_streams(stream, partitions)
    total = 0
    for name in streams:
        total += await client.xlen(name)
        total += await client.zcard(keys.scheduled_key(name))
        total += await client.hlen(keys.dedup_index_key(name))
    return total


async def test_a_dedup_key_that_is_not_valid_text_refuses_the_whole_call(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A lone surrogate in a dedup key cannot be sent. It used to fail only when its chunk was packed,
    as a UnicodeEncodeError, after the call's earlier chunks were published; it is refused with the
    other checks, as ConfigurationError, before anything is written."""
    bad = ["a", "b", "c", "\udc00"]  # the bad key in the second chunk of two
    async with streamq.Producer(redis_url, chunk_size=2) as producer:
        with pytest.raises(ConfigurationError, match="dedup key must be valid text"):
            await producer.publish_many(unique, _items(4), dedup_key=bad)
        with pytest.raises(ConfigurationError, match="dedup key must be valid text"):
            await producer.publish_many(unique, _items(4), dedup_key=bad, delay_ms=60_000)
        with pytest.raises(ConfigurationError, match="dedup key must be valid text"):
            await producer.publish(unique, Item(1), dedup_key="\ud800")
    with (
        streamq.SyncProducer(redis_url, chunk_size=2) as sync_producer,
        pytest.raises(ConfigurationError, match="dedup key must be valid text"),
    ):
        sync_producer.publish_many(unique, _items(4), dedup_key=lambda item: "\ud800" if item.n else "x")
    assert await _written(client, unique) == 0


async def test_a_refused_dedup_key_is_named_not_copied_whole(redis_url: str) -> None:
    """The error for a key over MAX_DEDUP_KEY_CHARS quotes its start, not the whole (a megabyte here)."""
    async with streamq.Producer(redis_url) as producer:
        with pytest.raises(ConfigurationError, match="1 to 1024 characters") as refused:
            await producer.publish("s", Item(1), dedup_key="k" * 1_000_000)
    assert len(str(refused.value)) < 400
    assert "1000002 characters" in str(refused.value)


async def test_a_partitioned_call_is_refused_whole(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A publish_many spread over partitions is checked whole before any share is sent: an event too
    large, or a bad dedup key, in one partition's share used to fail that share only, after the other
    shares were written (and, in Producer, while they were still being written)."""
    events = [*_items(8), Item(99, "x" * 5_000)]  # the last is over max_event_bytes
    by_key = {"key": lambda item: f"k{item.n}"}
    async with streamq.Producer(redis_url, partitions={unique: 4}, max_event_bytes=1_000) as producer:
        with pytest.raises(EventTooLarge):
            await producer.publish_many(unique, events, dedup_key=lambda item: f"d{item.n}")
        with pytest.raises(EventTooLarge):
            await producer.publish_many(unique, events, **by_key)
        with pytest.raises(ConfigurationError, match="dedup key"):
            await producer.publish_many(
                unique, _items(8), dedup_key=[f"d{n}" for n in range(7)] + [5], **by_key
            )
    with streamq.SyncProducer(redis_url, partitions={unique: 4}, max_event_bytes=1_000) as sync_producer:
        with pytest.raises(EventTooLarge):
            sync_producer.publish_many(unique, events, **by_key)
        with pytest.raises(ConfigurationError, match="dedup key"):
            sync_producer.publish_many(unique, _items(8), dedup_key=["d"] * 7 + ["\ud800"], **by_key)
    assert await _written(client, unique, partitions=4) == 0
    async with streamq.Producer(redis_url, partitions={unique: 4}) as producer:  # and it still publishes
        results = await producer.publish_many_results(unique, events, dedup_key=lambda item: f"d{item.n}")
    assert not any(result.duplicate for result in results)
    assert await _written(client, unique, partitions=4) == 2 * 9  # 9 entries, 9 dedup keys


async def test_backlog_full_over_partitions_publishes_nothing(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A call whose events go to two partitions, one of them over max_backlog: BacklogFull, and the share
    of the partition with room is not written either (it was, before the other share was refused)."""
    first, second = partition_streams(unique, 2)
    for name in (first, second):
        await client.xgroup_create(name, "g", "0", mkstream=True)
    for _ in range(10):
        await client.xadd(first, {"d": b"x"})
    spread = [key for key in (f"k{n}" for n in range(50)) if partition_of(key, 2) == 1][:2]
    spread += [key for key in (f"k{n}" for n in range(50)) if partition_of(key, 2) == 0][:2]
    options = {"partitions": {unique: 2}, "max_backlog": 5, "backlog_timeout_ms": 0}
    async with streamq.Producer(redis_url, **options) as producer:
        with pytest.raises(BacklogFull, match="owes 10 entries"):
            await producer.publish_many(unique, _items(4), key=spread)
    with streamq.SyncProducer(redis_url, **options) as sync_producer, pytest.raises(BacklogFull):
        sync_producer.publish_many(unique, _items(4), dedup_key=spread)
    assert (await client.xlen(first), await client.xlen(second)) == (10, 0)
    await client.xtrim(first, maxlen=0)  # room again: the call goes through whole
    async with streamq.Producer(redis_url, **options) as producer:
        await producer.publish_many(unique, _items(4), key=spread)
    assert (await client.xlen(first), await client.xlen(second)) == (2, 2)
