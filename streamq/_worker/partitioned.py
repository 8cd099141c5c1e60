"""A consumer of a partitioned stream: runs a plain consumer on each partition this worker owns.

Ownership comes from _wire/partitioning.py (leases in Redis, no coordinator). Every third of
`partition_lease_ms` the worker renews its membership and its leases, starts a consumer (with all its
lanes) on each partition it was given, and stops the consumer of each partition it must give up, which
finishes the batches in hand, settles them, and only then releases the partition, so its next owner
starts where this one ended. On stop every partition is stopped the same way, then released, and the
worker leaves the group's membership, so the others take its partitions at their next round instead of
waiting for its lease to lapse.

Entry leases are untouched by any of this: the entries a worker holds are renewed by the lease keeper
as for any consumer, so a worker that is slow but alive keeps them even if it lost a partition (its event
loop blocked past the partition lease, say); only the order of that partition's events may then suffer,
and the loss shows as a `partition lost` warning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from .. import keys
from .._wire import partitioning as wire
from .._wire import waits_out
from ..errors import describe_error
from ..partitions import partition_stream, refuse_other_count
from ..settings import ConsumerSettings
from .consumer import MAX_RECONNECT_DELAY_S, TRANSIENT, Consumer, _sleep_or_stop, consumer_name
from .leases import LeaseKeeper

MakeLanes = Callable[[ConsumerSettings], list[Consumer]]


@dataclass
class _Partition:
    index: int
    lanes: list[Consumer]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def done(self) -> bool:
        return all(task.done() for task in self.tasks)


class PartitionedConsumer:
    """One worker's share of a partitioned group; looks like a Consumer to the App (run, name, counts)."""

    def __init__(
        self,
        settings: ConsumerSettings,
        client: aioredis.Redis,
        make_lanes: MakeLanes,
        lease_keeper: LeaseKeeper,
    ) -> None:
        assert settings.partitions is not None
        self.settings = settings
        self.partitions = settings.partitions
        self.client = client  # serves the logical stream's slot: the partition count, members, owners
        self.lease_keeper = lease_keeper
        self._make_lanes = make_lanes
        self.name = consumer_name(settings.consumer_prefix)
        self.stream = settings.stream
        self.group = settings.group
        self._members_key = keys.members_key(self.stream, self.group)
        self._owners_key = keys.owners_key(self.stream, self.group)
        self._running: dict[int, _Partition] = {}
        self._finished_counts: dict[str, int] = {}
        self.rounds = 0
        self.ready = False  # declared, and its last round of leases reached Redis
        self.redis_errors = 0  # its own rounds that failed on the connection (its lanes count theirs)
        self.reconnects = 0
        self.log = structlog.get_logger("streamq.partitions").bind(
            stream=self.stream, group=self.group, worker=self.name, partitions=self.partitions
        )

    @property
    def counts(self) -> dict[str, int]:
        total = dict(self._finished_counts)
        for running in self._running.values():
            for lane in running.lanes:
                for name, value in lane.counts.items():
                    total[name] = total.get(name, 0) + value
        return total

    def lanes(self) -> list[Consumer]:
        """The lanes running now, on every partition this worker owns."""
        return [lane for running in list(self._running.values()) for lane in running.lanes]

    def owned(self) -> list[int]:
        """The partitions this worker runs a consumer on now."""
        return sorted(self._running)

    async def run(self, stopping: asyncio.Event, *, burst: bool = False) -> None:
        round_s = self.settings.partition_lease_ms / 3000
        try:
            await self._retrying(self._declare, stopping)
            while not stopping.is_set():
                await self._retrying(lambda: self._round(burst=burst), stopping)
                self.ready = not stopping.is_set()
                self._raise_failed()
                if burst and self._running and all(p.done() for p in self._running.values()):
                    break
                if burst and not self._running:
                    break  # every partition is another live worker's
                await _sleep_or_stop(stopping, round_s)
        except asyncio.CancelledError:
            for running in self._running.values():
                for task in running.tasks:
                    task.cancel()
            await asyncio.gather(
                *(t for p in self._running.values() for t in p.tasks), return_exceptions=True
            )
            raise
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                await self._stop_all()
        self._raise_failed()

    async def _declare(self) -> None:
        recorded = await wire.declare(self.client, keys.partitions_key(self.stream), self.partitions)
        refuse_other_count(self.stream, recorded, self.partitions)

    async def _round(self, *, burst: bool) -> None:
        owned, give_up = await wire.balance(
            self.client, self._members_key, self._owners_key, self.name, self.settings.partition_lease_ms,
            self.partitions,
        )  # fmt: skip
        self.rounds += 1
        for index in sorted(set(self._running) - owned):
            self.log.warning("partition lost: another worker owns it now", partition=index)
            self._running[index].stopping.set()
        for index in sorted(give_up & set(self._running)):
            self._running[index].stopping.set()
        for index in sorted(owned - give_up - set(self._running)):
            self._start(index, burst=burst)
        await self._reap(owned)

    def _start(self, index: int, *, burst: bool) -> None:
        settings = _partition_settings(self.settings, index)
        running = _Partition(index, self._make_lanes(settings))
        running.tasks = [
            asyncio.create_task(lane.run(running.stopping, burst=burst), name=f"streamq-{lane.name}")
            for lane in running.lanes
        ]
        self._running[index] = running
        self.log.info("partition taken", partition=index, stream_key=settings.stream)

    async def _reap(self, owned: set[int]) -> None:
        """Forget the consumers that have stopped; release what they held unless it is still ours to run
        (a burst consumer that drained its partition keeps it until the end of the run)."""
        for index in sorted(self._running):
            running = self._running[index]
            if not running.done() or (running.stopping.is_set() is False and index in owned):
                continue
            del self._running[index]
            self._add_counts(running)
            await wire.release(self.client, self._owners_key, self.name, {index})
            self.log.info("partition released", partition=index)
            for task in running.tasks:
                if not task.cancelled() and task.exception() is not None:
                    self._failed = task.exception()

    _failed: BaseException | None = None

    def _raise_failed(self) -> None:
        for running in self._running.values():
            for task in running.tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self._failed = task.exception()
        if self._failed is not None:
            raise self._failed

    def _add_counts(self, running: _Partition) -> None:
        for lane in running.lanes:
            for name, value in lane.counts.items():
                self._finished_counts[name] = self._finished_counts.get(name, 0) + value

    async def _stop_all(self) -> None:
        for running in self._running.values():
            running.stopping.set()
        tasks = [task for running in self._running.values() for task in running.tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*TRANSIENT):
            for index in sorted(self._running):
                running = self._running.pop(index)
                self._add_counts(running)
                for task in running.tasks:
                    if not task.cancelled() and task.exception() is not None and self._failed is None:
                        self._failed = task.exception()
                await wire.release(self.client, self._owners_key, self.name, {index})
            await wire.leave(self.client, self._members_key, self.name)

    async def _retrying(self, step: Callable[[], Any], stopping: asyncio.Event) -> None:
        delay_s = 0.05
        while not stopping.is_set():
            try:
                await step()
                if delay_s > 0.05:
                    self.reconnects += 1
                return
            except (*TRANSIENT, ResponseError) as exc:
                if not waits_out(exc):
                    raise
                self.redis_errors += 1
                self.ready = False
                self.log.warning("redis unavailable, retrying", error=describe_error(exc), retry_in_s=delay_s)
                await _sleep_or_stop(stopping, delay_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)


def _partition_settings(settings: ConsumerSettings, index: int) -> ConsumerSettings:
    """The settings of the plain consumer of partition `index`: the partition's stream, nothing else
    changed (partitions=None: it is a plain stream to that consumer)."""
    fields = {name: getattr(settings, name) for name in settings.__struct_fields__}
    fields.update(stream=partition_stream(settings.stream, index), partitions=None)
    return ConsumerSettings(**fields)
