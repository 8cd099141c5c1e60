"""Pause and resume (streamq.control, `streamq pause` / `streamq resume`): a paused group reads nothing new,
still settles what it holds, keeps its retries waiting, and picks everything up once resumed; a stream-wide
pause holds every group, a group's pause only that group; a pause outlives the workers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq.cli import main
from streamq.control import EVERY_GROUP, PauseInfo, pause, pause_sync, pauses, pauses_sync, resume
from streamq.errors import ConfigurationError


class Click(streamq.Event, tag="test.pause.click"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_poll_ms": 50}
QUIET_TICKS = 3  # paused ticks of the consumer to watch for something it must not do


async def _publish(url: str, stream: str, numbers: range | list[int]) -> None:
    async with streamq.Producer(url) as producer:
        await producer.publish_many(stream, [Click(n) for n in numbers])


async def _group(client: redis.asyncio.Redis, stream: str, group: str) -> dict[str, int]:
    """The group's pending count and lag (entries not yet delivered to it)."""
    for info in await client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return {"pending": int(info["pending"]), "lag": int(info["lag"])}
    raise AssertionError(f"no group {group!r}")


@asynccontextmanager
async def _running(app: streamq.App) -> AsyncIterator[asyncio.Task[None]]:
    earlier = app.consumers  # those of an earlier run, if any: each run makes its own
    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(
            lambda: app.consumers is not earlier or task.done(), message="the app's consumers"
        )
        yield task
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)


async def _paused_ticks(consumer: Any, ticks: int = QUIET_TICKS) -> None:
    """Wait until the consumer has been through `ticks` more turns of its loop while paused."""
    start = consumer._idle_reads
    await async_wait_until(lambda: consumer._idle_reads >= start + ticks, message=f"{ticks} paused ticks")


