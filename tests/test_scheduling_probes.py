"""Delayed delivery under hostile input: tampered scheduled data, large backlogs of large events, and
partitioned streams seen by the tools.

Every wait is a condition with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
import redis
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys, scheduling
from streamq._wire import Link, publishing
from streamq.cli import main as cli_main
from streamq.events import PAYLOAD_FIELD
from streamq.settings import MAX_HEADERS


class Note(streamq.Event, tag="test.scheduling_probes.note"):
    n: int
    text: str = ""


def _numbers(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[int]:
    return [msgspec.msgpack.decode(fields[PAYLOAD_FIELD])["n"] for _, fields in entries]


async def _move(client: redis.asyncio.Redis, stream: str, limit: int = 1000) -> tuple[int, int]:
    link = Link(client)
    try:
        return await publishing.move_scheduled(link, stream, limit)
    finally:
        await link.close()


# Headers fields a hand edit (or a foreign tool) may leave beside a delayed event's payload: not msgpack,
# msgpack that is not a list, a list with a name and no value, a list holding a non-string, and a list
# longer than Lua's unpack() takes. Each failed the move script, and so every move of the stream.
BAD_HEADERS = {
    "not msgpack": b"\xc1\xc1 garbage",
    "not a list": msgspec.msgpack.encode(42),
    "odd count": msgspec.msgpack.encode(["tenant"]),
    "not strings": msgspec.msgpack.encode(["tenant", ["nested"]]),
    "too many": msgspec.msgpack.encode(["h"] * 20_000),
}


@pytest.mark.parametrize("packed", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
async def test_unreadable_headers_of_one_delayed_event_do_not_stop_the_others(
    redis_url: str, client: redis.asyncio.Redis, unique: str, packed: bytes
) -> None:
    """A delayed event whose headers field cannot be read is moved without them (its payload is what
    matters), and the events due with it still move, theirs intact. Before, the script failed on it at
    every call: nothing of the stream was delivered again, and its workers stopped after 8 failures."""
    async with streamq.Producer(redis_url) as producer:
        spoiled = await producer.publish(unique, Note(1), delay_ms=0, headers={"tenant": "a"})
        await producer.publish(unique, Note(2), delay_ms=0, headers={"tenant": "b"})
    await client.hset(keys.scheduled_events_key(unique), spoiled + publishing.HEADERS_SUFFIX, packed)
    moved, next_ms = await _move(client, unique)
    assert (moved, next_ms) == (2, -1)
    entries = await client.xrange(unique)
    by_number = {n: fields for n, (_, fields) in zip(_numbers(entries), entries, strict=True)}
    assert by_number[1] == {PAYLOAD_FIELD: by_number[1][PAYLOAD_FIELD]}
    assert by_number[2][b"tenant"] == b"b"
    assert await client.hlen(keys.scheduled_events_key(unique)) == 0


async def test_a_delayed_event_keeps_headers_past_max_headers_as_a_trace_context_adds_them(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The trace context a producer adds comes on top of MAX_HEADERS headers: such an event is moved with
    all its headers, not taken for a tampered one."""
    async with streamq.Producer(redis_url) as producer:
        sid = await producer.publish(unique, Note(1), delay_ms=0)
    fields = [part for n in range(MAX_HEADERS + 8) for part in (f"h{n}", "v")]
    await client.hset(
        keys.scheduled_events_key(unique), sid + publishing.HEADERS_SUFFIX, msgspec.msgpack.encode(fields)
    )
    assert (await _move(client, unique))[0] == 1
    ((_, entry),) = await client.xrange(unique)
    assert len(entry) == 1 + MAX_HEADERS + 8


async def test_a_worker_keeps_delivering_past_an_event_with_unreadable_headers(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The worker's view of the same: it delivers both events and keeps running."""
    handled: list[int] = []
    app = streamq.App(redis_url)

    async def handle(batch: streamq.Batch[Note]) -> None:
        handled.extend(event.n for event in batch.events)

    app.add_consumer(handle, unique, group="g", block_ms=50, scheduled_poll_ms=50, retention=False)
    async with streamq.Producer(redis_url) as producer:
        spoiled = await producer.publish(unique, Note(1), delay_ms=0, headers={"tenant": "a"})
        await producer.publish(unique, Note(2), delay_ms=0)
    await client.hset(keys.scheduled_events_key(unique), spoiled + publishing.HEADERS_SUFFIX, b"\xc1")
    task = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: sorted(handled) == [1, 2] or task.done(), message="both handled")
        assert not task.done(), task.exception()
    finally:
        app.stop()
        await asyncio.wait_for(task, 30)
    assert sorted(handled) == [1, 2]


