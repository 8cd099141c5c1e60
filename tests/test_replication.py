"""Producer(min_replicas=...): publishes that return only once replicas have them (WAIT, WAITAOF).

Every test here starts its own primary and a replica of it (`--replicaof`), of the binary the
``server_binary`` fixture gives, and reads the replica directly to see what it has. A replica that "falls
behind" is one whose process is stopped (SIGSTOP), so it cannot acknowledge; it is always continued again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
from helpers import wait_until

import streamq
from streamq import _wire, keys
from streamq.embedded import EmbeddedServer, ServerBinary
from streamq.events import PAYLOAD_FIELD
from streamq.settings import DAY_MS, DEFAULT_REPLICA_TIMEOUT_MS, MAX_MIN_REPLICAS, ProducerSettings

# How long a publish waits for a replica that cannot answer (stopped): short, so those tests end quickly.
SHORT_WAIT_MS = 200
# How long a publish waits for a replica that is up: long, so a slow CI machine never fails the test.
LONG_WAIT_MS = 10_000


class Reading(streamq.Event, tag="test.replication.reading"):
    sensor: str
    value: float


def _readings(count: int) -> list[Reading]:
    return [Reading(f"s{n}", float(n)) for n in range(count)]


def _decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Reading]:
    decoder = msgspec.msgpack.Decoder(Reading)
    return [decoder.decode(fields[PAYLOAD_FIELD]) for _, fields in entries]


def _ids(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[str]:
    return [entry_id.decode() for entry_id, _ in entries]


@dataclass
class Pair:
    """A primary and one replica of it, with a blocking client to each."""

    primary: EmbeddedServer
    replica: EmbeddedServer
    on_primary: redis.Redis
    on_replica: redis.Redis

    @property
    def url(self) -> str:
        return self.primary.url

    @contextmanager
    def replica_stopped(self) -> Iterator[None]:
        """The replica's process stopped (it cannot acknowledge anything), continued on the way out; then,
        unless the block raised, waited for until the primary knows it has caught up (a continued replica
        may take a second to acknowledge again)."""
        pid = self.replica.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(self._caught_up, message="the continued replica to acknowledge everything")

    def _caught_up(self) -> bool:
        info = self.on_primary.info("replication")
        replica = info.get("slave0")
        return isinstance(replica, dict) and int(replica["offset"]) >= int(info["master_repl_offset"])


def _replicating(primary: redis.Redis, replica: redis.Redis) -> bool:
    """The replica's link is up and the primary counts it (WAIT counts only the replicas it knows)."""
    return (
        replica.info("replication").get("master_link_status") == "up"
        and int(primary.info("replication").get("connected_slaves", 0)) >= 1
    )


@contextmanager
def _primary_and_replica(binary: ServerBinary, **replica_options: Any) -> Iterator[Pair]:
    # No diskless-sync delay: by default a primary waits 5 s for more replicas before it serves the first.
    with EmbeddedServer(binary, extra_args=["--repl-diskless-sync-delay", "0"]) as primary:
        replica_args = ["--replicaof", "127.0.0.1", str(primary.port)]
        with EmbeddedServer(binary, extra_args=replica_args, **replica_options) as replica:
            on_primary = redis.Redis.from_url(primary.url)
            on_replica = redis.Redis.from_url(replica.url)
            try:
                wait_until(
                    lambda: _replicating(on_primary, on_replica), message="the replica's link to the primary"
                )
                yield Pair(primary, replica, on_primary, on_replica)
            finally:
                on_primary.close()
                on_replica.close()


@pytest.fixture
def pair(server_binary: ServerBinary | None) -> Iterator[Pair]:
    """A fresh primary and a replica of it (no AOF), for this test alone."""
    if server_binary is None:
        pytest.skip("needs servers it can start as a primary and a replica")
    with _primary_and_replica(server_binary) as started:
        yield started


def _has_waitaof(binary: ServerBinary) -> bool:
    # WAITAOF came with Redis 7.2; every Valkey (forked from 7.2.4) has it.
    return binary.name == "valkey" or binary.version_info >= (7, 2)


# ------------------------------------------------------------------------------------------- async


async def test_publish_returns_once_the_replica_has_the_entries(pair: Pair, unique: str) -> None:
    """With min_replicas=1, publish and publish_many (several chunks) return only after the replica has
    every entry: read from the replica right after the call, they are all there, in order."""
    events = _readings(7)
    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=LONG_WAIT_MS) as producer:
        first = await producer.publish(unique, Reading("first", -1.0))
        assert _ids(pair.on_replica.xrange(unique)) == [first]
        ids = await producer.publish_many(unique, events, chunk_size=3)
        on_replica = pair.on_replica.xrange(unique)
    assert _ids(on_replica) == [first, *ids]
    assert _decode(on_replica) == [Reading("first", -1.0), *events]


