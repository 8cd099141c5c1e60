"""Read-only status of streams and groups (streamq.inspect), from asyncio and from blocking code alike."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

import streamq
from streamq import inspect, keys
from streamq.errors import ConfigurationError


class Ping(streamq.Event, tag="test.inspect.ping"):
    n: int


async def _run_group(url: str, stream: str, group: str, numbers: list[int]) -> None:
    """Publish pings; `group` acknowledges the even ones and dead-letters the odd ones."""
    async with streamq.Producer(url) as producer:
        await producer.publish_many(stream, [Ping(n) for n in numbers])
    app = streamq.App(url)

    @app.consumer(stream, group=group, lease_ms=1_000, block_ms=100)
    async def handle(event: Ping) -> None:
        if event.n % 2:
            raise streamq.Reject(f"odd {event.n}")

    await asyncio.wait_for(app.run_until_idle(), 30)


async def test_every_counter_is_there_even_at_zero(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A group's stats hold every counter the worker keeps, deferred and deleted_pending included, as 0
    until it first counts, so JSON readers need not guess whether a missing key means 0."""
    await _run_group(redis_url, unique, "g", [0, 1, 2])
    (state,) = await inspect.status(client, [unique])
    (group,) = state.groups
    assert set(inspect.STAT_COUNTERS) == {
        "acked", "retried", "deferred", "dead", "reclaimed", "lease_lost", "deleted_pending",
    }  # fmt: skip
    assert group.stats == {**dict.fromkeys(inspect.STAT_COUNTERS, 0), "acked": 2, "dead": 1}
    await client.hincrby(keys.stats_key(unique, "g"), "something_new", 4)  # a counter of a later version
    assert (await inspect.stream_status(client, unique)).groups[0].stats["something_new"] == 4


async def test_a_key_of_another_type_is_told_apart_from_a_missing_stream(
    client: redis.asyncio.Redis, unique: str
) -> None:
    """A key that holds a hash or a string is reported with its type, not as a missing stream; a missing
    key has type "none"; an empty stream exists."""
    await client.hset(f"{unique}-hash", "field", "value")
    await client.set(f"{unique}-string", "value")
    await client.xadd(f"{unique}-empty", {"d": b"x"})
    await client.xtrim(f"{unique}-empty", maxlen=0)
    names = [f"{unique}-hash", f"{unique}-string", f"{unique}-missing", f"{unique}-empty"]
    found = {
        s.stream: (s.key_type, s.exists, s.length, s.groups) for s in await inspect.status(client, names)
    }
    assert found == {
        f"{unique}-hash": ("hash", False, 0, []),
        f"{unique}-string": ("string", False, 0, []),
        f"{unique}-missing": ("none", False, 0, []),
        f"{unique}-empty": ("stream", True, 0, []),
    }


async def test_status_sync_reads_what_status_reads(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """status_sync, stream_status_sync and known_streams_sync, with a blocking client or a URL, give what
    their asyncio counterparts give."""
    await _run_group(redis_url, unique, "g", [0, 1, 2, 3])
    expected = await inspect.status(client, [unique, f"{unique}-missing"])
    assert inspect.status_sync(sync_client, [unique, f"{unique}-missing"]) == expected
    assert inspect.status_sync(redis_url, [unique, f"{unique}-missing"]) == expected
    assert inspect.stream_status_sync(sync_client, unique) == expected[0]
    assert unique in inspect.known_streams_sync(sync_client)
    assert inspect.known_streams_sync(redis_url) == await inspect.known_streams(client)
    assert expected[0].groups[0].stats["dead"] == 2
    assert sync_client.ping()  # the caller's client is left open


async def test_a_client_of_the_wrong_kind_is_refused_with_the_right_function_named(
    client: redis.asyncio.Redis, sync_client: redis.Redis
) -> None:
    """status given a blocking client, or status_sync an asyncio one, raises ConfigurationError naming the
    function to use instead (the old status failed deep inside on an unawaitable reply)."""
    with pytest.raises(ConfigurationError, match=r"streamq\.inspect\.status_sync"):
        await inspect.status(sync_client)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ConfigurationError, match=r"streamq\.inspect\.stream_status_sync"):
        await inspect.stream_status(sync_client, "s")  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ConfigurationError, match=r"streamq\.inspect\.status\b"):
        inspect.status_sync(client)  # type: ignore[arg-type]  # the mistake under test


async def test_status_names_pauses_delayed_events_and_the_group_holding_trimming_back(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A stalled group (it has read nothing) keeps the entries the other group acknowledged: status says
    which group, from which entry, how many; pauses appear with their reason, delayed events with the
    next due time, and the stream's counters; the table shows them all."""
    from streamq import control
    from streamq._cli_output import format_status

    await client.xgroup_create(unique, "stalled", id="0", mkstream=True)
    await _run_group(redis_url, unique, "busy", [0, 2, 4])
    await control.pause(client, unique, "busy", reason="deploy")
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Ping(9), delay_ms=3_600_000, dedup_key="nine")
        await producer.publish(unique, Ping(9), delay_ms=3_600_000, dedup_key="nine")
    (state,) = await inspect.status(client, [unique])
    assert state.scheduled == 1 and state.dedup_keys == 1 and state.next_scheduled_due_ms
    assert state.totals["scheduled"] == 1 and state.totals["deduplicated"] == 1
    held = state.trimming_held_back_by
    assert held is not None and held.group == "stalled" and held.reason == "unread" and held.kept == 3
    assert list(state.paused) == ["busy"] and state.paused["busy"].reason == "deploy"
    table = format_status([state])
    assert "trimming held back by group stalled: 3 entries" in table
    assert "paused for group busy since" in table and ": deploy" in table
    assert "1 delayed event scheduled, the next due" in table and "deduplicated=1" in table
    await control.resume(client, unique, "busy")
    assert (await inspect.stream_status(client, unique)).paused == {}
