"""Flow scenarios: delayed delivery's lateness and idempotent publishing's cost.

* streamq-delay-lateness[1k/s], [20k/s]: a producer publishes delayed events at a steady offered rate,
  each due LEAD_MS after it is published (`publish_many(..., at=...)`, one call per 10 ms tick), while
  an App in the same process consumes them (its worker's scheduled mover moves them in when due). The
  figure is lateness: the handler's receive time minus the event's due time (both on this machine's
  clock, which the server shares), p50/p95/p99/max in ms. events/s is the delivered rate, bounded by
  the offered one.
* streamq-publish-dedup[N]: `publish_many` with a distinct dedup key per event (every one appended: the
  cost of the check, not of duplicates), chunk N, against streamq-publish-plain[N], the same calls with
  no key on the pipelined XADD path. The report's ratio is dedup / plain within one run.
"""

from __future__ import annotations

import array
import asyncio
import functools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.baseline_redispy import QUICK_COUNT
from benchmarks.harness import Case, Probe, RunContext
from benchmarks.procs import latency_summary
from benchmarks.scenarios_streamq import _core, _event

TICK_S = 0.010  # the producer publishes one call per tick, so the offered rate is steady at 10 ms scale
LEAD_MS = 300  # how far ahead of its publish each event is due: scheduled ahead of time, as in use
SCHEDULED_POLL_MS = 200  # the consumer's default
DELIVERY_TIMEOUT_S = 120.0
LATENESS_RATES = {"1k/s": (1_000, 5_000), "20k/s": (20_000, 100_000)}  # label: (events/s, events)
DEDUP_COUNTS = {1: 30_000, 100: 600_000}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CASES = [
    *(
        Case(
            scenario="streamq-delay-lateness",
            contender="streamq",
            operation="e2e",
            batch_size=rate // 100,
            count=count,
            quick_count=QUICK_COUNT,
            measure="benchmarks.scenarios_flow:lateness",
            variant=label,
            options={"rate": rate},
            chart=False,
            detail=f"publish_many(at=now+{LEAD_MS} ms) at {label} offered, App consumer in-process;"
            " lateness = receive - due",
        )
        for label, (rate, count) in LATENESS_RATES.items()
    ),
    *(
        Case(
            scenario="streamq-publish-plain",
            contender="streamq",
            operation="publish",
            batch_size=chunk,
            count=count,
            quick_count=QUICK_COUNT,
            measure="benchmarks.scenarios_flow:publish_keys",
            options={"dedup": 0},
            detail="Producer.publish per event" if chunk == 1 else f"Producer.publish_many, {chunk} a call",
        )
        for chunk, count in DEDUP_COUNTS.items()
    ),
    *(
        Case(
            scenario="streamq-publish-dedup",
            contender="streamq",
            operation="publish",
            batch_size=chunk,
            count=count,
            quick_count=QUICK_COUNT,
            measure="benchmarks.scenarios_flow:publish_keys",
            options={"dedup": 1},
            compare_to=f"streamq-publish-plain[{chunk}]",
            detail=(
                "Producer.publish(dedup_key=distinct) per event"
                if chunk == 1
                else f"Producer.publish_many(dedup_key=distinct keys), {chunk} a call"
            ),
        )
        for chunk, count in DEDUP_COUNTS.items()
    ),
]


@functools.cache
def _due_type() -> Any:
    streamq = _core()

    class DueReading(streamq.Event, tag="bench.due_reading"):  # type: ignore[misc, call-arg]
        seq: int
        due_ms: int

    return DueReading


async def lateness(ctx: RunContext, probe: Probe) -> int:
    """Publish delayed events at options["rate"] events/s; report handler receive time - due time."""
    streamq = _core()
    due_type = _due_type()
    rate = ctx.options["rate"]
    per_tick = max(1, round(rate * TICK_S))
    lateness_ns: array.array[int] = array.array("q")
    delivered = asyncio.Event()

    app = streamq.App(ctx.url)

    @app.consumer(
        ctx.stream, group=ctx.group, events=[due_type], batch_size=1000, block_ms=1000,
        scheduled_poll_ms=SCHEDULED_POLL_MS, retention=False,
    )  # fmt: skip
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        now_ns = time.time_ns()
        lateness_ns.extend(now_ns - event.due_ms * 1_000_000 for event in batch.events)
        if len(lateness_ns) >= ctx.count:
            delivered.set()

    worker = asyncio.create_task(app.run())
    sent = 0
    try:
        async with streamq.Producer(ctx.url) as producer:
            await producer.publish(f"{ctx.stream}:warmup", _event())  # connect outside the measurement
            async with probe.measure():
                started = time.monotonic()
                tick = 0
                while sent < ctx.count:
                    n = min(per_tick, ctx.count - sent)
                    due_ms = time.time_ns() // 1_000_000 + LEAD_MS
                    at = EPOCH + timedelta(milliseconds=due_ms)  # exact: no float rounding of the ms
                    await producer.publish_many(
                        ctx.stream, [due_type(seq=sent + i, due_ms=due_ms) for i in range(n)], at=at
                    )
                    sent += n
                    tick += 1
                    pause = started + tick * TICK_S - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                await asyncio.wait_for(delivered.wait(), DELIVERY_TIMEOUT_S)
    finally:
        app.stop()
        await asyncio.wait_for(worker, 30)
    probe.extra.update(latency_summary(lateness_ns))
    probe.extra["offered_events_s"] = float(rate)
    return len(lateness_ns)


async def publish_keys(ctx: RunContext, probe: Probe) -> int:
    """publish (chunk 1) or publish_many per chunk, with a distinct dedup key per event when dedup=1."""
    streamq = _core()
    event = _event()
    dedup = bool(ctx.options.get("dedup"))
    keys = [f"order-{n}:placed" for n in range(ctx.count)] if dedup else None
    sent = 0
    async with streamq.Producer(ctx.url) as producer:
        await producer.publish(f"{ctx.stream}:warmup", event, dedup_key="warmup" if dedup else None)
        async with probe.measure():
            if ctx.batch_size == 1:
                for n in range(ctx.count):
                    await producer.publish(ctx.stream, event, dedup_key=keys[n] if keys else None)
                sent = ctx.count
            while sent < ctx.count:
                n = min(ctx.batch_size, ctx.count - sent)
                await producer.publish_many(
                    ctx.stream, [event] * n, chunk_size=n, dedup_key=keys[sent : sent + n] if keys else None
                )
                sent += n
    return sent
