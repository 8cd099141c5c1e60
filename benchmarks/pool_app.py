"""The app ``streamq worker benchmarks.pool_app:app --processes N`` runs in the pool scenario's children.

Measures nothing itself. Every child of the pool imports this module afresh (the pool starts children with
``python -m streamq worker``, never forks), so its settings come from the environment the measuring child
gives the pool, which its children inherit:

    STREAMQ_BENCH_POOL_STREAM   the stream to consume (a repeat's own, pre-filled)
    STREAMQ_BENCH_POOL_GROUP    the group
    STREAMQ_BENCH_POOL_BATCH    batch_size
    STREAMQ_BENCH_POOL_ROUNDS   rounds of scenarios_pool.burn per event (0: a handler that does nothing)

block_ms is 50 ms, so a child looks for a pause every 50 ms (``control_every_ms``) and starts reading within
that of a resume: the scenario starts the clock on a resume.
"""

from __future__ import annotations

import os

import streamq
from benchmarks.scenarios_pool import burn
from benchmarks.scenarios_streamq import _reading_type

BLOCK_MS = 50  # also how often a child looks at the pause state: the resume's latency


def build() -> streamq.App:
    stream = os.environ["STREAMQ_BENCH_POOL_STREAM"]
    group = os.environ["STREAMQ_BENCH_POOL_GROUP"]
    batch_size = int(os.environ["STREAMQ_BENCH_POOL_BATCH"])
    rounds = int(os.environ["STREAMQ_BENCH_POOL_ROUNDS"])
    built = streamq.App()  # the URL comes from --redis-url, as a deployment's would

    @built.consumer(stream, group=group, events=[_reading_type()], batch_size=batch_size, block_ms=BLOCK_MS)
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        if rounds:
            for _ in batch.events:
                burn(rounds)

    return built


app = build()
