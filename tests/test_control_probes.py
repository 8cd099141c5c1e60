"""Pause and rate-limit edge cases found by probing: a pause seen in the middle of a read-ahead flow, a
rate limiter's schedule left by an earlier rate, and a pause hash of the wrong type."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._wire import control as wire
from streamq.cli import main
from streamq.control import pause, pause_sync, pauses_sync, resume, resume_sync
from streamq.errors import ConfigurationError
from streamq.inspect import status_sync


class Ping(streamq.Event, tag="test.control_probes.ping"):
    n: int


@asynccontextmanager
async def _running(app: streamq.App) -> AsyncIterator[asyncio.Task[None]]:
    earlier = app.consumers
    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(
            lambda: app.consumers is not earlier or task.done(), message="the app's consumers"
        )
        yield task
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)


async def _lag(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    for info in await client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info["lag"])
    raise AssertionError(f"no group {group!r}")


async def test_a_pause_stops_a_worker_that_is_reading_ahead_through_a_backlog(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A worker going through a backlog with quick handlers reads each next batch ahead, in the same write
    as the settlement of the one before, without going back to its loop: a pause must end that flow too,
    not only the loop's next read. Once the worker sees the pause it handles at most the batch in hand
    and the one read ahead; the rest of the backlog stays undelivered while it idles paused."""
    total, batch_size = 5_000, 5
    handled: list[int] = []
    app = streamq.App(redis_url)
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(n) for n in range(total)])

    @app.consumer(unique, group="g", batch_size=batch_size, lease_ms=5_000, block_ms=100)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        handled.extend(e.n for e in batch.events)
        await asyncio.sleep(0.001)  # quick enough to read ahead, slow enough not to drain at once

    async with _running(app):
        (consumer,) = app.consumers
        await async_wait_until(lambda: len(handled) >= 10 * batch_size, message="the flow to be under way")
        await pause(redis_url, unique, "g")
        await async_wait_until(lambda: consumer.control.paused, message="the worker to see the pause")
        seen_at = len(handled)
        start = consumer._idle_reads
        await async_wait_until(lambda: consumer._idle_reads >= start + 3, 30, message="paused ticks")
        assert len(handled) <= seen_at + 2 * batch_size
        assert await _lag(client, unique, "g") > 0


async def test_a_raised_rate_is_not_held_back_by_the_schedule_of_the_old_one(
    client: redis.asyncio.Redis, unique: str
) -> None:
    """One event at 1 event in 1000 s puts the group's schedule 1000 s ahead. Once the rate is raised to
    1000/s (a config change, workers restarted), the next reservation waits what is left of the old
    reservation at the new rate (about 1 ms), not the 1000 s; the one after that is spaced at 1000/s.
    A lowered rate keeps the schedule: what was reserved at 1000/s comes first, then 1 s per event."""
    key = keys.rate_key(unique, "up")
    assert await wire.reserve(client, key, 1, 0.001) == 0.0
    assert await wire.reserve(client, key, 1, 1000.0) <= 0.001
    assert await wire.reserve(client, key, 1, 1000.0) <= 0.002
    assert await client.pttl(key) <= 1_000 + wire.EXPIRE_MARGIN_MS  # the key's life shrank as well

    key = keys.rate_key(unique, "down")
    assert await wire.reserve(client, key, 1000, 1000.0) == 0.0
    reserved = await _tat_ms(client, key)
    # The 1000 events reserved at 1000/s keep their 1 s, no more, no less; then 1 s per event.
    assert await wire.reserve(client, key, 1, 1.0) <= 1.0
    assert await _tat_ms(client, key) == (reserved[0] + 1_000, reserved[1])
    assert await wire.reserve(client, key, 1, 1.0) <= 2.0
    assert await _tat_ms(client, key) == (reserved[0] + 2_000, reserved[1])


async def _tat_ms(client: redis.asyncio.Redis, key: str) -> tuple[int, int]:
    """The TAT a rate key holds: (whole ms, ns beyond them)."""
    ms, ns = (await client.get(key)).decode().split("@")[0].split(".")
    return int(ms), int(ns)


