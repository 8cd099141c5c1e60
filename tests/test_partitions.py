"""Partitioned streams: the stable hash, the partition count that cannot change, and workers sharing the
partitions by leases (balanced shares, rebalancing when one joins or leaves, taking over from a dead one).

Workers here are Apps in the test's own event loop: each is a separate member of the group with its own
name and leases, exactly as separate processes would be. A dead worker is simulated the way a crash
looks from Redis: a member and partition owner that stops renewing, holding pending entries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from cli_app import Ping
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._worker.partitioned import PartitionedConsumer
from streamq.errors import ConfigurationError
from streamq.events import PAYLOAD_FIELD, Decoder
from streamq.partitions import partition_of, partition_stream, partition_streams

LEASE_MS = 600  # partition leases: rounds every 200 ms, so rebalancing takes a second or two


def test_partition_of_is_crc32_of_the_key_modulo_the_count() -> None:
    """The documented hash, checked against CRC-32's published check value (CRC-32 of "123456789" is
    0xCBF43926), so that another language's producer can compute the same partition."""
    assert partition_of("123456789", 1000) == 0xCBF43926 % 1000
    assert partition_of(b"123456789", 7) == 0xCBF43926 % 7
    assert partition_of("é", 1024) == partition_of("é".encode(), 1024)


def test_partitions_spread_over_slots_and_keep_their_keys_together(unique: str) -> None:
    from redis.crc import key_slot

    names = partition_streams(unique, 16)
    assert len({key_slot(name.encode()) for name in names}) > 8  # spread, not all in one slot
    for name in names:
        slot = key_slot(name.encode())
        assert key_slot(keys.dlq_key(name).encode()) == slot
        assert key_slot(keys.retry_key(name, "g").encode()) == slot


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"partitions": 0}, "partitions must be an integer from 1 to 1024"),
        ({"partitions": 5000}, "partitions must be an integer from 1 to 1024"),
        ({"partitions": True}, "partitions must be an integer"),
        ({"partitions": 4, "concurrency": 2, "ordered": True}, "one batch at a time: concurrency=1"),
        ({"ordered": True}, "ordered=True needs partitions=N"),
        ({"partitions": 4, "rate_limit": 10}, "rate_limit is not supported on a partitioned stream"),
        ({"partitions": 4, "partition_lease_ms": 10}, "partition_lease_ms must be an integer"),
    ],
)
def test_bad_partition_settings_are_refused(unique: str, settings: dict[str, object], message: str) -> None:
    app = streamq.App()
    with pytest.raises(ConfigurationError, match=message):
        app.add_consumer(lambda batch: None, unique, group="g", events=[Ping], **settings)


def test_a_stream_with_a_hash_tag_cannot_be_partitioned() -> None:
    with pytest.raises(ConfigurationError, match="has a hash tag"):
        streamq.App().add_consumer(lambda batch: None, "{app}orders", group="g", events=[Ping], partitions=4)


def _app(url: str, stream: str, seen: list[tuple[int, int]], **settings: object) -> streamq.App:
    app = streamq.App(url)

    @app.consumer(stream, group="g", partitions=6, partition_lease_ms=LEASE_MS, block_ms=50, **settings)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        seen.extend((id(app), event.n) for event in batch.events)

    return app


@contextlib.asynccontextmanager
async def running(app: streamq.App) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(app.run())
    try:
        yield task
    finally:
        app.stop()
        await asyncio.wait_for(task, 30)


def owned(app: streamq.App) -> list[int]:
    """The partitions `app` runs a consumer on now ([] before it has started)."""
    for consumer in app.consumers:
        assert isinstance(consumer, PartitionedConsumer)
        return consumer.owned()
    return []


async def publish_to_every_partition(url: str, stream: str, start: int, per_partition: int) -> list[int]:
    numbers = []
    async with streamq.Producer(url) as producer:
        for index, name in enumerate(partition_streams(stream, 6)):
            batch = [start + index * per_partition + n for n in range(per_partition)]
            await producer.publish_many(name, [Ping(n) for n in batch])
            numbers += batch
    return numbers


