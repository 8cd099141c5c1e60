"""Crash recovery: reclaiming a dead worker's entries, leases that keep slow workers' entries, fencing of
stale settlements, deleted pending entries, retries that outlive their worker, and server restarts.

Worker processes that are killed run tests/worker_proc.py; the worker that recovers runs in this process.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import structlog
from group_state import pending as _pending
from group_state import stats as _stats
from helpers import async_wait_until
from worker_proc import Job, SpawnWorker, read_ledger

import streamq
from streamq import _wire, keys
from streamq._worker.reclaiming import Reclaimer
from streamq._worker.records import RetryRecord, encode_record
from streamq.embedded import EmbeddedServer

SLOW_LEASE_MS = 700  # the slow handler takes five of these


async def _publish(url: str, stream: str, count: int) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Job(n) for n in range(count)])


def _pending_by_consumer(client: redis.Redis, key: str, group: str) -> dict[str, int]:
    try:
        summary = client.xpending(key, group)
    except redis.ResponseError:
        return {}
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or ()}


def _recorder(app: streamq.App, stream: str, seen: list[tuple[int, int, str]], **settings: Any) -> None:
    """Register a consumer of Jobs in group 'g' that records (n, delivery, id) of every event it handles,
    where delivery counts failed attempts and deliveries that never settled (attempt + lost_deliveries)."""

    async def handle(message: streamq.Message[Job]) -> None:
        seen.append((message.event.n, message.attempt + message.lost_deliveries, message.id))

    app.add_consumer(handle, stream, group="g", **{"lease_ms": 1_000, "block_ms": 100, **settings})


# ---------------------------------------------------------------------------------------- dead workers


async def test_entries_of_a_killed_worker_are_reclaimed(
    spawn_worker: SpawnWorker,
    redis_url: str,
    client: redis.asyncio.Redis,
    sync_client: redis.Redis,
    unique: str,
) -> None:
    """A worker SIGKILLed in the middle of a batch loses nothing: once its lease runs out another worker
    claims every entry, handles it (as a second attempt) and acknowledges it; nothing stays pending."""
    ids = await _publish(redis_url, unique, 20)
    doomed = spawn_worker(
        stream=unique, group="g", ledger=unique, name="doomed", lease_ms=1_000, sleep_ms=60_000
    )
    await async_wait_until(
        lambda: (
            sum(_pending_by_consumer(sync_client, unique, "g").values()) == 20
            and len(read_ledger(sync_client, unique, "started")) == 20
        ),
        message="the doomed worker to hold all 20 entries inside its handler",
    )
    doomed.send(signal.SIGKILL)
    assert doomed.wait() == -signal.SIGKILL

    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen)
    await asyncio.wait_for(app.run_until_idle(), 60)

    assert sorted(seen) == [(n, 2, ids[n]) for n in range(20)]  # delivered twice: the crash counts
    assert read_ledger(sync_client, unique, "done") == {}
    assert await _pending(client, unique, "g") == 0
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats["reclaimed"]) == (20, 20)
    assert await client.xlen(keys.dlq_key(unique)) == 0


@pytest.mark.parametrize("mode", ["async", "block", "sync"])
async def test_slow_but_alive_worker_keeps_its_entries(
    mode: str,
    spawn_worker: SpawnWorker,
    redis_url: str,
    client: redis.asyncio.Redis,
    sync_client: redis.Redis,
    unique: str,
) -> None:
    """A handler taking five leases (awaiting, hogging the event loop, or in a thread) keeps its lease
    renewed: a second worker reclaiming alongside never takes its entries, and each event runs once."""
    await _publish(redis_url, unique, 10)
    slow = spawn_worker(
        stream=unique,
        group="g",
        ledger=unique,
        name="slow",
        mode=mode,
        lease_ms=SLOW_LEASE_MS,
        sleep_ms=5 * SLOW_LEASE_MS,
        burst=True,
    )
    await async_wait_until(
        lambda: len(read_ledger(sync_client, unique, "started")) == 10,
        message="the slow worker to start handling all 10 events",
    )
    handler_began = time.monotonic()
    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen, lease_ms=SLOW_LEASE_MS)
    rival = asyncio.create_task(app.run_until_idle())

    def rival_scanned_after_two_leases() -> bool:
        # A full XAUTOCLAIM scan finished more than two leases after the slow handler began: without
        # renewals the entries would have been idle long enough to be taken by then.
        reclaimer = app.consumers[0].reclaimer if app.consumers else None
        scanned_at = reclaimer.next_due - reclaimer.every_s if reclaimer is not None else 0.0
        return scanned_at > handler_began + 2 * SLOW_LEASE_MS / 1000

    await async_wait_until(rival_scanned_after_two_leases, message="the rival to scan for idle entries")
    # The slow handler must still be running then, or this test proves nothing.
    assert read_ledger(sync_client, unique, "done") == {}
    await asyncio.wait_for(rival, 60)
    assert slow.wait() == 0, slow.log()

    assert seen == []
    assert read_ledger(sync_client, unique, "started") == dict.fromkeys(range(10), 1)
    assert read_ledger(sync_client, unique, "done") == dict.fromkeys(range(10), 1)
    stats = await _stats(client, unique, "g")
    assert stats.get("reclaimed", 0) == 0 and stats.get("lease_lost", 0) == 0 and stats["acked"] == 10
    assert await _pending(client, unique, "g") == 0


async def test_event_that_keeps_killing_workers_is_dead_lettered(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Deliveries that never settled count against max_deliveries: an entry delivered that many times
    without a result (its workers died holding it) is dead-lettered as max_deliveries / WorkerLost
    instead of being handled again; its attempts (failures) are untouched."""
    (entry_id,) = await _publish(redis_url, unique, 1)
    await _wire.ensure_group(client, unique, "g")
    await client.xreadgroup("g", "crashed-1", {unique: ">"})
    await client.xclaim(unique, "g", "crashed-2", 0, [entry_id])
    await client.xclaim(unique, "g", "crashed-3", 0, [entry_id])  # three deliveries, none settled
    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen, lease_ms=300, max_attempts=3, max_deliveries=3)
    await asyncio.wait_for(app.run_until_idle(), 30)

    assert seen == []
    (letter,) = await streamq.DeadLetters(client).list(unique)
    assert (letter.id, letter.reason, letter.error_type, letter.attempts) == (
        entry_id,
        "max_deliveries",
        "WorkerLost",
        1,
    )
    assert await _pending(client, unique, "g") == 0


