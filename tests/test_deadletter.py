"""The dead-letter stream: poison payloads reach it intact; the operator lists, shows, replays, purges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio

import streamq
from streamq import keys
from streamq.errors import DeadLetterNotFound


class Invoice(streamq.Event, tag="test.deadletter.invoice"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 0}
GARBAGE = b"\xc1\x00\xff\xfe not msgpack \x80"


@pytest.fixture(
    params=[{}, {"decode_responses": True}, {"decode_responses": True, "encoding_errors": "replace"}],
    ids=["bytes-client", "str-client", "str-replace-client"],
)
async def operator(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """The client handed to DeadLetters: replies as bytes, or decoded to str (decode_responses=True, as many
    applications build theirs), strictly or with bad bytes replaced. DeadLetters must read the same letters,
    payload byte for byte, through each."""
    connection = redis.asyncio.Redis.from_url(redis_url, **request.param)
    try:
        yield connection
    finally:
        await connection.aclose()


async def _publish(url: str, stream: str, numbers: list[int]) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Invoice(n) for n in numbers])


async def test_poison_entries_are_dead_lettered_intact_while_good_events_flow(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """Entries written around streamq (raw XADD) that cannot be decoded go to the dead-letter stream at once,
    unretried: garbage in the payload field byte for byte, an entry without the payload field with all its
    fields, an unknown tag likewise. The good events around them are handled."""
    await _publish(redis_url, unique, [1])
    garbage_id = (await client.xadd(unique, {"d": GARBAGE})).decode()
    no_payload_id = (await client.xadd(unique, {"foo": b"bar", "bin": b"\x00\xff"})).decode()
    unknown = msgspec.msgpack.encode({"type": "test.deadletter.nobody", "n": 1})
    unknown_id = (await client.xadd(unique, {"d": unknown})).decode()
    await _publish(redis_url, unique, [2])
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", **FAST)
    async def handle(batch: streamq.Batch[Invoice]) -> None:
        handled.extend(e.n for e in batch.events)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert handled == [1, 2]
    letters = {d.id: d for d in await streamq.DeadLetters(operator).list(unique)}
    assert set(letters) == {garbage_id, no_payload_id, unknown_id}
    assert all(d.reason == "undecodable" and d.attempts == 1 and d.group == "g" for d in letters.values())
    assert letters[garbage_id].payload == GARBAGE
    assert letters[unknown_id].payload == unknown
    assert letters[no_payload_id].payload is None
    assert msgspec.msgpack.decode(letters[no_payload_id].raw_fields or b"") == [
        b"foo",
        b"bar",
        b"bin",
        b"\x00\xff",
    ]
    stats = await client.hgetall(keys.stats_key(unique, "g"))
    assert (stats[b"acked"], stats[b"dead"], stats.get(b"retried")) == (b"2", b"3", None)
    assert int((await client.xpending(unique, "g"))["pending"]) == 0


async def _fill_dlq(url: str, stream: str, rejected: set[int], count: int) -> tuple[list[str], list[int]]:
    """Publish `count` invoices; group 'billing' rejects those in `rejected`, group 'audit' takes all.
    Returns the ids and the numbers 'audit' handled."""
    ids = await _publish(url, stream, list(range(count)))
    audited: list[int] = []
    app = streamq.App(url)

    @app.consumer(stream, group="billing", **FAST)
    async def bill(event: Invoice) -> None:
        if event.n in rejected:
            raise streamq.Reject(f"cannot bill {event.n}")

    @app.consumer(stream, group="audit", **FAST)
    async def audit(event: Invoice) -> None:
        audited.append(event.n)

    await asyncio.wait_for(app.run_until_idle(), 30)
    return ids, audited


async def test_list_show_count_and_paging(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """list() returns dead letters oldest first, filtered by group and paged by start/count; show()
    returns one by its dead-letter id, and a missing one raises DeadLetterNotFound."""
    ids, _ = await _fill_dlq(redis_url, unique, {1, 3, 4}, 6)
    dead = streamq.DeadLetters(operator)
    letters = await dead.list(unique)
    assert [d.id for d in letters] == [ids[1], ids[3], ids[4]]
    assert [d.detail for d in letters] == ["cannot bill 1", "cannot bill 3", "cannot bill 4"]
    assert await dead.count(unique) == 3
    assert await dead.list(unique, group="audit") == []
    assert [d.id for d in await dead.list(unique, group="billing", count=2)] == [ids[1], ids[3]]
    assert [d.id for d in await dead.list(unique, start=letters[1].dlq_id)] == [ids[3], ids[4]]

    shown = await dead.show(unique, letters[0].dlq_id)
    assert shown == letters[0]
    assert shown.to_dict()["event"] == {"type": "test.deadletter.invoice", "n": 1}
    assert bytes.fromhex(shown.to_dict()["payload"]) == shown.payload
    with pytest.raises(DeadLetterNotFound):
        await dead.show(unique, "1-1")


async def test_replay_sends_an_event_back_to_its_own_group_only(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """A replayed dead letter is handled again by the group that dead-lettered it, not by the stream's
    other groups, under its original id with its attempts reset, and it leaves the dead-letter stream."""
    ids, audited = await _fill_dlq(redis_url, unique, {2}, 4)
    assert audited == [0, 1, 2, 3]
    dead = streamq.DeadLetters(operator)
    (letter,) = await dead.list(unique)
    assert await dead.replay(unique, [letter.dlq_id]) == 1
    assert await dead.count(unique) == 0

    billed: list[tuple[int, int, str]] = []
    audited_again: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="billing", **FAST)
    async def bill(message: streamq.Message[Invoice]) -> None:
        billed.append((message.event.n, message.attempt, message.id))

    @app.consumer(unique, group="audit", **FAST)
    async def audit(event: Invoice) -> None:
        audited_again.append(event.n)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert billed == [(2, 1, ids[2])]
    assert audited_again == []
    with pytest.raises(DeadLetterNotFound):
        await dead.replay(unique, [letter.dlq_id])  # already replayed


async def test_replay_all_of_a_group_skips_entries_without_payload(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """replay() without ids moves every dead letter of the group that has a payload; an entry kept only
    as raw fields cannot be replayed and stays."""
    await _fill_dlq(redis_url, unique, {0, 1}, 2)
    await client.xadd(unique, {"no": b"payload"})
    await _fill_dlq(redis_url, unique, set(), 0)  # the raw entry is dead-lettered by both groups
    dead = streamq.DeadLetters(operator)
    assert await dead.count(unique) == 4
    assert await dead.replay(unique, group="billing") == 2
    remaining = await dead.list(unique)
    assert sorted(d.group for d in remaining) == ["audit", "billing"]
    assert all(d.payload is None for d in remaining)
    assert await client.xlen(keys.retry_key(unique, "billing")) == 2
    assert await client.xlen(keys.retry_key(unique, "audit")) == 0


async def test_purge_some_or_all(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """purge(ids) deletes those dead letters only; purge() deletes the stream's whole dead-letter stream."""
    await _fill_dlq(redis_url, unique, {0, 1, 2}, 3)
    dead = streamq.DeadLetters(operator)
    first, *rest = await dead.list(unique)
    assert await dead.purge(unique, [first.dlq_id]) == 1
    assert [d.dlq_id for d in await dead.list(unique)] == [d.dlq_id for d in rest]
    assert await dead.purge(unique, []) == 0
    assert await dead.purge(unique) == 2
    assert await dead.count(unique) == 0
    assert await client.xlen(unique) == 3  # the events themselves are untouched
