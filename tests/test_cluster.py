"""Redis Cluster: producers, workers, status, dead letters and retention on a real local cluster (three
primaries with a replica each, formed by streamq.embedded_cluster from the same server binaries as the
other tests), and a primary killed with -9 while a worker runs.

Streams are picked so that they live on different primaries: every stream's keys share its slot, so each
stream is served by one node, and a worker with streams on three nodes talks to all three.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.cluster
from cli_app import Ping
from helpers import async_wait_until

import streamq
import streamq.inspect
import streamq.partitions
from streamq.cli import OK, main
from streamq.embedded import ServerBinary
from streamq.embedded_cluster import EmbeddedCluster
from streamq.retention import trim

EXTERNAL_URL_ENV = "STREAMQ_TEST_REDIS_URL"


def _start_cluster(binary: ServerBinary | None) -> EmbeddedCluster:
    if binary is None or os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"a local cluster is started from a server binary; {EXTERNAL_URL_ENV} names one server")
    cluster = EmbeddedCluster(binary, primaries=3, replicas=1)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def cluster(server_binary: ServerBinary | None) -> Iterator[EmbeddedCluster]:
    """One cluster per server binary, shared by the tests that kill nothing."""
    started = _start_cluster(server_binary)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def own_cluster(server_binary: ServerBinary | None) -> Iterator[EmbeddedCluster]:
    """A cluster for this test alone, whose nodes it may kill."""
    started = _start_cluster(server_binary)
    try:
        yield started
    finally:
        started.close()


def spread_streams(cluster: EmbeddedCluster, prefix: str, count: int) -> list[str]:
    """`count` stream names that live on `count` different primaries."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < count:
        name = f"{prefix}-{n}"
        found.setdefault(cluster.primary_for(name).port, name)
        n += 1
    return list(found.values())


class Failing(streamq.Event, tag="cluster.failing"):
    n: int


async def test_publish_consume_retry_and_dead_letter_across_three_primaries(
    cluster: EmbeddedCluster, unique: str
) -> None:
    """A worker given the cluster's URL handles streams that live on three different nodes: every event is
    handled once, a failing one is retried and dead-lettered, and status, dead letters (list, replay) and
    trimming work on every stream through the same URL."""
    streams = spread_streams(cluster, unique, 3)
    handled: dict[str, list[int]] = {s: [] for s in streams}
    app = streamq.App(cluster.url)
    for stream in streams:

        @app.consumer(stream, group="g", batch_size=50, max_attempts=2, retry_base_ms=10, block_ms=50)
        async def handle(batch: streamq.Batch[Ping | Failing], stream: str = stream) -> None:
            for event in batch.events:
                if isinstance(event, Failing):
                    raise RuntimeError("always fails")
                handled[stream].append(event.n)

    async with streamq.Producer(cluster.url) as producer:
        for stream in streams:
            await producer.publish_many(stream, [Ping(n) for n in range(200)])
            await producer.publish(stream, Failing(1))
    await asyncio.wait_for(app.run_until_idle(), 60)
    assert all(sorted(handled[s]) == list(range(200)) for s in streams), {
        s: len(h) for s, h in handled.items()
    }

    statuses = {state.stream: state for state in await streamq.inspect.status(cluster.url, streams)}
    assert set(statuses) == set(streams)
    for stream in streams:
        assert statuses[stream].dead_letters == 1
        (group,) = statuses[stream].groups
        assert group.pending == 0
    assert set(streams) <= set(await streamq.inspect.known_streams(cluster.url))

    letters = streamq.DeadLetters(cluster.url)
    try:
        for stream in streams:
            (letter,) = await letters.list(stream)
            assert letter.error_type == "RuntimeError"
            assert (await letters.replay(stream, [letter.dlq_id])).count == 1
        assert [await letters.count(stream) for stream in streams] == [0, 0, 0]
    finally:
        await letters.aclose()
    for stream in streams:
        await trim(cluster.url, stream)
    assert main(["--redis-url", cluster.url, "status", *streams]) == OK


def test_a_sync_producer_and_user_given_cluster_clients(cluster: EmbeddedCluster, unique: str) -> None:
    """SyncProducer takes the URL or a redis.cluster.RedisCluster; the App takes a redis.asyncio.RedisCluster
    (left open: it is the user's)."""
    streams = spread_streams(cluster, unique, 2)
    port = cluster.url.rsplit(":", 1)[1]
    with streamq.SyncProducer(cluster.url) as producer:
        producer.publish(streams[0], Ping(1))
    user_sync = redis.cluster.RedisCluster(host="127.0.0.1", port=int(port))
    try:
        with streamq.SyncProducer(user_sync) as producer:
            producer.publish_many(streams[1], [Ping(2), Ping(3)])
        assert user_sync.xlen(streams[1]) == 2
    finally:
        user_sync.close()

    async def consume() -> list[int]:
        seen: list[int] = []
        user_async = redis.asyncio.RedisCluster(host="127.0.0.1", port=int(port))
        app = streamq.App(user_async)
        for stream in streams:

            @app.consumer(stream, group="g", block_ms=50)
            async def handle(batch: streamq.Batch[Ping]) -> None:
                seen.extend(event.n for event in batch.events)

        try:
            await asyncio.wait_for(app.run_until_idle(), 60)
            assert await user_async.ping()  # still open
        finally:
            await user_async.aclose()
        return seen

    assert sorted(asyncio.run(consume())) == [1, 2, 3]


