"""What retention costs the worker: consume throughput with retention on (the default) against off.

  * streamq-retention[off-on-100] and [off-on-1000]: the streamq-consume app (one ``@app.consumer``,
    no-op handler, ``run_until_idle()``) run 2 x ROUNDS times in one child, alternating retention off and
    on (off, on, on, off, ...: neither side always goes first), each run on ROUND_EVENTS events published
    just before it (untimed) to a stream of its own, so that no run trims what another left. "On" is the
    default consumer (its worker trims what every group acknowledged each second, up to 100,000 entries a
    call and again at once while there is more); "off" is ``retention=False``. Each run is timed from its
    start until the handler has had every event. Alternating in one process keeps the comparison fair on
    a shared machine whose load drifts: both sides see the same drift.
    Extra figures: ``off.events_per_s``, ``on.events_per_s`` (medians of their runs), ``on/off.ratio`` and
    ``on.trimmed`` (entries the "on" runs trimmed: that they trimmed everything is what makes the figure
    honest). The case's own events/s counts the untimed fills too: read the extra figures.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.scenarios_streamq import _core, _event, _reading_type

ROUNDS = 6
ROUND_EVENTS = 600_000  # 2-3 s a run: the trimmer (every second) runs in each
QUICK_ROUND_EVENTS = 300

CASES = [
    Case(
        scenario="streamq-retention",
        contender="streamq",
        operation="consume",
        batch_size=batch,
        count=2 * ROUNDS * ROUND_EVENTS,
        quick_count=2 * ROUNDS * QUICK_ROUND_EVENTS,
        measure="benchmarks.scenarios_retention:alternate",
        setup="benchmarks.scenarios_retention:nothing",
        variant=f"off-on-{batch}",
        options={"rounds": ROUNDS},
        chart=False,
        detail=f"App consumer batch_size={batch}, retention off then on, {ROUNDS} runs each, alternating",
    )
    for batch in (100, 1000)
]


def nothing(ctx: RunContext) -> None:
    """Each run makes its own stream (its consumer creates the group at the stream's start)."""


async def _run(ctx: RunContext, stream: str, retention: bool, expected: int) -> tuple[int, float, int]:
    """One run: (events handled, seconds until the handler had them all, entries trimmed)."""
    streamq = _core()
    app = streamq.App(ctx.url)
    handled: list[Any] = [0, None]  # events handled; when the last one expected was (perf_counter)

    @app.consumer(
        stream, group=ctx.group, events=[_reading_type()], batch_size=ctx.batch_size, retention=retention
    )
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        handled[0] += len(batch)
        if handled[0] >= expected:
            handled[1] = time.perf_counter()

    started = time.perf_counter()
    await app.run_until_idle()
    elapsed = (handled[1] or time.perf_counter()) - started
    return handled[0], elapsed, app.counts().get("trimmed", 0)


async def alternate(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    rounds = ctx.options["rounds"]
    per_run = ctx.count // (2 * rounds)
    rates: dict[bool, list[float]] = {False: [], True: []}
    total = trimmed = 0
    async with probe.measure():
        for round_ in range(rounds):
            for retention in (False, True) if round_ % 2 == 0 else (True, False):
                stream = f"{ctx.stream}-{round_}-{'on' if retention else 'off'}"
                async with streamq.Producer(ctx.url) as producer:
                    await producer.publish_many(stream, [_event()] * per_run, chunk_size=1000)
                handled, elapsed, cut = await _run(ctx, stream, retention, per_run)
                rates[retention].append(handled / elapsed)
                total += handled
                trimmed += cut if retention else 0
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    probe.extra["off.events_per_s"] = round(off)
    probe.extra["on.events_per_s"] = round(on)
    probe.extra["on/off.ratio"] = round(on / off, 4)
    probe.extra["on.trimmed"] = trimmed
    return total
