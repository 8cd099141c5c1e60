"""Peer: taskiq + taskiq-redis ``RedisStreamBroker``, driven the way its users drive it.

Measures events/s of one process for:
  * taskiq-publish[1]: ``await task.kiq(payload)`` per event (taskiq has no batch publish; each kick is one
    XADD on a connection taken from the broker's pool).
  * taskiq-consume[100]: one worker's ``Receiver`` (the loop inside ``taskiq worker``, with that command's
    defaults: max_async_tasks=100, max_prefetch=0, ack when saved, uvloop) running a no-op async task over
    a pre-filled stream; XREADGROUP COUNT 100 (the broker's ``xread_count`` default), one XACK per task.
    Ends when the Receiver has run and acknowledged every task.

The task's one argument is ``PAYLOAD_TEXT`` (the shared payload in base64): taskiq's JSON envelope cannot
carry raw bytes. The pre-fill writes messages built with taskiq's own ``TaskiqMessage`` and formatter,
pipelined, so the consume case does not wait on taskiq's slow publish path.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.payload import PAYLOAD_TEXT
from benchmarks.streams import create_group, pending_count

TASK_NAME = "bench.noop"
CONSUMER_NAME = "bench-1"
XREAD_COUNT = 100  # RedisStreamBroker's default
PREFILL_PIPELINE = 1000
# The defaults of `taskiq worker` (taskiq 0.13 WorkerArgs).
WORKER_MAX_ASYNC_TASKS = 100
WORKER_MAX_PREFETCH = 0
WORKER_THREADPOOL_THREADS = None
REQUIRES = ("taskiq", "taskiq_redis")

CASES = [
    Case(
        scenario="taskiq-publish",
        contender="taskiq",
        operation="publish",
        batch_size=1,
        count=20_000,
        quick_count=50,
        measure="benchmarks.peer_taskiq:publish",
        requires=REQUIRES,
        detail="await task.kiq() per event",
    ),
    Case(
        scenario="taskiq-consume",
        contender="taskiq",
        operation="consume",
        batch_size=XREAD_COUNT,
        count=20_000,
        quick_count=50,
        setup="benchmarks.peer_taskiq:fill",
        measure="benchmarks.peer_taskiq:consume",
        requires=REQUIRES,
        detail="Receiver (taskiq worker defaults), no-op task, XACK per task",
    ),
]


def _broker(ctx: RunContext) -> Any:
    from taskiq_redis import RedisStreamBroker

    # consumer_id="0": the group reads the stream from its start, so pre-filled tasks are delivered.
    return RedisStreamBroker(
        ctx.url,
        queue_name=ctx.stream,
        consumer_group_name=ctx.group,
        consumer_name=CONSUMER_NAME,
        consumer_id="0",
        xread_count=ctx.batch_size,
    )


async def publish(ctx: RunContext, probe: Probe) -> int:
    broker = _broker(ctx)

    @broker.task(task_name=TASK_NAME)
    async def noop(payload: str) -> None:
        return None

    await broker.startup()
    try:
        # Open the pool's connection outside the measured section.
        async with redis.asyncio.Redis(connection_pool=broker.connection_pool) as client:
            await client.ping()
        async with probe.measure():
            for _ in range(ctx.count):
                await noop.kiq(PAYLOAD_TEXT)
    finally:
        await broker.shutdown()
    return ctx.count


def fill(ctx: RunContext) -> None:
    from taskiq import TaskiqMessage

    broker = _broker(ctx)
    with contextlib.closing(redis.Redis.from_url(ctx.url)) as client:
        create_group(client, ctx.stream, ctx.group)
        remaining = ctx.count
        while remaining > 0:
            n = min(remaining, PREFILL_PIPELINE)
            pipe = client.pipeline(transaction=False)
            for _ in range(n):
                message = TaskiqMessage(
                    task_id=broker.id_generator(),
                    task_name=TASK_NAME,
                    labels={},
                    labels_types={},
                    args=[PAYLOAD_TEXT],
                    kwargs={},
                )
                pipe.xadd(ctx.stream, {b"data": broker.formatter.dumps(message).message})
            pipe.execute()
            remaining -= n


async def consume(ctx: RunContext, probe: Probe) -> int:
    from taskiq.receiver import Receiver

    broker = _broker(ctx)
    broker.is_worker_process = True
    finished = asyncio.Event()
    handled = 0

    @broker.task(task_name=TASK_NAME)
    async def noop(payload: str) -> None:
        nonlocal handled
        handled += 1
        if handled >= ctx.count:
            finished.set()

    await broker.startup()
    try:
        with ThreadPoolExecutor(max_workers=WORKER_THREADPOOL_THREADS) as pool:
            receiver = Receiver(
                broker=broker,
                executor=pool,
                max_async_tasks=WORKER_MAX_ASYNC_TASKS,
                max_prefetch=WORKER_MAX_PREFETCH,
                run_startup=False,
            )
            async with probe.measure():
                # Returns once `finished` is set and the running tasks (and their acks) are done.
                await receiver.listen(finished)
    finally:
        await broker.shutdown()
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        if (pending := await pending_count(client, ctx.stream, ctx.group)) != 0:
            raise RuntimeError(f"{pending} tasks left pending after the worker finished")
    finally:
        await client.aclose()
    return handled