async def test_a_primary_killed_while_a_worker_runs_loses_nothing(
    own_cluster: EmbeddedCluster, unique: str
) -> None:
    """kill -9 of the primary serving a stream while events are published and handled: its replica is
    promoted, the producer's and the worker's connections find it, and every event published (a publish
    that raised is published again, as a caller would) is handled at least once."""
    (stream,) = spread_streams(own_cluster, unique, 1)
    handled: set[int] = set()
    app = streamq.App(own_cluster.url)

    @app.consumer(stream, group="g", batch_size=20, block_ms=50, lease_ms=2_000)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        handled.update(event.n for event in batch.events)

    published: list[int] = []
    killed = threading.Event()

    def publish_through_a_failover() -> None:
        with streamq.SyncProducer(own_cluster.url) as producer:
            for n in range(600):
                if n == 200:
                    own_cluster.primary_for(stream).kill()
                    killed.set()
                while True:
                    try:
                        producer.publish(stream, Ping(n))
                        break
                    except (redis.RedisError, OSError):
                        threading.Event().wait(0.1)  # the failover is under way: publish again
                published.append(n)

    run = asyncio.create_task(app.run())
    try:
        await asyncio.to_thread(publish_through_a_failover)
        assert killed.is_set()
        await async_wait_until(lambda: handled >= set(published), timeout_s=60,
                               message="every published event handled")  # fmt: skip
    finally:
        app.stop()
        await asyncio.wait_for(run, 30)
    assert published == list(range(600))


async def test_a_partitioned_stream_spreads_over_the_nodes_and_two_workers_share_it(
    cluster: EmbeddedCluster, unique: str
) -> None:
    """Six partitions of one stream live on more than one primary; two workers on the cluster split them
    three and three and handle every event."""
    partitions = streamq.partitions.partition_streams(unique, 6)
    assert len({cluster.primary_for(name).port for name in partitions}) >= 2
    seen: list[int] = []
    apps = [streamq.App(cluster.url), streamq.App(cluster.url)]
    for app in apps:

        @app.consumer(unique, group="g", partitions=6, partition_lease_ms=600, block_ms=50)
        async def handle(batch: streamq.Batch[Ping]) -> None:
            seen.extend(event.n for event in batch.events)

    runs = [asyncio.create_task(app.run()) for app in apps]
    try:
        async with streamq.Producer(cluster.url) as producer:
            for index, name in enumerate(partitions):
                await producer.publish_many(name, [Ping(index * 100 + n) for n in range(50)])
        expected = {index * 100 + n for index in range(6) for n in range(50)}
        await async_wait_until(lambda: set(seen) >= expected, timeout_s=30, message="every event handled")

        def shares() -> list[int]:
            return sorted(len(c.owned()) for app in apps for c in app.consumers)  # type: ignore[union-attr]

        await async_wait_until(lambda: shares() == [3, 3], timeout_s=30, message="three partitions each")
    finally:
        for app in apps:
            app.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 30)


def test_every_command_takes_a_cluster_url(cluster: EmbeddedCluster, unique: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The CLI's commands run against the cluster through its URL: a burst worker, status (named and all
    streams), dead letters, trim, pause and resume, delayed events, group delete."""
    stream = f"{unique}-cli"
    module = f"cluster_cli_app_{unique.replace('-', '_')}"  # its own module: one per server binary's run
    (tmp_path / f"{module}.py").write_text(f"from cli_app import make_app\napp = make_app({stream!r}, 'g')\n")
    with streamq.SyncProducer(cluster.url) as producer:
        producer.publish_many(stream, [Ping(1), Ping(-1)])
        schedule_id = producer.publish(stream, Ping(2), delay_ms=3_600_000)
    url = ["--redis-url", cluster.url]
    sys.path.insert(0, str(tmp_path))
    try:
        assert main([*url, "worker", f"{module}:app", "--burst"]) == OK
    finally:
        sys.path.remove(str(tmp_path))
    assert main([*url, "status", stream, "--json"]) == OK
    assert main([*url, "status"]) == OK
    assert main([*url, "dlq", "list", stream, "--json"]) == OK
    out = capsys.readouterr().out
    assert '"reason": "rejected"' in out or "rejected" in out
    assert main([*url, "dlq", "replay", stream, "--all"]) == OK
    assert main([*url, "trim", stream, "--dry-run"]) == OK
    assert main([*url, "pause", stream, "--reason", "test"]) == OK
    assert main([*url, "resume", stream]) == OK
    assert main([*url, "scheduled", "list", stream]) == OK
    assert main([*url, "scheduled", "cancel", stream, schedule_id]) == OK
    assert main([*url, "group", "delete", stream, "g", "--force"]) == OK
