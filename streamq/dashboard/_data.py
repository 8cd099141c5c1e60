"""What the pages show, read from Redis: shared by every viewer, and sampled into rates.

Reads are cached for `refresh_ms` under a key (the overview, one stream's consumers, one page of dead
letters): the first viewer to ask after the entry is stale reads it while the others wait on the same
lock and then take the result, so N viewers cost Redis what one does. Errors are cached the same way, so
a server that is down is not asked N times either.

Each overview read is a sample of the counters (events added to each stream, each group's acked, retried
and dead-lettered totals): Rates keeps the samples of the last `window_ms` in memory and turns them into
per-second rates for the charts. Samples are taken when someone looks (at most one per refresh), so an
unwatched dashboard costs Redis nothing; a gap in the samples is drawn as the average over the gap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from redis.exceptions import ResponseError

from .. import keys
from .._wire import Steps, run_steps_on
from ..inspect import GroupStatus, StreamStatus, status, stream_status

T = TypeVar("T")

DEFAULT_REFRESH_MS = 2_000  # ms: how long one read of Redis serves every viewer
DEFAULT_WINDOW_MS = 10 * 60_000  # ms: how far back the rate charts go
MAX_SAMPLES = 600  # per series, whatever the window: bounds the memory of a long-running dashboard
MAX_CACHED = 256  # cache entries (pages of dead letters, streams): the least recently used go first
LEASES_SHOWN = 20  # held entries listed per consumer (the consumer's pending count says how many in all)


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def id_ms(entry_id: str) -> int:
    """The time part of a stream entry id (Unix ms), 0 for anything else."""
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


# ---------------------------------------------------------------------------------------------- cache


class _Entry:
    __slots__ = ("error", "lock", "taken", "value")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.taken = -1.0  # time.monotonic() of the last read; -1: never read
        self.value: Any = None
        self.error: BaseException | None = None


class SharedReads:
    """Reads cached for `ttl_ms`, one reader at a time per key, the rest waiting for its result."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_s = ttl_ms / 1000
        self.reads = 0  # reads that went to Redis (the tests count them)
        self._entries: OrderedDict[Any, _Entry] = OrderedDict()

    def _fresh(self, entry: _Entry) -> bool:
        return entry.taken >= 0 and time.monotonic() - entry.taken < self.ttl_s

    async def get(self, key: Any, read: Callable[[], Awaitable[T]]) -> T:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > MAX_CACHED:
                oldest = next(iter(self._entries))
                if self._entries[oldest].lock.locked():
                    break
                del self._entries[oldest]
        self._entries.move_to_end(key)
        if not self._fresh(entry):
            async with entry.lock:
                if not self._fresh(entry):  # nobody read it while this one waited
                    self.reads += 1
                    try:
                        entry.value, entry.error = await read(), None
                    except Exception as exc:
                        entry.value, entry.error = None, exc
                    entry.taken = time.monotonic()
        if entry.error is not None:
            raise entry.error
        value: T = entry.value
        return value

    def clear(self) -> None:
        """Forget every read (after a write, so the next page shows what it did)."""
        for entry in self._entries.values():
            entry.taken = -1.0


# ---------------------------------------------------------------------------------------------- overview


class GroupView(msgspec.Struct, kw_only=True):
    status: GroupStatus
    oldest_pending_ms: int | None  # age of the oldest entry delivered and not settled; None: none pending


class StreamView(msgspec.Struct, kw_only=True):
    status: StreamStatus
    added: int | None  # entries ever added to the stream (XINFO STREAM entries-added); None: unknown
    groups: list[GroupView]


class Overview(msgspec.Struct, kw_only=True):
    streams: list[StreamView]
    server_ms: int  # the server's clock when read (Unix ms)
    read_s: float  # time.time() here when read


def _parts(st: StreamStatus) -> list[StreamStatus]:
    """The plain streams that hold a stream's entries: itself, or its partitions."""
    return st.partition_details if st.partition_details is not None else [st]