async def test_bystanders_of_crashes_are_not_dead_lettered(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """An event that was in flight during unrelated worker deaths (three deliveries that never settled) is
    handled, not dead-lettered, even with max_attempts=3: only failures use attempts."""
    (entry_id,) = await _publish(redis_url, unique, 1)
    await _wire.ensure_group(client, unique, "g")
    await client.xreadgroup("g", "crashed-1", {unique: ">"})
    await client.xclaim(unique, "g", "crashed-2", 0, [entry_id])
    await client.xclaim(unique, "g", "crashed-3", 0, [entry_id])
    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen, lease_ms=300, max_attempts=3)
    await asyncio.wait_for(app.run_until_idle(), 30)

    assert seen == [(0, 4, entry_id)]  # the fourth delivery, the first attempt
    assert await streamq.DeadLetters(client).list(unique) == []
    assert await _pending(client, unique, "g") == 0


async def test_reclaimer_follows_the_cursor_across_steps(client: redis.asyncio.Redis, unique: str) -> None:
    """XAUTOCLAIM returns at most COUNT entries per call: the reclaimer keeps scanning from the cursor on
    later steps until it wraps to 0-0, so every idle entry is claimed exactly once."""
    await _wire.ensure_group(client, unique, "g")
    for n in range(35):
        await client.xadd(unique, {"d": str(n)})
    await client.xreadgroup("g", "dead", {unique: ">"})
    reclaimer = Reclaimer([unique], "g", "me", lease_ms=0, every_ms=60_000, count=10)
    link = _wire.Link(client)
    claimed: list[bytes] = []
    steps = 0
    try:
        while True:
            steps += 1
            for step in await reclaimer.step(link):
                claimed += step.batch.ids
            if not reclaimer.scanning:
                break
            assert steps < 20, "the scan never ended"
    finally:
        await link.close()
    assert steps >= 4
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 35
    assert not reclaimer.due()  # a full scan done: the next one waits for every_ms
    (holder,) = (await client.xpending(unique, "g"))["consumers"]
    assert (holder["name"], int(holder["pending"])) == (b"me", 35)


# -------------------------------------------------------------------------------------- deleted entries


