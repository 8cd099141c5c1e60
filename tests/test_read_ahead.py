"""Read-ahead: while a batch is handled, the next one is already being read (and the last one settled), so
the server works while the handler does; it stops when handling is slow, and a connection lost with
replies in flight loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import _wire, keys
from streamq._worker.consumer import READ_AHEAD_MAX_HANDLE_S
from streamq._worker.leases import HELD_RENEW_LIMIT


class Tick(streamq.Event, tag="test.read_ahead.tick"):
    n: int


async def _publish(url: str, stream: str, count: int) -> list[bytes]:
    async with streamq.Producer(url) as producer:
        ids = await producer.publish_many(stream, [Tick(n) for n in range(count)])
    return [i.encode() for i in ids]


async def _delivered(client: redis.asyncio.Redis, stream: str) -> set[bytes]:
    rows = await client.xpending_range(stream, "g", min="-", max="+", count=1000)
    return {row["message_id"] for row in rows}


async def test_next_batch_is_read_while_a_batch_is_handled(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """With a backlog, once a first batch has shown that handling is quick, the third batch is delivered to
    the worker while the second is still in its handler; every event is handled once, in order, and
    acknowledged."""
    ids = await _publish(redis_url, unique, 9)
    handled: list[int] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=3, lease_ms=5_000, block_ms=100)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        if len(handled) == 3:
            await async_wait_until(
                lambda: _has(client, unique, ids[6:]), message="the third batch read ahead"
            )
        handled.extend(e.n for e in batch.events)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert handled == list(range(9))
    assert int((await client.xpending(unique, "g"))["pending"]) == 0
    assert await client.hget(keys.stats_key(unique, "g"), "acked") == b"9"


async def _has(client: redis.asyncio.Redis, stream: str, ids: list[bytes]) -> bool:
    return set(ids) <= await _delivered(client, stream)


@pytest.mark.parametrize("setting", ["slow handler", "read_ahead=False"])
async def test_no_read_ahead_while_handling_is_slow_or_when_disabled(
    redis_url: str, client: redis.asyncio.Redis, unique: str, setting: str
) -> None:
    """Entries read ahead wait unrenewed for the batch in hand and are kept from other workers, so a worker
    whose handler is slow reads one batch at a time (as does one with read_ahead=False)."""
    ids = await _publish(redis_url, unique, 9)
    seen_pending: list[set[bytes]] = []
    options: dict[str, Any] = {"read_ahead": False} if setting == "read_ahead=False" else {}
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=3, lease_ms=5_000, block_ms=100, **options)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        if not seen_pending:
            # The first batch is slow: from then on the worker must not read ahead. (It may have read the
            # second batch before it knew; the third is what counts.)
            await asyncio.sleep(READ_AHEAD_MAX_HANDLE_S * 2)
        elif len(seen_pending) == 1:
            # A negative check: give a wrong read-ahead of the third batch time to show before looking.
            await asyncio.sleep(0.2)
        seen_pending.append(await _delivered(client, unique))

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert len(seen_pending) == 3
    assert not set(ids[6:]) & seen_pending[1]  # the third batch was not delivered during the second
    assert int((await client.xpending(unique, "g"))["pending"]) == 0


async def test_connection_lost_with_replies_in_flight_loses_nothing(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The worker's connection is killed while the second batch is handled, after the first batch's
    settlement and the third batch's read-ahead have run on the server: whichever replies the worker had
    not read yet are lost with the connection. The batches handled are settled once it is back; the batch
    read ahead is handled, from the reply if that arrived or, if not, reclaimed after the lease as a second
    attempt; every event ends acknowledged and nothing stays pending."""
    ids = await _publish(redis_url, unique, 12)
    attempts: dict[int, list[int]] = {}
    batches = 0
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=3, lease_ms=300, block_ms=100)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        nonlocal batches
        batches += 1
        for message in batch:
            attempts.setdefault(message.event.n, []).append(message.attempt)
        if batches == 2:
            await async_wait_until(lambda: _has(client, unique, ids[6:9]), message="batch 3 read ahead")
            await _kill_stream_connections(client)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert sorted(attempts) == list(range(12))
    assert {n: runs for n in range(6) if (runs := attempts[n]) != [1]} == {}  # handled before the kill
    # A delivery whose reply was lost counts as an attempt: a reclaimed event comes back as attempt 2.
    assert {n: runs for n, runs in attempts.items() if runs != sorted(set(runs))} == {}
    assert int((await client.xpending(unique, "g"))["pending"]) == 0
    assert int(await client.hget(keys.stats_key(unique, "g"), "acked") or 0) == 12


async def _kill_stream_connections(client: redis.asyncio.Redis) -> None:
    """Kill every other client connection whose last command was a stream read or a settle script."""
    me = await client.client_id()
    for info in await client.client_list():
        if int(info["id"]) != me and info.get("cmd") in {"xreadgroup", "evalsha", "xautoclaim"}:
            await client.client_kill_filter(_id=int(info["id"]))


