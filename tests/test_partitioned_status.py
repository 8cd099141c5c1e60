"""Status and dead letters of a partitioned stream: shown as one stream, its partitions added up, with each
partition on request; dead letters listed, shown, replayed and purged across partitions by `P/ID` ids.

The partitioned stream is set up as workers set it up: its count recorded by `declare`, events published
straight into its partition streams, and a real partitioned consumer (which registers each partition it
runs) acknowledging some and dead-lettering others. Where the order of dead letters across partitions is
the point, entries are written to the partitions' dead-letter streams with chosen ids, so that two
partitions hold the same id.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
from cli_app import Ping
from redis.exceptions import NoPermissionError

import streamq
from streamq import control, inspect, keys
from streamq._wire.partitioning import declare
from streamq.cli import FAILURE, OK, USAGE, main
from streamq.deadletter import DeadLetters, SyncDeadLetters
from streamq.embedded import ServerBinary
from streamq.embedded_cluster import EmbeddedCluster
from streamq.errors import ConfigurationError, DeadLetterNotFound
from streamq.partitions import logical_stream, partition_stream

PARTITIONS = 3
HOUR_MS = 3_600_000


async def partitioned(url: str, client: redis.asyncio.Redis, stream: str, numbers: list[list[int]]) -> None:
    """Record `stream` as partitioned and publish numbers[i] to partition i."""
    assert await declare(client, keys.partitions_key(stream), PARTITIONS) == PARTITIONS
    async with streamq.Producer(url) as producer:
        for index, batch in enumerate(numbers):
            if batch:
                await producer.publish_many(partition_stream(stream, index), [Ping(n) for n in batch])


async def consume(url: str, stream: str) -> None:
    """Run a partitioned consumer of group `g` until idle: negative pings are dead-lettered, nothing is
    trimmed."""
    app = streamq.App(url)

    # keep_acked_ms: nothing trimmed, so that the lengths are those published.
    @app.consumer(stream, group="g", partitions=PARTITIONS, partition_lease_ms=600, block_ms=50,
                  max_attempts=1, keep_acked_ms=HOUR_MS)  # fmt: skip
    async def handle(batch: streamq.Batch[Ping]) -> None:
        for message in batch:
            if message.event.n < 0:
                batch.dead_letter(message, f"negative {message.event.n}")

    await asyncio.wait_for(app.run_until_idle(), 30)


async def dead_letter_at(
    client: redis.asyncio.Redis, stream: str, index: int, dlq_id: str, group: str
) -> None:
    """A dead letter of partition `index` with the id `dlq_id` in its dead-letter stream."""
    await client.xadd(
        keys.dlq_key(partition_stream(stream, index)),
        {"stream": partition_stream(stream, index), "id": "1-0", "group": group, "consumer": "c",
         "attempts": 1, "reason": "rejected", "d": msgspec.msgpack.encode({"n": index})},
        id=dlq_id,
    )  # fmt: skip


def run_cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the worker logged before
    code = main([*argv, "--redis-url", url])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- names


def test_logical_stream_reads_a_partitions_name_back() -> None:
    """logical_stream inverts partition_stream, and gives None for any name not of that shape."""
    assert logical_stream(partition_stream("orders", 3)) == ("orders", 3)
    assert logical_stream(partition_stream("app.v1:orders", 1023)) == ("app.v1:orders", 1023)
    not_partitions = [
        "orders", "orders:{orders}", "orders:{other:1}", "orders:{orders:01}", "orders:{orders:1024}",
        "{orders:1}", "orders:{orders:-1}", "orders:{orders:1}x",
    ]  # fmt: skip
    for name in not_partitions:
        assert logical_stream(name) is None, name


# ---------------------------------------------------------------------------------------------- status


async def test_status_adds_up_the_partitions_and_gives_each_on_request(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """One StreamStatus under the stream's name: lengths, dead letters, the group's counters, delayed
    events and pauses of every partition together; per_partition=True adds each partition's own status.
    The blocking functions read the same."""
    await partitioned(redis_url, client, unique, [[0, 1, -1], [2, -2], [3]])
    await consume(redis_url, unique)
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(partition_stream(unique, 2), Ping(9), delay_ms=HOUR_MS)
        await producer.publish(partition_stream(unique, 0), Ping(8), delay_ms=2 * HOUR_MS)
    await control.pause(client, partition_stream(unique, 1), "g", reason="deploy")

    (state,) = await inspect.status(client, [unique])
    assert (state.stream, state.exists, state.key_type) == (unique, True, "stream")
    assert (state.partitions, state.partition_details) == (PARTITIONS, None)
    assert (state.length, state.dead_letters, state.scheduled) == (6, 2, 2)
    assert state.totals["scheduled"] == 2
    (group,) = state.groups
    assert (group.name, group.pending, group.lag, group.retries_waiting) == ("g", 0, 0, 0)
    assert group.last_delivered_id == ""  # no one position stands for three partitions
    assert group.stats == {**dict.fromkeys(inspect.STAT_COUNTERS, 0), "acked": 4, "dead": 2}
    assert list(state.paused) == ["g"] and state.paused["g"].reason == "deploy"

    detailed = await inspect.stream_status(client, unique, per_partition=True)
    assert detailed.partition_details is not None
    parts = detailed.partition_details
    assert [p.stream for p in parts] == [partition_stream(unique, i) for i in range(PARTITIONS)]
    assert [(p.length, p.dead_letters, p.scheduled, p.partitions) for p in parts] == [
        (3, 1, 1, None), (2, 1, 0, None), (1, 0, 1, None),
    ]  # fmt: skip
    assert [p.groups[0].stats["acked"] for p in parts] == [2, 1, 1]
    assert all(p.groups[0].last_delivered_id for p in parts)
    assert [list(p.paused) for p in parts] == [[], ["g"], []]
    assert state.next_scheduled_due_ms == parts[2].next_scheduled_due_ms  # the soonest of them
    assert msgspec.structs.replace(detailed, partition_details=None) == state

    assert inspect.status_sync(sync_client, [unique], per_partition=True) == [detailed]
    assert inspect.stream_status_sync(redis_url, unique) == state


async def test_status_of_every_stream_shows_a_partitioned_one_once(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """Workers register each partition they run; status() with no names shows the partitioned stream once,
    by its own name, none of its partitions, while a stream merely named like a partition (its stream
    has no recorded count) is shown under its own name."""
    await partitioned(redis_url, client, unique, [[1], [2], [3]])
    await consume(redis_url, unique)
    registered = set(await inspect.known_streams(client))
    assert {partition_stream(unique, i) for i in range(PARTITIONS)} <= registered
    lookalike = partition_stream(f"{unique}-plain", 0)
    await client.xadd(lookalike, {"d": b"x"})
    await client.sadd(keys.REGISTRY_KEY, lookalike)

    shown = {st.stream: st for st in await inspect.status(client)}
    assert unique in shown and shown[unique].partitions == PARTITIONS and shown[unique].length == 3
    assert not any(name.startswith(f"{unique}:") for name in shown)
    assert shown[lookalike].partitions is None and shown[lookalike].length == 1
    names = [st.stream for st in inspect.status_sync(sync_client)]
    assert names == sorted(names) and names.count(unique) == 1


async def test_a_plain_stream_is_shown_as_before(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A stream without a recorded count has no partitions and no details, even when asked for them."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(1), Ping(2)])
    (state,) = await inspect.status(client, [unique], per_partition=True)
    assert (state.length, state.partitions, state.partition_details) == (2, None, None)


# ---------------------------------------------------------------------------------------------- dead letters


async def test_dead_letters_of_every_partition_are_counted_listed_and_shown(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """count adds up the partitions; list and page merge them by id, then partition, each dead letter
    naming its partition, its stream and a `P/ID` id that show takes back."""
    await partitioned(redis_url, client, unique, [[-1, 1], [-2], [-3, 3]])
    await consume(redis_url, unique)
    async with DeadLetters(redis_url) as dead:
        assert await dead.count(unique) == 3
        letters = await dead.list(unique)
        assert sorted(letter.partition or 0 for letter in letters) == [0, 1, 2]
        for letter in letters:
            assert letter.partition is not None
            assert letter.stream == partition_stream(unique, letter.partition)
            assert letter.dlq_id.startswith(f"{letter.partition}/")
            assert letter.reason == "rejected" and letter.group == "g"
            assert await dead.show(unique, letter.dlq_id) == letter
        order = [(int(t), int(s)) for t, s in (letter.dlq_id.split("/")[1].split("-") for letter in letters)]
        assert order == sorted(order)


async def test_ids_in_two_partitions_are_told_apart_and_merged_in_order(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Two partitions may hold the same id: page and list order by id, then partition, page after page;
    `P/ID` picks one; an id without its partition, or of a partition the stream has not, is refused."""
    await declare(client, keys.partitions_key(unique), PARTITIONS)
    for index, dlq_id, group in [(0, "5-0", "g"), (0, "7-0", "h"), (1, "5-0", "h"), (1, "6-0", "g"),
                                 (2, "1-0", "g")]:  # fmt: skip
        await dead_letter_at(client, unique, index, dlq_id, group)
    merged = ["2/1-0", "0/5-0", "1/5-0", "1/6-0", "0/7-0"]
    async with DeadLetters(client) as dead:
        assert [letter.dlq_id for letter in await dead.list(unique)] == merged
        assert [letter.dlq_id for letter in await dead.list(unique, start="1/5-0", count=2)] == merged[2:4]
        pages, after = [], None
        while True:
            page = await dead.page(unique, after=after, limit=2)
            assert page.total == 5
            pages.append([letter.dlq_id for letter in page.letters])
            if page.next_after is None:
                break
            after = page.next_after
        assert pages == [merged[:2], merged[2:4], merged[4:]]
        of_h = await dead.page(unique, group="h", limit=1)
        assert [letter.dlq_id for letter in of_h.letters] == ["1/5-0"] and of_h.next_after == "1/5-0"
        rest = await dead.page(unique, group="h", after=of_h.next_after)
        assert [letter.dlq_id for letter in rest.letters] == ["0/7-0"] and rest.next_after is None

        assert (await dead.show(unique, "1/5-0")).group == "h"
        assert (await dead.show(unique, "0/5-0")).group == "g"
        with pytest.raises(DeadLetterNotFound, match="no dead letter 2/5-0"):
            await dead.show(unique, "2/5-0")
        with pytest.raises(ConfigurationError, match=r"is partitioned .* as in 0/5-0"):
            await dead.show(unique, "5-0")
        with pytest.raises(ConfigurationError, match="has 3 partitions"):
            await dead.purge(unique, ["0/5-0", "3/5-0"])
        assert await dead.count(unique) == 5  # the refused purge deleted nothing

        purged = await dead.purge(unique, ["1/5-0", "2/9-0", "1/5-0"])
        assert (purged.stream, purged.count, purged.not_found) == (unique, 1, ["2/9-0"])
        assert [letter.dlq_id for letter in await dead.list(unique)] == ["2/1-0", "0/5-0", "1/6-0", "0/7-0"]
        everything = await dead.purge(unique)
        assert (everything.count, await dead.count(unique)) == (4, 0)