async def test_pending_entries_deleted_or_trimmed_are_acknowledged_and_counted(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """Entries deleted (XDEL) or trimmed (XTRIM) while a dead worker held them cannot be handled: the
    reclaimer acknowledges them and counts them as deleted_pending; the surviving entries are handled."""
    ids = await _publish(redis_url, unique, 6)
    await _wire.ensure_group(client, unique, "g")
    await client.xreadgroup("g", "dead", {unique: ">"})
    await client.xtrim(unique, minid=ids[2], approximate=False)  # trims ids[0] and ids[1]
    await client.xdel(unique, ids[3])
    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen, lease_ms=300)
    await asyncio.wait_for(app.run_until_idle(), 30)

    assert sorted(n for n, _, _ in seen) == [2, 4, 5]
    assert await _pending(client, unique, "g") == 0
    stats = await _stats(client, unique, "g")
    assert stats["deleted_pending"] == 3
    assert stats["acked"] == 3


# ---------------------------------------------------------------------------------------------- fencing


def _plan(
    stream: str,
    ids: list[bytes],
    *,
    acks: list[bytes],
    retries: list[bytes] = (),  # type: ignore[assignment]
    dead: list[bytes] = (),
) -> _wire.SettlePlan:  # type: ignore[assignment]
    record = encode_record(RetryRecord("0-1", 1, 1, 1, "E: x", b"payload"))
    return _wire.SettlePlan(
        key=stream, delayed_key=keys.delayed_key(stream, "g"), dlq_key=keys.dlq_key(stream),
        stats_key=keys.stats_key(stream, "g"), delete_after_ack=False,
        min_id=min(ids, key=_wire._id_key), max_id=max(ids, key=_wire._id_key),
        acks=list(acks), retries=[(i, 0, record) for i in retries],
        dead=[(i, [b"id", i, b"reason", b"test"]) for i in dead],
    )  # fmt: skip


async def test_stale_worker_cannot_retry_or_dead_letter_entries_it_lost(
    client: redis.asyncio.Redis, unique: str
) -> None:
    """A worker whose entries were claimed by another consumer may retry or dead-letter only what it still
    holds (those create new entries): the rest is refused, returned and counted as lease_lost, and the
    entries stay with their new holder."""
    await _wire.ensure_group(client, unique, "g")
    ids = [await client.xadd(unique, {"d": b"x"}) for _ in range(4)]
    await client.xreadgroup("g", "stale", {unique: ">"})
    await client.xclaim(unique, "g", "fresh", 0, ids[:2])  # the lease of ids[0] and ids[1] was lost
    link = _wire.Link(client)
    try:
        plan = _plan(unique, ids, acks=[ids[2]], retries=[ids[0]], dead=[ids[1], ids[3]])
        done = await _wire.settle(link, "g", "stale", [plan])
        assert (done.lost, sorted(done.lost_ids)) == (2, sorted(ids[:2]))
        pending = await client.xpending_range(unique, "g", min="-", max="+", count=10)
        assert {(p["message_id"], p["consumer"]) for p in pending} == {(ids[0], b"fresh"), (ids[1], b"fresh")}
        assert await client.zcard(keys.delayed_key(unique, "g")) == 0  # the lost retry was not scheduled
        assert await client.xlen(keys.dlq_key(unique)) == 1  # ids[3], still held, was dead-lettered
    finally:
        await link.close()
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats["dead"], stats["lease_lost"]) == (1, 1, 2)


async def test_success_is_acknowledged_whoever_holds_the_entry(
    client: redis.asyncio.Redis, unique: str
) -> None:
    """Acknowledging a success needs no lease: the event was handled, whoever holds it now. The holder that
    settles second finds the entry no longer pending and counts the duplicate as lease_lost, once; an ack
    resent after a lost reply counts nothing; a pending entry trimmed away is not a lost lease."""
    await _wire.ensure_group(client, unique, "g")
    ids = [await client.xadd(unique, {"d": b"x"}) for _ in range(4)]
    await client.xreadgroup("g", "stale", {unique: ">"})
    await client.xclaim(unique, "g", "fresh", 0, ids[:2])  # the stale worker's lease on these was lost
    link = _wire.Link(client)
    try:
        stale = await _wire.settle(link, "g", "stale", [_plan(unique, ids, acks=ids[:3])])
        assert stale.lost == 0  # all three were pending: acknowledged, ids[0] and ids[1] from "fresh"
        assert await _pending(client, unique, "g") == 1

        fresh = await _wire.settle(link, "g", "fresh", [_plan(unique, ids, acks=ids[:2])])
        assert fresh.lost == 2  # handled twice: the second settle counts the duplicates
        resent = await _wire.settle(link, "g", "fresh", [_plan(unique, ids, acks=ids[:2])], resent=True)
        assert resent.lost == 0  # a resend may be finding its own first attempt's work: not counted

        # ids[3] is still pending but its entry is gone; XAUTOCLAIM drops such ids from the PEL (7.0+).
        await client.xdel(unique, ids[3])
        await client.xautoclaim(unique, "g", "fresh", 0, "0-0")
        trimmed = await _wire.settle(link, "g", "stale", [_plan(unique, ids, acks=[ids[3]])])
        assert trimmed.lost == 0
    finally:
        await link.close()
    assert await _pending(client, unique, "g") == 0
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats["lease_lost"]) == (3, 2)


