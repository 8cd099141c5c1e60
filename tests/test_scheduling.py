"""Delayed delivery: publish(delay_ms=..., at=...), the scheduled mover, cancel, list, and the CLI.

Nothing here asserts on timing: "not before due" is checked by entry ids (the server's clock when the
entry was appended) against due times (the server's clock plus the delay), and every wait is a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until, wait_until

import streamq
from streamq import keys, scheduling
from streamq._wire import Link, publishing
from streamq.cli import main as cli_main
from streamq.embedded import EmbeddedServer
from streamq.events import PAYLOAD_FIELD

REPO_ROOT = Path(__file__).resolve().parents[1]
KILLS = 8  # mover processes killed mid-move in the kill test


class Reminder(streamq.Event, tag="test.scheduling.reminder"):
    n: int


def _entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0])


async def _server_ms(client: redis.asyncio.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _move_all(client: redis.asyncio.Redis, stream: str) -> int:
    link = Link(client)
    try:
        moved, _ = await publishing.move_scheduled(link, stream, 1000)
    finally:
        await link.close()
    return moved


def _payload_counts(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Counter[bytes]:
    return Counter(fields[PAYLOAD_FIELD] for _, fields in entries)


async def _run_app(app: streamq.App) -> asyncio.Task[None]:
    return asyncio.create_task(app.run())


async def _stop(app: streamq.App, task: asyncio.Task[None]) -> None:
    app.stop()
    await asyncio.wait_for(task, 30)


async def test_delayed_events_reach_a_handler_once_due_and_not_before(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """delay_ms and at both return schedule ids; the events enter the stream no earlier than their due
    time on the server's clock (the entry id is the server's time of the append), and an App's handler
    gets each once. Every group sees them."""
    handled: dict[str, list[int]] = {"a": [], "b": []}
    app = streamq.App(redis_url)
    for group in handled:

        async def handle(batch: streamq.Batch[Reminder], group: str = group) -> None:
            handled[group].extend(event.n for event in batch.events)

        app.add_consumer(handle, unique, group=group, block_ms=50, scheduled_poll_ms=50, retention=False)
    async with streamq.Producer(redis_url) as producer:
        before = await _server_ms(client)
        by_delay = await producer.publish(unique, Reminder(1), delay_ms=700)
        due_at = datetime.fromtimestamp((before + 900) / 1000, UTC)
        by_time = await producer.publish(unique, Reminder(2), at=due_at)
        assert by_delay.startswith("sched-") and by_time.startswith("sched-")
        listed = {e.schedule_id: e.due_ms for e in await producer.scheduled(unique)}
    assert set(listed) == {by_delay, by_time}
    assert listed[by_delay] >= before + 700
    assert listed[by_time] == before + 900
    task = await _run_app(app)
    try:
        await async_wait_until(lambda: all(len(v) == 2 for v in handled.values()), message="both handled")
    finally:
        await _stop(app, task)
    assert {g: sorted(v) for g, v in handled.items()} == {"a": [1, 2], "b": [1, 2]}
    entries = await client.xrange(unique)
    assert len(entries) == 2
    due = sorted(listed.values())
    for (entry_id, _), due_ms in zip(entries, due, strict=True):
        assert _entry_ms(entry_id) >= due_ms
    assert await client.zcard(keys.scheduled_key(unique)) == 0
    assert await client.hlen(keys.scheduled_events_key(unique)) == 0
    totals = await client.hgetall(keys.totals_key(unique))
    assert totals[b"scheduled"] == b"2" and totals[b"scheduled_moved"] == b"2"


async def test_an_event_is_not_in_the_stream_before_its_due_time(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """While a mover runs, a delayed event stays out of the stream as long as the server's clock is before
    its due time; once in, the moved entry is byte for byte what a plain publish writes."""
    app = streamq.App(redis_url)

    async def handle(batch: streamq.Batch[Reminder]) -> None:
        pass

    app.add_consumer(handle, unique, group="g", block_ms=50, scheduled_poll_ms=20, retention=False)
    task = await _run_app(app)
    try:
        async with streamq.Producer(redis_url) as producer:
            schedule_id = await producer.publish(unique, Reminder(7), delay_ms=1_500)
            plain = await producer.publish(f"{unique}-plain", Reminder(7))
        due_ms = int(await client.zscore(keys.scheduled_key(unique), schedule_id) or 0)
        looked = 0
        while await _server_ms(client) < due_ms - 50:
            assert await client.xlen(unique) == 0, "moved before its due time"
            looked += 1
            await asyncio.sleep(0.05)
        assert looked > 0
        ((entry_id, fields),) = await async_wait_until(lambda: client.xrange(unique), message="moved")
        assert _entry_ms(entry_id) >= due_ms
        ((_, plain_fields),) = await client.xrange(f"{unique}-plain", plain, plain)
        assert fields == plain_fields
    finally:
        await _stop(app, task)


async def test_movers_racing_over_the_same_due_events_move_each_once(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Eight movers, each on its own connection, taking a few at a time from the same due events: every
    event enters the stream exactly once."""
    events = [Reminder(n) for n in range(600)]
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, events, delay_ms=0)
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(8)]

    async def mover(own: redis.asyncio.Redis) -> int:
        link = Link(own)
        moved = 0
        try:
            while True:
                step, _ = await publishing.move_scheduled(link, unique, 7)
                if not step and not await own.zcard(keys.scheduled_key(unique)):
                    return moved
                moved += step
        finally:
            await link.close()

    try:
        moved = await asyncio.gather(*(mover(own) for own in clients))
    finally:
        for own in clients:
            await own.aclose()
    assert sum(moved) == 600
    assert sum(1 for m in moved if m) > 1, "one mover took everything: no race was exercised"
    counts = _payload_counts(await client.xrange(unique))
    assert len(counts) == 600 and set(counts.values()) == {1}


