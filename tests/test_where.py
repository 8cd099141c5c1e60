"""streamq.where.locate and `streamq inspect`: one event's fate, group by group, from what workers wrote."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._worker.records import RetryRecord, encode_record
from streamq.cli import main
from streamq.embedded import ServerBinary
from streamq.embedded_cluster import EmbeddedCluster
from streamq.errors import ConfigurationError
from streamq.partitions import partition_of, partition_stream
from streamq.where import locate, locate_sync


class Job(streamq.Event, tag="test.where.job"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 0, "retention": False}


async def test_each_state_of_an_event_in_each_group(
    redis_url: str, client: redis.asyncio.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker of group `a` acknowledges event 1, sends 2 back for a retry in ten minutes and dead-letters
    3; group `b` holds 1 unsettled (idle past the lease) and has not been delivered the rest. locate tells
    each apart, with the details: consumer, idle, deliveries and lease; due time, attempts and last error;
    reason and consumer of the dead letter. A deleted entry is gone; a scheduled id is scheduled, then not."""
    stream = unique
    async with streamq.Producer(redis_url) as producer:
        ids = await producer.publish_many(stream, [Job(n) for n in (1, 2, 3, 4)])
        schedule_id = await producer.publish(stream, Job(5), delay_ms=600_000)
    await client.xgroup_create(stream, "b", "0")
    await client.xreadgroup("b", "hand", {stream: ">"}, count=1)
    await client.xclaim(stream, "b", "hand", 0, [ids[0]], idle=100_000, justid=True)

    app = streamq.App(redis_url)

    @app.consumer(stream, group="a", **FAST)
    async def handle(batch: streamq.Batch[Job]) -> None:
        for message in batch:
            if message.event.n == 2:
                batch.retry(message, delay_ms=600_000, reason="flaky")
            elif message.event.n == 3:
                batch.dead_letter(message, "bad job")

    async def settled() -> bool:
        stats = await client.hgetall(keys.stats_key(stream, "a"))
        return int(stats.get(b"acked", 0)) >= 2 and int(stats.get(b"dead", 0)) >= 1

    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(settled, message="group a settled its batch")
    finally:
        app.stop()
        await task
    await client.xdel(stream, ids[3])

    acked = await locate(client, stream, ids[0])
    assert acked.state == "in_stream"
    by_group = {g.group: g for g in acked.groups}
    assert by_group["a"].state == "acknowledged"
    held = by_group["b"]
    assert (held.state, held.consumer, held.deliveries, held.lease_alive) == ("pending", "hand", 1, False)
    assert held.idle_ms is not None and held.idle_ms >= 100_000

    waiting = {g.group: g for g in (await locate(client, stream, ids[1])).groups}
    assert waiting["a"].state == "waiting_retry"
    assert waiting["a"].due_ms is not None and waiting["a"].failures == 1
    assert "flaky" in (waiting["a"].last_error or "")
    assert waiting["b"].state == "not_delivered"

    dead = {g.group: g for g in locate_sync(redis_url, stream, ids[2]).groups}
    assert dead["a"].state == "dead_lettered"
    letter = dead["a"].dead_letter
    assert letter is not None and letter.reason == "rejected" and letter.consumer.startswith("streamq")

    gone = await locate(client, stream, ids[3])
    assert gone.state == "gone"
    assert {g.group: g.state for g in gone.groups} == {"a": "gone", "b": "gone"}

    scheduled = await locate(client, stream, schedule_id)
    assert scheduled.state == "scheduled" and scheduled.due_ms is not None
    async with streamq.Producer(redis_url) as producer:
        assert await producer.cancel(stream, schedule_id)
    assert (await locate(client, stream, schedule_id)).state == "not_scheduled"

    only_a = await locate(client, stream, ids[2], group="a")
    assert [g.group for g in only_a.groups] == ["a"]
    with pytest.raises(ConfigurationError, match="no group"):
        await locate(client, stream, ids[2], group="nobody")

    capsys.readouterr()  # the worker's log lines
    assert main(["inspect", stream, ids[1], "--redis-url", redis_url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [g["state"] for g in shown["groups"]] == ["waiting_retry", "not_delivered"]
    assert main(["inspect", stream, ids[2], "--redis-url", redis_url, "--group", "a"]) == 0
    text = capsys.readouterr().out
    assert "dead-lettered (rejected)" in text and f"streamq dlq show {stream}" in text
    assert main(["inspect", stream, ids[2], "--redis-url", redis_url, "--group", "a", "--json"]) == 0
    (shown_letter,) = [g["dead_letter"] for g in json.loads(capsys.readouterr().out)["groups"]]
    assert (shown_letter["reason"], shown_letter["id"], shown_letter["payload"]) == ("rejected", ids[2], None)


def test_a_scan_cut_short_is_said(redis_url: str, sync_client: redis.Redis, unique: str) -> None:
    """Dead letters are found by scanning from the event's time on, at most scan_limit entries: a scan
    that stops there says so, since the dead letter may be beyond it."""
    stream = unique
    entry_id = sync_client.xadd(stream, {"d": b"x"}).decode()
    sync_client.xgroup_create(stream, "g", "0")
    for n in range(3):
        sync_client.xadd(
            keys.dlq_key(stream), {"stream": stream, "id": f"1-{n}", "group": "g", "reason": "x"}
        )
    assert locate_sync(sync_client, stream, entry_id, scan_limit=2).cut == ["dead letters"]
    assert locate_sync(sync_client, stream, entry_id, scan_limit=10).cut == []


def test_a_partitioned_stream_needs_the_partition(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A partitioned stream's ids repeat across partitions: `P/ID` names one; a bare id is refused, as a
    partition given for a plain stream is."""
    stream = unique
    sync_client.set(keys.partitions_key(stream), 2)
    entry_id = sync_client.xadd(f"{stream}:{{{stream}:1}}", {"d": b"x"}).decode()
    found = locate_sync(redis_url, stream, f"1/{entry_id}")
    assert (found.partition, found.state) == (1, "in_stream")
    assert locate_sync(redis_url, stream, f"0/{entry_id}").state == "gone"
    with pytest.raises(ConfigurationError, match="partitioned"):
        locate_sync(redis_url, stream, entry_id)
    with pytest.raises(ConfigurationError, match="not partitioned"):
        locate_sync(redis_url, unique + "-plain", f"1/{entry_id}")


async def test_a_retry_delivered_again_and_one_moved_not_read_yet(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """An event that failed once and is being handled again from the group's retry stream is
    retry_pending, with the consumer holding it and its history; a retry moved to the retry stream that no
    worker has read yet is waiting_retry, with its entry there."""
    stream = unique
    async with streamq.Producer(redis_url) as producer:
        (entry_id,) = await producer.publish_many(stream, [Job(1)])
    second_try = asyncio.Event()
    release = asyncio.Event()
    app = streamq.App(redis_url)

    @app.consumer(stream, group="a", **FAST)
    async def handle(batch: streamq.Batch[Job]) -> None:
        for message in batch:
            if message.attempt == 1:
                batch.retry(message, delay_ms=0, reason="first try fails")
            else:
                second_try.set()
                await release.wait()

    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(second_try.wait(), 30)
        (again,) = (await locate(client, stream, entry_id)).groups
        assert (again.state, again.failures, again.deliveries, again.lease_alive) == (
            "retry_pending",
            1,
            1,
            True,
        )
        assert again.consumer is not None and again.consumer.startswith("streamq")
        assert again.retry_entry_id is not None and "first try fails" in (again.last_error or "")
    finally:
        release.set()
        app.stop()
        await task
    assert [g.state for g in (await locate(client, stream, entry_id)).groups] == ["acknowledged"]

    record = encode_record(RetryRecord(entry_id, 2, 1, 2, "ValueError: again", b"\x80"))
    moved_id = (await client.xadd(keys.retry_key(stream, "a"), {"r": record})).decode()
    (waiting,) = (await locate(client, stream, entry_id)).groups
    assert (waiting.state, waiting.retry_entry_id, waiting.failures) == ("waiting_retry", moved_id, 2)
    assert waiting.due_ms is None and waiting.last_error == "ValueError: again"


@pytest.fixture(scope="module")
def cluster(server_binary: ServerBinary | None) -> Iterator[EmbeddedCluster]:
    if server_binary is None:
        pytest.skip("a local cluster is started from a server binary")
    started = EmbeddedCluster(server_binary, primaries=3, replicas=0)
    started.start()
    try:
        yield started
    finally:
        started.close()


def test_on_a_cluster_with_partitions(cluster: EmbeddedCluster, unique: str) -> None:
    """On a Redis Cluster, each partition in its own slot: a pending entry and a dead letter are found
    through the cluster's URL, and a partitioned stream's schedule id without its partition is found in
    the partition that holds it."""
    stream = unique
    with streamq.SyncProducer(cluster.url, partitions={stream: 3}) as producer:
        (entry_id,) = producer.publish_many(stream, [Job(1)], key=["k"])
        schedule_id = producer.publish(stream, Job(2), delay_ms=600_000, key="k")
    index = partition_of("k", 3)
    part = partition_stream(stream, index)
    nodes = redis.cluster.RedisCluster.from_url(cluster.url.replace("redis+cluster://", "redis://"))
    try:
        nodes.xgroup_create(part, "g", "0")
        nodes.xreadgroup("g", "hand", {part: ">"})
        nodes.xadd(keys.dlq_key(part), {"stream": part, "id": entry_id, "group": "old", "reason": "x"})
    finally:
        nodes.close()
    found = locate_sync(cluster.url, stream, f"{index}/{entry_id}")
    assert [(g.group, g.state) for g in found.groups] == [("g", "pending"), ("old", "dead_lettered")]
    scheduled = locate_sync(cluster.url, stream, schedule_id)
    assert (scheduled.state, scheduled.partition) == ("scheduled", index)