async def test_a_replica_that_does_not_answer_raises_replication_timeout(pair: Pair, unique: str) -> None:
    """With the replica stopped, a publish raises ReplicationTimeout after replica_timeout_ms, saying 0 of
    1 replicas confirmed; the entry IS on the primary, under the id the error gives. publish_many stops
    after its first unconfirmed chunk: that chunk is published, the later ones are not sent."""
    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=SHORT_WAIT_MS) as producer:
        with pair.replica_stopped():
            with pytest.raises(streamq.ReplicationTimeout, match="0 of 1 replicas") as one:
                await producer.publish(unique, Reading("lonely", 1.0))
            with pytest.raises(streamq.ReplicationTimeout) as many:
                await producer.publish_many(unique, _readings(5), chunk_size=2)
    error = one.value
    assert (error.stream, error.acknowledged, error.min_replicas, error.timeout_ms, error.aof) == (
        unique, 0, 1, SHORT_WAIT_MS, False
    )  # fmt: skip
    assert "WERE published on the primary" in str(error)
    assert len(error.ids) == 1
    assert error.unsent == 0
    assert many.value.unsent == 3 and len(many.value.ids) == 2
    on_primary = pair.on_primary.xrange(unique)
    assert _ids(on_primary) == [*error.ids, *many.value.ids]
    assert _decode(on_primary) == [Reading("lonely", 1.0), *_readings(2)]
    # Continued, the replica catches up by itself: nothing was rolled back on the primary.
    wait_until(lambda: _ids(pair.on_replica.xrange(unique)) == _ids(on_primary), message="catching up")


async def test_publish_many_costs_one_round_trip_per_chunk(
    pair: Pair, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait rides in each chunk's round trip (one more reply, not one more round trip): a call of three
    chunks is three round trips, after the single check of the producer's first publish."""
    trips: list[int] = []
    roundtrip = _wire.Link.roundtrip

    async def counted(self: _wire.Link, payload: bytes, replies: int, **options: Any) -> list[Any]:
        trips.append(replies)
        return await roundtrip(self, payload, replies, **options)

    monkeypatch.setattr(_wire.Link, "roundtrip", counted)
    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=LONG_WAIT_MS) as producer:
        await producer.publish(unique, Reading("first", 0.0))
        await producer.publish(unique, Reading("first", 0.0), dedup_key="first")  # loads the scripts
        trips.clear()
        await producer.publish_many(unique, _readings(7), chunk_size=3)
        assert trips == [3 + 1, 3 + 1, 1 + 1]  # each chunk's XADDs and its WAIT
        trips.clear()
        await producer.publish_many(unique, _readings(3), chunk_size=2, dedup_key=["a", "b", "c"])
        assert trips == [1 + 1, 1 + 1]  # each chunk's PUBLISH script call and its WAIT
    assert pair.on_primary.xlen(unique) == 12


async def test_scripted_publishes_wait_too(pair: Pair, unique: str) -> None:
    """Publishes that take the script (a dedup key, a delay, maxlen) wait for the replica as well: the
    entry, the dedup key and the delayed event are on the replica when the call returns. A stopped replica
    makes them raise ReplicationTimeout with the ids the call published; publishing again with the same
    dedup key then appends nothing and gives the first id back."""
    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=LONG_WAIT_MS) as producer:
        entry_id = await producer.publish(unique, Reading("keyed", 1.0), dedup_key="k1")
        assert _ids(pair.on_replica.xrange(unique)) == [entry_id]
        assert pair.on_replica.hget(keys.dedup_index_key(unique), "k1") == entry_id.encode()
        schedule_id = await producer.publish(unique, Reading("later", 2.0), delay_ms=3_600_000)
        assert pair.on_replica.zscore(keys.scheduled_key(unique), schedule_id) is not None
        trimmed = await producer.publish(unique, Reading("capped", 3.0), maxlen=10)
        assert _ids(pair.on_replica.xrange(unique)) == [entry_id, trimmed]

    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=SHORT_WAIT_MS) as producer:
        with pair.replica_stopped():
            with pytest.raises(streamq.ReplicationTimeout, match="0 of 1 replicas") as raised:
                await producer.publish(unique, Reading("keyed", 4.0), dedup_key="k2")
            with pytest.raises(streamq.ReplicationTimeout) as delayed:
                await producer.publish(unique, Reading("later", 5.0), delay_ms=3_600_000)
        (published,) = raised.value.ids
        assert _ids(pair.on_primary.xrange(unique))[-1] == published
        assert delayed.value.ids[0].startswith("sched-")
        assert pair.on_primary.zscore(keys.scheduled_key(unique), delayed.value.ids[0]) is not None
    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=LONG_WAIT_MS) as producer:
        # The retry the error's advice allows: same key, nothing appended, the first publish's id.
        again = await producer.publish_result(unique, Reading("keyed", 4.0), dedup_key="k2")
    assert (again.id, again.duplicate) == (published, True)
    assert pair.on_primary.xlen(unique) == 3