_KILLABLE_MOVER = """
import asyncio, sys
import redis.asyncio
from streamq._wire import Link, publishing

async def main(url, stream):
    client = redis.asyncio.Redis.from_url(url)
    link = Link(client)
    print("ready", flush=True)
    while True:
        await publishing.move_scheduled(link, stream, 3)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_mover_killed_mid_move_loses_nothing_and_doubles_nothing(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """Mover processes killed with SIGKILL one after another, each while it moves (a few events per
    script call, calls back to back): every scheduled event ends up in the stream exactly once, whatever
    was in flight at each kill (the move is one atomic script)."""
    total = 2_000
    with streamq.SyncProducer(redis_url) as producer:
        producer.publish_many(unique, [Reminder(n) for n in range(total)], delay_ms=0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def moved_past(mark: int) -> bool:
        return sync_client.xlen(unique) >= mark or not sync_client.zcard(keys.scheduled_key(unique))

    for kill in range(KILLS):
        mark = (kill + 1) * total // (KILLS + 2)  # leave work for the last process, never killed
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE_MOVER, redis_url, unique],
            stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            wait_until(partial(moved_past, mark), interval_s=0.001, message="the mover's progress")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    assert 0 < sync_client.zcard(keys.scheduled_key(unique)) < total, "the kills were not mid-move"
    while publishing.move_scheduled_sync(sync_client, unique, 1000)[0]:
        pass
    assert sync_client.zcard(keys.scheduled_key(unique)) == 0
    counts = _payload_counts(sync_client.xrange(unique))
    assert len(counts) == total and set(counts.values()) == {1}
    assert sync_client.hlen(keys.scheduled_events_key(unique)) == 0


async def test_cancel_removes_an_event_before_it_is_moved(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A cancelled event is never moved, even once due; cancelling twice, or an id never scheduled, is
    False; the cancel is counted."""
    async with streamq.Producer(redis_url) as producer:
        kept = await producer.publish(unique, Reminder(1), delay_ms=0)
        dropped = await producer.publish(unique, Reminder(2), delay_ms=0)
        assert await producer.cancel(unique, dropped) is True
        assert await producer.cancel(unique, dropped) is False
        assert await producer.cancel(unique, "sched-0000") is False
        assert [e.schedule_id for e in await producer.scheduled(unique)] == [kept]
    assert await _move_all(client, unique) == 1
    ((_, fields),) = await client.xrange(unique)
    assert fields[PAYLOAD_FIELD] == streamq.producer.encode_events([Reminder(1)])[0]
    assert (await client.hgetall(keys.totals_key(unique)))[b"cancelled"] == b"1"
    with pytest.raises(streamq.ConfigurationError, match="schedule id"):
        await scheduling.cancel(client, unique, ["1700000000000-0"])


def test_list_shows_the_soonest_first_with_size_and_type(redis_url: str, unique: str) -> None:
    """scheduled() lists soonest first, up to limit, with each payload's size and event tag; the summary
    counts them and gives the soonest due time."""
    soon = datetime.now(UTC) + timedelta(hours=1)
    with streamq.SyncProducer(redis_url) as producer:
        late = producer.publish(unique, Reminder(3), at=soon + timedelta(hours=2))
        first = producer.publish(unique, Reminder(1), at=soon)
        middle = producer.publish(unique, Reminder(2), at=soon + timedelta(hours=1))
        listed = producer.scheduled(unique, limit=2)
        everything = producer.scheduled(unique)
    assert [e.schedule_id for e in listed] == [first, middle]
    assert [e.schedule_id for e in everything] == [first, middle, late]
    size = len(streamq.producer.encode_events([Reminder(1)])[0])
    assert {(e.size, e.type) for e in everything} == {(size, "test.scheduling.reminder")}
    assert abs(everything[0].due - soon) < timedelta(milliseconds=1)
    summary = scheduling.scheduled_summary_sync(redis_url, unique)
    assert summary.scheduled_count == 3
    assert summary.next_due_ms == everything[0].due_ms
    assert summary.totals["scheduled"] == 3