def _extras(statuses: Sequence[StreamStatus]) -> Steps[tuple[int, list[int | None], list[dict[str, int]]]]:
    """One round trip: the server's clock, each stream's entries-added, and the oldest pending entry of
    each group (smallest id pending in the stream or in the group's retry stream), for every partition."""
    commands: list[tuple[Any, ...]] = [("TIME",)]
    layout: list[list[tuple[int, list[tuple[str, int, int]]]]] = []  # per stream, per part
    for st in statuses:
        per_part = []
        for part in _parts(st):
            if not part.exists:
                continue
            info_at = len(commands)
            commands.append(("XINFO", "STREAM", part.stream))
            groups = []
            for g in part.groups:
                groups.append((g.name, len(commands), len(commands) + 1))
                commands.append(("XPENDING", part.stream, g.name))
                commands.append(("XPENDING", keys.retry_key(part.stream, g.name), g.name))
            per_part.append((info_at, groups))
        layout.append(per_part)
    replies = yield commands
    clock = replies[0]
    server_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000 if not isinstance(clock, Exception) else 0
    added: list[int | None] = []
    oldest: list[dict[str, int]] = []
    for per_part in layout:
        total: int | None = 0 if per_part else None
        smallest: dict[str, int] = {}
        for info_at, groups in per_part:
            info = replies[info_at]
            value = _entries_added(info)
            total = None if total is None or value is None else total + value
            for name, at_stream, at_retry in groups:
                for reply in (replies[at_stream], replies[at_retry]):
                    first = _smallest_pending(reply)
                    if first and (name not in smallest or first < smallest[name]):
                        smallest[name] = first
        added.append(total)
        oldest.append(smallest)
    return server_ms, added, oldest


def _entries_added(info: Any) -> int | None:
    if isinstance(info, Exception) or not isinstance(info, list | dict):
        return None  # an ACL user without XINFO STREAM: no rate of events added
    fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=False))
    value = fields.get(b"entries-added", fields.get("entries-added"))
    return int(value) if value is not None else None  # Redis 6.2 does not count them


def _smallest_pending(reply: Any) -> int:
    """The time of the smallest id in an XPENDING summary; 0 when nothing is pending (or the group has no
    retry stream yet)."""
    if isinstance(reply, (ResponseError, Exception)):
        return 0
    if isinstance(reply, dict):
        first = reply.get("min") or reply.get(b"min")
    elif isinstance(reply, list | tuple) and len(reply) >= 2:
        first = reply[1]
    else:
        return 0
    return id_ms(_s(first)) if first else 0


async def read_overview(target: Any, streams: Sequence[str] | None) -> Overview:
    statuses = await status(target, streams or None, per_partition=True)
    server_ms, added, oldest = await run_steps_on(target, _extras(statuses), "dashboard", __name__)
    views = []
    for st, count, smallest in zip(statuses, added, oldest, strict=True):
        groups = [
            GroupView(
                status=g,
                oldest_pending_ms=max(0, server_ms - smallest[g.name]) if g.name in smallest else None,
            )
            for g in st.groups
        ]
        views.append(StreamView(status=st, added=count, groups=groups))
    return Overview(streams=views, server_ms=server_ms, read_s=time.time())


# ---------------------------------------------------------------------------------------------- rates


class Rates:
    """Counter samples of the last window, per series (`stream`, or `stream` + group + counter)."""

    def __init__(self, window_ms: int) -> None:
        self.window_s = window_ms / 1000
        self._samples: dict[tuple[str, ...], deque[tuple[float, int]]] = {}
        self._last: Overview | None = None

    def record(self, overview: Overview) -> None:
        if overview is self._last:
            return  # the same cached read, seen by another viewer
        self._last = overview
        now = time.monotonic()
        for view in overview.streams:
            name = view.status.stream
            if view.added is not None:
                self._add((name, "added"), now, view.added)
            for g in view.groups:
                for counter in ("acked", "retried", "dead"):
                    self._add((name, g.status.name, counter), now, g.status.stats.get(counter, 0))

    def _add(self, series: tuple[str, ...], at: float, value: int) -> None:
        samples = self._samples.setdefault(series, deque(maxlen=MAX_SAMPLES))
        samples.append((at, value))
        while samples and samples[0][0] < at - self.window_s:
            samples.popleft()

    def per_second(self, *series: str) -> list[tuple[float, float]]:
        """(seconds ago, events per second over the gap before) for each pair of samples in the window;
        a counter that went down (a group deleted and made again) counts from 0."""
        samples = list(self._samples.get(series, ()))
        now = time.monotonic()
        points = []
        for (t0, v0), (t1, v1) in itertools.pairwise(samples):
            if t1 > t0:
                points.append((now - t1, max(0, v1 - v0 if v1 >= v0 else v1) / (t1 - t0)))
        return points


# ---------------------------------------------------------------------------------------------- consumers


