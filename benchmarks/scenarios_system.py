"""streamq as a system: end to end, scaling, recovery, failure paths and growth (issue #3's second list).

Measures, each repeat in its own measuring child as every case (helper processes are started from there, see
``benchmarks.procs``), with extra figures in ``Probe.extra``:

  * streamq-e2e[500]: one producer process and one worker process (an ``App`` consumer, batch_size=500,
    whose batch handler records latency = handler's ``time.time_ns()`` minus the producer's ``sent_ns``
    stamped into each event). First the producer runs flat out (``publish_many``, 1000 a call): events/s is
    the max sustainable rate, from the first publish to the last ack (XPENDING empty), and "saturation" the
    latency then (mostly queueing: the producer outruns the worker). Then, with the same processes, the
    producer offers fixed rates, paced every millisecond: 10k/s, 30k/s, 50%, 90% and 100% of the max just
    measured, ``PHASE_S`` seconds each; per phase the latency p50/p95/p99/max, the rates offered, sent and
    completed, and each process's CPU. "sustained" repeats the figures of the highest paced phase the pair
    kept up with (sent and completed within 3% of the offer), searching 80%, 70%, 60%, 50% of the max when
    neither 90% nor 100% was: the latency at the highest rate held without a growing backlog.
  * streamq-scaling[N-workers]: N = 1, 2, 4 worker processes (``run_until_idle()``, no-op handler,
    batch_size=500) on one pre-filled stream; events/s of all of them together, from "go" until the last one
    is idle, and per process. On a 2-core box with the server on the same cores this measures contention,
    not scaling: read it next to the server and client CPU columns.
  * streamq-recovery[500]: a helper XREADGROUPs every entry (100k) into the group under its own consumer
    name and is SIGKILLed; once its entries are idle past the lease (``lease_ms=1000``; the wait is not
    timed), a fresh ``App`` consumer with that lease runs ``run_until_idle()``: the time until nothing is
    pending (XAUTOCLAIM reclaims ``batch_size`` entries a step, then handles and acknowledges them).
  * streamq-failures[none] / [retry1%-dead0.1%]: consume a pre-filled stream of numbered events with the
    same handler, which in the second case retries 1% of the events once (``batch.retry``, backoff
    ``retry_base_ms=50``) and dead-letters 0.1% (``batch.dead_letter``); ``run_until_idle()`` returns once
    everything is acknowledged or dead-lettered, so the retried events' second delivery is inside the run.
    events/s counts events settled (acknowledged + dead-lettered), not deliveries; the counts are checked.
  * streamq-growth[empty] / [backlog-1M] / [pending-100k]: the time to consume the first 300k events of a
    stream holding exactly those, of one holding 1M, and of one where 100k older entries are pending on
    another consumer that looks alive (read just before, far from idle past the lease). The consumer is
    stopped (``app.stop()``) from the handler that saw the 300,000th event, in all three cases alike.

Where ``streamq`` lacks its API the functions raise NotImplementedError (skipped), as in scenarios_streamq.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from benchmarks import procs
from benchmarks.harness import Case, Probe, RunContext
from benchmarks.scenarios_streamq import _core, _event, _reading_type, entry_fields
from benchmarks.streams import create_group, pending_count, prefill

BATCH = 500  # the consumers' batch_size in every system scenario: where streamq-consume levels off
QUICK = 3_000  # events per repeat under --quick: enough for every phase to have a few batches

# End to end: the fixed offered rates, and the fractions of the measured max.
E2E_RATES = ((10_000, "10k/s"), (30_000, "30k/s"))
# 100% offers the max at an even pace: the flat-out producer's latency is all queueing (it outruns the
# worker, so backlog and latency grow through the phase); paced at the max, it is what the worker adds.
E2E_FRACTIONS = ((0.5, "50%-of-max"), (0.9, "90%-of-max"), (1.0, "100%-of-max"))
# Searched, highest first, when neither 90% nor 100% of the max is kept up with (see end_to_end).
E2E_SEARCH_FRACTIONS = (0.8, 0.7, 0.6, 0.5)
KEEP_UP = 0.97  # a paced phase is kept up with when sent and done rates are both within 3% of the offer
PHASE_S = 3.0  # seconds per fixed-rate phase in a full run
QUICK_PHASE_S = 0.2
PHASE_TIMEOUT_S = 240.0  # the worker fails a phase itself after STALL_TIMEOUT_S without progress

SCALING_WORKERS = (1, 2, 4)
RECOVERY_LEASE_MS = 1_000
IDLE_POLL_S = 0.05
VICTIM_CONSUMER = "bench-victim"
HOLDER_CONSUMER = "bench-holder"

FAIL_RETRY_EVERY = 100  # events whose seq % 100 == 1 are retried once: 1%
FAIL_DEAD_EVERY = 1_000  # events whose seq % 1000 == 0 are dead-lettered: 0.1%
FAIL_BACKOFF_MS = 50  # retry_base_ms = retry_max_ms (and retry_poll_ms): retries come back within the run
DEAD_REASON = "bench: dead-lettered on purpose"
NUMBERED_CHUNK = 10_000  # events per publish_many call when pre-filling numbered events

GROWTH_BACKLOG = 1_000_000
GROWTH_PENDING = 100_000
STALL_TIMEOUT_S = 30.0

CASES = [
    Case(
        scenario="streamq-e2e",
        contender="streamq",
        operation="e2e",
        batch_size=BATCH,
        count=400_000,
        quick_count=QUICK,
        setup="benchmarks.scenarios_system:empty_group",
        measure="benchmarks.scenarios_system:end_to_end",
        chart=False,
        detail=(
            "1 producer process (publish_many, flat out) + 1 worker process (App, no-op handler): max "
            "sustainable rate; latency at it and at fixed offered rates (extra)"
        ),
    ),
    *(
        Case(
            scenario="streamq-scaling",
            variant=f"{workers}-worker{'s' if workers > 1 else ''}",
            contender="streamq",
            operation="consume",
            batch_size=BATCH,
            count=600_000,
            quick_count=QUICK,
            setup="benchmarks.scenarios_streamq:fill",
            measure="benchmarks.scenarios_system:scaling",
            options={"workers": workers},
            chart=False,
            compare_to="" if workers == 1 else "streamq-scaling[1-worker]",
            detail=f"{workers} worker process(es) on one pre-filled stream, run_until_idle(): all together",
        )
        for workers in SCALING_WORKERS
    ),
    Case(
        scenario="streamq-recovery",
        contender="streamq",
        operation="consume",
        batch_size=BATCH,
        count=100_000,
        quick_count=QUICK,
        setup="benchmarks.scenarios_streamq:fill",
        measure="benchmarks.scenarios_system:recovery",
        options={"lease_ms": RECOVERY_LEASE_MS},
        chart=False,
        detail=(
            f"all entries pending on a SIGKILLed consumer, idle past the lease: App(lease_ms="
            f"{RECOVERY_LEASE_MS}) run_until_idle() until nothing is pending"
        ),
    ),
    Case(
        scenario="streamq-failures",
        variant="none",
        contender="streamq",
        operation="consume",
        batch_size=BATCH,
        count=500_000,
        quick_count=QUICK,
        setup="benchmarks.scenarios_system:fill_numbered",
        measure="benchmarks.scenarios_system:failures",
        chart=False,
        detail="numbered events, the failure handler with nothing to fail, run_until_idle()",
    ),
    Case(
        scenario="streamq-failures",
        variant="retry1%-dead0.1%",
        contender="streamq",
        operation="consume",
        batch_size=BATCH,
        count=500_000,
        quick_count=QUICK,
        setup="benchmarks.scenarios_system:fill_numbered",
        measure="benchmarks.scenarios_system:failures",
        options={"retry_every": FAIL_RETRY_EVERY, "dead_every": FAIL_DEAD_EVERY},
        chart=False,
        compare_to="streamq-failures[none]",
        detail=(
            f"1% batch.retry() once (backoff {FAIL_BACKOFF_MS} ms), 0.1% batch.dead_letter(), "
            "run_until_idle(): events settled/s"
        ),
    ),
    *(
        Case(
            scenario="streamq-growth",
            variant=variant,
            contender="streamq",
            operation="consume",
            batch_size=BATCH,
            count=300_000,
            quick_count=QUICK,
            setup="benchmarks.scenarios_system:fill_growth",
            measure="benchmarks.scenarios_system:consume_first",
            options=options,
            chart=False,
            compare_to="" if variant == "empty" else "streamq-growth[empty]",
            detail=detail,
        )
        for variant, options, detail in (
            ("empty", {}, "first 300k events of a stream holding just those"),
            ("backlog-1M", {"backlog": GROWTH_BACKLOG}, "first 300k events of a 1M-entry stream"),
            (
                "pending-100k",
                {"pending": GROWTH_PENDING},
                "first 300k new events, 100k older ones pending on a live-looking consumer",
            ),
        )
    ),
]


# ------------------------------------------------------------------------------------------- end to end


def empty_group(ctx: RunContext) -> None:
    with contextlib.closing(redis.Redis.from_url(ctx.url)) as client:
        create_group(client, ctx.stream, ctx.group)


async def end_to_end(ctx: RunContext, probe: Probe) -> int:
    _core()
    phase_s = QUICK_PHASE_S if ctx.quick else PHASE_S
    worker = procs.Helper("e2e-worker", procs.e2e_worker, ctx.url, ctx.stream, ctx.group, ctx.batch_size)
    producer = procs.Helper("e2e-producer", procs.e2e_producer, ctx.url, ctx.stream)
    try:
        await worker.recv(procs.START_TIMEOUT_S)
        await producer.recv(procs.START_TIMEOUT_S)

        # Saturation: the producer flat out; the rate is the worker's, first publish to last ack.
        worker.send("phase", 0, ctx.count)
        await worker.recv(procs.START_TIMEOUT_S)
        async with probe.measure():
            producer.send("flat", 0, ctx.count, 0.0)
            sent, done = await _phase_reports(producer, worker)
        window_s = (done["acked_ns"] - sent["first_ns"]) / 1e9
        probe.narrow_wall(min(window_s, probe.wall_s or window_s))
        probe.add_cpu(sent["cpu_s"] + done["cpu_s"])
        max_rate = ctx.count / window_s
        _record_phase(probe, "saturation", None, ctx.count, sent, done)
        _check_phase("saturation", ctx.count, done)

        # Fixed offered rates, with the same two processes.
        plan = [*E2E_RATES, *((fraction * max_rate, label) for fraction, label in E2E_FRACTIONS)]
        kept_up: dict[float, tuple[int, dict[str, Any], dict[str, Any]]] = {}
        number = 0
        for number, (rate, label) in enumerate(plan, start=1):
            count, sent, done = await _paced_phase(producer, worker, number, rate, phase_s)
            _record_phase(probe, label, rate, count, sent, done)
            if _keeps_up(rate, count, sent, done):
                kept_up[rate / max_rate] = (count, sent, done)
        # Sustained: the highest paced rate (a fraction of the flat-out max) that the pair keeps up with,
        # searching down from the fractions above; its latency is the one "at saturation" without a backlog
        # growing for as long as the run lasts.
        for fraction in E2E_SEARCH_FRACTIONS:
            if any(f >= fraction for f in kept_up):
                break
            number += 1
            count, sent, done = await _paced_phase(producer, worker, number, fraction * max_rate, phase_s)
            if _keeps_up(fraction * max_rate, count, sent, done):
                kept_up[fraction] = (count, sent, done)
        if kept_up:
            best = max(kept_up)
            count, sent, done = kept_up[best]
            _record_phase(probe, "sustained", best * max_rate, count, sent, done)
            probe.extra["sustained.fraction_of_max"] = best

        worker.send("stop")
        producer.send("stop")
        for helper in (worker, producer):
            probe.add_rss((await helper.recv(procs.STOP_TIMEOUT_S))["peak_rss_bytes"])
    finally:
        worker.close()
        producer.close()
    return ctx.count


async def _paced_phase(
    producer: procs.Helper, worker: procs.Helper, number: int, rate: float, phase_s: float
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    count = max(1, round(rate * phase_s))
    worker.send("phase", number, count)
    await worker.recv(procs.START_TIMEOUT_S)
    producer.send("paced", number, count, rate)
    sent, done = await _phase_reports(producer, worker)
    _check_phase(f"phase {number} at {rate:,.0f}/s", count, done)
    return count, sent, done


def _keeps_up(rate: float, count: int, sent: dict[str, Any], done: dict[str, Any]) -> bool:
    """The producer sent at the offered rate and the worker finished within KEEP_UP of it."""
    send_s = max((sent["last_ns"] - sent["first_ns"]) / 1e9, 1e-9)
    window_s = (done["acked_ns"] - sent["first_ns"]) / 1e9
    return count / send_s >= KEEP_UP * rate and count / window_s >= KEEP_UP * rate


async def _phase_reports(
    producer: procs.Helper, worker: procs.Helper
) -> tuple[dict[str, Any], dict[str, Any]]:
    sent = await producer.recv(PHASE_TIMEOUT_S)
    done = await worker.recv(PHASE_TIMEOUT_S)
    return sent, done


def _record_phase(
    probe: Probe, label: str, rate: float | None, count: int, sent: dict[str, Any], done: dict[str, Any]
) -> None:
    send_s = max((sent["last_ns"] - sent["first_ns"]) / 1e9, 1e-9)
    window_s = (done["acked_ns"] - sent["first_ns"]) / 1e9
    figures = {
        "offered_events_s": rate if rate is not None else float("nan"),
        "sent_events_s": count / send_s,
        "done_events_s": count / window_s,
        "p50_ms": done["p50_ms"],
        "p95_ms": done["p95_ms"],
        "p99_ms": done["p99_ms"],
        "max_ms": done["max_ms"],
        "worker_cpu_pct": 100 * done["cpu_s"] / window_s,
        "producer_cpu_pct": 100 * sent["cpu_s"] / window_s,
    }
    for name, value in figures.items():
        if value == value:  # not NaN: saturation has no offered rate
            probe.extra[f"{label}.{name}"] = value


def _check_phase(label: str, count: int, done: dict[str, Any]) -> None:
    if done["events"] != count or done["foreign"]:
        raise RuntimeError(
            f"{label}: the worker saw {done['events']} events of {count}, {done['foreign']} of another phase"
        )


# ------------------------------------------------------------------------------------------- scaling


async def scaling(ctx: RunContext, probe: Probe) -> int:
    _core()
    workers = ctx.options["workers"]
    helpers = [
        procs.Helper(f"worker-{i}", procs.burst_worker, ctx.url, ctx.stream, ctx.group, ctx.batch_size)
        for i in range(workers)
    ]
    try:
        for helper in helpers:
            await helper.recv(procs.START_TIMEOUT_S)
        async with probe.measure():
            for helper in helpers:
                helper.send("go")
            reports = [await helper.recv(PHASE_TIMEOUT_S) for helper in helpers]
    finally:
        for helper in helpers:
            helper.close()
    assert probe.wall_s is not None
    wall_s = probe.wall_s
    for report in reports:
        probe.add_cpu(report["cpu_s"])
        probe.add_rss(report["peak_rss_bytes"])
    total = sum(report["events"] for report in reports)
    own = [report["events"] / wall_s for report in reports]
    probe.extra["workers"] = workers
    probe.extra["per_process_events_s"] = total / wall_s / workers
    probe.extra["slowest_process_events_s"] = min(own)
    probe.extra["fastest_process_events_s"] = max(own)
    probe.extra["worker_cpu_pct"] = 100 * sum(r["cpu_s"] for r in reports) / wall_s / workers
    await _expect_nothing_pending(ctx)
    return total


# ------------------------------------------------------------------------------------------- recovery


async def recovery(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    lease_ms = ctx.options["lease_ms"]
    victim = procs.Helper(
        "victim", procs.greedy_reader, ctx.url, ctx.stream, ctx.group, VICTIM_CONSUMER, ctx.count
    )
    try:
        held = await victim.recv(procs.START_TIMEOUT_S)
        victim.kill()
    finally:
        victim.close()
    if held["read"] != ctx.count:
        raise RuntimeError(f"the victim read {held['read']} entries of {ctx.count}")

    # Untimed: wait until the newest of its entries is idle past the lease, as after a real crash.
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        waited = time.perf_counter()
        last = held["last_id"]
        while not await client.xpending_range(
            ctx.stream, ctx.group, min=last, max=last, count=1, idle=lease_ms
        ):
            if time.perf_counter() - waited > lease_ms / 1000 + STALL_TIMEOUT_S:
                raise TimeoutError(f"the victim's entries are not idle past {lease_ms} ms")
            await asyncio.sleep(IDLE_POLL_S)
        probe.extra["lease_wait_s"] = time.perf_counter() - waited
        pending_before = await pending_count(client, ctx.stream, ctx.group)
    finally:
        await client.aclose()

    app = streamq.App(ctx.url)
    handled = 0

    @app.consumer(
        ctx.stream, group=ctx.group, events=[_reading_type()], batch_size=ctx.batch_size, lease_ms=lease_ms
    )
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal handled
        handled += len(batch)

    async with probe.measure():
        await app.run_until_idle()
    await _expect_nothing_pending(ctx)
    counts = app.counts()
    probe.extra["pending_before"] = pending_before
    probe.extra["reclaimed"] = counts.get("reclaimed", 0)
    if counts.get("reclaimed") != ctx.count:
        raise RuntimeError(f"reclaimed {counts.get('reclaimed')} of {ctx.count} pending entries")
    return handled


# ------------------------------------------------------------------------------------------- failures


async def fill_numbered(ctx: RunContext) -> None:
    """`count` events with seq = 0, 1, 2, ...: the failure handler picks its victims by seq."""
    streamq = _core()
    async with streamq.Producer(ctx.url) as producer:
        for start in range(0, ctx.count, NUMBERED_CHUNK):
            events = [_event(seq) for seq in range(start, min(start + NUMBERED_CHUNK, ctx.count))]
            await producer.publish_many(ctx.stream, events)
    with contextlib.closing(redis.Redis.from_url(ctx.url)) as client:
        create_group(client, ctx.stream, ctx.group)


async def failures(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    retry_every = ctx.options.get("retry_every", 0)
    dead_every = ctx.options.get("dead_every", 0)
    app = streamq.App(ctx.url)
    deliveries = 0

    @app.consumer(
        ctx.stream,
        group=ctx.group,
        events=[_reading_type()],
        batch_size=ctx.batch_size,
        retry_base_ms=FAIL_BACKOFF_MS,
        retry_max_ms=FAIL_BACKOFF_MS,
        retry_poll_ms=FAIL_BACKOFF_MS,
    )
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal deliveries
        deliveries += len(batch)
        for message in batch:
            seq = message.event.seq
            if dead_every and seq % dead_every == 0:
                batch.dead_letter(message, DEAD_REASON)
            elif retry_every and seq % retry_every == 1 and message.attempt == 1:
                batch.retry(message)

    async with probe.measure():
        await app.run_until_idle()
    await _expect_nothing_pending(ctx)

    counts = app.counts()
    want_dead = len(range(0, ctx.count, dead_every)) if dead_every else 0
    want_retried = len(range(1, ctx.count, retry_every)) if retry_every else 0
    with contextlib.closing(redis.Redis.from_url(ctx.url)) as client:
        dead_letters = client.xlen(f"streamq:{{{ctx.stream}}}:dlq")  # README, "Keys"
    got = (counts.get("retried"), counts.get("dead"), dead_letters, counts.get("acked"))
    want = (want_retried, want_dead, want_dead, ctx.count - want_dead)
    if got != want:
        raise RuntimeError(f"(retried, dead, dead letters, acked) = {got}, expected {want}")
    probe.extra["retried"] = want_retried
    probe.extra["dead_lettered"] = want_dead
    probe.extra["handler_deliveries"] = deliveries
    return counts["acked"] + counts["dead"]


# ------------------------------------------------------------------------------------------- growth


def fill_growth(ctx: RunContext) -> None:
    """`pending` entries (held by another consumer at measure time), then the entries to consume: `count`,
    or `backlog` of which the first `count` are consumed. Under --quick both shrink to a few times `count`."""
    pending, backlog = _growth_sizes(ctx)
    fields = entry_fields(ctx.url, ctx.stream)
    prefill(ctx.url, ctx.stream, fields, pending + max(ctx.count, backlog), group=ctx.group)


def _growth_sizes(ctx: RunContext) -> tuple[int, int]:
    pending = ctx.options.get("pending", 0)
    backlog = ctx.options.get("backlog", 0)
    if ctx.quick:
        pending, backlog = min(pending, ctx.count), min(backlog, 10 * ctx.count)
    return pending, backlog


# Read entries into the group as a consumer without shipping them to the client (100k entries are ~15 MB).
_HOLD = """
local reply = redis.call(
    'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]), 'STREAMS', KEYS[1], '>')
if not reply then return 0 end
return #reply[1][2]
"""


async def consume_first(ctx: RunContext, probe: Probe) -> int:
    streamq = _core()
    pending, _ = _growth_sizes(ctx)
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        if pending:
            # Untimed, just before the run: the holder's entries are fresh, nowhere near idle past the lease.
            held = await client.eval(_HOLD, 1, ctx.stream, ctx.group, HOLDER_CONSUMER, pending)
            if held != pending:
                raise RuntimeError(f"held {held} entries of {pending}")
        probe.extra["stream_entries"] = await client.xlen(ctx.stream)
        probe.extra["pending_elsewhere"] = await pending_count(client, ctx.stream, ctx.group)
    finally:
        await client.aclose()

    app = streamq.App(ctx.url)
    handled = 0

    @app.consumer(ctx.stream, group=ctx.group, events=[_reading_type()], batch_size=ctx.batch_size)
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal handled
        handled += len(batch)
        if handled >= ctx.count:
            app.stop()

    async with probe.measure():
        await _run_watched(app, lambda: handled)
    if handled < ctx.count:
        raise RuntimeError(f"handled {handled} events of {ctx.count}")
    return ctx.count


async def _run_watched(app: Any, progress: Callable[[], int]) -> None:
    """app.run() until it returns; stop it and fail if `progress()` stands still for STALL_TIMEOUT_S."""
    running = asyncio.create_task(app.run())
    last = -1
    while True:
        done, _ = await asyncio.wait({running}, timeout=STALL_TIMEOUT_S)
        if done:
            running.result()
            return
        if (now := progress()) == last:
            app.stop()
            await running
            raise TimeoutError(f"no progress for {STALL_TIMEOUT_S:.0f} s after {now} events")
        last = now


# ------------------------------------------------------------------------------------------- shared


async def _expect_nothing_pending(ctx: RunContext) -> None:
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        if (left := await pending_count(client, ctx.stream, ctx.group)) != 0:
            raise RuntimeError(f"{left} entries left pending")
    finally:
        await client.aclose()