async def test_a_wait_longer_than_the_socket_timeout_is_waited_out(pair: Pair, unique: str) -> None:
    """A replica_timeout_ms longer than the client's socket timeout ends in ReplicationTimeout, not in a
    socket timeout: the wait's reply is given the wait's own time (both producers)."""
    client = redis.asyncio.Redis.from_url(pair.url, socket_timeout=0.1)
    sync_client = redis.Redis.from_url(pair.url, socket_timeout=0.1)
    longer: dict[str, Any] = {"min_replicas": 1, "replica_timeout_ms": 400}
    try:
        async with streamq.Producer(client, **longer) as producer:
            with streamq.SyncProducer(sync_client, **longer) as sync_producer, pair.replica_stopped():
                with pytest.raises(streamq.ReplicationTimeout, match="0 of 1"):
                    await producer.publish(unique, Reading("a", 1.0))
                with pytest.raises(streamq.ReplicationTimeout, match="0 of 1"):
                    await producer.publish(unique, Reading("b", 2.0), dedup_key="b")
                with pytest.raises(streamq.ReplicationTimeout, match="0 of 1"):
                    sync_producer.publish(unique, Reading("c", 3.0))
                with pytest.raises(streamq.ReplicationTimeout, match="0 of 1"):
                    sync_producer.publish(unique, Reading("d", 4.0), dedup_key="d")
        # The connections are still good: the next publishes go through on them (with a long wait, so a
        # slow machine's replica has all the time it needs).
        patient: dict[str, Any] = {"min_replicas": 1, "replica_timeout_ms": LONG_WAIT_MS}
        async with streamq.Producer(client, **patient) as producer:
            await producer.publish(unique, Reading("e", 5.0))
        with streamq.SyncProducer(sync_client, **patient) as sync_producer:
            sync_producer.publish(unique, Reading("f", 6.0))
    finally:
        await client.aclose()
        sync_client.close()
    assert [r.sensor for r in _decode(pair.on_primary.xrange(unique))] == ["a", "b", "c", "d", "e", "f"]


# ------------------------------------------------------------------------------------------- sync


def test_sync_producer_waits_for_the_replica(pair: Pair, unique: str) -> None:
    """SyncProducer with min_replicas: the same as Producer, on both paths. Entries are on the replica when
    a call returns; with the replica stopped, ReplicationTimeout names 0 of 1 and the entries are on the
    primary."""
    with streamq.SyncProducer(pair.url, min_replicas=1, replica_timeout_ms=LONG_WAIT_MS) as producer:
        first = producer.publish(unique, Reading("first", 0.0))
        ids = producer.publish_many(unique, _readings(5), chunk_size=2)
        keyed = producer.publish(unique, Reading("keyed", 9.0), dedup_key="k")
        assert _ids(pair.on_replica.xrange(unique)) == [first, *ids, keyed]
    with (
        streamq.SyncProducer(pair.url, min_replicas=1, replica_timeout_ms=SHORT_WAIT_MS) as producer,
        pair.replica_stopped(),
    ):
        with pytest.raises(streamq.ReplicationTimeout, match="0 of 1 replicas") as plain:
            producer.publish_many(unique, _readings(3), chunk_size=2)
        with pytest.raises(streamq.ReplicationTimeout, match="0 of 1 replicas") as scripted:
            producer.publish(unique, Reading("keyed", 10.0), dedup_key="k2")
    assert (len(plain.value.ids), plain.value.unsent) == (2, 1)
    assert _ids(pair.on_primary.xrange(unique))[-3:] == [*plain.value.ids, *scripted.value.ids]


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("min_replicas", 0),
        ("min_replicas", -1),
        ("min_replicas", MAX_MIN_REPLICAS + 1),
        ("min_replicas", True),
        ("min_replicas", "1"),
        ("min_replicas", 1.0),
        ("replica_timeout_ms", 0),
        ("replica_timeout_ms", DAY_MS + 1),
        ("replica_timeout_ms", None),
        ("replica_timeout_ms", 1.5),
        ("replica_aof", "yes"),
        ("replica_aof", 1),
    ],
)
@pytest.mark.parametrize("producer_type", [streamq.Producer, streamq.SyncProducer])
def test_bad_replication_options_are_refused(
    producer_type: type[streamq.Producer | streamq.SyncProducer], option: str, value: Any
) -> None:
    """Both producers and ProducerSettings refuse a bad min_replicas, replica_timeout_ms or replica_aof
    with a ConfigurationError naming it, when built (nothing listens on the URL)."""
    options = {"min_replicas": 1, option: value}
    with pytest.raises(streamq.ConfigurationError, match=option):
        producer_type("redis://127.0.0.1:1/0", **options)
    with pytest.raises(streamq.ConfigurationError, match=option):
        ProducerSettings(**options)