async def test_workers_share_the_partitions_and_rebalance_when_one_joins_or_leaves(
    redis_url: str, unique: str
) -> None:
    """One worker owns all six partitions; a second one joining takes three of them within a few rounds;
    once it stops, the first owns all six again. Events published meanwhile are all handled."""
    seen: list[tuple[int, int]] = []
    first, second = _app(redis_url, unique, seen), _app(redis_url, unique, seen)
    async with running(first):
        await async_wait_until(lambda: owned(first) == list(range(6)), message="the first worker owning all")
        published = await publish_to_every_partition(redis_url, unique, 0, 20)
        async with running(second):
            await async_wait_until(
                lambda: app_has_started(second) and len(owned(first)) == 3 and len(owned(second)) == 3,
                message="three partitions each",
            )
            assert sorted(owned(first) + owned(second)) == list(range(6))
            published += await publish_to_every_partition(redis_url, unique, 1000, 20)
            await async_wait_until(lambda: {n for _, n in seen} >= set(published), message="all handled")
            assert {app_id for app_id, _ in seen} == {id(first), id(second)}  # both handled events
        await async_wait_until(lambda: owned(first) == list(range(6)), message="the first owning all again")
        published += await publish_to_every_partition(redis_url, unique, 2000, 5)
        await async_wait_until(lambda: {n for _, n in seen} >= set(published), message="all handled")


def app_has_started(app: streamq.App) -> bool:
    return bool(app.consumers)


