"""Peer: FastStream's Redis broker, publishing through a pipeline and consuming a stream in batches.

Measures events/s of one process for:
  * faststream-publish[100]: ``await broker.publish(payload, stream=..., pipeline=pipe)`` 100 times, then
    ``await pipe.execute()`` (a redis-py pipeline with ``transaction=False`` from ``broker.connect()``).
  * faststream-consume[500]: ``@broker.subscriber(stream=StreamSub(..., batch=True, max_records=500))`` with a
    no-op, unannotated handler (so no per-message validation), over a pre-filled stream. Ends when the handler
    has seen every event and nothing is pending (FastStream XACKs the whole batch after the handler returns).

The payload is ``PAYLOAD_TEXT`` (the shared payload in base64): FastStream 0.7.8's batch stream parser
JSON-dumps the batch it hands the handler and raises UnicodeDecodeError on raw msgpack bytes, leaving those
entries pending (see RESULTS.md). The pre-fill writes FastStream's own binary envelope
(``BinaryMessageFormatV1``) of that text: the bytes its publisher would write, with one correlation id shared
by all entries.
"""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.payload import PAYLOAD_TEXT
from benchmarks.streams import prefill, wait_for_events, wait_settled

CONSUMER_NAME = "bench-1"
PUBLISH_PIPELINE = 100
MAX_RECORDS = 500
REQUIRES = ("faststream",)

CASES = [
    Case(
        scenario="faststream-publish",
        contender="faststream",
        operation="publish",
        batch_size=PUBLISH_PIPELINE,
        count=120_000,
        quick_count=300,
        measure="benchmarks.peer_faststream:publish",
        requires=REQUIRES,
        detail=f"broker.publish(pipeline=...) x {PUBLISH_PIPELINE}, then execute()",
    ),
    Case(
        scenario="faststream-consume",
        contender="faststream",
        operation="consume",
        batch_size=MAX_RECORDS,
        count=250_000,
        quick_count=300,
        setup="benchmarks.peer_faststream:fill",
        measure="benchmarks.peer_faststream:consume",
        requires=REQUIRES,
        detail=f"StreamSub(batch=True, max_records={MAX_RECORDS}), no-op handler",
    ),
]


async def publish(ctx: RunContext, probe: Probe) -> int:
    from faststream.redis import RedisBroker

    broker = RedisBroker(ctx.url)
    client = await broker.connect()
    try:
        sent = 0
        async with probe.measure():
            while sent < ctx.count:
                n = min(ctx.batch_size, ctx.count - sent)
                pipe = client.pipeline(transaction=False)
                for _ in range(n):
                    await broker.publish(PAYLOAD_TEXT, stream=ctx.stream, pipeline=pipe)
                await pipe.execute()
                sent += n
    finally:
        await broker.stop()
    return sent


async def fill(ctx: RunContext) -> None:
    from faststream.redis.message import DATA_KEY
    from faststream.redis.parser import BinaryMessageFormatV1

    envelope = await BinaryMessageFormatV1.encode(
        message=PAYLOAD_TEXT, reply_to=None, headers=None, correlation_id=str(uuid.uuid4())
    )
    prefill(ctx.url, ctx.stream, {DATA_KEY.encode(): envelope}, ctx.count, group=ctx.group)


async def consume(ctx: RunContext, probe: Probe) -> int:
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(ctx.url)
    done = asyncio.Event()
    handled = 0

    @broker.subscriber(
        stream=StreamSub(
            ctx.stream, group=ctx.group, consumer=CONSUMER_NAME, batch=True, max_records=ctx.batch_size
        )
    )
    async def handle(body):  # type: ignore[no-untyped-def]  # unannotated: FastStream skips validation
        nonlocal handled
        handled += len(body)
        if handled >= ctx.count:
            done.set()

    await broker.connect()
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        async with probe.measure():
            await broker.start()
            await wait_for_events(done, lambda: handled)
            await wait_settled(client, ctx.stream, ctx.group)
    finally:
        await broker.stop()
        await client.aclose()
    return handled
