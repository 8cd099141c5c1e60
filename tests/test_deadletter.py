"""The dead-letter stream: poison payloads reach it intact; the operator lists, shows, replays, purges,
from asyncio code (DeadLetters) and from blocking code (SyncDeadLetters) alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio

import streamq
from streamq import deadletter, keys
from streamq.deadletter import SyncDeadLetters
from streamq.errors import ConfigurationError, DeadLetterNotFound


class Invoice(streamq.Event, tag="test.deadletter.invoice"):
    n: int


# retention=False: these tests look at the stream's entries after the workers acknowledged them.
FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 0, "retention": False}
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
    assert (await dead.replay(unique, [letter.dlq_id])).count == 1
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
    again = await dead.replay(unique, [letter.dlq_id])  # already replayed
    assert (again.count, again.not_found) == (0, [letter.dlq_id])


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
    result = await dead.replay(unique, group="billing")
    assert result.count == 2
    remaining = await dead.list(unique)
    assert list(result.skipped) == [d.dlq_id for d in remaining if d.group == "billing"]
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
    assert (await dead.purge(unique, [first.dlq_id])).count == 1
    assert [d.dlq_id for d in await dead.list(unique)] == [d.dlq_id for d in rest]
    assert (await dead.purge(unique, [])).count == 0
    assert (await dead.purge(unique)).count == 2
    assert await dead.count(unique) == 0
    assert await client.xlen(unique) == 3  # the events themselves are untouched


async def test_pages_say_how_many_there_are_and_where_the_next_one_starts(
    redis_url: str, unique: str, operator: redis.asyncio.Redis
) -> None:
    """page() gives `limit` dead letters after `after` (exclusive), the size of the whole dead-letter stream,
    and next_after, the `after` of the next page: None exactly when nothing follows. Filtered by group,
    it says how many entries it scanned, and paging by next_after skips none of the group's."""
    await _fill_dlq(redis_url, unique, {0, 1, 2, 3, 4}, 5)
    dead = streamq.DeadLetters(operator)
    everything = await dead.list(unique)
    ids = [d.dlq_id for d in everything]

    first = await dead.page(unique, limit=2)
    assert ([d.dlq_id for d in first.letters], first.total, first.next_after) == (ids[:2], 5, ids[1])
    second = await dead.page(unique, after=first.next_after, limit=2)
    assert ([d.dlq_id for d in second.letters], second.next_after) == (ids[2:4], ids[3])
    last = await dead.page(unique, after=second.next_after, limit=2)
    assert ([d.dlq_id for d in last.letters], last.next_after) == (ids[4:], None)
    exact = await dead.page(unique, limit=5)  # a page that ends with the stream is the last one
    assert (len(exact.letters), exact.next_after) == (5, None)

    # Interleave another group's dead letters: group pages scan past them and still see all of billing's.
    await _interleave_copies(operator, unique, group="audit")
    ids = [d.dlq_id for d in await dead.list(unique, group="billing")]
    assert len(ids) == 5
    billing: list[str] = []
    after = None
    while True:
        page = await dead.page(unique, group="billing", after=after, limit=2)
        assert page.total == 10 and page.scanned >= len(page.letters)
        billing += [d.dlq_id for d in page.letters]
        if page.next_after is None:
            break
        after = page.next_after
    assert billing == ids
    with pytest.raises(ConfigurationError, match="limit"):
        await dead.page(unique, limit=0)
    with pytest.raises(ConfigurationError, match="not a dead-letter id"):
        await dead.page(unique, after="1712345678901")


async def _interleave_copies(client: redis.asyncio.Redis, stream: str, *, group: str) -> None:
    """Rewrite the dead-letter stream with a copy of each entry, naming `group`, after it."""
    key = keys.dlq_key(stream)
    raw = await client.execute_command("XRANGE", key, "-", "+", NEVER_DECODE=[])
    await client.delete(key)
    for _, fields in raw:
        flat = dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields
        await client.xadd(key, flat)
        await client.xadd(key, {**flat, b"group": group.encode()})


