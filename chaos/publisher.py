"""The chaos producer: publishes the planned events in chunks, paced over the fault window.

Each chunk goes through streamq's Producer.publish_many_results. When the call returns, the server has
acknowledged every entry (with appendfsync always, after writing it to the AOF): the events go into the
ledger as `published`, with their ids. Chunks are of four sorts, drawn with the seeded rng:

- plain: when the call raises, some, all or none of the chunk may be in the stream: the events go in as
  `ambiguous` and are not retried (a retry would publish them twice under the same uuid);
- dedup-keyed (`dedup_key=` each event's uuid): when the call raises, the same chunk is published again
  with the same keys once the server answers, until a call succeeds (at most MAX_PUBLISH_CALLS): the keys
  make the retry safe, so these events are `published` like any other and must enter the stream once. Some
  that succeeded at once are published a second time on purpose (what a client that lost the reply would
  do): that call must find every key known and return the first call's ids;
- delayed (`delay_ms=` 0..max_delay_ms): the call returns schedule ids; a worker moves each event into the
  stream when due, and it must enter the stream exactly once;
- delayed and dedup-keyed: both.

Sabotages (self-tests, the run must then FAIL): `republish_without_dedup` makes the deliberate second
publish of plain-time dedup-keyed chunks go out without the keys, and trusts whatever it returns: a second
stream entry per event that only the checker can see; `late_delay` delays one chunk by an hour, so it is
still in the scheduled set when the run ends.

Malformed entries are written with raw XADD between chunks, on a client that never retries a command.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamq import Producer

from .ledger import AMBIGUOUS, PUBLISHED, Ledger
from .workload import ChaosEvent, Malformed, encode

SERVER_WAIT_S = 30.0  # after a failed publish, how long to wait for the server to answer again
MAX_PUBLISH_CALLS = 10  # calls per dedup-keyed chunk before it is given up as ambiguous
REPUBLISH_WITHOUT_DEDUP, LATE_DELAY = "republish_without_dedup", "late_delay"
PUBLISHER_SABOTAGES = (REPUBLISH_WITHOUT_DEDUP, LATE_DELAY)
LATE_DELAY_MS = 3_600_000  # late_delay: far past the end of any run


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """How one chunk is published."""

    delay_ms: int | None  # None: now
    dedup: bool  # each event's uuid is its dedup key
    republish: bool  # dedup-keyed and published a second time on purpose after it succeeded


class Publisher:
    def __init__(
        self,
        *,
        url: str,
        stream: str,
        ledger: Ledger,
        events: list[ChaosEvent],
        malformed: list[Malformed],
        chunk_size: int,
        duration_s: float,
        rng: random.Random,
        delayed_rate: float = 0.0,
        max_delay_ms: int = 3000,
        dedup_rate: float = 0.0,
        republish_rate: float = 0.0,
        sabotage: str = "",
    ) -> None:
        self.url = url
        self.stream = stream
        self.ledger = ledger
        self.events = events
        self.chunk_size = chunk_size
        self.duration_s = duration_s
        chunks = max(1, -(-len(events) // chunk_size))
        # Malformed entries go after randomly chosen chunks.
        self.malformed_after: dict[int, list[Malformed]] = {}
        for entry in malformed:
            self.malformed_after.setdefault(rng.randrange(chunks), []).append(entry)
        # Drawn after the malformed placement, from the same rng: runs without delays or dedup keys place
        # their malformed entries as they always did.
        self.plans: list[ChunkPlan] = []
        for _ in range(chunks):
            delayed = rng.random() < delayed_rate
            dedup = rng.random() < dedup_rate
            republish = dedup and rng.random() < republish_rate
            self.plans.append(ChunkPlan(rng.randint(0, max_delay_ms) if delayed else None, dedup, republish))
        self.sabotages = set(filter(None, sabotage.split(",")))
        if LATE_DELAY in self.sabotages:
            late = next((i for i, p in enumerate(self.plans) if p.delay_ms is not None), 0)
            self.plans[late] = ChunkPlan(LATE_DELAY_MS, self.plans[late].dedup, False)
        self.published = 0
        self.ambiguous = 0
        self.failed_calls = 0
        # What happened to dedup-keyed chunks, for the report.
        self.stats: dict[str, int] = {
            "delayed_chunks": 0, "delayed_events": 0, "dedup_chunks": 0, "dedup_events": 0,
            "dedup_retried_chunks": 0, "dedup_retry_calls": 0, "dedup_retry_duplicates": 0,
            "dedup_retry_new": 0, "dedup_given_up_events": 0, "republished_chunks": 0,
            "republish_duplicates": 0, "republish_mismatches": 0,
        }  # fmt: skip
        self.finished = asyncio.Event()

    async def run(self) -> None:
        producer = Producer(self.url)
        raw = aioredis.Redis.from_url(self.url)
        try:
            started = time.monotonic()
            chunks = [
                self.events[i : i + self.chunk_size] for i in range(0, len(self.events), self.chunk_size)
            ]
            interval_s = self.duration_s / max(len(chunks), 1)
            for index, chunk in enumerate(chunks):
                delay = started + index * interval_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._publish(producer, raw, chunk, self.plans[index])
                for entry in self.malformed_after.get(index, []):
                    await self._xadd_raw(raw, entry)
        finally:
            self.finished.set()
            await producer.aclose()
            await raw.aclose()

    async def _publish(
        self, producer: Producer, raw: aioredis.Redis, chunk: list[ChaosEvent], plan: ChunkPlan
    ) -> None:
        rows = [(e.uuid, e.seq, e.kind, e.fail_times, encode(e)) for e in chunk]
        delayed = plan.delay_ms is not None
        keys = [e.uuid for e in chunk] if plan.dedup else None
        if delayed:
            self.stats["delayed_chunks"] += 1
            self.stats["delayed_events"] += len(chunk)
        if plan.dedup:
            self.stats["dedup_chunks"] += 1
            self.stats["dedup_events"] += len(chunk)
        calls = 0
        while True:
            calls += 1
            try:
                results = await producer.publish_many_results(
                    self.stream, chunk, chunk_size=len(chunk), delay_ms=plan.delay_ms, dedup_key=keys
                )
                break
            except (RedisError, OSError, TimeoutError):
                self.failed_calls += 1
                await self._wait_for_server(raw)
                if keys is None or calls >= MAX_PUBLISH_CALLS:
                    # Without dedup keys a second call could append the chunk twice: it stays ambiguous.
                    self.ledger.add_events(
                        rows, AMBIGUOUS, None, delayed=delayed, dedup=keys is not None, publish_calls=calls
                    )
                    self.ambiguous += len(rows)
                    if keys is not None:
                        self.stats["dedup_given_up_events"] += len(rows)
                    return
                self.stats["dedup_retry_calls"] += 1
        ids = [r.id for r in results]
        duplicates = [r.duplicate for r in results]
        if calls > 1:
            self.stats["dedup_retried_chunks"] += 1
            self.stats["dedup_retry_duplicates"] += sum(duplicates)
            self.stats["dedup_retry_new"] += len(results) - sum(duplicates)
        oks = [True] * len(results)
        if plan.republish:
            calls += 1
            oks, again = await self._republish(producer, chunk, plan, ids)
            duplicates = again if again is not None else duplicates
        self.ledger.add_events(
            rows, PUBLISHED, ids, delayed=delayed, dedup=plan.dedup, publish_calls=calls,
            duplicates=duplicates, dedup_ok=oks,
        )  # fmt: skip
        self.published += len(rows)

    async def _republish(
        self, producer: Producer, chunk: list[ChaosEvent], plan: ChunkPlan, ids: list[str]
    ) -> tuple[list[bool], list[bool] | None]:
        """Publish a chunk that succeeded a second time with the same dedup keys, as a client that lost the
        reply would: every event must come back a duplicate, with the id the first call returned. Returns
        (matched, duplicate) per event; a failed call proves nothing and counts as matched."""
        self.stats["republished_chunks"] += 1
        sabotaged = REPUBLISH_WITHOUT_DEDUP in self.sabotages and plan.delay_ms is None
        keys = None if sabotaged else [e.uuid for e in chunk]
        try:
            again = await producer.publish_many_results(
                self.stream, chunk, chunk_size=len(chunk), delay_ms=plan.delay_ms, dedup_key=keys
            )
        except (RedisError, OSError, TimeoutError):
            self.failed_calls += 1
            return [True] * len(chunk), None
        if sabotaged:
            return [True] * len(chunk), None  # a broken dedup, trusted: only the handlers can tell
        oks = [r.duplicate and r.id == first for r, first in zip(again, ids, strict=True)]
        self.stats["republish_duplicates"] += sum(r.duplicate for r in again)
        self.stats["republish_mismatches"] += oks.count(False)
        return oks, [r.duplicate for r in again]

    async def _xadd_raw(self, raw: aioredis.Redis, entry: Malformed) -> None:
        row = [(entry.uuid, entry.seq, entry.kind, 0, entry.signature)]
        try:
            entry_id = await raw.execute_command("XADD", self.stream, "*", *entry.fields)  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError):
            self.ledger.add_events(row, AMBIGUOUS, None)
            self.failed_calls += 1
            await self._wait_for_server(raw)
            return
        self.ledger.add_events(row, PUBLISHED, [entry_id.decode()])

    @staticmethod
    async def _wait_for_server(raw: aioredis.Redis) -> None:
        deadline = time.monotonic() + SERVER_WAIT_S
        while time.monotonic() < deadline:
            try:
                await raw.ping()
                return
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(0.1)