async def test_one_move_is_bounded_by_bytes_as_well_as_by_count(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """One move call stops once it has moved MOVE_BYTES of payloads, so a backlog of large due events
    (1000 of 1 MiB held the server 1.4 s in one script) is moved in short calls. Each call says the next
    is due now, so the mover goes straight on, and the events keep their order."""
    size = publishing.MOVE_BYTES // 4
    count = 10
    async with streamq.Producer(redis_url, max_event_bytes=2 * size) as producer:
        for n in range(count):  # one call each: their due times follow publish order
            await producer.publish(unique, Note(n, "x" * size), delay_ms=0)
    calls = []
    while await client.zcard(keys.scheduled_key(unique)):
        moved, next_ms = await _move(client, unique)
        calls.append(moved)
        if await client.zcard(keys.scheduled_key(unique)):
            assert next_ms == 0
    assert sum(calls) == count
    assert all(1 <= moved <= 4 for moved in calls), calls
    assert _numbers(await client.xrange(unique)) == list(range(count))


async def test_a_move_takes_at_least_one_event_larger_than_its_byte_budget(
    redis_url: str, client: redis.asyncio.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event larger than the budget still moves, one per call: a budget never leaves one stuck."""
    monkeypatch.setattr(publishing, "MOVE_BYTES", 1)
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Note(n) for n in range(3)], delay_ms=0)
    assert [(await _move(client, unique))[0] for _ in range(4)] == [1, 1, 1, 0]
    assert await client.xlen(unique) == 3


def test_a_partitioned_streams_delayed_events_are_counted_across_its_partitions(
    redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A partitioned stream's delayed events wait in its partitions: the summary and `scheduled list`'s
    total add them up (both said 0 while the list showed them), and the soonest due time is theirs."""
    with streamq.SyncProducer(redis_url, partitions={unique: 4}) as producer:
        ids = producer.publish_many(unique, [Note(n) for n in range(6)], delay_ms=3_600_000, key=str)
        first = producer.publish(unique, Note(9), delay_ms=1_800_000, key="9")
        assert producer.cancel(unique, ids[0])
    listed = scheduling.list_scheduled_sync(redis_url, unique)
    assert len(listed) == 6 and listed[0].schedule_id == first
    summary = scheduling.scheduled_summary_sync(redis_url, unique)
    assert summary.scheduled_count == 6
    assert summary.next_due_ms == listed[0].due_ms
    assert summary.totals["scheduled"] == 7 and summary.totals["cancelled"] == 1
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--json", "--limit", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["total"] == 6 and len(shown["scheduled"]) == 2
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--limit", "2"]) == 0
    assert "2 of 6 shown" in capsys.readouterr().err


def test_due_times_past_the_ends_of_the_calendar_do_not_break_listing_or_status(
    redis_url: str, sync_client: redis.Redis, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`at=` takes any aware datetime, and one near datetime's ends in another timezone is a due time in
    year 0 or 10000 in UTC; a score written by hand may even be infinite. Each used to make every listing
    of the stream (`scheduled()`, `streamq scheduled list`, table or JSON) fail with a traceback, and the
    summary too for an infinite one. They are shown at the nearest end of the calendar; one due at 0 ms
    (1970-01-01) is shown as such, not as "-"."""
    with streamq.SyncProducer(redis_url) as producer:
        producer.publish(unique, Note(1), at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
        producer.publish(unique, Note(2), at=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))
        producer.publish(unique, Note(3), at=datetime(1970, 1, 1, tzinfo=UTC))  # due at 0 ms
    sync_client.zadd(keys.scheduled_key(unique), {"sched-by-hand-low": float("-inf")})
    sync_client.zadd(keys.scheduled_key(unique), {"sched-by-hand-high": float("inf")})
    sync_client.xadd(unique, {"d": b"\x80"})  # so that status reads the stream's delayed events
    listed = scheduling.list_scheduled_sync(redis_url, unique)
    assert len(listed) == 5
    dues = [event.due for event in listed]
    assert dues == sorted(dues)
    assert dues[0] == datetime.min.replace(tzinfo=UTC) and dues[-1].year == 9999
    summary = scheduling.scheduled_summary_sync(redis_url, unique)
    assert summary.scheduled_count == 5 and summary.next_due_ms == listed[0].due_ms
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url]) == 0
    table = capsys.readouterr().out
    assert "0001-01-01T00:00:00+00:00" in table and "1970-01-01T00:00:00+00:00" in table
    assert cli_main(["scheduled", "list", unique, "--redis-url", redis_url, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["scheduled"]) == 5
    assert cli_main(["status", unique, "--redis-url", redis_url]) == 0
    capsys.readouterr()


async def test_maxlen_caps_a_delayed_event_when_it_enters_the_stream(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """`maxlen=N` is a hard cap on each append: a delayed event's append is its move, which applied no cap,
    so a producer capped at 5 grew its stream without bound by publishing with a delay. The cap given at
    publish now applies when the event enters the stream, and what it drops is counted; an event cancelled
    leaves nothing behind, and one published without maxlen is not capped."""
    async with streamq.Producer(redis_url, maxlen=5, approximate_trim=False) as producer:
        await producer.publish_many(unique, [Note(n) for n in range(5)])
        await producer.publish_many(unique, [Note(n) for n in range(10, 13)], delay_ms=0)
        cancelled = await producer.publish(unique, Note(99), delay_ms=3_600_000)
        assert await producer.cancel(unique, cancelled)
    assert await _move(client, unique) == (3, -1)
    # Sorted: events due in the same ms are moved in schedule id order, not publish order.
    assert sorted(_numbers(await client.xrange(unique))) == [3, 4, 10, 11, 12]
    assert (await client.hgetall(keys.totals_key(unique)))[b"dropped_by_maxlen"] == b"3"
    assert await client.hlen(keys.scheduled_events_key(unique)) == 0
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Note(n) for n in range(20, 23)], delay_ms=0)
    assert await _move(client, unique) == (3, -1)
    assert await client.xlen(unique) == 8


@pytest.mark.parametrize("maxlen", [10**17, 2**63 - 1])
async def test_a_large_maxlen_given_with_a_delay_is_applied_as_given(
    redis_url: str, client: redis.asyncio.Redis, unique: str, maxlen: int
) -> None:
    """The cap kept with a delayed event reaches XADD as the digits given: as a Lua number, a maxlen this
    large was written as a float, which XADD refused at every move of the stream."""
    async with streamq.Producer(redis_url, maxlen=maxlen) as producer:
        await producer.publish(unique, Note(1), delay_ms=0)
    assert await _move(client, unique) == (1, -1)
    assert await client.xlen(unique) == 1
