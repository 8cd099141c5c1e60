"""Hand-written redis-py (asyncio + hiredis) loops: the floor any library on top of redis-py should reach.

Measures events/s of one process for:
  * baseline-publish[N]: encode the event with msgspec and XADD it, N commands per pipeline
    (``transaction=False``), one ``execute()`` round trip per chunk; N in 1, 100, 1000.
  * baseline-consume[N]: on a pre-filled stream, XREADGROUP COUNT N, msgspec-decode every entry, then XACK
    the whole batch in one call; N in 1, 10, 100, 500, 1000. Ends when every entry is read and acknowledged.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

from benchmarks.harness import Case, Probe, RunContext
from benchmarks.payload import DECODER, ENCODER, PAYLOAD, PAYLOAD_FIELD, SAMPLE
from benchmarks.streams import pending_count, prefill

CONSUMER_NAME = "bench-1"

# Counts sized for ~2-3 s per repeat at the rates in RESULTS.md (2 cores); a machine 3x slower needs ~8 s.
PUBLISH_COUNTS = {1: 40_000, 100: 300_000, 1000: 400_000}
CONSUME_COUNTS = {1: 30_000, 10: 250_000, 100: 800_000, 500: 1_000_000, 1000: 1_000_000}
QUICK_COUNT = 300

CASES = [
    *(
        Case(
            scenario="baseline-publish",
            contender="redis-py",
            operation="publish",
            batch_size=chunk,
            count=count,
            quick_count=QUICK_COUNT,
            measure="benchmarks.baseline_redispy:publish",
            detail=f"pipeline(transaction=False) of {chunk} XADD",
        )
        for chunk, count in PUBLISH_COUNTS.items()
    ),
    *(
        Case(
            scenario="baseline-consume",
            contender="redis-py",
            operation="consume",
            batch_size=batch,
            count=count,
            quick_count=QUICK_COUNT,
            setup="benchmarks.baseline_redispy:fill",
            measure="benchmarks.baseline_redispy:consume",
            detail=f"XREADGROUP COUNT {batch} + decode + one XACK per batch",
        )
        for batch, count in CONSUME_COUNTS.items()
    ),
]


async def publish(ctx: RunContext, probe: Probe) -> int:
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        await client.ping()  # connect outside the measured section
        sent = 0
        async with probe.measure():
            while sent < ctx.count:
                n = min(ctx.batch_size, ctx.count - sent)
                pipe = client.pipeline(transaction=False)
                for _ in range(n):
                    pipe.xadd(ctx.stream, {PAYLOAD_FIELD: ENCODER.encode(SAMPLE)})
                await pipe.execute()
                sent += n
        return sent
    finally:
        await client.aclose()


def fill(ctx: RunContext) -> None:
    prefill(ctx.url, ctx.stream, {PAYLOAD_FIELD: PAYLOAD}, ctx.count, group=ctx.group)


async def consume(ctx: RunContext, probe: Probe) -> int:
    client = redis.asyncio.Redis.from_url(ctx.url)
    try:
        await client.ping()
        done = 0
        async with probe.measure():
            while done < ctx.count:
                reply = await client.xreadgroup(
                    ctx.group, CONSUMER_NAME, {ctx.stream: ">"}, count=ctx.batch_size
                )
                entries = _entries(reply)
                if not entries:
                    break
                ids = []
                for entry_id, fields in entries:
                    DECODER.decode(fields[PAYLOAD_FIELD])
                    ids.append(entry_id)
                await client.xack(ctx.stream, ctx.group, *ids)
                done += len(ids)
        if (pending := await pending_count(client, ctx.stream, ctx.group)) != 0:
            raise RuntimeError(f"{pending} entries left pending")
        return done
    finally:
        await client.aclose()


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREADGROUP reply.

    redis-py 8 returns ``[[stream, [(id, fields), ...]]]`` over RESP2 and RESP3 alike; older versions speaking
    RESP3 return ``{stream: [[(id, fields), ...]]}``.
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        (value,) = reply.values()
        return list(value[0])
    return list(reply[0][1])