async def test_a_stream_paused_before_it_was_partitioned_holds_its_partitions_workers(
    redis_url: str, unique: str
) -> None:
    """`streamq pause orders` before any partitioned worker has declared the stream's partitions writes the
    stream's own pause hash only (there are no partitions to write to yet). The partition workers started
    afterwards must honour it as well: a worker started while paused reads nothing until resumed, and
    `streamq status` (which reads the stream's hash) says paused."""
    handled: list[int] = []
    await pause(redis_url, unique, reason="before the first deploy")
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", partitions=2, partition_lease_ms=1_000, block_ms=50)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        handled.extend(e.n for e in batch.events)

    def lanes() -> list[Any]:
        return [lane for c in app.consumers for p in c._running.values() for lane in p.lanes]  # type: ignore[attr-defined]

    async with _running(app):
        await async_wait_until(lambda: len(lanes()) == 2, message="both partitions taken")
        await async_wait_until(
            lambda: all(lane.control.known for lane in lanes()), message="the pause state read"
        )
        assert all(lane.control.paused and lane.control.stream_paused for lane in lanes())
        async with streamq.Producer(redis_url, partitions={unique: 2}) as producer:
            await producer.publish_many(unique, [Ping(n) for n in range(10)], key=[str(n) for n in range(10)])
        ticks = [lane._idle_reads for lane in lanes()]
        await async_wait_until(
            lambda: all(lane._idle_reads >= t + 3 for lane, t in zip(lanes(), ticks, strict=True)),
            message="paused ticks on every partition",
        )
        assert handled == []
        assert await resume(redis_url, unique)
        await async_wait_until(lambda: sorted(handled) == list(range(10)), message="handled once resumed")