@pytest.mark.parametrize("producer_type", [streamq.Producer, streamq.SyncProducer])
async def test_bad_due_times_are_refused_and_nothing_is_written(
    producer_type: type[streamq.Producer | streamq.SyncProducer],
    redis_url: str,
    client: redis.asyncio.Redis,
    unique: str,
) -> None:
    """A naive datetime, delay_ms and at together, a negative or non-integer delay: ConfigurationError."""
    bad = [
        {"at": datetime.now()},  # the naive datetime under test
        {"at": datetime.now(UTC), "delay_ms": 10},
        {"delay_ms": -1},
        {"delay_ms": 1.5},
        {"delay_ms": True},
    ]
    producer = producer_type(redis_url)
    try:
        for options in bad:
            with pytest.raises(streamq.ConfigurationError, match=r"delay_ms|at"):
                if isinstance(producer, streamq.Producer):
                    await producer.publish(unique, Reminder(1), **options)
                else:
                    producer.publish_many(unique, [Reminder(1)], **options)
    finally:
        if isinstance(producer, streamq.Producer):
            await producer.aclose()
        else:
            producer.close()
    assert await client.exists(unique, keys.scheduled_key(unique)) == 0


async def test_delayed_events_survive_a_worker_restart(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Delayed events wait in Redis, not in a worker: one stopped before they are due moves nothing, and
    the next worker delivers each once."""
    handled: list[int] = []

    async def handle(batch: streamq.Batch[Reminder]) -> None:
        handled.extend(event.n for event in batch.events)

    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Reminder(n) for n in range(5)], delay_ms=3_000)
    due_ms = int((await client.zrange(keys.scheduled_key(unique), 0, 0, withscores=True))[0][1])
    first = streamq.App(redis_url)
    first.add_consumer(handle, unique, group="g", block_ms=50, scheduled_poll_ms=20, retention=False)
    task = await _run_app(first)
    await async_wait_until(lambda: client.exists(unique), message="the first worker's group")
    await _stop(first, task)
    if await _server_ms(client) >= due_ms:
        pytest.skip("the machine was too slow to stop the first worker before the events were due")
    assert await client.zcard(keys.scheduled_key(unique)) == 5 and handled == []

    second = streamq.App(redis_url)
    second.add_consumer(handle, unique, group="g", block_ms=50, scheduled_poll_ms=20, retention=False)
    task = await _run_app(second)
    try:
        await async_wait_until(lambda: len(handled) >= 5, message="all five handled")
    finally:
        await _stop(second, task)
    assert sorted(handled) == list(range(5))
    assert await client.xlen(unique) == 5


def test_cli_lists_and_cancels(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamq scheduled list` prints the delayed events (as JSON with --json); `scheduled cancel`
    cancels the ids given and fails, after doing the rest, when one is unknown."""
    with streamq.SyncProducer(redis_url) as producer:
        ids = [producer.publish(unique, Reminder(n), delay_ms=3_600_000 + n * 60_000) for n in range(3)]
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["schedule_id"] for e in listed["scheduled"]] == ids
    assert listed["scheduled"][0]["type"] == "test.scheduling.reminder"
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--limit", "1"]) == 0
    table = capsys.readouterr().out
    assert ids[0] in table and ids[1] not in table
    assert cli_main(["scheduled", "cancel", unique, ids[0], "--redis-url", redis_url]) == 0
    assert "cancelled 1" in capsys.readouterr().out
    code = cli_main(["scheduled", "cancel", unique, ids[0], ids[1], "--redis-url", redis_url, "--json"])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    assert out == {"stream": unique, "cancelled": [ids[1]], "not_found": [ids[0]]}
    assert [m.decode() for m in sync_client.zrange(keys.scheduled_key(unique), 0, -1)] == [ids[2]]
    assert cli_main(["scheduled", "cancel", unique, "not-an-id", "--redis-url", redis_url]) == 2


async def test_delayed_events_and_dedup_keys_survive_a_server_crash(
    own_server: EmbeddedServer, unique: str
) -> None:
    """Scheduled events and dedup keys are plain Redis data: with AOF (fsync always), a kill -9 of the
    server loses neither. After the restart a repeated key is still a duplicate of the first publish, the
    due event reaches a worker, and the one due in an hour still waits."""
    url = own_server.url
    async with streamq.Producer(url) as producer:
        first = await producer.publish(unique, Reminder(1), delay_ms=0, dedup_key="r1")
        later = await producer.publish(unique, Reminder(2), at=datetime.now(UTC) + timedelta(hours=1))
    own_server.kill()
    await asyncio.to_thread(own_server.start)
    async with streamq.Producer(url) as producer:
        again = await producer.publish_result(unique, Reminder(1), delay_ms=0, dedup_key="r1")
    assert again.duplicate and again.id == first

    handled: list[int] = []
    app = streamq.App(url)

    @app.consumer(unique, group="g", block_ms=50, scheduled_poll_ms=20)
    async def handle(batch: streamq.Batch[Reminder]) -> None:
        handled.extend(event.n for event in batch.events)

    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: handled == [1], message="the due event after the restart")
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)
    client = redis.asyncio.Redis.from_url(url)
    try:
        assert await client.zrange(keys.scheduled_key(unique), 0, -1) == [later.encode()]
    finally:
        await client.aclose()