async def test_a_dead_workers_partitions_and_pending_entries_are_taken_over(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A worker that stopped renewing (killed) owned partition 0 and held entries of it. Once its
    partition lease lapses the live worker takes the partition, and once its entry leases lapse the
    entries it held are reclaimed and handled: nothing it held is lost."""
    ghost = "ghost-worker"
    stream0 = partition_stream(unique, 0)
    now_ms = int((await client.time())[0]) * 1000
    await client.zadd(keys.members_key(unique, "g"), {ghost: now_ms + 5_000})
    await client.hset(keys.owners_key(unique, "g"), "0", f"{ghost} {now_ms + 5_000}")
    await client.xgroup_create(stream0, "g", id="0", mkstream=True)
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(stream0, [Ping(n) for n in range(10)])
    held = await client.xreadgroup("g", ghost, {stream0: ">"}, count=4)  # the ghost dies holding these
    assert len(held[0][1]) == 4

    seen: list[tuple[int, int]] = []
    live = _app(redis_url, unique, seen, lease_ms=1_000)
    async with running(live):
        await async_wait_until(lambda: owned(live), message="partitions taken")
        assert 0 not in owned(live)  # the ghost's lease still runs: its partition is not taken from it
        await async_wait_until(lambda: owned(live) == list(range(6)), timeout_s=20,
                               message="every partition taken, the ghost's included")  # fmt: skip
        await async_wait_until(lambda: sorted(n for _, n in seen) == list(range(10)), timeout_s=20,
                               message="every event handled, the ghost's held ones included")  # fmt: skip
    assert await client.zscore(keys.members_key(unique, "g"), ghost) is None  # dropped once lapsed


async def test_changing_the_partition_count_of_a_live_stream_is_refused(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The first worker records 6 partitions; one asking for 8 (even of another group) is refused."""
    seen: list[tuple[int, int]] = []
    async with running(_app(redis_url, unique, seen)):
        await async_wait_until(lambda: client.get(keys.partitions_key(unique)), message="the count recorded")
    assert await client.get(keys.partitions_key(unique)) == b"6"
    other = streamq.App(redis_url)

    @other.consumer(unique, group="h", partitions=8, block_ms=50)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        return None

    with pytest.raises(ConfigurationError, match="has 6 partitions, not 8"):
        await asyncio.wait_for(other.run(), 30)


def _ordered_app(
    url: str, stream: str, handled: list[int], fail: dict[int, int], **settings: object
) -> streamq.App:
    """A worker of an ordered partitioned stream whose handler does what ordered handlers should: handle
    in order, and at the first event that fails, ask for its retry and stop there."""
    app = streamq.App(url)

    options = {"retry_base_ms": 200, "retry_max_ms": 200, **settings}

    @app.consumer(stream, group="g", partitions=2, ordered=True, partition_lease_ms=LEASE_MS, block_ms=50,
                  batch_size=8, **options)  # fmt: skip
    async def handle(batch: streamq.Batch[Ping]) -> None:
        for message in batch:
            n = message.event.n
            if fail.get(n, 0) > 0:
                fail[n] -= 1
                batch.retry(message)
                return
            handled.append(n)

    return app


async def test_an_ordered_partition_holds_later_events_behind_a_failed_one(
    redis_url: str, unique: str
) -> None:
    """Event 5 fails once. The events after it in its batch, and the events published while it waits for
    its retry, are handled only after it: the partition's events are handled exactly in publish order.
    (Without ordered=True, 6-7 and 8-29 would be handled before 5 comes back.)"""
    handled: list[int] = []
    fail = {5: 1}
    app = _ordered_app(redis_url, unique, handled, fail)
    stream0 = partition_stream(unique, 0)
    async with streamq.Producer(redis_url) as producer, running(app):
        await producer.publish_many(stream0, [Ping(n) for n in range(20)])
        await async_wait_until(lambda: fail[5] == 0, message="event 5 failing once")
        await producer.publish_many(stream0, [Ping(n) for n in range(20, 30)])
        await async_wait_until(lambda: len(handled) >= 30, message="every event handled")
    assert handled == list(range(30))


async def test_a_dead_lettered_event_stops_holding_the_others_back(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Event 5 always fails: once it has used its attempts it is dead-lettered and the events behind it
    go on, still in order."""
    handled: list[int] = []
    fail = {5: 1_000}
    app = _ordered_app(redis_url, unique, handled, fail, max_attempts=2)
    stream0 = partition_stream(unique, 0)
    async with streamq.Producer(redis_url) as producer, running(app):
        await producer.publish_many(stream0, [Ping(n) for n in range(20)])
        await async_wait_until(lambda: len(handled) >= 19, message="every other event handled")
    assert handled == [n for n in range(20) if n != 5]
    assert await client.xlen(keys.dlq_key(stream0)) == 1


async def test_an_ordered_partition_stopped_while_it_waits_is_resumed_in_order_by_the_next_owner(
    redis_url: str, unique: str
) -> None:
    """The worker stops while event 5 waits for a long retry: it puts 5 and the events behind it back in
    order, and the next owner of the partition handles them before anything published later."""
    first_handled: list[int] = []
    first = _ordered_app(redis_url, unique, first_handled, {5: 1}, retry_base_ms=2_000, retry_max_ms=2_000)
    stream0 = partition_stream(unique, 0)
    async with streamq.Producer(redis_url) as producer:
        async with running(first):
            await producer.publish_many(stream0, [Ping(n) for n in range(12)])
            await async_wait_until(lambda: first_handled == [0, 1, 2, 3, 4], message="waiting at event 5")
        await producer.publish_many(stream0, [Ping(n) for n in range(12, 20)])
        second_handled: list[int] = []
        second = _ordered_app(redis_url, unique, second_handled, {}, retry_base_ms=10)
        async with running(second):
            await async_wait_until(
                lambda: len(second_handled) >= 15, timeout_s=20, message="the rest handled"
            )
    assert second_handled == list(range(5, 20))


# ------------------------------------------------------------------------------------------ publishing


async def test_a_key_picks_the_partition_by_the_documented_hash(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """publish(key=...) and publish_many(key=...) put each event in partition CRC-32(key) mod N, in publish
    order per key; ids come back in the events' order."""
    async with streamq.Producer(redis_url, partitions={unique: 4}) as producer:
        first = await producer.publish(unique, Ping(0), key="customer-7")
        ids = await producer.publish_many(
            unique, [Ping(n) for n in range(1, 41)], key=lambda e: f"customer-{e.n % 8}"
        )
        results = await producer.publish_many_results(
            unique, [Ping(41), Ping(42)], key=["customer-7", "customer-1"]
        )
    assert first.count("-") == 1 and len(ids) == 40 and len(results) == 2
    by_partition: dict[int, list[int]] = {}
    for index in range(4):
        for _, fields in await client.xrange(partition_stream(unique, index)):
            event = Decoder([Ping]).decode(fields[PAYLOAD_FIELD])
            assert isinstance(event, Ping)
            by_partition.setdefault(index, []).append(event.n)
    for index, numbers in by_partition.items():
        for n in numbers:
            key = "customer-7" if n in (0, 41) else "customer-1" if n == 42 else f"customer-{n % 8}"
            assert partition_of(key, 4) == index
        assert numbers == sorted(numbers)  # publish order kept within each partition
    assert sum(len(numbers) for numbers in by_partition.values()) == 43
    customer_7 = await client.xrange(partition_stream(unique, partition_of("customer-7", 4)))
    assert results[0].id in {entry_id.decode() for entry_id, _ in customer_7}


async def test_without_a_key_each_call_goes_to_the_next_partition_or_by_its_dedup_key(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Calls without keys go round the partitions, a whole call to one (one round trip); a dedup key routes
    like a key, so a repeat meets its first publish and is caught."""
    async with streamq.Producer(redis_url, partitions={unique: 3}) as producer:
        for n in range(6):
            await producer.publish_many(unique, [Ping(n), Ping(n)])
        lengths = [await client.xlen(partition_stream(unique, i)) for i in range(3)]
        assert lengths == [4, 4, 4]
        first = await producer.publish_result(unique, Ping(100), dedup_key="order-1:placed")
        again = await producer.publish_result(unique, Ping(100), dedup_key="order-1:placed")
    assert not first.duplicate and again.duplicate and again.id == first.id


async def test_a_key_on_a_plain_stream_or_another_count_is_refused(redis_url: str, unique: str) -> None:
    async with streamq.Producer(redis_url) as producer:
        with pytest.raises(ConfigurationError, match="is not partitioned"):
            await producer.publish(unique, Ping(1), key="k")
    async with streamq.Producer(redis_url, partitions={unique: 4}) as producer:
        await producer.publish(unique, Ping(1), key="k")
    async with streamq.Producer(redis_url, partitions={unique: 8}) as producer:
        with pytest.raises(ConfigurationError, match="has 4 partitions, not 8"):
            await producer.publish(unique, Ping(1), key="k")
    async with streamq.Producer(redis_url) as producer:
        with pytest.raises(ConfigurationError, match=r"key is a callable .* not one string"):
            await producer.publish_many(unique, [Ping(1), Ping(2)], key="k")
        with pytest.raises(ConfigurationError, match="key has 1 keys for 2 events"):
            await producer.publish_many(unique, [Ping(1), Ping(2)], key=["k"])
        with pytest.raises(ConfigurationError, match="valid text"):  # a lone surrogate has no UTF-8
            await producer.publish_many(unique, [Ping(1), Ping(2)], key=["k", "\udc00"])
    with pytest.raises(ConfigurationError, match="partitions must be"):
        streamq.Producer(redis_url, partitions={unique: 0})


def test_a_sync_producer_routes_by_key_to_the_recorded_count(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A producer built without partitions= finds the count a worker (here another producer) recorded."""
    with streamq.SyncProducer(redis_url, partitions={unique: 5}):
        pass  # declares nothing until it publishes
    with streamq.SyncProducer(redis_url, partitions={unique: 5}) as producer:
        producer.publish(unique, Ping(0), key="a")
    with streamq.SyncProducer(redis_url) as producer:
        producer.publish_many(unique, [Ping(n) for n in range(1, 10)], key=lambda e: "a")
    assert sync_client.xlen(partition_stream(unique, partition_of("a", 5))) == 10


async def test_keyed_events_reach_an_ordered_worker_in_publish_order_per_key(
    redis_url: str, unique: str
) -> None:
    """End to end: events of 10 keys published with key=, handled by two ordered workers, arrive in
    publish order per key."""
    per_key: dict[str, list[int]] = {}
    apps = [streamq.App(redis_url), streamq.App(redis_url)]
    for app in apps:

        @app.consumer(unique, group="g", partitions=4, ordered=True, partition_lease_ms=LEASE_MS, block_ms=50)
        async def handle(batch: streamq.Batch[Ping]) -> None:
            for event in batch.events:
                per_key.setdefault(f"k{event.n % 10}", []).append(event.n)

    async with running(apps[0]), running(apps[1]):
        async with streamq.Producer(redis_url) as producer:
            await async_wait_until(lambda: owned(apps[0]) or owned(apps[1]), message="a worker started")
            for start in range(0, 200, 20):
                await producer.publish_many(
                    unique, [Ping(n) for n in range(start, start + 20)], key=lambda e: f"k{e.n % 10}"
                )
        await async_wait_until(lambda: sum(map(len, per_key.values())) >= 200, message="all handled")
    assert all(numbers == sorted(numbers) for numbers in per_key.values())
    assert sorted(n for numbers in per_key.values() for n in numbers) == list(range(200))


async def test_pausing_a_partitioned_stream_pauses_every_partition(redis_url: str, unique: str) -> None:
    """`streamq pause orders` on a partitioned stream holds every partition's workers (they read their
    partition's own pause hash); resuming lets them go on."""
    from streamq import control

    seen: list[tuple[int, int]] = []
    app = _app(redis_url, unique, seen)
    async with running(app):
        await async_wait_until(lambda: owned(app) == list(range(6)), message="every partition taken")
        await control.pause(redis_url, unique, reason="test")
        assert set(await control.pauses(redis_url, unique)) == {"*"}
        for index in range(6):
            assert "*" in await control.pauses(redis_url, partition_stream(unique, index))
        lanes = [lane for c in app.consumers for p in c._running.values() for lane in p.lanes]  # type: ignore[union-attr]
        await async_wait_until(
            lambda: all(lane.control.paused for lane in lanes), message="every worker paused"
        )

        # A read sent before the pause was seen may still be waiting: once each lane has been through two
        # paused ticks, none is in flight; two more after publishing, and what was published is unread.
        async def paused_ticks(count: int) -> None:
            ticks = [lane._idle_reads for lane in lanes]
            await async_wait_until(
                lambda: all(
                    lane._idle_reads >= tick + count for lane, tick in zip(lanes, ticks, strict=True)
                ),
                message=f"{count} paused ticks on every lane",
            )

        await paused_ticks(2)
        published = await publish_to_every_partition(redis_url, unique, 0, 5)
        await paused_ticks(2)
        assert seen == []
        assert await control.resume(redis_url, unique)
        await async_wait_until(lambda: {n for _, n in seen} == set(published), message="handled once resumed")


async def test_trim_and_group_delete_work_on_every_partition(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """`streamq trim` of a partitioned stream trims each partition (the result adds them up and lists
    each); `streamq group delete` refuses while a worker of the group is live, then deletes the group
    from every partition and forgets its members and owners."""
    from streamq import retention
    from streamq.errors import GroupInUse

    seen: list[tuple[int, int]] = []
    app = _app(redis_url, unique, seen, retention=False)
    async with running(app):
        published = await publish_to_every_partition(redis_url, unique, 0, 10)
        await async_wait_until(lambda: {n for _, n in seen} == set(published), message="all handled")
        with pytest.raises(GroupInUse):
            await retention.delete_group(redis_url, unique, "g")
    trimmed = await retention.trim(redis_url, unique)
    assert trimmed.partitions is not None and len(trimmed.partitions) == 6
    assert trimmed.removed == 60 and trimmed.length_after == 0
    assert [p.stream for p in trimmed.partitions] == partition_streams(unique, 6)
    deleted = retention.delete_group_sync(redis_url, unique, "g")
    assert deleted.existed and deleted.pending == 0
    for name in partition_streams(unique, 6):
        assert await client.xinfo_groups(name) == []
    assert not await client.exists(keys.members_key(unique, "g"), keys.owners_key(unique, "g"))


async def test_a_plain_consumer_of_a_partitioned_stream_is_refused(redis_url: str, unique: str) -> None:
    """A consumer without partitions= on a partitioned stream would read the plain stream, which nothing
    is published to: it fails at start, saying so."""
    async with streamq.Producer(redis_url, partitions={unique: 4}) as producer:
        await producer.publish(unique, Ping(1), key="k")
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", block_ms=50)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        return None

    with pytest.raises(ConfigurationError, match="is partitioned into 4"):
        await asyncio.wait_for(app.run(), 30)


async def test_delayed_events_of_a_partitioned_stream_are_listed_and_cancelled_across_partitions(
    redis_url: str, unique: str
) -> None:
    """A delayed keyed publish waits in its partition; the stream's scheduled list merges the partitions
    (soonest first) and cancel finds each schedule id wherever it waits."""
    async with streamq.Producer(redis_url, partitions={unique: 4}) as producer:
        first = await producer.publish(unique, Ping(1), key="a", delay_ms=60_000)
        second = await producer.publish(unique, Ping(2), key="b", delay_ms=30_000)
        listed = await producer.scheduled(unique)
        assert [event.schedule_id for event in listed] == [second, first]
        assert await producer.cancel(unique, first)
        assert not await producer.cancel(unique, first)
        assert [event.schedule_id for event in await producer.scheduled(unique)] == [second]