def test_a_pause_record_is_printed_with_its_control_characters_escaped(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reason is one line of text: `streamq pause --reason` refuses control characters (a newline breaks
    the one-line notes of `streamq status` and the workers' log lines; an escape sequence would be run by
    the terminal of whoever looks). A record written by hand (any bytes, in the field name too) is shown
    with them escaped by `streamq status` and `streamq resume`, never crashing them."""
    base = ["--redis-url", redis_url, "--log-level", "error"]
    for reason in ("two\nlines", "\x1b[2Jcleared", "bell\x07", "sep\u2028arator"):
        with pytest.raises(ConfigurationError, match="one line of text"):
            pause_sync(redis_url, unique, "g", reason=reason)
    assert pauses_sync(redis_url, unique) == {}

    sync_client.xadd(unique, {"d": b"x"})
    sync_client.xgroup_create(unique, "g", id="0")
    record = json.dumps({"since_ms": 1, "reason": "a\x1b]0;owned\x07b\nc", "host": "h\x1b[2J", "user": "u"})
    sync_client.hset(keys.paused_key(unique), mapping={"g": record, b"bad\xff\x1b[2J": b"\x1b[31mred"})
    shown = pauses_sync(redis_url, unique)
    assert shown["g"].reason == "a\\x1b]0;owned\\x07b\\nc" and shown["g"].host == "h\\x1b[2J"
    for command in (["status", unique], ["resume", unique, "--group", "nope"]):
        assert main([*command, *base]) == 0
        out = capsys.readouterr().out
        assert "\\x1b]0;owned" in out and "\\x1b[31mred" in out
        assert not any(c in out for c in "\x1b\x07\u2028"), out


async def test_entries_reclaimed_under_a_rate_limit_come_one_read_at_a_time(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A read under rate_limit=R takes at most R events (the burst the README allows): so does a claim of a
    dead worker's entries. 15 entries left pending by a dead consumer, reclaimed under rate_limit=5 and
    batch_size=100, reach the handler 5 at a time at most, not 15 at once."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(n) for n in range(15)])
    await client.xgroup_create(unique, "g", id="0")
    await client.xreadgroup("g", "dead-worker", {unique: ">"}, count=100)  # read, never settled
    sizes: list[int] = []
    app = streamq.App(redis_url, freeze_gc=False)

    @app.consumer(unique, group="g", batch_size=100, rate_limit=5, lease_ms=200, block_ms=50)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        sizes.append(len(batch.events))

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert sum(sizes) == 15
    assert max(sizes) <= 5, sizes


async def test_a_read_of_new_entries_and_due_retries_together_stays_within_the_rate(
    redis_url: str, unique: str
) -> None:
    """A worker reads the stream and its group's retry stream in one XREADGROUP, whose COUNT applies to
    each: under rate_limit=R a read of new entries while retries are due could take 2R events and hand
    them to the handler at once. Every handler call takes at most R events."""
    rate, total = 10, 30
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(n) for n in range(total)])
    sizes: list[int] = []
    handled: set[int] = set()
    app = streamq.App(redis_url, freeze_gc=False)

    @app.consumer(unique, group="g", batch_size=100, rate_limit=rate, lease_ms=5_000, block_ms=50,
                  retry_poll_ms=10)  # fmt: skip
    async def handle(batch: streamq.Batch[Ping]) -> None:
        sizes.append(len(batch))
        for message in batch:
            if message.event.n < rate and message.attempt == 1:
                batch.retry(message, delay_ms=0)  # due at once: in the retry stream by the next read
            else:
                handled.add(message.event.n)

    await asyncio.wait_for(app.run_until_idle(), 60)
    assert handled == set(range(total))
    assert max(sizes) <= rate, sizes


def test_cli_pause_notes_a_stream_or_group_that_does_not_exist(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamq pause orders --group bilings` (a typo) is kept like any pause (one set ahead of a deploy
    must be), but says on stderr that there is no such group, so the operator does not walk away thinking
    billing is paused; the same for a stream that does not exist. --json output stays one document."""
    base = ["--redis-url", redis_url, "--log-level", "error"]
    assert main(["pause", unique, "--json", *base]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["scope"] == "*" and f"stream {unique} does not exist" in err
    sync_client.xadd(unique, {"d": b"x"})
    sync_client.xgroup_create(unique, "billing", id="0")
    assert main(["pause", unique, "--group", "bilings", *base]) == 0
    assert "has no group bilings" in capsys.readouterr().err
    for command in (["pause", unique, "--group", "billing"], ["pause", unique]):
        assert main([*command, *base]) == 0
        assert capsys.readouterr().err == ""
    assert set(pauses_sync(redis_url, unique)) == {"*", "bilings", "billing"}


def test_a_key_of_another_type_in_place_of_the_pause_hash_is_named(
    redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A string left where the stream's pause hash goes (by hand, by another program): pause, resume and
    pauses say which key is in the way, as the workers do (they stop with the same ConfigurationError), not
    a bare WRONGTYPE the operator cannot act on."""
    name = keys.paused_key(unique)
    sync_client.set(name, "not a hash")
    for call in (
        lambda: pause_sync(redis_url, unique, "g"),
        lambda: resume_sync(redis_url, unique, "g"),
        lambda: pauses_sync(redis_url, unique),
    ):
        with pytest.raises(ConfigurationError, match=f"key '{re.escape(name)}' exists and is not"):
            call()


def test_a_pause_record_with_a_time_out_of_range_is_shown_not_a_crash(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record written by hand whose time no datetime can show (year 3 million, or before 1970) is read as
    an unreadable record (its text as the reason): `streamq status` and `streamq resume` print it instead
    of dying with ValueError."""
    base = ["--redis-url", redis_url, "--log-level", "error"]
    sync_client.xadd(unique, {"d": b"x"})
    sync_client.hset(
        keys.paused_key(unique), mapping={"g": '{"since_ms": 99999999999999999}', "h": '{"since_ms": -1}'}
    )
    shown = pauses_sync(redis_url, unique)
    assert shown["g"].since_ms == 0 and "99999999999999999" in shown["g"].reason
    assert shown["h"].since_ms == 0
    for command in (["status", unique], ["resume", unique]):
        assert main([*command, *base]) == 0
        assert "99999999999999999" in capsys.readouterr().out


async def test_the_lowest_rates_are_capped_to_one_event_a_year_not_an_overflow(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """rate_limit=1e-300 is a number above 0, so it is taken; one event then costs more nanoseconds than a
    float holds (inf), which must be capped to a year like any rate under one event a year, not raise
    OverflowError in the worker: the first event goes through, and the next one would wait a year."""
    handled: list[int] = []
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(0)])
    app = streamq.App(redis_url, freeze_gc=False)

    @app.consumer(unique, group="g", rate_limit=1e-300, lease_ms=2_000, block_ms=50)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        handled.extend(e.n for e in batch.events)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert handled == [0]
    assert await wire.reserve(client, keys.rate_key(unique, "g"), 1, 5e-324) > 300 * 86_400


def test_status_shows_a_key_in_the_way_of_the_pause_hash_and_the_other_streams_too(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamq status` over many streams must not fail as a whole because one has a string where its
    pause hash goes: that stream is shown paused (its workers refuse to run while the key is there) with
    the key named, and the others as usual."""
    bad, good = f"{unique}-bad", f"{unique}-good"
    for stream in (bad, good):
        sync_client.xadd(stream, {"d": b"x"})
    sync_client.set(keys.paused_key(bad), "not a hash")
    shown = {st.stream: st for st in status_sync(redis_url, [bad, good])}
    assert shown[good].paused == {} and shown[good].length == 1
    assert set(shown[bad].paused) == {"*"}
    assert keys.paused_key(bad) in shown[bad].paused["*"].reason
    assert main(["status", bad, good, "--redis-url", redis_url, "--log-level", "error"]) == 0
    out = capsys.readouterr().out
    assert keys.paused_key(bad) in out and good in out