async def test_replay_sends_dead_letters_back_to_their_partition(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """replay of `P/ID` ids puts each back on its own partition's retry stream; replay of everything does
    every partition; a worker then handles them. SyncDeadLetters does the same as DeadLetters."""
    await partitioned(redis_url, client, unique, [[-1], [-2], [-3]])
    await consume(redis_url, unique)
    with SyncDeadLetters(sync_client) as dead:
        letters = dead.list(unique)
        assert [letter.partition for letter in sorted(letters, key=lambda d: d.partition or 0)] == [0, 1, 2]
        first = next(letter for letter in letters if letter.partition == 1)
        result = dead.replay(unique, [first.dlq_id, "0/1-1"])
        assert (result.count, result.not_found) == (1, ["0/1-1"])
        assert client is not None and await client.xlen(keys.retry_key(partition_stream(unique, 1), "g")) == 1
        assert dead.count(unique) == 2
        with pytest.raises(ConfigurationError, match="is partitioned"):
            dead.replay(unique, [first.dlq_id.split("/")[1]])
        rest = dead.replay(unique)
        assert (rest.count, rest.not_found, rest.skipped) == (2, [], {})
        assert dead.count(unique) == 0
    # The replayed events come back with their attempts reset, and are dead-lettered again (negative).
    await consume(redis_url, unique)
    async with DeadLetters(client) as again:
        assert await again.count(unique) == 3


async def test_dead_letters_of_a_plain_stream_have_no_partition(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A plain stream's dead letters keep their bare ids and partition None; a `P/ID` id is refused."""
    await client.xadd(
        keys.dlq_key(unique), {"stream": unique, "id": "1-0", "group": "g", "d": b"\x01"}, id="3-0"
    )
    async with DeadLetters(client) as dead:
        (letter,) = await dead.list(unique)
        assert (letter.dlq_id, letter.partition) == ("3-0", None)
        with pytest.raises(ConfigurationError, match="is not partitioned"):
            await dead.show(unique, "0/3-0")
        assert (await dead.page(unique, after="3-0")).letters == []


# ---------------------------------------------------------------------------------------------- CLI


async def test_cli_status_shows_a_partitioned_stream_as_one_row_and_each_partition_on_request(
    redis_url: str, client: redis.asyncio.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` prints the stream once, with a note naming its partitions; `--partitions` adds a row per
    partition under it; `--json` has `partitions` and, with --partitions, `partition_details`."""
    await partitioned(redis_url, client, unique, [[0, -1], [1], [2]])
    await consume(redis_url, unique)
    code, out, _ = run_cli(capsys, redis_url, "status", unique)
    assert code == OK
    rows = [line for line in out.splitlines() if line.startswith(unique + " ")]
    assert len(rows) == 1 and rows[0].split()[:4] == [unique, "4", "1", "g"]
    assert f"{unique}: partitioned: the sum of its 3 partitions" in out and "--partitions shows each" in out
    assert partition_stream(unique, 0) not in out.replace(f"{partition_stream(unique, 0)} to", "")

    code, out, _ = run_cli(capsys, redis_url, "status", unique, "--partitions")
    assert code == OK
    lines = out.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith(unique + " "))
    under = [line.split() for line in lines[at + 1 : at + 1 + PARTITIONS]]
    assert [row[:4] for row in under] == [
        [partition_stream(unique, 0), "2", "1", "g"], [partition_stream(unique, 1), "1", "0", "g"],
        [partition_stream(unique, 2), "1", "0", "g"],
    ]  # fmt: skip
    assert all(lines[at + 1 + n].startswith("  ") for n in range(PARTITIONS))
    assert "one row each under it" in out

    code, out, _ = run_cli(capsys, redis_url, "status", unique, "--json")
    (shown,) = json.loads(out)
    assert (shown["partitions"], shown["partition_details"], shown["length"]) == (3, None, 4)
    code, out, _ = run_cli(capsys, redis_url, "status", unique, "--json", "--partitions")
    (shown,) = json.loads(out)
    assert [p["length"] for p in shown["partition_details"]] == [2, 1, 1]
    assert [p["partitions"] for p in shown["partition_details"]] == [None, None, None]


async def test_cli_dlq_works_across_partitions_by_partition_ids(
    redis_url: str, client: redis.asyncio.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dlq list` shows `P/ID` ids in merged order; `dlq show`, `replay` and `purge` take them; a bare id
    of a partitioned stream fails, naming the form to use; a malformed one is a usage error."""
    await declare(client, keys.partitions_key(unique), PARTITIONS)
    for index, dlq_id in [(0, "5-0"), (1, "5-0"), (2, "4-0")]:
        await dead_letter_at(client, unique, index, dlq_id, "g")
    code, out, err = run_cli(capsys, redis_url, "dlq", "list", unique)
    assert code == OK
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["2/4-0", "0/5-0", "1/5-0"]
    assert f"showing 3 of the 3 dead letters of {unique}" in err
    code, out, err = run_cli(capsys, redis_url, "dlq", "list", unique, "--limit", "2")
    assert "--after 0/5-0" in err
    listed: Any = json.loads(
        run_cli(capsys, redis_url, "dlq", "list", unique, "--after", "0/5-0", "--json")[1]
    )
    assert [d["dlq_id"] for d in listed["dead_letters"]] == ["1/5-0"] and listed["total"] == 3
    assert listed["dead_letters"][0]["partition"] == 1

    code, out, _ = run_cli(capsys, redis_url, "dlq", "show", unique, "1/5-0")
    assert code == OK and "partition" in out and partition_stream(unique, 1) in out
    shown = json.loads(run_cli(capsys, redis_url, "dlq", "show", unique, "2/4-0", "--json")[1])
    assert (shown["dlq_id"], shown["partition"], shown["stream"]) == ("2/4-0", 2, partition_stream(unique, 2))

    code, _, err = run_cli(capsys, redis_url, "dlq", "show", unique, "5-0")
    assert code == FAILURE and "give the partition with the id, as in 0/5-0" in err
    code, _, err = run_cli(capsys, redis_url, "dlq", "show", unique, "x/5-0")
    assert code == USAGE and "3/1712345678901-0" in err

    replayed = json.loads(run_cli(capsys, redis_url, "dlq", "replay", unique, "0/5-0", "1/9-0", "--json")[1])
    assert (replayed["count"], replayed["not_found"]) == (1, ["1/9-0"])
    code, out, _ = run_cli(capsys, redis_url, "dlq", "purge", unique, "1/5-0")
    assert code == OK and f"purged 1 dead letter of {unique}" in out
    code, out, _ = run_cli(capsys, redis_url, "dlq", "purge", unique, "--all", "--yes")
    assert code == OK and f"purged 1 dead letter of {unique}" in out
    async with DeadLetters(client) as dead:
        assert await dead.count(unique) == 0


# ---------------------------------------------------------------------------- access rules, cluster


@pytest.fixture
async def no_get_user(redis_url: str, client: redis.asyncio.Redis, unique: str) -> AsyncIterator[str]:
    """A URL for a Redis user who may run anything but GET (as SECURITY.md's operator), removed after."""
    name = f"{unique}-no-get"
    await client.acl_setuser(name, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-get"])
    try:
        yield redis_url.replace("redis://", f"redis://{name}:pw@", 1)
    finally:
        await client.acl_deluser(name)


async def test_a_user_who_may_not_get_reads_plain_streams_and_is_told_what_partitioned_ones_need(
    redis_url: str, client: redis.asyncio.Redis, unique: str, no_get_user: str
) -> None:
    """Whether a stream is partitioned is asked with EXISTS, so a user without GET reads plain streams as
    before (and is never denied anything for them); for a partitioned one it is told to allow GET."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Ping(1))
    (state,) = await inspect.status(no_get_user, [unique])
    assert state.length == 1
    async with DeadLetters(no_get_user) as dead:
        assert await dead.count(unique) == 0
    await declare(client, keys.partitions_key(f"{unique}-p"), PARTITIONS)
    with pytest.raises(NoPermissionError, match="grant it GET"):
        await inspect.status(no_get_user, [f"{unique}-p"])


@pytest.fixture(scope="module")
def cluster(server_binary: ServerBinary | None) -> Iterator[EmbeddedCluster]:
    """A local cluster (three primaries, no replicas), one per server binary."""
    if server_binary is None or os.environ.get("STREAMQ_TEST_REDIS_URL"):
        pytest.skip("a local cluster is started from a server binary")
    started = EmbeddedCluster(server_binary, primaries=3, replicas=0)
    started.start()
    try:
        yield started
    finally:
        started.close()


async def test_status_and_dead_letters_of_partitions_on_several_cluster_nodes(
    cluster: EmbeddedCluster, unique: str
) -> None:
    """On a cluster the partitions live on different nodes; status adds them up and the dead letters are
    listed, shown and purged across them just the same."""
    partitions = 6
    names = [partition_stream(unique, i) for i in range(partitions)]
    assert len({cluster.primary_for(name).port for name in names}) >= 2
    count_key = keys.partitions_key(unique)
    node = redis.asyncio.Redis(host="127.0.0.1", port=cluster.primary_for(count_key).port)
    try:
        await declare(node, count_key, partitions)
    finally:
        await node.aclose()
    async with streamq.Producer(cluster.url) as producer:
        for index, name in enumerate(names):
            await producer.publish_many(name, [Ping(index), Ping(-index - 1)])
    app = streamq.App(cluster.url)

    @app.consumer(
        unique, group="g", partitions=partitions, partition_lease_ms=600, block_ms=50, max_attempts=1
    )
    async def handle(batch: streamq.Batch[Ping]) -> None:
        for message in batch:
            if message.event.n < 0:
                batch.dead_letter(message, "negative")

    await asyncio.wait_for(app.run_until_idle(), 30)
    state = await inspect.stream_status(cluster.url, unique, per_partition=True)
    assert (state.partitions, state.dead_letters, state.groups[0].stats["acked"]) == (6, 6, 6)
    assert [part.dead_letters for part in state.partition_details or []] == [1] * 6
    assert unique in [st.stream for st in await inspect.status(cluster.url)]
    async with DeadLetters(cluster.url) as dead:
        letters = await dead.list(unique)
        assert sorted(letter.partition or 0 for letter in letters) == list(range(6))
        assert await dead.show(unique, letters[-1].dlq_id) == letters[-1]
        assert (await dead.purge(unique)).count == 6
