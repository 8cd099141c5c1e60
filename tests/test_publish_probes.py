"""Publishing probed as a hostile caller would: dedup keys that are not valid text, partitioned calls
refused whole, and the backlog reading when the server gives no lag."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._wire import publishing
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


async def test_steady_keyed_batches_forget_expired_keys_as_fast_as_they_add_them(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Each publish forgot at most 100 expired dedup keys, so batches of more keyed events than that left
    the rest behind for good: the index grew by 9 900 keys per batch of 10 000 here. A call forgets as many
    as it has events (in slices: 10 000 at once is past what one Lua unpack takes)."""
    index, expiry = keys.dedup_index_key(unique), keys.dedup_expiry_key(unique)

    async def all_expired() -> bool:
        ((_, last),) = await client.zrange(expiry, -1, -1, withscores=True)
        seconds, micros = await client.time()
        return int(seconds) * 1000 + int(micros) // 1000 > last

    async with streamq.Producer(redis_url, dedup_ttl_ms=1, chunk_size=10_000) as producer:
        for batch in ("a", "b", "c"):
            await producer.publish_many(
                unique, _items(10_000), dedup_key=[f"{batch}{n}" for n in range(10_000)]
            )
            assert (await client.hlen(index), await client.zcard(expiry)) == (10_000, 10_000)
            await async_wait_until(all_expired, message="the keys to expire")
    assert await client.xlen(unique) == 30_000


async def _lag_unknown(
    client: redis.asyncio.Redis, stream: str, entries: int, read: int, deleted: int
) -> int:
    """A stream of `entries` whose group "g" has read and acknowledged the first `read` (still in the
    stream) and has no lag in XINFO GROUPS (`deleted` entries deleted inside its unread range); returns how
    many entries it has not been delivered."""
    ids = []
    for start in range(0, entries, 500):
        pipe = client.pipeline(transaction=False)
        for _ in range(start, min(entries, start + 500)):
            pipe.xadd(stream, {"d": b"x"})
        ids += await pipe.execute()
    await client.xgroup_create(stream, "g", "0")
    if read:
        await client.xreadgroup("g", "c", {stream: ">"}, count=read)
        await client.xack(stream, "g", *ids[:read])
    middle = (read + entries) // 2
    await client.xdel(stream, *ids[middle : middle + deleted])
    (info,) = await client.xinfo_groups(stream)
    assert info.get("lag") is None  # what the reading has to stand in for
    return entries - read - deleted


async def test_an_unknown_lag_is_counted_within_a_bound_and_never_under(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """Without a lag from the server, the backlog reading counted every entry after the group's position up
    to max_backlog + 1, copying each into the script: with max_backlog=100 000 and 1 KB events, about a
    second with the server blocked, and hundreds of MB, at every backlog_check_ms. It counts at most
    BACKLOG_SCAN entries (or BACKLOG_SCAN_BYTES of them); past that it takes an upper bound (here the
    entries added minus those the group read), so a group far behind still holds producers back."""
    entries = publishing.BACKLOG_SCAN + 600
    undelivered = await _lag_unknown(client, unique, entries, read=300, deleted=100)
    # The bound: entries added minus the group's entries-read, over by the 100 deleted, never under.
    reading = publishing.backlog_sync(sync_client, unique, 1_000_000)
    assert reading == publishing.Backlog("g", entries - 300, entries - 300, 0)
    assert reading.lag >= undelivered
    # Under the scan bound, the count is exact; a cap under it still ends the count there.
    assert publishing.backlog_sync(sync_client, unique, 10).lag == 10
    limit = publishing.BACKLOG_SCAN + 100  # counting alone could not tell that the group is over it
    async with streamq.Producer(redis_url, max_backlog=limit, backlog_timeout_ms=0) as producer:
        with pytest.raises(BacklogFull, match="group 'g'"):
            await producer.publish(unique, Item(1))
    assert await client.xlen(unique) == entries - 100


async def test_an_unknown_lag_short_of_the_bound_is_exact(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """A group whose unread entries the scan can count is given its exact lag, however high the cap."""
    undelivered = await _lag_unknown(client, unique, publishing.BACKLOG_SCAN + 100, read=120, deleted=3)
    assert publishing.backlog_sync(sync_client, unique, 1_000_000).lag == undelivered