def test_replication_settings_defaults_and_range_ends() -> None:
    """min_replicas is off (None) by default, replica_timeout_ms is DEFAULT_REPLICA_TIMEOUT_MS (1000) and
    replica_aof off; the ends of each range are accepted; replica_aof without min_replicas is refused."""
    settings = ProducerSettings()
    assert (settings.min_replicas, settings.replica_timeout_ms, settings.replica_aof) == (None, 1_000, False)
    assert DEFAULT_REPLICA_TIMEOUT_MS == 1_000
    for replicas, timeout_ms in [(1, 1), (MAX_MIN_REPLICAS, DAY_MS)]:
        ProducerSettings(min_replicas=replicas, replica_timeout_ms=timeout_ms, replica_aof=True)
    with pytest.raises(streamq.ConfigurationError, match="replica_aof=True needs min_replicas"):
        ProducerSettings(replica_aof=True)
    with pytest.raises(streamq.ConfigurationError, match="replica_aof=True needs min_replicas"):
        streamq.SyncProducer("redis://127.0.0.1:1/0", replica_aof=True)


# ------------------------------------------------------------------------------------------- WAITAOF


async def test_replica_aof_is_refused_clearly_where_the_server_lacks_waitaof(
    pair: Pair, server_binary: ServerBinary, unique: str
) -> None:
    """On a server without WAITAOF (Redis < 7.2), replica_aof=True is refused at the first publish with a
    ConfigurationError naming WAITAOF and the server's version, before anything is written. (Servers with
    WAITAOF: see the next test.)"""
    if _has_waitaof(server_binary):
        pytest.skip(f"{server_binary.label} has WAITAOF")
    expected = f"WAITAOF.*Redis {server_binary.version}"
    async with streamq.Producer(pair.url, min_replicas=1, replica_aof=True) as producer:
        with pytest.raises(streamq.ConfigurationError, match=expected):
            await producer.publish(unique, Reading("never", 0.0))
        with pytest.raises(streamq.ConfigurationError, match=expected):
            await producer.publish(unique, Reading("never", 0.0), dedup_key="never")
    with (
        streamq.SyncProducer(pair.url, min_replicas=1, replica_aof=True) as sync_producer,
        pytest.raises(streamq.ConfigurationError, match=expected),
    ):
        sync_producer.publish_many(unique, _readings(3))
    assert pair.on_primary.exists(unique, keys.dedup_index_key(unique)) == 0
    # Plain WAIT works on the same server.
    async with streamq.Producer(pair.url, min_replicas=1, replica_timeout_ms=LONG_WAIT_MS) as producer:
        await producer.publish(unique, Reading("waited", 1.0))
    assert pair.on_replica.xlen(unique) == 1


async def test_replica_aof_waits_for_the_replicas_fsync(
    server_binary: ServerBinary | None, unique: str
) -> None:
    """Where the server has WAITAOF, replica_aof=True returns once a replica with appendonly has the
    entries in its AOF (both producers, both paths); a replica without appendonly never confirms, so the
    same publish raises ReplicationTimeout (aof=True)."""
    if server_binary is None:
        pytest.skip("needs servers it can start as a primary and a replica")
    if not _has_waitaof(server_binary):
        pytest.skip(f"{server_binary.label} has no WAITAOF (refused: see the test above)")
    options: dict[str, Any] = {"min_replicas": 1, "replica_timeout_ms": LONG_WAIT_MS, "replica_aof": True}
    with _primary_and_replica(server_binary, appendonly=True, appendfsync="always") as pair:
        with streamq.SyncProducer(pair.url, **options) as producer:
            ids = producer.publish_many(unique, _readings(4), chunk_size=3)
            ids.append(producer.publish(unique, Reading("keyed", 9.0), dedup_key="k"))
        async with streamq.Producer(pair.url, **options) as async_producer:
            ids.append(await async_producer.publish(unique, Reading("async", 1.0)))
            ids.append(await async_producer.publish(unique, Reading("async", 2.0), dedup_key="k2"))
        assert _ids(pair.on_replica.xrange(unique)) == ids

    options.update(replica_timeout_ms=SHORT_WAIT_MS)
    with _primary_and_replica(server_binary) as without_aof:
        with (
            streamq.SyncProducer(without_aof.url, **options) as producer,
            pytest.raises(streamq.ReplicationTimeout, match="0 of 1 replicas had fsynced") as raised,
        ):
            producer.publish(unique, Reading("not on disk", 0.0))
        assert raised.value.aof is True
        assert _ids(without_aof.on_primary.xrange(unique)) == raised.value.ids
