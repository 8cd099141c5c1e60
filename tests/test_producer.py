"""streamq.producer: publishing from async and plain sync code, chunking, trimming, URLs and bad keys."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio

import streamq
from streamq import keys
from streamq.embedded import EmbeddedServer, ServerBinary
from streamq.events import PAYLOAD_FIELD


class Reading(streamq.Event, tag="test.producer.reading"):
    sensor: str
    value: float


class Snapshot(streamq.Event, tag="test.producer.snapshot"):
    data: bytes


def _readings(count: int) -> list[Reading]:
    return [Reading(f"s{n}", float(n)) for n in range(count)]


def _sort_key(reading: Reading) -> tuple[str, float]:
    return reading.sensor, reading.value


def _decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Reading]:
    decoder = msgspec.msgpack.Decoder(Reading)
    return [decoder.decode(fields[PAYLOAD_FIELD]) for _, fields in entries]


async def test_publish_many_returns_ids_in_stream_order(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Every event is appended in the order given, and the returned ids are its entries' ids in order."""
    events = _readings(25)
    async with streamq.Producer(redis_url) as producer:
        first = await producer.publish(unique, Reading("first", -1.0))
        ids = await producer.publish_many(unique, events)
    entries = await client.xrange(unique)
    assert [entry_id.decode() for entry_id, _ in entries] == [first, *ids]
    assert _decode(entries) == [Reading("first", -1.0), *events]