async def test_a_slow_batch_does_not_expose_the_batch_read_ahead_to_a_rival(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """The reproduction of the issue: lease_ms=600, batches of 10, the first two handled quickly (so the
    worker reads ahead) and the third taking 2.5 s, about four leases (on a loaded machine that did not
    read ahead during the third, the first one after it that did). The fourth batch, read ahead before
    the third was handled, waits in the worker unparsed all that time; a second worker started meanwhile
    and reclaiming every 300 ms must not take it, because the read-ahead is leased from the moment it is
    sent. Every event is handled exactly once, by one worker or the other, and neither counts a lost
    lease."""
    ids = await _publish(redis_url, unique, 100)
    handled: list[tuple[int, str]] = []
    slow_batch_began = asyncio.Event()
    first = streamq.App(redis_url)
    second = streamq.App(redis_url)
    settings: dict[str, Any] = {"batch_size": 10, "lease_ms": 600, "block_ms": 100}
    calls = 0
    skip_one = False

    @first.consumer(unique, group="g", **settings)
    async def handle_first(batch: streamq.Batch[Tick]) -> None:
        nonlocal calls, skip_one
        calls += 1
        handled.extend((e.n, "first") for e in batch.events)
        if calls < 3 or slow_batch_began.is_set() or skip_one:
            skip_one = False
            return
        # Read-ahead must be on, or this test proves nothing: the next batch is delivered to this worker
        # before this one is done. On a loaded machine it may not be (a batch took over 50 ms, or a
        # reclaim scan came due): then the next call is left quick, and the one after checks again.
        after = ids.index(batch[-1].id.encode()) + 1
        following = ids[after : after + 10]
        if len(following) < 10 or not await _delivered_within(client, unique, following, timeout_s=1):
            skip_one = True
            return
        slow_batch_began.set()
        await asyncio.sleep(2.5)  # the slow batch of the reproduction: its handler takes ~4 leases

    @second.consumer(unique, group="g", **settings)
    async def handle_second(batch: streamq.Batch[Tick]) -> None:
        handled.extend((e.n, "second") for e in batch.events)

    run_first = asyncio.create_task(first.run_until_idle())
    try:
        await async_wait_until(
            lambda: slow_batch_began.is_set() or run_first.done(), timeout_s=60, message="the slow batch"
        )
        assert slow_batch_began.is_set(), "the worker never read ahead during a batch"
        await asyncio.wait_for(second.run_until_idle(), 60)
        await asyncio.wait_for(run_first, 60)
    finally:
        run_first.cancel()
        await asyncio.wait([run_first])

    by_event: dict[int, list[str]] = {}
    for n, who in handled:
        by_event.setdefault(n, []).append(who)
    assert {n: who for n, who in by_event.items() if len(who) != 1} == {}  # none handled twice
    assert sorted(by_event) == list(range(100))
    assert (first.counts()["lease_lost"], second.counts()["lease_lost"]) == (0, 0)
    assert int((await client.xpending(unique, "g"))["pending"]) == 0
    assert await client.hget(keys.stats_key(unique, "g"), "acked") == b"100"


async def _delivered_within(
    client: redis.asyncio.Redis, stream: str, ids: list[bytes], *, timeout_s: float
) -> bool:
    """Whether all of `ids` are delivered (pending) within timeout_s."""
    try:
        await async_wait_until(lambda: _has(client, stream, ids), timeout_s=timeout_s)
    except AssertionError:
        return False
    return True


async def test_the_lease_of_a_read_ahead_of_large_batches_renews_it(
    redis_url: str, client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """With batches of 6000, a worker reading ahead holds 12000 entries on one key while a batch is
    handled. The lease of the read-ahead, whose ids are not known yet, renews the 6000 entries read after
    the batch in hand (once, in one call, it tried to renew all 12000, more than a Lua unpack() takes, and
    every renewal failed: the read-ahead of a slow batch went to a rival and was handled twice); the batch
    in hand is left to its own lease. Giving back a batch that large works as well."""
    await _publish(redis_url, unique, 12_000)
    await client.xgroup_create(unique, "g", "0")
    in_hand = await client.xreadgroup("g", "c", {unique: ">"}, count=6000)
    read_ahead = await client.xreadgroup("g", "c", {unique: ">"}, count=6000)
    in_hand_ids = [entry_id for entry_id, _ in in_hand[0][1]]
    ahead_ids = [entry_id for entry_id, _ in read_ahead[0][1]]
    await asyncio.sleep(0.3)

    renewed = _wire.renew_held_sync(sync_client, unique, "g", "c", HELD_RENEW_LIMIT, in_hand_ids[-1])

    assert renewed == 6000
    idle = {row["message_id"]: row["time_since_delivered"] for row in await _pending_rows(client, unique)}
    assert max(idle[i] for i in ahead_ids) < 250  # renewed just now
    assert min(idle[i] for i in in_hand_ids) >= 250  # not this lease's to renew
    given_back = await _wire.release(client, unique, "g", "c", in_hand_ids + ahead_ids, 2**40)
    assert given_back == 12_000


async def _pending_rows(client: redis.asyncio.Redis, stream: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await client.xpending_range(stream, "g", min="-", max="+", count=20_000)
    return rows
