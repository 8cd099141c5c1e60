"""Crash loops: an event that kills every worker that takes it is dead-lettered once it has cost
max_deliveries deliveries, without taking its batch-mates with it; and deliveries lost to crashes that
were none of the event's doing never use up its attempts.

Every worker here is a real process (tests/worker_proc.py) that dies by SIGKILL, from its own handler or
from the test: nothing it holds is settled or given back, exactly as after a segfault or the OOM killer.
"""

from __future__ import annotations

import asyncio
import signal

import redis
import redis.asyncio
from group_state import pending as _pending
from group_state import stats as _stats
from helpers import async_wait_until
from worker_proc import Job, SpawnWorker, read_ledger

import streamq

LEASE_MS = 500
MAX_WORKERS = 10  # bounds the crash loops below; each needs far fewer


async def _publish(url: str, stream: str, count: int) -> list[str]:
    async with streamq.Producer(url) as producer:
        return await producer.publish_many(stream, [Job(n) for n in range(count)])


async def test_poison_event_is_dead_lettered_and_its_batch_mates_are_handled(
    spawn_worker: SpawnWorker,
    redis_url: str,
    client: redis.asyncio.Redis,
    sync_client: redis.Redis,
    unique: str,
) -> None:
    """Event 7 of a batch of 20 kills every worker that handles it (max_deliveries=3). A fresh worker is
    started each time the last one died, until one finishes: the poison event is handled by three workers
    (its three deliveries that never settled), then dead-lettered with reason max_deliveries instead of
    being handed to a fourth; each of the other 19 events is handled to the end, acknowledged, and none
    of them is dead-lettered, though they were in flight during every crash."""
    ids = await _publish(redis_url, unique, 20)
    exits: list[int] = []
    for _ in range(MAX_WORKERS):
        worker = spawn_worker(
            stream=unique, group="g", ledger=unique, name=f"w{len(exits)}", batch_size=20,
            lease_ms=LEASE_MS, max_deliveries=3, kill_on=7, burst=True,
        )  # fmt: skip
        exits.append(await asyncio.to_thread(worker.wait, 60))
        if exits[-1] != -signal.SIGKILL:
            assert exits[-1] == 0, worker.log()
            break
    assert exits == [-signal.SIGKILL] * 3 + [0]

    letters = await streamq.DeadLetters(client).list(unique)
    assert [(d.id, d.reason, d.error_type, d.attempts) for d in letters] == [
        (ids[7], "max_deliveries", "WorkerLost", 1)  # the crashes used no attempt
    ]
    assert read_ledger(sync_client, unique, "started")[7] == 3
    done = read_ledger(sync_client, unique, "done")
    assert sorted(done) == [n for n in range(20) if n != 7]
    assert await _pending(client, unique, "g") == 0
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats["dead"]) == (19, 1)


async def test_bystander_of_three_unrelated_crashes_is_handled_not_dead_lettered(
    spawn_worker: SpawnWorker,
    redis_url: str,
    client: redis.asyncio.Redis,
    sync_client: redis.Redis,
    unique: str,
) -> None:
    """With max_attempts=3, an innocent event whose worker is SIGKILLed three times while its handler is
    busy with it (the crashes are the test's doing, not the event's) is handled by the fourth worker and
    acknowledged: deliveries lost to crashes are not failed attempts, so it is not dead-lettered as
    max_attempts, and the handler sees it as its first attempt."""
    await _publish(redis_url, unique, 1)
    for crash in range(1, 4):
        doomed = spawn_worker(
            stream=unique, group="g", ledger=unique, name=f"doomed{crash}", lease_ms=LEASE_MS,
            max_attempts=3, sleep_ms=60_000,
        )  # fmt: skip
        await async_wait_until(
            lambda crash=crash: read_ledger(sync_client, unique, "started").get(0) == crash,  # type: ignore[misc]
            timeout_s=30,
            message=f"worker {crash} to be inside its handler with the event",
        )
        doomed.send(signal.SIGKILL)
        assert doomed.wait() == -signal.SIGKILL
    last = spawn_worker(
        stream=unique, group="g", ledger=unique, name="last", lease_ms=LEASE_MS, max_attempts=3, burst=True
    )
    assert await asyncio.to_thread(last.wait, 60) == 0, last.log()

    assert await streamq.DeadLetters(client).list(unique) == []
    assert read_ledger(sync_client, unique, "started") == {0: 4}
    assert read_ledger(sync_client, unique, "done") == {0: 1}
    assert await _pending(client, unique, "g") == 0
    stats = await _stats(client, unique, "g")
    assert (stats["acked"], stats.get("retried", 0), stats.get("dead", 0)) == (1, 0, 0)