@pytest.mark.parametrize("chunk_size", [1, 3, 1_000])
async def test_chunking_keeps_every_event_and_its_order(
    chunk_size: int, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """However the events are split into round trips, all are published once, in order."""
    events = _readings(10)
    async with streamq.Producer(redis_url, chunk_size=chunk_size) as producer:
        ids = await producer.publish_many(unique, events)
        more = await producer.publish_many(unique, events, chunk_size=4)
    entries = await client.xrange(unique)
    assert [entry_id.decode() for entry_id, _ in entries] == ids + more
    assert _decode(entries) == events + events


async def test_a_bad_event_in_a_later_chunk_publishes_nothing(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Events are encoded before the first chunk is sent: a too-large event anywhere fails the call with
    EventTooLarge and no part of it is written."""
    events: list[streamq.Event] = [*_readings(5), Snapshot(b"x" * 2_000)]
    async with streamq.Producer(redis_url, chunk_size=2, max_event_bytes=1_000) as producer:
        with pytest.raises(streamq.EventTooLarge):
            await producer.publish_many(unique, events)
    assert await client.exists(unique) == 0


async def test_publishing_nothing_writes_nothing(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """An empty publish_many returns no ids and does not create the stream."""
    async with streamq.Producer(redis_url) as producer:
        assert await producer.publish_many(unique, []) == []
    assert await client.exists(unique) == 0


async def test_exact_maxlen_trims_to_the_newest_entries(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """With exact trimming the stream keeps exactly maxlen entries, the newest ones; a per-call maxlen
    overrides the producer's."""
    async with streamq.Producer(redis_url, maxlen=5, approximate_trim=False) as producer:
        ids = await producer.publish_many(unique, _readings(20), chunk_size=7)
        assert [i.decode() for i, _ in await client.xrange(unique)] == ids[-5:]
        await producer.publish(unique, Reading("last", 0.0), maxlen=2)
    assert await client.xlen(unique) == 2


async def test_approximate_maxlen_bounds_the_stream(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Approximate trimming (the default) keeps at least maxlen entries and drops whole old nodes."""
    async with streamq.Producer(redis_url, maxlen=10) as producer:
        await producer.publish_many(unique, _readings(1_000))
    assert 10 <= await client.xlen(unique) < 1_000


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("maxlen", 0),
        ("maxlen", -1),
        ("maxlen", True),  # a bool is not a length
        ("maxlen", "1000"),
        ("approximate_trim", "no"),  # truthy: would have trimmed approximately
        ("approximate_trim", 1),
        ("approximate_trim", None),
        ("chunk_size", 0),
        ("chunk_size", -5),
        ("chunk_size", 2.0),
        ("chunk_size", 1_000_001),
        ("max_event_bytes", 0),
        ("max_event_bytes", "1MiB"),
    ],
)
@pytest.mark.parametrize("producer_type", [streamq.Producer, streamq.SyncProducer])
def test_bad_options_are_refused_when_the_producer_is_built(
    producer_type: type[streamq.Producer | streamq.SyncProducer], option: str, value: Any
) -> None:
    """Both producers check every option's type and range when built, with a ConfigurationError naming
    it, before any connection is made (nothing listens on the URL)."""
    with pytest.raises(streamq.ConfigurationError, match=option):
        producer_type("redis://127.0.0.1:1/0", **{option: value})


async def test_a_calls_own_chunk_size_and_maxlen_are_checked(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A publish call's chunk_size=0 is an error, not the producer's default, and its maxlen=0 is an error,
    not a trim that deletes the stream's entries (the event just published with them). Nothing is written."""
    async with streamq.Producer(redis_url, approximate_trim=False) as producer:
        ids = await producer.publish_many(unique, _readings(3))
        with pytest.raises(streamq.ConfigurationError, match="maxlen"):
            await producer.publish(unique, Reading("gone?", 0.0), maxlen=0)
        with pytest.raises(streamq.ConfigurationError, match="chunk_size"):
            await producer.publish_many(unique, _readings(2), chunk_size=0)
    with streamq.SyncProducer(redis_url, approximate_trim=False) as sync_producer:
        with pytest.raises(streamq.ConfigurationError, match="maxlen"):
            sync_producer.publish_many(unique, _readings(2), maxlen=-1)
        with pytest.raises(streamq.ConfigurationError, match="chunk_size"):
            sync_producer.publish_many(unique, _readings(2), chunk_size=-1)
    assert len(ids) == await client.xlen(unique) == 3  # nothing trimmed, nothing added


def test_sync_producer_from_plain_code(redis_url: str, sync_client: redis.Redis, unique: str) -> None:
    """SyncProducer publishes from code with no event loop, with the same ids/order guarantees."""
    with streamq.SyncProducer(redis_url) as producer:
        one = producer.publish(unique, Reading("a", 1.0))
        ids = producer.publish_many(unique, _readings(7), chunk_size=3)
    entries = sync_client.xrange(unique)
    assert [i.decode() for i, _ in entries] == [one, *ids]
    assert _decode(entries) == [Reading("a", 1.0), *_readings(7)]


def test_sync_producer_is_thread_safe(redis_url: str, sync_client: redis.Redis, unique: str) -> None:
    """One SyncProducer shared by several threads publishes every event once, each thread's in order."""
    with streamq.SyncProducer(redis_url, chunk_size=5) as producer, ThreadPoolExecutor(4) as pool:
        batches = [[Reading(f"t{t}", float(n)) for n in range(50)] for t in range(4)]
        results = list(pool.map(lambda events: producer.publish_many(unique, events), batches))
    assert sync_client.xlen(unique) == 200
    entries = sync_client.xrange(unique)
    stored = dict(zip([i.decode() for i, _ in entries], _decode(entries), strict=True))
    for ids, events in zip(results, batches, strict=True):
        assert [stored[i] for i in ids] == events


def test_sync_producer_leaves_a_given_client_open(sync_client: redis.Redis, unique: str) -> None:
    """A client passed in belongs to the caller: closing the producer does not close it."""
    with streamq.SyncProducer(sync_client) as producer:
        producer.publish(unique, Reading("a", 1.0))
    assert sync_client.xlen(unique) == 1


async def test_producer_leaves_a_given_client_open(client: redis.asyncio.Redis, unique: str) -> None:
    """A redis.asyncio client passed in stays usable after the producer is closed."""
    async with streamq.Producer(client) as producer:
        await producer.publish(unique, Reading("a", 1.0))
    assert await client.xlen(unique) == 1


async def test_stream_that_is_another_type_is_a_configuration_error(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """Publishing to a key holding another type (WRONGTYPE) raises ConfigurationError naming the key,
    from both producers."""
    await client.set(unique, "not a stream")
    async with streamq.Producer(redis_url) as producer:
        with pytest.raises(streamq.ConfigurationError, match=unique):
            await producer.publish(unique, Reading("a", 1.0))
    with (
        streamq.SyncProducer(redis_url) as sync_producer,
        pytest.raises(streamq.ConfigurationError, match=unique),
    ):
        sync_producer.publish_many(unique, _readings(3))
    assert await client.get(unique) == b"not a stream"


def test_bad_names_and_urls_are_configuration_errors() -> None:
    """An invalid stream name (bad characters, or one whose keys could collide with another stream's, see
    tests/test_keys.py) or an unparseable URL is refused before anything is sent."""
    for name in ["bad name", "{orders}", "a}b", "streamq:orders"]:
        with pytest.raises(streamq.ConfigurationError, match="stream name"):
            streamq.SyncProducer("redis://127.0.0.1:1/0").publish(name, Reading("a", 1.0))
    with pytest.raises(streamq.ConfigurationError, match="URL"):
        streamq.SyncProducer("http://example.com")
    with pytest.raises(streamq.ConfigurationError, match="URL"):
        streamq.Producer("nonsense://x")


# ------------------------------------------------------------------------------------------- unix sockets


@pytest.fixture
def unix_socket(server_binary: ServerBinary | None) -> Iterator[str]:
    """The path of a unix socket that a server of this test's own listens on."""
    if server_binary is None:
        pytest.skip("needs a server it can start with a unix socket")
    directory = tempfile.mkdtemp(prefix="sq-", dir="/tmp")  # short: socket paths are limited to ~100 bytes
    path = f"{directory}/redis.sock"
    try:
        with EmbeddedServer(
            server_binary, extra_args=["--unixsocket", path, "--unixsocketperm", "700"]
        ) as server:
            assert server.is_running
            yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("given", ["url", "client"])
async def test_unix_socket_urls(given: str, unix_socket: str, unique: str) -> None:
    """unix:// URLs work for both producers and for a worker, given as a URL or as a client, including the
    lease keeper's own connection: two workers (apps) share a group, and while one handler runs past its
    lease the other's reclaimer never takes its entries."""
    url = f"unix://{unix_socket}?db=0"
    async with streamq.Producer(url) as producer:
        await producer.publish_many(unique, _readings(3))
    with streamq.SyncProducer(url) as sync_producer:
        sync_producer.publish_many(unique, _readings(3))

    handled: list[Reading] = []
    own_client = redis.asyncio.Redis.from_url(url)
    # Two apps, not two consumers of one app: one app routes a group's event types to one handler.
    apps = [streamq.App(url if given == "url" else own_client) for _ in range(2)]

    async def handle(batch: streamq.Batch[Reading]) -> None:
        await asyncio.sleep(1.5)  # several leases: only renewals over the unix socket keep the entries
        handled.extend(batch.events)

    for app in apps:
        app.add_consumer(handle, unique, group="g", lease_ms=500, block_ms=100)
    try:
        await asyncio.wait_for(asyncio.gather(*(app.run_until_idle() for app in apps)), 30)
        assert sorted(handled, key=_sort_key) == sorted(_readings(3) * 2, key=_sort_key)
        assert int((await own_client.xpending(unique, "g"))["pending"]) == 0
        stats = await own_client.hgetall(keys.stats_key(unique, "g"))
        assert b"lease_lost" not in stats and b"reclaimed" not in stats
    finally:
        await own_client.aclose()