async def test_a_paused_group_settles_its_batch_in_flight_and_reads_nothing_new_until_resumed(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A batch being handled when the pause comes is still acknowledged; entries published after the
    pause stay undelivered (the group's lag) while the worker runs on; resume hands them to the handler.
    (The handler holds the worker's only batch while the pause arrives, so no read is waiting then: one
    that is may still deliver, within block_ms.)"""
    handled: list[int] = []
    entered, release = asyncio.Event(), asyncio.Event()
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        entered.set()
        if batch.events[0].n == 0:
            await release.wait()
        handled.extend(e.n for e in batch.events)

    async with _running(app):
        (consumer,) = app.consumers
        await _publish(redis_url, unique, [0])
        await asyncio.wait_for(entered.wait(), 10)
        await pause(redis_url, unique, "g", reason="maintenance")
        await async_wait_until(lambda: consumer.control.paused, message="the worker to see the pause")
        await _publish(redis_url, unique, range(1, 4))
        release.set()
        await async_wait_until(lambda: handled == [0], message="the batch in flight to be handled")

        async def settled() -> bool:
            return (await _group(client, unique, "g"))["pending"] == 0

        await async_wait_until(settled, message="the batch in flight to be acknowledged")
        await _paused_ticks(consumer)
        assert handled == [0]
        assert await _group(client, unique, "g") == {"pending": 0, "lag": 3}
        assert consumer.control.pause is not None and consumer.control.pause.reason == "maintenance"

        assert await resume(redis_url, unique, "g") is True
        await async_wait_until(lambda: handled == [0, 1, 2, 3], message="everything after the resume")
        assert not consumer.control.paused


async def test_retries_wait_while_paused(redis_url: str, client: redis.asyncio.Redis, unique: str) -> None:
    """A retry that comes due while the group is paused stays in the group's delayed set (it is not moved
    to the retry stream), and is handled once resumed."""
    attempts: list[int] = []
    delay_ms = 200
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        for message in batch:
            attempts.append(message.attempt)
        if len(attempts) == 1:
            await pause(redis_url, unique, "g", reason="paused by its handler")
            raise streamq.Retry(delay_ms=delay_ms)

    delayed = keys.delayed_key(unique, "g")
    async with _running(app):
        (consumer,) = app.consumers
        await _publish(redis_url, unique, [1])
        await async_wait_until(lambda: consumer.control.paused, message="the worker to see the pause")
        due = time.monotonic() + delay_ms / 1000
        await async_wait_until(lambda: client.zcard(delayed), message="the retry in the delayed set")
        # The mover has looked again after the retry came due: it began a sleep after that moment.
        mover = consumer.mover
        await async_wait_until(
            lambda: mover.wake_at - mover.poll_s > due, message="the retry mover to look after the due time"
        )
        assert await client.zcard(delayed) == 1
        assert attempts == [1]

        await resume(redis_url, unique, "g")
        await async_wait_until(lambda: attempts == [1, 2], message="the retry after the resume")

        async def settled() -> bool:
            return (await _group(client, unique, "g"))["pending"] == 0 and not await client.zcard(delayed)

        await async_wait_until(settled, message="the retry to be acknowledged")


async def test_a_stream_wide_pause_holds_every_group_and_a_group_pause_only_its_group(
    redis_url: str, unique: str
) -> None:
    """`*` pauses every group of the stream; a group's own pause leaves the other groups going; resuming
    the stream leaves a group paused by name paused."""
    handled: dict[str, list[int]] = {"a": [], "b": []}
    app = streamq.App(redis_url)

    @app.consumer(unique, group="a", **FAST)
    async def handle_a(batch: streamq.Batch[Click]) -> None:
        handled["a"].extend(e.n for e in batch.events)

    @app.consumer(unique, group="b", **FAST)
    async def handle_b(batch: streamq.Batch[Click]) -> None:
        handled["b"].extend(e.n for e in batch.events)

    async with _running(app):
        by_group = {c.group: c for c in app.consumers}
        await async_wait_until(
            lambda: all(c.control.known for c in by_group.values()), message="both workers' first reading"
        )
        await pause(redis_url, unique, "a")
        await async_wait_until(lambda: by_group["a"].control.paused, message="group a to see its pause")
        assert not by_group["b"].control.paused
        # A read that was already waiting when the pause was seen may still deliver (within block_ms);
        # one paused tick later none is.
        await _paused_ticks(by_group["a"], 1)
        await _publish(redis_url, unique, [1])
        await async_wait_until(lambda: handled["b"] == [1], message="group b to go on")
        await _paused_ticks(by_group["a"])
        assert handled["a"] == []

        await pause(redis_url, unique)  # every group
        # Each worker polls on its own: wait for both to have seen the stream's pause.
        await async_wait_until(
            lambda: by_group["b"].control.stream_paused and by_group["a"].control.stream_paused,
            message="both groups to see the stream's pause",
        )
        assert by_group["b"].control.paused
        await _paused_ticks(by_group["b"], 1)
        await _publish(redis_url, unique, [2])
        await _paused_ticks(by_group["b"])
        assert handled == {"a": [], "b": [1]}

        await resume(redis_url, unique)  # the stream; group a stays paused by name
        await async_wait_until(lambda: handled["b"] == [1, 2], message="group b after the stream's resume")
        assert by_group["a"].control.paused and not by_group["a"].control.stream_paused
        await _paused_ticks(by_group["a"])
        assert handled["a"] == []

        await resume(redis_url, unique, "a")
        await async_wait_until(lambda: handled["a"] == [1, 2], message="group a after its own resume")


async def test_a_pause_outlives_the_workers(redis_url: str, client: redis.asyncio.Redis, unique: str) -> None:
    """A worker started while its group is paused reads nothing: a burst run ends with every event still
    undelivered, and a long-running worker stays quiet until the resume."""
    await _publish(redis_url, unique, range(3))
    await client.xgroup_create(unique, "g", id="0")
    await pause(redis_url, unique, "g", reason="before any worker")
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        handled.extend(e.n for e in batch.events)

    await asyncio.wait_for(app.run_until_idle(), 20)
    assert handled == []
    assert await _group(client, unique, "g") == {"pending": 0, "lag": 3}

    async with _running(app):
        (consumer,) = app.consumers
        await async_wait_until(lambda: consumer.control.known, message="the first reading of the pause")
        assert consumer.control.paused
        await _paused_ticks(consumer)
        assert handled == []
        await resume(redis_url, unique, "g")
        await async_wait_until(lambda: handled == [0, 1, 2], message="the events after the resume")


async def test_pause_records_who_when_and_why(redis_url: str, unique: str) -> None:
    """pause() stores who paused (host, pid, user), when (server time) and why; pauses() lists each scope;
    resume() says whether there was a pause; names are validated; the blocking variants agree."""
    before_ms = int(time.time() * 1000) - 60_000  # the server's clock may differ a little from ours
    info = await pause(redis_url, unique, "billing", reason="ledger migration")
    assert isinstance(info, PauseInfo) and info.reason == "ledger migration" and info.pid > 0 and info.host
    assert info.since_ms > before_ms
    pause_sync(redis_url, unique)
    found = await pauses(redis_url, unique)
    assert set(found) == {"billing", EVERY_GROUP} and found["billing"] == info
    assert pauses_sync(redis_url, unique) == found
    assert await resume(redis_url, unique, "billing") is True
    assert await resume(redis_url, unique, "billing") is False
    assert set(await pauses(redis_url, unique)) == {EVERY_GROUP}
    with pytest.raises(ConfigurationError):
        await pause(redis_url, unique, "a:b")
    with pytest.raises(ConfigurationError):
        await pause(redis_url, "streamq:x")


def test_cli_pause_and_resume(redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamq pause` / `streamq resume` with --json: what was paused, and what stays paused after a
    resume; their effect is what pauses() reads (and what workers poll)."""
    base = ["--redis-url", redis_url, "--log-level", "error"]
    assert main(["pause", unique, "--group", "g", "--reason", "deploy", "--json", *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stream"] == unique and shown["scope"] == "g" and shown["pause"]["reason"] == "deploy"
    assert main(["pause", unique, "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)["scope"] == EVERY_GROUP
    assert set(pauses_sync(redis_url, unique)) == {"g", EVERY_GROUP}

    assert main(["resume", unique, "--json", *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["resumed"] is True and set(shown["still_paused"]) == {"g"}
    assert shown["still_paused"]["g"]["reason"] == "deploy"
    assert main(["resume", unique, "--group", "g", *base]) == 0
    assert "resumed group g" in capsys.readouterr().out
    assert main(["resume", unique, "--group", "g", "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "stream": unique, "scope": "g", "resumed": False, "still_paused": {}
    }  # fmt: skip
    assert pauses_sync(redis_url, unique) == {}
    assert main(["status", unique, "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)[0]["stream"] == unique


async def test_a_stream_wide_pause_holds_delayed_events_back_and_a_group_pause_does_not(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """While the whole stream is paused a due delayed event stays in the scheduled set (no group could
    take it anyway); paused for one group only, the worker still moves it in, for the other groups."""
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", scheduled_poll_ms=20, **FAST)
    async def handle(batch: streamq.Batch[Click]) -> None:
        pass

    await pause(client, unique)
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Click(1), delay_ms=0)
    async with _running(app):
        (consumer,) = app.consumers
        await async_wait_until(lambda: consumer.control.paused, message="the pause seen")
        await _paused_ticks(consumer)  # block_ms each, several scheduled_poll_ms
        assert await client.zcard(keys.scheduled_key(unique)) == 1
        assert await client.xlen(unique) == 0
        await pause(client, unique, "g")
        await resume(client, unique)
        await async_wait_until(lambda: not consumer.control.stream_paused, message="the stream resumed")

        async def moved() -> bool:
            return bool(await client.xlen(unique))

        await async_wait_until(moved, message="the delayed event moved in while only g is paused")
        assert await client.zcard(keys.scheduled_key(unique)) == 0