async def test_replay_and_purge_do_what_they_can_and_name_the_ids_not_found(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """replay(ids) and purge(ids) act on every id there is, then list in `not_found` the ids the dead-letter
    stream does not hold, each id once; a malformed id fails the call before anything is done."""
    await _fill_dlq(redis_url, unique, {0, 1, 2, 3}, 4)
    dead = streamq.DeadLetters(operator)
    a, b, c, d = [letter.dlq_id for letter in await dead.list(unique)]

    replayed = await dead.replay(unique, ["1-1", a, a, b, "2-2"])
    assert (replayed.count, replayed.not_found, replayed.skipped) == (2, ["1-1", "2-2"], {})
    assert await client.xlen(keys.retry_key(unique, "billing")) == 2

    purged = await dead.purge(unique, [c, "1-1", c, a])
    assert (purged.count, purged.not_found, purged.skipped) == (1, ["1-1", a], {})
    assert [letter.dlq_id for letter in await dead.list(unique)] == [d]

    for bad in (["1-1", "oops"], ["1712345678901"]):
        with pytest.raises(ConfigurationError, match="not a dead-letter id"):
            await dead.replay(unique, bad)
        with pytest.raises(ConfigurationError, match="not a dead-letter id"):
            await dead.purge(unique, bad)
    assert await dead.count(unique) == 1
    with pytest.raises(ConfigurationError, match="not a dead-letter id"):
        await dead.show(unique, d.split("-")[0])  # XRANGE would read "ms" alone as a range


async def test_replay_by_id_leaves_what_it_cannot_replay_and_says_why(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """An id without a payload field, or of another group than `group`, stays where it is: the result's
    `skipped` names it with the reason."""
    await _fill_dlq(redis_url, unique, {0}, 1)
    await client.xadd(unique, {"no": b"payload"})
    await _fill_dlq(redis_url, unique, set(), 0)  # the raw entry is dead-lettered by both groups
    dead = streamq.DeadLetters(operator)
    rejected, *raw = await dead.list(unique)
    # The two groups' workers dead-letter the raw entry in whichever order they get to it.
    raw_audit, raw_billing = sorted(raw, key=lambda letter: letter.group)
    assert (rejected.group, raw_billing.group, raw_audit.group) == ("billing", "billing", "audit")

    result = await dead.replay(unique, [raw_billing.dlq_id, raw_audit.dlq_id, rejected.dlq_id], group="audit")
    assert result.count == 0
    assert "no payload field" in result.skipped[raw_billing.dlq_id]
    assert "no payload field" in result.skipped[raw_audit.dlq_id]
    assert result.skipped[rejected.dlq_id] == "dead-lettered by group billing, not audit"
    assert await dead.count(unique) == 3


async def test_sync_dead_letters_read_and_act_like_the_async_ones(
    redis_url: str, client: redis.asyncio.Redis, unique: str, operator: redis.asyncio.Redis
) -> None:
    """SyncDeadLetters, given a blocking client (bytes or decoding, like the async one) or a URL, lists,
    pages, shows, counts, replays and purges what DeadLetters does, payloads byte for byte."""
    await _fill_dlq(redis_url, unique, {1, 2, 3}, 4)
    await client.xadd(unique, {"d": GARBAGE})
    await _fill_dlq(redis_url, unique, set(), 0)  # dead-lettered by both groups
    expected = await streamq.DeadLetters(operator).list(unique)
    decode = operator.get_encoder().decode_responses
    sync_client = redis.Redis.from_url(redis_url, decode_responses=decode)
    try:
        dead = SyncDeadLetters(sync_client)
        assert dead.list(unique) == expected
        assert {d.payload for d in dead.list(unique, group="audit")} == {GARBAGE}
        assert dead.count(unique) == len(expected) == 5
        page = dead.page(unique, limit=3)
        assert (page.letters, page.total, page.next_after) == (expected[:3], 5, expected[2].dlq_id)
        assert dead.show(unique, expected[0].dlq_id) == expected[0]
        with pytest.raises(DeadLetterNotFound):
            dead.show(unique, "1-1")
        assert dead.replay(unique, [expected[0].dlq_id, "1-1"]).not_found == ["1-1"]
        assert dead.purge(unique, [expected[1].dlq_id]).count == 1
        with SyncDeadLetters(redis_url) as by_url:  # a client of its own, closed on leaving
            assert [d.dlq_id for d in by_url.list(unique)] == [d.dlq_id for d in expected[2:]]
            assert by_url.replay(unique, group="billing").count == 2
            assert by_url.purge(unique).count == 1
        assert dead.count(unique) == 0
        dead.close()
        assert sync_client.ping()  # the caller's client is the caller's to close
    finally:
        sync_client.close()


async def test_a_client_of_the_wrong_kind_is_refused_with_the_right_class_named(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis
) -> None:
    """DeadLetters given a blocking client, or SyncDeadLetters an asyncio one, raises ConfigurationError
    naming the class to use instead (the old DeadLetters returned unawaited coroutines)."""
    with pytest.raises(ConfigurationError, match="SyncDeadLetters"):
        streamq.DeadLetters(sync_client)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ConfigurationError, match=r"streamq\.DeadLetters"):
        SyncDeadLetters(client)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ConfigurationError, match="got int"):
        SyncDeadLetters(6379)  # type: ignore[arg-type]  # the mistake under test


def test_replay_all_replays_only_the_dead_letters_there_when_it_began(
    redis_url: str, unique: str, sync_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """replay() without ids leaves alone the dead letters added while it runs: a replayed event that a
    worker dead-letters again comes back as a new entry at the end, which must not be replayed in the same
    run, or replaying a poison event beside a running worker would never end."""
    stream_key = keys.dlq_key(unique)
    for n in range(3):
        sync_client.xadd(stream_key, {"group": "g", "id": f"{n}-0", "d": b"\x90"})

    class Relapsing(redis.Redis):
        """Each pipeline that replays also dead-letters one more event, as a failing worker would."""

        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            pipe = super().pipeline(*args, **kwargs)
            execute = pipe.execute

            def execute_and_relapse(*a: Any, **k: Any) -> Any:
                replaying = any(words[0] in ("EVALSHA", "EVAL") for words, _ in pipe.command_stack)
                replies = execute(*a, **k)
                if replaying:
                    sync_client.xadd(stream_key, {"group": "g", "id": "9-0", "d": b"\x90"})
                return replies

            pipe.execute = execute_and_relapse  # type: ignore[method-assign]
            return pipe

    monkeypatch.setattr(deadletter, "REPLAY_CHUNK", 1)  # a round trip per dead letter
    relapsing = Relapsing.from_url(redis_url)
    try:
        result = SyncDeadLetters(relapsing).replay(unique)
    finally:
        relapsing.close()
    assert result.count == 3
    assert sync_client.xlen(stream_key) == 3  # the relapses, left for the next run
