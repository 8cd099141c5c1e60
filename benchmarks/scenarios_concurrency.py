"""Concurrent batches (``concurrency=N`` on a consumer): an I/O-bound handler at N = 1, 2, 4, 8, 16, 32.

Measures events/s of one worker process for:
  * streamq-concurrency[N-lanes]: an ``App`` with one ``@app.consumer(batch_size=100, concurrency=N)`` whose
    handler waits ``await asyncio.sleep(0.05)`` per batch (a database or HTTP call that costs no CPU), on a
    stream pre-filled through ``Producer.publish_many``; ``run_until_idle()`` returns once everything is
    read, handled and settled. Each case is compared to N = 1 ("relative").

One lane of batches of 100 waiting 50 ms each tops out at 2,000 events/s; N lanes wait side by side, so the
rate should grow about N times until the process is CPU bound (reading, decoding and settling N batches at
once), where the curve flattens. The count grows with N so that every case runs for a few seconds.
"""

from __future__ import annotations

import asyncio

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.scenarios_streamq import _core, _reading_type

BATCH_SIZE = 100
SLEEP_MS = 50  # the handler's wait per batch
LANES = (1, 2, 4, 8, 16, 32)
EVENTS_PER_LANE = 6_000  # ~3 s a case while the rate scales (2,000 events/s per lane at most)
QUICK_COUNT = 400


def _name(lanes: int) -> str:
    return f"streamq-concurrency[{lanes}-lanes]"


CASES = [
    Case(
        scenario="streamq-concurrency",
        contender="streamq",
        operation="consume",
        batch_size=BATCH_SIZE,
        count=EVENTS_PER_LANE * lanes,
        quick_count=QUICK_COUNT,
        setup="benchmarks.scenarios_streamq:fill",
        measure="benchmarks.scenarios_concurrency:consume_io",
        variant=f"{lanes}-lanes",
        options={"concurrency": lanes, "sleep_ms": SLEEP_MS},
        chart=False,
        compare_to=_name(1) if lanes > 1 else "",
        detail=f"App consumer batch_size={BATCH_SIZE}, concurrency={lanes}, handler sleeps {SLEEP_MS} ms",
    )
    for lanes in LANES
]


async def consume_io(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    reading = _reading_type()
    app = streamq.App(ctx.url)
    wait_s = ctx.options["sleep_ms"] / 1000
    handled = 0

    @app.consumer(
        ctx.stream, group=ctx.group, events=[reading], batch_size=ctx.batch_size,
        concurrency=ctx.options["concurrency"],
    )  # fmt: skip
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal handled
        await asyncio.sleep(wait_s)
        handled += len(batch)

    async with probe.measure():
        await app.run_until_idle()
    return handled
