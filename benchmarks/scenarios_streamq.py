"""streamq's own scenarios, measured like the redis-py baselines so the two can be compared row by row.

Measures events/s of one process for:
  * streamq-publish[N]: ``Producer.publish`` per event (N = 1), or one ``Producer.publish_many`` call per N
    events (N = 100, 1000), mirroring the baseline's one pipeline per chunk, of the ``Reading`` the
    baselines encode.
  * streamq-consume[N]: an ``App`` with one ``@app.consumer(batch_size=N)`` whose handler does nothing, on a
    stream pre-filled through ``Producer.publish_many``; ``run_until_idle()`` returns once everything is read,
    decoded and settled. N in 1, 10, 100, 500, 1000.

Where ``streamq`` lacks ``Producer``/``App``/``Event``/``Batch`` (as before the core landed), every function
here raises NotImplementedError and the harness reports the case as skipped. If the core's API changes,
adapt it here and nowhere else.

The event is ``Reading`` re-declared as a tagged ``streamq.Event`` with the same values: 121 bytes on the
wire instead of 102, the difference being streamq's type tag.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import redis

from benchmarks.baseline_redispy import CONSUME_COUNTS, QUICK_COUNT
from benchmarks.harness import Case, Probe, RunContext
from benchmarks.payload import SAMPLE
from benchmarks.streams import create_group

NOT_LANDED = "streamq core not landed yet"
REQUIRED_NAMES = ("Event", "Producer", "App", "Batch")
PREFILL_CHUNK = 1000
# streamq packs XADDs itself and publishes ~5x faster than the redis-py pipeline: larger counts keep each
# measured window above a second.
PUBLISH_COUNTS = {1: 60_000, 100: 1_000_000, 1000: 1_500_000}

CASES = [
    *(
        Case(
            scenario="streamq-publish",
            contender="streamq",
            operation="publish",
            batch_size=chunk,
            count=count,
            quick_count=QUICK_COUNT,
            measure="benchmarks.scenarios_streamq:publish",
            detail="Producer.publish per event" if chunk == 1 else f"Producer.publish_many, {chunk} a call",
        )
        for chunk, count in PUBLISH_COUNTS.items()
    ),
    *(
        Case(
            scenario="streamq-consume",
            contender="streamq",
            operation="consume",
            batch_size=batch,
            count=count,
            quick_count=QUICK_COUNT,
            setup="benchmarks.scenarios_streamq:fill",
            measure="benchmarks.scenarios_streamq:consume",
            detail=f"App consumer batch_size={batch}, no-op handler, run_until_idle()",
        )
        for batch, count in CONSUME_COUNTS.items()
    ),
]


def _core() -> ModuleType:
    """The streamq package, or NotImplementedError while it lacks the API these scenarios drive."""
    try:
        import streamq
    except ImportError as exc:
        raise NotImplementedError(NOT_LANDED) from exc
    if not all(hasattr(streamq, name) for name in REQUIRED_NAMES):
        raise NotImplementedError(NOT_LANDED)
    return streamq


@functools.cache
def _reading_type() -> Any:
    """streamq's twin of ``benchmarks.payload.Reading``: same fields, same values, its own envelope."""
    streamq = _core()

    class Reading(streamq.Event, tag="bench.reading"):  # type: ignore[misc, call-arg]
        device_id: int
        seq: int
        ts_ms: int
        temp_c: float
        humidity: float
        site: str
        status: str

    return Reading


def _event() -> Any:
    return _reading_type()(
        device_id=SAMPLE.device_id,
        seq=SAMPLE.seq,
        ts_ms=SAMPLE.ts_ms,
        temp_c=SAMPLE.temp_c,
        humidity=SAMPLE.humidity,
        site=SAMPLE.site,
        status=SAMPLE.status,
    )


async def publish(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    event = _event()
    chunk = [event] * ctx.batch_size
    sent = 0
    async with streamq.Producer(ctx.url) as producer:
        # Connect outside the measured section, on a key of its own (it carries the token: cleaned up).
        await producer.publish(f"{ctx.stream}:warmup", event)
        async with probe.measure():
            if ctx.batch_size == 1:
                for _ in range(ctx.count):
                    await producer.publish(ctx.stream, event)
                sent = ctx.count
            while sent < ctx.count:
                n = min(ctx.batch_size, ctx.count - sent)
                await producer.publish_many(ctx.stream, chunk[:n], chunk_size=n)
                sent += n
    return sent


async def fill(ctx: RunContext) -> None:
    streamq = _core()
    async with streamq.Producer(ctx.url) as producer:
        await producer.publish_many(ctx.stream, [_event()] * ctx.count, chunk_size=PREFILL_CHUNK)
    client = redis.Redis.from_url(ctx.url)
    try:
        create_group(client, ctx.stream, ctx.group)
    finally:
        client.close()


async def consume(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    reading = _reading_type()
    app = streamq.App(ctx.url)
    handled = 0

    # Unannotated, so streamq hands over the whole Batch; `events=` names the type to decode (an annotation
    # naming this function-local class could not be resolved from its string form).
    @app.consumer(ctx.stream, group=ctx.group, events=[reading], batch_size=ctx.batch_size)
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal handled
        handled += len(batch)

    async with probe.measure():
        await app.run_until_idle()
    return handled
