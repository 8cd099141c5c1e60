"""What Prometheus metrics cost the worker: consume throughput with metrics on against metrics off.

Measures events/s of one worker process for:
  * streamq-metrics[off-on]: the streamq-consume[100] app (one ``@app.consumer(batch_size=100)``, no-op
    handler, ``run_until_idle()``) run 2 x ROUNDS times in one child, alternating metrics off and on (off,
    on, on, off, off, on, ...: neither side always goes first), each run on ROUND_EVENTS events published
    just before it (untimed). "On" is ``App(metrics_port=P, metrics_refresh_ms=5000)`` with another process
    scraping ``/metrics`` every second, as Prometheus would (15 times as often as its default); "off" is the
    default App (no port). The heartbeat is the default (60 s) on both sides. Each run is timed from its
    start until the handler has had every event (the shutdown after is not throughput). Alternating in one
    process keeps the comparison fair on a shared machine whose load drifts over a run: both sides see the
    same drift.
    Extra figures: ``off.events_per_s`` and ``on.events_per_s`` (each the median of its runs) and
    ``on/off.ratio`` (on's median over off's). The case's own events/s counts the untimed fills too:
    read the extra figures.
  * streamq-metrics[off] and streamq-metrics[on]: the same apps, one run per repeat as the harness usually
    measures, "on" compared to "off" ("relative").
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.scenarios_streamq import _core, _event, _reading_type

BATCH_SIZE = 100
ROUNDS = 5  # runs of each side in streamq-metrics[off-on]
ROUND_EVENTS = 1_000_000  # ~3 s a run: start-up costs (the first gauge refresh) weigh little
QUICK_ROUND_EVENTS = 300
SINGLE_COUNT = 400_000
QUICK_COUNT = 300
SCRAPE_EVERY_S = 1.0  # Prometheus' default is 15 s
REFRESH_MS = 5_000  # the Redis gauges' refresh; the default is 15 s

CASES = [
    Case(
        scenario="streamq-metrics",
        contender="streamq",
        operation="consume",
        batch_size=BATCH_SIZE,
        count=2 * ROUNDS * ROUND_EVENTS,
        quick_count=2 * ROUNDS * QUICK_ROUND_EVENTS,
        measure="benchmarks.scenarios_metrics:alternate",
        setup="benchmarks.scenarios_metrics:make_group",
        variant="off-on",
        options={"rounds": ROUNDS},
        chart=False,
        detail=f"App consumer batch_size={BATCH_SIZE}, metrics off then on, {ROUNDS} runs each, alternating",
        requires=("prometheus_client",),
    ),
    *(
        Case(
            scenario="streamq-metrics",
            contender="streamq",
            operation="consume",
            batch_size=BATCH_SIZE,
            count=SINGLE_COUNT,
            quick_count=QUICK_COUNT,
            setup="benchmarks.scenarios_streamq:fill",
            measure="benchmarks.scenarios_metrics:consume",
            variant=side,
            options={"metrics": int(side == "on")},
            chart=False,
            compare_to="streamq-metrics[off]" if side == "on" else "",
            detail=f"App consumer batch_size={BATCH_SIZE}, metrics {side}, no-op handler, run_until_idle()",
            requires=("prometheus_client",),
        )
        for side in ("off", "on")
    ),
]


def make_group(ctx: RunContext) -> None:
    """Only the group: each run of the alternating case publishes its own events."""
    import redis

    from benchmarks.streams import create_group

    client = redis.Redis.from_url(ctx.url)
    try:
        create_group(client, ctx.stream, ctx.group)
    finally:
        client.close()


def _app(ctx: RunContext, port: int | None, expected: int) -> tuple[Any, list[Any]]:
    """The app; with a port, metrics on (the Redis gauges refreshed every REFRESH_MS). The heartbeat is the
    default on both sides (every 60 s): it is not part of the metrics."""
    streamq = _core()
    reading = _reading_type()
    options: dict[str, Any] = {}
    if port is not None:
        options = {"metrics_port": port, "metrics_host": "127.0.0.1", "metrics_refresh_ms": REFRESH_MS}
    app = streamq.App(ctx.url, **options)
    handled: list[Any] = [0, None]  # events handled; when the last one expected was (perf_counter)

    @app.consumer(ctx.stream, group=ctx.group, events=[reading], batch_size=ctx.batch_size)
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        handled[0] += len(batch)
        if handled[0] >= expected:
            handled[1] = time.perf_counter()

    return app, handled


SCRAPER = """
import signal, sys, time, urllib.request
scrapes = 0
def done(*_):
    print(scrapes, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics", timeout=5) as reply:
            reply.read()
        scrapes += 1
        time.sleep(%s)
    except OSError:
        time.sleep(0.05)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Scraper:
    """Scrapes /metrics on `port` every SCRAPE_EVERY_S from a process of its own, as Prometheus would: its
    CPU is not the worker's (on 2 cores it still competes with the worker and the server, as it would)."""

    def __init__(self, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", SCRAPER % (port, SCRAPE_EVERY_S)], stdout=subprocess.PIPE, text=True
        )
        # Its start-up (an interpreter, urllib) is not the worker's cost: wait it out before the run.
        assert self._process.stdout is not None
        self._process.stdout.readline()

    def stop(self) -> int:
        self._process.terminate()
        out, _ = self._process.communicate(timeout=10)
        return int(out.strip() or 0)


async def _run(ctx: RunContext, metrics: bool, expected: int) -> tuple[int, float, int]:
    """One run: (events handled, seconds from the start until the handler had them all, scrapes). The
    shutdown after is left out: it is not throughput (the metrics server's takes up to its 0.1 s poll)."""
    port = _free_port() if metrics else None
    app, handled = _app(ctx, port, expected)
    scraper = _Scraper(port) if port is not None else None
    started = time.perf_counter()
    await app.run_until_idle()
    elapsed = (handled[1] or time.perf_counter()) - started
    scrapes = scraper.stop() if scraper is not None else 0
    return handled[0], elapsed, scrapes


def _preload() -> None:
    """Import what metrics on imports once per process (prometheus-client), before any timing."""
    import streamq.metrics  # noqa: F401


async def consume(ctx: RunContext, probe: Probe) -> int:
    _preload()
    port = _free_port() if ctx.options.get("metrics") else None
    app, handled = _app(ctx, port, ctx.count)
    scraper = _Scraper(port) if port is not None else None
    async with probe.measure():
        await app.run_until_idle()
    if scraper is not None:
        probe.extra["scrapes"] = scraper.stop()
    return handled[0]


async def alternate(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    _preload()
    rounds = ctx.options["rounds"]
    per_run = ctx.count // (2 * rounds)
    rates: dict[bool, list[float]] = {False: [], True: []}
    total = 0
    scrapes = 0
    async with probe.measure():
        for round_ in range(rounds):
            for metrics in (False, True) if round_ % 2 == 0 else (True, False):
                async with streamq.Producer(ctx.url) as producer:
                    await producer.publish_many(ctx.stream, [_event()] * per_run, chunk_size=1000)
                handled, elapsed, scraped = await _run(ctx, metrics, per_run)
                rates[metrics].append(handled / elapsed)
                total += handled
                scrapes += scraped
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    probe.extra["off.events_per_s"] = round(off)
    probe.extra["on.events_per_s"] = round(on)
    probe.extra["on/off.ratio"] = round(on / off, 4)
    probe.extra["on.scrapes"] = scrapes
    return total
