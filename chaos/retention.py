"""The retention run: a steady producer, two groups, one of them stalled for a while, with the defaults.

    python -m chaos.retention                      3 minutes: 60 s both keep up, 60 s one stalled, 60 s after
    python -m chaos.retention --quick              ~30 s, the same phases shorter (what the tests run)

What it shows (and checks): with retention on by default, the stream's length stays bounded while both
groups keep up, grows only while one is stalled, and shrinks back once it has caught up; every event is
handled by both groups; and no entry is ever removed before both groups have acknowledged it. The last
one is checked directly, twice a second: in one MULTI snapshot of the stream's first entry and each group's
oldest pending entry and last-delivered id, the first entry must never be later than the oldest entry some
group has not acknowledged. And no group's counter of pending entries trimmed away (`deleted_pending`)
may move. The stalled group's worker is stopped (its App's run() cancelled, as a deploy or a crash would),
not paused: a stopped group is what retention has to survive.

Everything runs in one process against a throwaway server (or --redis-url): the producer task, one App
per group, and a sampler.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

import streamq
from streamq import keys
from streamq.embedded import EmbeddedServer

from .run import pick_binary

FAST, SLOW = "fast", "slow"
# While both groups keep up, the stream may hold at most this many seconds of traffic (what is in flight,
# plus a trim interval of 1 s, with room for a slow machine) plus one node; after the final drain, at most
# what `XTRIM MINID ~` leaves (the node holding the cut).
BOUND_S = 5
SLACK_ENTRIES = 1_000


class Tick(streamq.Event, tag="retention.tick"):
    seq: int


@dataclass
class Phase:
    name: str
    seconds: float
    samples: int = 0
    max_length: int = 0
    last_length: int = 0


@dataclass
class Report:
    rate: int
    published: int = 0
    handled: dict[str, int] = field(default_factory=dict)  # distinct events per group
    duplicates: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # published, never handled by the group
    early_trims: int = 0  # snapshots where the stream had lost an entry some group had not acknowledged
    deleted_pending: dict[str, int] = field(default_factory=dict)
    trimmed: int = 0  # the stream's `trimmed` counter
    final_length: int = 0
    phases: list[Phase] = field(default_factory=list)
    server: str = ""

    @property
    def bound(self) -> int:
        return self.rate * BOUND_S + SLACK_ENTRIES

    @property
    def bounded(self) -> bool:
        """The stream ended each phase where both groups kept up, and the run, within the bound: a trimmer
        that falls behind (one call of XTRIM MINID ~ without LIMIT removes 10,000 entries at most) makes it
        grow without end, though it never removes what it must not."""
        keeping_up = [phase for phase in self.phases if phase.name != "stalled"]
        return (
            all(phase.last_length <= self.bound for phase in keeping_up)
            and self.final_length <= SLACK_ENTRIES
        )

    @property
    def passed(self) -> bool:
        return (
            not self.early_trims
            and not any(self.missing.values())
            and not any(self.deleted_pending.values())
            and self.trimmed > 0
            and self.bounded
        )


def _id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def _snapshot(
    client: aioredis.Redis, stream: str, published_ids: list[tuple[int, int]]
) -> tuple[int, bool]:
    """(length, whether the stream still holds every entry some group has not acknowledged), atomically.

    A group's oldest unacknowledged entry is its oldest pending one or, with none pending, the first
    entry published after its last-delivered id (`published_ids`, in publish order, tells which). The
    stream's first entry may not be later than that, for either group.
    """
    pipe = client.pipeline(transaction=True)
    pipe.xlen(stream)
    pipe.xinfo_stream(stream)
    pipe.xinfo_groups(stream)
    for group in (FAST, SLOW):
        pipe.xpending(stream, group)
    replies = await pipe.execute()
    length, info, groups = replies[0], replies[1], replies[2]
    first = info.get("first-entry")
    if not first:
        return length, True
    first_id = _id(first[0])
    by_name = {_text(g["name"]): g for g in groups}
    for group, pending in zip((FAST, SLOW), replies[3:], strict=True):
        if group not in by_name:
            continue
        if pending["pending"]:
            oldest_unacked: tuple[int, int] | None = _id(pending["min"])
        else:
            delivered = _id(by_name[group]["last-delivered-id"])
            after = bisect.bisect_right(published_ids, delivered)
            oldest_unacked = published_ids[after] if after < len(published_ids) else None
        if oldest_unacked is not None and first_id > oldest_unacked:
            return length, False
    return length, True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def run(
    url: str, *, rate: int, phases: Sequence[tuple[str, float]], stream: str, drain_s: float = 120.0
) -> Report:
    report = Report(rate=rate)
    client = aioredis.Redis.from_url(url)
    info = await client.info("server")
    report.server = (
        f"valkey {info['valkey_version']}" if "valkey_version" in info else f"redis {info['redis_version']}"
    )
    await client.delete(stream, keys.dlq_key(stream), keys.totals_key(stream))
    seen: dict[str, bytearray] = {}
    counts: dict[str, int] = {FAST: 0, SLOW: 0}
    total_s = sum(seconds for _, seconds in phases)
    capacity = int(rate * total_s * 1.2) + 10_000
    for group in (FAST, SLOW):
        seen[group] = bytearray(capacity)
        report.duplicates[group] = 0

    def app_for(group: str) -> streamq.App:
        app = streamq.App(url, freeze_gc=False)

        @app.consumer(stream, group=group, lease_ms=5_000, block_ms=200)
        async def handle(batch: streamq.Batch[Tick]) -> None:
            marks = seen[group]
            for message in batch:
                seq = message.event.seq
                if marks[seq]:
                    report.duplicates[group] += 1
                marks[seq] = 1
                counts[group] += 1

        return app

    # Both groups exist before the first publish: a group sees only what the stream holds when it starts.
    for group in (FAST, SLOW):
        with contextlib.suppress(Exception):
            await client.xgroup_create(stream, group, id="0", mkstream=True)

    apps = {FAST: app_for(FAST), SLOW: app_for(SLOW)}
    tasks = {group: asyncio.create_task(app.run()) for group, app in apps.items()}
    producing = asyncio.Event()
    producing.set()
    published = 0
    published_ids: list[tuple[int, int]] = []

    async def produce() -> None:
        nonlocal published
        step_s = 0.05
        started = time.monotonic()
        async with streamq.Producer(url) as producer:
            while producing.is_set():
                due = int((time.monotonic() - started) * rate)
                if due > published:
                    chunk = [Tick(seq=seq) for seq in range(published, min(due, capacity))]
                    ids = await producer.publish_many(stream, chunk)
                    published_ids.extend(_id(entry_id) for entry_id in ids)
                    published += len(chunk)
                await asyncio.sleep(step_s)

    producer_task = asyncio.create_task(produce())
    try:
        for name, seconds in phases:
            phase = Phase(name, seconds)
            report.phases.append(phase)
            if name == "stalled":
                apps[SLOW].stop()
                await tasks[SLOW]
            if name == "resumed":
                apps[SLOW] = app_for(SLOW)
                tasks[SLOW] = asyncio.create_task(apps[SLOW].run())
            ends = time.monotonic() + seconds
            while time.monotonic() < ends:
                length, intact = await _snapshot(client, stream, published_ids)
                phase.samples += 1
                phase.max_length = max(phase.max_length, length)
                phase.last_length = length
                report.early_trims += not intact
                await asyncio.sleep(0.5)
        producing.clear()
        await producer_task
        report.published = published
        # Drain: both groups handle everything that was published (bounded wait).
        deadline = time.monotonic() + drain_s

        def behind() -> bool:
            return any(sum(seen[g][:published]) < published for g in (FAST, SLOW))

        while time.monotonic() < deadline and behind():  # noqa: ASYNC110 - polls counts the handlers keep
            await asyncio.sleep(0.5)
        # One more trim interval, so the final length shows what retention leaves once all is acknowledged.
        await asyncio.sleep(2.5)
    finally:
        producing.clear()
        for app in apps.values():
            app.stop()
        await asyncio.gather(*tasks.values(), producer_task, return_exceptions=True)
    for group in (FAST, SLOW):
        report.handled[group] = sum(seen[group][:published])
        report.missing[group] = published - report.handled[group]
        stats = await client.hgetall(keys.stats_key(stream, group))
        report.deleted_pending[group] = int(stats.get(b"deleted_pending", 0))
    totals = await client.hgetall(keys.totals_key(stream))
    report.trimmed = int(totals.get(b"trimmed", 0))
    report.final_length = int(await client.xlen(stream))
    await client.aclose()
    return report


def render(report: Report) -> str:
    lines = [
        f"server {report.server}, {report.rate} events/s, {report.published} published",
        f"{'phase':<10} {'seconds':>8} {'max length':>11} {'length at end':>14}",
    ]
    for phase in report.phases:
        lines.append(f"{phase.name:<10} {phase.seconds:>8.0f} {phase.max_length:>11} {phase.last_length:>14}")
    lines += [
        f"final length {report.final_length}, trimmed {report.trimmed}",
        f"bounded (phases keeping up end under {report.bound}, final under {SLACK_ENTRIES}):"
        f" {'yes' if report.bounded else 'NO'}",
        f"handled: {report.handled}, missing: {report.missing}, duplicates: {report.duplicates}",
        f"snapshots with an unacknowledged entry removed: {report.early_trims}",
        f"pending entries trimmed away (deleted_pending): {report.deleted_pending}",
        "PASS" if report.passed else "FAIL",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.retention", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="default: a throwaway server")
    parser.add_argument("--server-binary", help="redis-server or valkey-server to run (default: first found)")
    parser.add_argument("--rate", type=int, default=2_000, help="events per second (default: 2000)")
    parser.add_argument("--phase-s", type=float, default=60.0, help="seconds per phase (default: 60)")
    parser.add_argument("--quick", action="store_true", help="10 s phases at 1000 events/s")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    args = parser.parse_args(argv)
    seconds = 10.0 if args.quick else args.phase_s
    rate = 1_000 if args.quick else args.rate
    phases = [("steady", seconds), ("stalled", seconds), ("resumed", seconds)]
    with contextlib.ExitStack() as stack:
        url = args.redis_url
        if url is None:
            server = stack.enter_context(EmbeddedServer(pick_binary(args.server_binary)))
            url = server.url
        report = asyncio.run(run(url, rate=rate, phases=phases, stream="retention-run"))
    print(render(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(report) | {"passed": report.passed}, out, indent=2)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
