"""streamq's own scenarios, measured like the redis-py baselines so the two can be compared row by row.

Measures events/s of one process for:
  * streamq-publish[N]: ``Producer.publish`` per event (N = 1), or one ``Producer.publish_many`` call per N
    events (N = 100, 1000), mirroring the baseline's one pipeline per chunk, of the ``Reading`` the
    baselines encode.
  * streamq-publish-many[1]: one ``Producer.publish_many`` call per event (chunks of 1), beside ``publish``.
  * streamq-publish-trim[N], streamq-publish-many-trim[1]: the same calls with ``maxlen=100_000`` (XADD
    MAXLEN ~, the Producer's default approximate trimming), on a stream pre-filled to that cap (untimed) so
    that every append runs with trimming in effect, as it would in production; the stream's length after
    the run is reported (``stream_length_after``) to show that it was trimmed.
  * streamq-consume[N]: an ``App`` with one ``@app.consumer(batch_size=N)`` whose handler does nothing, on a
    stream pre-filled through ``Producer.publish_many``; ``run_until_idle()`` returns once everything is read,
    decoded and settled. N in 1, 10, 100, 500, 1000.

Where ``streamq`` lacks ``Producer``/``App``/``Event``/``Batch`` (as before the core landed), every function
here raises NotImplementedError and the harness reports the case as skipped. If the core's API changes,
adapt it here and in ``scenarios_system.py`` / ``procs.py`` (the system scenarios, which reuse this module's
event types and fills), nowhere else.

The event is ``Reading`` re-declared as a tagged ``streamq.Event`` with the same values: 121 bytes on the
wire instead of 102, the difference being streamq's type tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from types import ModuleType
from typing import Any

import redis

from benchmarks.baseline_redispy import CONSUME_COUNTS, QUICK_COUNT
from benchmarks.harness import Case, Probe, RunContext
from benchmarks.payload import SAMPLE
from benchmarks.streams import create_group, prefill

NOT_LANDED = "streamq core not landed yet"
REQUIRED_NAMES = ("Event", "Producer", "App", "Batch")
PREFILL_CHUNK = 1000
# streamq packs XADDs itself and publishes ~5x faster than the redis-py pipeline: larger counts keep each
# measured window above a second.
PUBLISH_COUNTS = {1: 60_000, 100: 1_000_000, 1000: 1_500_000}
# Trimmed publishing: a cap well above any lag, as README advises; approximate (~) is the Producer's default.
TRIM_MAXLEN = 100_000

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
    Case(
        scenario="streamq-publish-many",
        contender="streamq",
        operation="publish",
        batch_size=1,
        count=PUBLISH_COUNTS[1],
        quick_count=QUICK_COUNT,
        measure="benchmarks.scenarios_streamq:publish",
        options={"many": 1},
        compare_to="streamq-publish[1]",
        detail="Producer.publish_many, 1 a call",
    ),
    *(
        Case(
            scenario="streamq-publish-trim",
            contender="streamq",
            operation="publish",
            batch_size=chunk,
            count=count,
            quick_count=QUICK_COUNT,
            setup="benchmarks.scenarios_streamq:fill_to_cap",
            measure="benchmarks.scenarios_streamq:publish",
            options={"maxlen": TRIM_MAXLEN},
            compare_to=f"streamq-publish[{chunk}]",
            detail=(
                f"Producer.publish(maxlen={TRIM_MAXLEN:_}) per event"
                if chunk == 1
                else f"Producer.publish_many(maxlen={TRIM_MAXLEN:_}), {chunk} a call"
            )
            + ", stream at the cap",
        )
        for chunk, count in PUBLISH_COUNTS.items()
    ),
    Case(
        scenario="streamq-publish-many-trim",
        contender="streamq",
        operation="publish",
        batch_size=1,
        count=PUBLISH_COUNTS[1],
        quick_count=QUICK_COUNT,
        setup="benchmarks.scenarios_streamq:fill_to_cap",
        measure="benchmarks.scenarios_streamq:publish",
        options={"many": 1, "maxlen": TRIM_MAXLEN},
        compare_to="streamq-publish-many[1]",
        detail=f"Producer.publish_many(maxlen={TRIM_MAXLEN:_}), 1 a call, stream at the cap",
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
    # Retention (on by default) against none: the trimmer's cost on the consume path.
    *(
        Case(
            scenario="streamq-consume-no-retention",
            contender="streamq",
            operation="consume",
            batch_size=batch,
            count=CONSUME_COUNTS[batch],
            quick_count=QUICK_COUNT,
            setup="benchmarks.scenarios_streamq:fill",
            measure="benchmarks.scenarios_streamq:consume",
            options={"retention": 0},
            compare_to=f"streamq-consume[{batch}]",
            detail=f"App consumer batch_size={batch}, retention=False, no-op handler, run_until_idle()",
        )
        for batch in (100, 1000)
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


@functools.cache
def _timed_type() -> Any:
    """``Reading`` plus the producer's send time (``time.time_ns()``) and the end-to-end phase it belongs to,
    for latency: the worker subtracts `sent_ns` from its own clock (same machine, so the same clock)."""
    streamq = _core()

    class TimedReading(streamq.Event, tag="bench.timed_reading"):  # type: ignore[misc, call-arg]
        device_id: int
        seq: int
        ts_ms: int
        temp_c: float
        humidity: float
        site: str
        status: str
        sent_ns: int
        phase: int

    return TimedReading


def _timed_event(sent_ns: int, phase: int) -> Any:
    return _timed_type()(
        device_id=SAMPLE.device_id,
        seq=SAMPLE.seq,
        ts_ms=SAMPLE.ts_ms,
        temp_c=SAMPLE.temp_c,
        humidity=SAMPLE.humidity,
        site=SAMPLE.site,
        status=SAMPLE.status,
        sent_ns=sent_ns,
        phase=phase,
    )


def _event(seq: int = SAMPLE.seq) -> Any:
    return _reading_type()(
        device_id=SAMPLE.device_id,
        seq=seq,
        ts_ms=SAMPLE.ts_ms,
        temp_c=SAMPLE.temp_c,
        humidity=SAMPLE.humidity,
        site=SAMPLE.site,
        status=SAMPLE.status,
    )


async def publish(ctx: RunContext, probe: Probe) -> int:
    """`publish` per event (batch 1), else one `publish_many` per chunk; options: many=1 makes batch 1 use
    `publish_many` too, maxlen=N trims (approximately) on every append."""
    streamq = _core()
    event = _event()
    chunk = [event] * ctx.batch_size
    maxlen = ctx.options.get("maxlen")
    one_by_one = ctx.batch_size == 1 and not ctx.options.get("many")
    sent = 0
    async with streamq.Producer(ctx.url) as producer:
        # Connect outside the measured section, on a key of its own (it carries the token: cleaned up).
        await producer.publish(f"{ctx.stream}:warmup", event)
        async with probe.measure():
            if one_by_one:
                for _ in range(ctx.count):
                    await producer.publish(ctx.stream, event, maxlen=maxlen)
                sent = ctx.count
            while sent < ctx.count:
                n = min(ctx.batch_size, ctx.count - sent)
                await producer.publish_many(ctx.stream, chunk[:n], chunk_size=n, maxlen=maxlen)
                sent += n
    if maxlen is not None:
        with contextlib.closing(redis.Redis.from_url(ctx.url)) as client:
            probe.extra["stream_length_after"] = client.xlen(ctx.stream)
    return sent


def fill_to_cap(ctx: RunContext) -> None:
    """Pre-fill the stream to the case's maxlen, so that the measured appends trim from the first one."""
    prefill(ctx.url, ctx.stream, entry_fields(ctx.url, ctx.stream), ctx.options["maxlen"], group=None)


def entry_fields(url: str, stream: str) -> dict[bytes, bytes]:
    """The fields of the stream entry streamq's Producer writes for `_event()` (README: one field, `d`), for
    pre-filling large streams server-side at Lua speed. Found by publishing one to a scratch key."""
    streamq = _core()
    scratch = f"{stream}:sample"

    async def write() -> None:
        async with streamq.Producer(url) as producer:
            await producer.publish(scratch, _event())

    asyncio.run(write())
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        ((_, fields),) = client.xrange(scratch)
        client.delete(scratch)
    return dict(fields)


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
    @app.consumer(
        ctx.stream, group=ctx.group, events=[reading], batch_size=ctx.batch_size,
        retention=bool(ctx.options.get("retention", 1)),
    )  # fmt: skip
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal handled
        handled += len(batch)

    async with probe.measure():
        await app.run_until_idle()
    return handled