async def test_consumer_whose_lease_was_taken_mid_batch_cannot_retry(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """If another consumer takes a batch while its handler runs and the handler fails, the consumer's retry
    is refused and counted as lease_lost; the entries stay with the new holder and are handled again after
    its lease."""
    await _publish(redis_url, unique, 5)
    calls: list[list[int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=300, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        calls.append([m.attempt + m.lost_deliveries for m in batch])
        if len(calls) == 1:
            await client.xclaim(unique, "g", "thief", 0, [m.entry_id for m in batch])
            raise RuntimeError("fails after losing its lease")

    await asyncio.wait_for(app.run_until_idle(), 30)
    # First call: read (attempt 1) then stolen; then the thief's entries reclaimed (read, XCLAIM, reclaim):
    # delivered twice before without a result, each is handled alone.
    assert calls == [[1] * 5] + [[3]] * 5
    assert app.counts()["lease_lost"] == 5
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats.get("retried", 0), stats["lease_lost"], stats["reclaimed"]) == (5, 0, 5, 5)
    assert await client.zcard(keys.delayed_key(unique, "g")) == 0
    assert await _pending(client, unique, "g") == 0


async def test_consumer_whose_lease_was_taken_mid_batch_still_acks_its_success(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A handler that succeeded after its entries were taken over still acknowledges them: the events were
    handled, so nothing is handled again."""
    await _publish(redis_url, unique, 5)
    calls: list[list[int]] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", lease_ms=300, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        calls.append([m.attempt for m in batch])
        await client.xclaim(unique, "g", "thief", 0, [m.entry_id for m in batch])

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert calls == [[1] * 5]
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats.get("lease_lost", 0)) == (5, 0)
    assert await _pending(client, unique, "g") == 0


async def test_a_long_scan_of_entries_held_by_live_workers_does_not_hold_up_reading(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A fresh worker's reclaimer scans the whole PEL, ~10x its COUNT per XAUTOCLAIM step; 200 entries held
    by a live worker take 20 steps at batch_size=1. A step that claims nothing is followed by a read, so a
    new event is handled while the scan is still going (it once waited for the whole scan)."""
    await _publish(redis_url, unique, 200)
    await client.xgroup_create(unique, "g", id="0")
    await client.xreadgroup("g", "holder", {unique: ">"}, count=200)  # fresh: far from idle past the lease
    await _publish(redis_url, unique, 1)
    scanning: list[bool] = []
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=1, lease_ms=60_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        scanning.append(app.consumers[0].reclaimer.scanning)
        app.stop()

    await asyncio.wait_for(app.run(), 30)
    assert scanning == [True]
    assert int((await client.xpending(unique, "g"))["pending"]) == 200  # the holder's, untouched


# ------------------------------------------------------------------------------------- delayed retries


async def test_retry_outlives_the_worker_that_scheduled_it(
    spawn_worker: SpawnWorker,
    redis_url: str,
    client: redis.asyncio.Redis,
    sync_client: redis.Redis,
    unique: str,
) -> None:
    """A retry waiting out its backoff is stored in Redis, not in the worker: after that worker is
    SIGKILLed, another worker handles the event as its second attempt, under its original id."""
    ids = await _publish(redis_url, unique, 3)
    worker = spawn_worker(stream=unique, group="g", ledger=unique, retry_first_ms=1_500, lease_ms=1_000)
    delayed = keys.delayed_key(unique, "g")
    await async_wait_until(lambda: sync_client.zcard(delayed) == 3, message="3 retries scheduled")
    worker.send(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert read_ledger(sync_client, unique, "retried") == dict.fromkeys(range(3), 1)

    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen, retry_poll_ms=50)
    await asyncio.wait_for(app.run_until_idle(), 30)
    assert sorted(seen) == [(n, 2, ids[n]) for n in range(3)]
    assert await client.zcard(delayed) == 0
    assert await client.xlen(keys.retry_key(unique, "g")) == 0  # handled retries are deleted
    assert await _pending(client, unique, "g") == 0


async def test_retry_entry_of_a_dead_worker_is_reclaimed_with_its_history(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A retry that a worker took from the group's retry stream and died holding is reclaimed from that
    stream like any entry: it keeps its original id, its attempt counts the earlier failure and both
    deliveries, and once handled it is removed from the retry stream."""
    retry = keys.retry_key(unique, "g")
    await _wire.ensure_group(client, retry, "g")
    payload = streamq.events.Encoder().encode(Job(7))
    record = RetryRecord(
        "1234-5", failures=1, first_failure_ms=1, last_failure_ms=2, error="E: x", payload=payload
    )
    await client.xadd(retry, {"r": encode_record(record)})
    await client.xreadgroup("g", "crashed", {retry: ">"})
    seen: list[tuple[int, int, str]] = []
    app = streamq.App(redis_url)
    _recorder(app, unique, seen, lease_ms=300)
    await asyncio.wait_for(app.run_until_idle(), 30)

    assert seen == [(7, 3, "1234-5")]
    assert await client.xlen(retry) == 0
    assert await _pending(client, unique, "g") == 0


# -------------------------------------------------------------------------------------- server restarts


async def test_worker_rides_out_a_server_crash(own_server: EmbeddedServer, unique: str) -> None:
    """The server is SIGKILLed while a worker is settling a batch and restarted (AOF, fsync always): the
    worker reconnects by itself, settles, and handles the rest; every event is acknowledged."""
    url = own_server.url
    await _publish(url, unique, 30)
    seen: list[int] = []
    first_batch_in_hand = asyncio.Event()
    resume = asyncio.Event()
    app = streamq.App(url)

    @app.consumer(unique, group="g", batch_size=10, lease_ms=2_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        seen.extend(event.n for event in batch.events)
        if len(seen) == 10:
            first_batch_in_hand.set()
            await resume.wait()

    with structlog.testing.capture_logs() as logs:
        run = asyncio.create_task(app.run_until_idle())
        await asyncio.wait_for(first_batch_in_hand.wait(), 30)
        own_server.kill()
        resume.set()
        await async_wait_until(
            lambda: any(
                log["event"] in ("settle failed, retrying", "redis unavailable, retrying") for log in logs
            ),
            message="the worker to notice the server is gone",
        )
        await asyncio.to_thread(own_server.start)
        await asyncio.wait_for(run, 60)

    assert sorted(set(seen)) == list(range(30))
    after = redis.asyncio.Redis.from_url(url)
    try:
        assert await _pending(after, unique, "g") == 0
        assert await after.xlen(keys.dlq_key(unique)) == 0
        assert (await _stats(after, unique, "g"))["acked"] >= 30
    finally:
        await after.aclose()


async def _settled_all(client: redis.asyncio.Redis, stream: str) -> bool:
    return await _pending(client, stream, "g") == 0


async def test_idle_worker_reconnects_after_a_server_restart(own_server: EmbeddedServer, unique: str) -> None:
    """A worker waiting for events when the server dies keeps retrying its read, and once the server is
    back (same data, AOF) it handles what is published then, without being restarted."""
    url = own_server.url
    await _publish(url, unique, 1)
    handled: list[int] = []
    app = streamq.App(url)

    @app.consumer(unique, group="g", lease_ms=1_000, block_ms=100)
    async def handle(batch: streamq.Batch[Job]) -> None:
        handled.extend(event.n for event in batch.events)

    with structlog.testing.capture_logs() as logs:
        run = asyncio.create_task(app.run())
        try:
            await async_wait_until(lambda: handled == [0], message="the first event")
            # Idle means settled too: killed between handler and settle, the worker would be retrying its
            # settle (logged as such), not waiting for events.
            probe = redis.asyncio.Redis.from_url(url)
            try:
                await async_wait_until(lambda: _settled_all(probe, unique), message="the first event settled")
            finally:
                await probe.aclose()
            own_server.kill()
            await async_wait_until(
                lambda: any(log["event"] == "redis unavailable, retrying" for log in logs),
                message="the worker to notice the server is gone",
            )
            await asyncio.to_thread(own_server.start)
            await _publish(url, unique, 3)
            await async_wait_until(
                lambda: handled == [0, 0, 1, 2], message="events published after the restart"
            )
        finally:
            app.stop()
            await asyncio.wait_for(run, 30)