class Lease(msgspec.Struct, kw_only=True):
    id: str
    source: str  # "stream" or "retry": which stream of the group holds it
    idle_ms: int  # since it was delivered or its lease last renewed
    deliveries: int


class ConsumerView(msgspec.Struct, kw_only=True):
    name: str
    pending: int  # entries held (stream and retry stream)
    idle_ms: int  # since its last read or claim
    inactive_ms: int | None  # since its last successful read (Redis 7.2+); None: the server does not say
    leases: list[Lease]


class PartitionOwner(msgspec.Struct, kw_only=True):
    partition: int
    worker: str
    until_ms: int  # its lease on the partition runs out then (server's clock, Unix ms)


class GroupConsumers(msgspec.Struct, kw_only=True):
    stream: str  # the stream (a partition's own, for a partitioned stream)
    group: str
    consumers: list[ConsumerView]
    error: str = ""  # why the consumers could not be read


class StreamDetail(msgspec.Struct, kw_only=True):
    status: StreamStatus
    groups: list[GroupConsumers]
    owners: dict[str, list[PartitionOwner]]  # group -> who holds which partition (partitioned streams)
    server_ms: int


def _fields(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {_s(k): v for k, v in raw.items()}
    return {_s(k): v for k, v in zip(raw[::2], raw[1::2], strict=False)}


# XPENDING's extended form, run by a script: redis-py parses every XPENDING reply as the summary form
# unless told otherwise, which a round trip of steps cannot; a script's reply is left as it is.
_HELD = "return redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[2], ARGV[3])"


def _consumer_steps(st: StreamStatus) -> Steps[StreamDetail]:
    """Two round trips: every group's consumers (and partition owners), then each consumer's leases."""
    pairs = [(part.stream, g.name) for part in _parts(st) if part.exists for g in part.groups]
    first: list[tuple[Any, ...]] = [("TIME",)]
    first += [("XINFO", "CONSUMERS", stream, group) for stream, group in pairs]
    if st.partitions is not None:
        first += [("HGETALL", keys.owners_key(st.stream, g.name)) for g in st.groups]
    replies = yield first
    clock = replies[0]
    server_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000 if not isinstance(clock, Exception) else 0
    found: list[GroupConsumers] = []
    for (stream, group), reply in zip(pairs, replies[1 : 1 + len(pairs)], strict=True):
        if isinstance(reply, Exception):
            found.append(GroupConsumers(stream=stream, group=group, consumers=[], error=str(reply)))
            continue
        consumers = []
        for raw in reply:
            info = _fields(raw)
            inactive = info.get("inactive")
            consumers.append(
                ConsumerView(
                    name=_s(info["name"]),
                    pending=int(info["pending"]),
                    idle_ms=int(info["idle"]),
                    inactive_ms=int(inactive) if inactive is not None and int(inactive) >= 0 else None,
                    leases=[],
                )
            )
        found.append(GroupConsumers(stream=stream, group=group, consumers=consumers))
    owners: dict[str, list[PartitionOwner]] = {}
    if st.partitions is not None:
        for g, reply in zip(st.groups, replies[1 + len(pairs) :], strict=True):
            if isinstance(reply, Exception):
                continue
            held = []
            for partition, record in _fields(reply).items():
                worker, _, until = _s(record).rpartition(" ")
                if partition.isdigit() and until.isdigit():
                    held.append(PartitionOwner(partition=int(partition), worker=worker, until_ms=int(until)))
            owners[g.name] = sorted(held, key=lambda owner: owner.partition)
    asked = [
        (gc, consumer, source, key)
        for gc in found
        for consumer in gc.consumers
        if consumer.pending
        for source, key in (("stream", gc.stream), ("retry", keys.retry_key(gc.stream, gc.group)))
    ]
    if asked:
        leases = yield [
            ("EVAL", _HELD, 1, key, gc.group, LEASES_SHOWN, consumer.name) for gc, consumer, _, key in asked
        ]
        for (_, consumer, source, _), reply in zip(asked, leases, strict=True):
            if isinstance(reply, Exception):
                continue  # no retry stream yet
            for entry_id, _, idle, count in reply:
                consumer.leases.append(
                    Lease(id=_s(entry_id), source=source, idle_ms=int(idle), deliveries=int(count))
                )
    return StreamDetail(status=st, groups=found, owners=owners, server_ms=server_ms)


async def read_stream(target: Any, stream: str) -> StreamDetail:
    st = await stream_status(target, stream, per_partition=True)
    return await run_steps_on(target, _consumer_steps(st), "dashboard", __name__)
