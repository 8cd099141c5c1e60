"""The chaos producer: publishes the planned events in chunks, paced over the fault window.

Each chunk goes through streamq's Producer.publish_many. When the call returns, the server has acknowledged
every entry (with appendfsync always, after writing it to the AOF): the events go into the ledger as
`published`, with their entry ids. When it raises, some, all or none of the chunk may be in the stream: the
events go in as `ambiguous` and are not retried (a retry would publish them twice under the same uuid).

Malformed entries are written with raw XADD between chunks, on a client that never retries a command.
"""

from __future__ import annotations

import asyncio
import random
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamq import Producer

from .ledger import AMBIGUOUS, PUBLISHED, Ledger
from .workload import ChaosEvent, Malformed, encode

SERVER_WAIT_S = 30.0  # after a failed publish, how long to wait for the server to answer again


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
        self.published = 0
        self.ambiguous = 0
        self.failed_calls = 0
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
                await self._publish(producer, raw, chunk)
                for entry in self.malformed_after.get(index, []):
                    await self._xadd_raw(raw, entry)
        finally:
            self.finished.set()
            await producer.aclose()
            await raw.aclose()

    async def _publish(self, producer: Producer, raw: aioredis.Redis, chunk: list[ChaosEvent]) -> None:
        rows = [(e.uuid, e.seq, e.kind, e.fail_times, encode(e)) for e in chunk]
        try:
            ids = await producer.publish_many(self.stream, chunk, chunk_size=len(chunk))
        except (RedisError, OSError, TimeoutError):
            self.ledger.add_events(rows, AMBIGUOUS, None)
            self.ambiguous += len(rows)
            self.failed_calls += 1
            await self._wait_for_server(raw)
            return
        self.ledger.add_events(rows, PUBLISHED, ids)
        self.published += len(rows)

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
