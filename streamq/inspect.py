"""Read-only state of streams and groups: lag, pending, consumers, retries waiting, dead letters.

status, stream_status and known_streams take a redis.asyncio.Redis (or a URL); status_sync,
stream_status_sync and known_streams_sync the same for blocking code with a redis.Redis (or a URL).
Both kinds run the same steps (see streamq/_wire/steps.py): one round trip for the stream, one for all
its groups. The streams asked about are read side by side, so a round trip carries the commands of all.

A partitioned stream (partitions.py) is shown once, under its own name, with the figures of its
partitions added up; `per_partition=True` also gives each partition's own status (partition_details).
How the figures of the partitions combine:

- length, dead_letters, scheduled, dedup_keys, totals: summed; next_scheduled_due_ms: the soonest;
- each group (the groups of every partition, by name): consumers, pending, lag, retries_waiting and the
  stats counters summed (lag None if any partition's is); last_delivered_id is "" because a position in
  one partition says nothing about another (partition_details has each partition's);
- paused: every scope the logical stream or any partition is paused for, with the earliest pause;
- trimming_held_back_by: the partition whose trimming is held back the most (its `stream` names it);
- exists: any partition exists; key_type: "stream" then, else "none" (or the other type of a partition's
  key in the way).

Called with no stream names, status shows every stream in the registry, partitions under the name of their
partitioned stream: workers register each partition they run (``orders:{orders:3}``), and a name of that
shape whose stream has a recorded count stands for that stream (partitions.logical_stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis
from redis.exceptions import NoPermissionError, ResponseError

from . import keys
from ._connection import RedisLike
from ._wire import Steps, T, checked, run_steps_on, run_steps_on_sync
from .control import EVERY_GROUP, PauseInfo, pause_steps
from .errors import ConfigurationError
from .partitions import logical_stream, partition_streams, recorded_partitions, side_by_side
from .retention import Holdback, holdback_steps
from .scheduling import scheduled_steps

# The counters the worker keeps per group (keys.stats_key), totals since the group began. Every one is
# shown, 0 until it first counts; a counter the server holds beyond these is shown too.
STAT_COUNTERS = (
    "acked",  # handled and acknowledged
    "retried",  # failed attempts sent back for another one
    "deferred",  # put back for later without using an attempt
    "dead",  # dead-lettered
    "reclaimed",  # taken over from a consumer whose lease ran out
    "lease_lost",  # settled by a consumer that had lost the entry to another (that one settles it)
    "deleted_pending",  # delivered, then deleted or trimmed from the stream before it was processed
)
# The stream's own counters (keys.totals_key), shown the same way.
TOTAL_COUNTERS = (
    "trimmed",  # acknowledged by every group, then removed by retention
    "dropped_over_max_len",  # removed by the max_len cap before every group had acknowledged it
    "dropped_by_maxlen",  # removed by a producer's maxlen before every group had acknowledged it, maybe
    "dead_letters_expired",  # dead letters removed by their retention (age or count)
    "scheduled",  # delayed events scheduled
    "scheduled_moved",  # delayed events moved into the stream when due
    "cancelled",  # delayed events cancelled before they were due
    "deduplicated",  # publishes that found their dedup key taken and appended nothing
)


class GroupStatus(msgspec.Struct, kw_only=True):
    name: str
    consumers: int
    pending: int  # delivered, not yet settled (stream + retry stream)
    lag: int | None  # entries not yet delivered to the group (None when the server cannot tell)
    last_delivered_id: str
    retries_waiting: int  # in backoff, in the delayed set
    stats: dict[str, int]  # every counter of STAT_COUNTERS, and any other the server holds


class StreamStatus(msgspec.Struct, kw_only=True):
    stream: str
    exists: bool  # a stream of that name exists (it may be empty)
    # "stream"; "none" when there is no such key; else the type of the key in the way ("hash", "string",
    # ...), or "" when the server would not say (an ACL user without TYPE)
    key_type: str
    length: int
    dead_letters: int
    groups: list[GroupStatus]
    # `*` (every group) or a group's name -> who paused it, when, why; empty when nothing is paused.
    paused: dict[str, PauseInfo] = msgspec.field(default_factory=dict)
    # The group that keeps acknowledged entries from being trimmed (stalled, or slower than the others),
    # and by how much; None when retention could trim everything the groups have acknowledged.
    trimming_held_back_by: Holdback | None = None
    totals: dict[str, int] = msgspec.field(default_factory=dict)  # every counter of TOTAL_COUNTERS
    scheduled: int = 0  # delayed events waiting to enter the stream
    next_scheduled_due_ms: int | None = None  # the soonest one's due time (Unix ms)
    dedup_keys: int = 0  # dedup keys remembered
    partitions: int | None = None  # the partition count of a partitioned stream; None for a plain one
    # Each partition's own status, in partition order: only when asked for (per_partition=True).
    partition_details: list[StreamStatus] | None = None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_status(stream: str, per_partition: bool) -> Steps[StreamStatus]:
    (count,) = yield from recorded_partitions([stream])
    return (yield from _status_of(stream, count, per_partition))


def _status_of(stream: str, partitions: int | None, per_partition: bool) -> Steps[StreamStatus]:
    if partitions is None:
        return (yield from _plain_status(stream))
    return (yield from _partitioned_status(stream, partitions, per_partition))


def _plain_status(stream: str) -> Steps[StreamStatus]:
    keys.validate_name("stream", stream)
    dead, length, exists, groups_raw = yield [
        ("XLEN", keys.dlq_key(stream)), ("XLEN", stream), ("EXISTS", stream), ("XINFO GROUPS", stream),
    ]  # fmt: skip
    (dead,) = checked([dead])
    if isinstance(length, ResponseError) and str(length).startswith("WRONGTYPE"):
        # TYPE only here, where it is needed: SECURITY.md's operator user may not run it.
        (key_type,) = yield [("TYPE", stream)]
        shown = "" if isinstance(key_type, Exception) else _s(key_type)
        return StreamStatus(
            stream=stream, exists=False, key_type=shown, length=0, dead_letters=int(dead), groups=[]
        )
    (length, exists) = checked([length, exists])
    if not exists:
        # No stream yet, but delayed events may wait for it (and a pause): with no worker running, nothing
        # has made the stream, and this is where an operator looks for them.
        paused = yield from _pauses_shown(stream)
        scheduled = yield from scheduled_steps(stream)
        return StreamStatus(
            stream=stream, exists=False, key_type="none", length=0, dead_letters=int(dead), groups=[],
            paused=paused, scheduled=scheduled.scheduled_count,
            next_scheduled_due_ms=scheduled.next_due_ms, dedup_keys=scheduled.dedup_keys,
        )  # fmt: skip
    (groups_raw,) = checked([groups_raw])
    names = [_s(info["name"]) for info in groups_raw]
    replies = yield [
        command
        for name in names
        for command in (
            ("XPENDING", keys.retry_key(stream, name), name),
            ("HGETALL", keys.stats_key(stream, name)),
            ("ZCARD", keys.delayed_key(stream, name)),
        )
    ]
    groups = []
    for n, (name, info) in enumerate(zip(names, groups_raw, strict=True)):
        retry_pending, stats_raw, waiting = replies[3 * n : 3 * n + 3]
        stats = dict.fromkeys(STAT_COUNTERS, 0)
        stats.update({_s(k): int(v) for k, v in checked([stats_raw])[0].items()})
        lag = info.get("lag")
        # Redis and Valkey overstate lag once entries past a group's position were trimmed (its read counter
        # is not corrected, valkey-io/valkey#1952): no more entries can be undelivered than the stream holds.
        if lag is not None:
            lag = min(int(lag), int(length))
        groups.append(
            GroupStatus(
                name=name,
                consumers=int(info["consumers"]),
                pending=int(info["pending"]) + _retry_pending(retry_pending),
                lag=int(lag) if lag is not None else None,
                last_delivered_id=_s(info["last-delivered-id"]),
                retries_waiting=int(checked([waiting])[0]),
                stats=stats,
            )
        )
    paused = yield from _pauses_shown(stream)
    holdback = yield from holdback_steps(stream)
    scheduled = yield from scheduled_steps(stream)
    (totals_raw,) = checked((yield [("HGETALL", keys.totals_key(stream))]))
    totals = dict.fromkeys(TOTAL_COUNTERS, 0)
    totals.update({_s(k): int(v) for k, v in totals_raw.items()})
    return StreamStatus(
        stream=stream,
        exists=True,
        key_type="stream",
        length=int(length),
        dead_letters=int(dead),
        groups=groups,
        paused=paused,
        trimming_held_back_by=holdback,
        totals=totals,
        scheduled=scheduled.scheduled_count,
        next_scheduled_due_ms=scheduled.next_due_ms,
        dedup_keys=scheduled.dedup_keys,
    )


def _pauses_shown(stream: str) -> Steps[dict[str, PauseInfo]]:
    """pause_steps, with a key of another type in place of the pause hash shown as a stream-wide pause
    whose reason names it: the workers of the stream refuse to run while it is there, so to an operator it
    is one, and one misconfigured stream must not take every other stream's status down with it."""
    try:
        return (yield from pause_steps(stream))
    except ConfigurationError as exc:
        return {EVERY_GROUP: PauseInfo(since_ms=0, reason=str(exc))}


def _retry_pending(reply: Any) -> int:
    """XPENDING's count on a group's retry stream, which is made at the group's first retry: none before."""
    if isinstance(reply, ResponseError) and not isinstance(reply, NoPermissionError):
        return 0
    return int(checked([reply])[0]["pending"])


def _partitioned_status(stream: str, partitions: int, per_partition: bool) -> Steps[StreamStatus]:
    """The partitions' status read side by side (as many round trips as one stream takes), added up."""
    readers: list[Steps[Any]] = [_plain_status(name) for name in partition_streams(stream, partitions)]
    readers.append(_pauses_shown(stream))  # the logical stream's own pauses
    found = yield from side_by_side(readers)
    parts: list[StreamStatus] = found[:-1]
    own_pauses: dict[str, PauseInfo] = found[-1]
    total = _added_up(stream, parts, own_pauses)
    total.partitions = partitions
    total.partition_details = parts if per_partition else None
    return total


def _added_up(stream: str, parts: list[StreamStatus], own_pauses: dict[str, PauseInfo]) -> StreamStatus:
    groups: dict[str, GroupStatus] = {}
    for part in parts:
        for g in part.groups:
            seen = groups.get(g.name)
            if seen is None:
                groups[g.name] = msgspec.structs.replace(g, last_delivered_id="", stats=dict(g.stats))
                continue
            seen.consumers += g.consumers
            seen.pending += g.pending
            seen.lag = None if seen.lag is None or g.lag is None else seen.lag + g.lag
            seen.retries_waiting += g.retries_waiting
            for name, value in g.stats.items():
                seen.stats[name] = seen.stats.get(name, 0) + value
    paused = dict(own_pauses)
    for part in parts:
        for scope, info in part.paused.items():
            if scope not in paused or info.since_ms < paused[scope].since_ms:
                paused[scope] = info
    totals = dict.fromkeys(TOTAL_COUNTERS, 0)
    for part in parts:
        for name, value in part.totals.items():
            totals[name] = totals.get(name, 0) + value
    holdbacks = [part.trimming_held_back_by for part in parts if part.trimming_held_back_by is not None]
    dues = [part.next_scheduled_due_ms for part in parts if part.next_scheduled_due_ms is not None]
    exists = any(part.exists for part in parts)
    other_types = [part.key_type for part in parts if part.key_type not in ("stream", "none")]
    return StreamStatus(
        stream=stream,
        exists=exists,
        key_type="stream" if exists else (other_types[0] if other_types else "none"),
        length=sum(part.length for part in parts),
        dead_letters=sum(part.dead_letters for part in parts),
        groups=list(groups.values()),
        paused=paused,
        trimming_held_back_by=max(holdbacks, key=lambda held: held.kept, default=None),
        totals=totals,
        scheduled=sum(part.scheduled for part in parts),
        next_scheduled_due_ms=min(dues, default=None),
        dedup_keys=sum(part.dedup_keys for part in parts),
    )


def _known_streams() -> Steps[list[str]]:
    (members,) = checked((yield [("SMEMBERS", keys.REGISTRY_KEY)]))
    return sorted(_s(s) for s in members)


def _status(streams: Sequence[str] | None, per_partition: bool) -> Steps[list[StreamStatus]]:
    if streams:
        names = list(streams)
        counts = yield from recorded_partitions(names)
    else:
        names, counts = yield from _known_logical_streams()
    return (yield from side_by_side([
        _status_of(name, count, per_partition) for name, count in zip(names, counts, strict=True)
    ]))  # fmt: skip


def _known_logical_streams() -> Steps[tuple[list[str], list[int | None]]]:
    """The registry's streams, each partition of a partitioned stream replaced by that stream (once),
    and the partition count of each (None: plain)."""
    members = yield from _known_streams()
    owners = {name: logical_stream(name) for name in members}
    asked = sorted({*members, *(found[0] for found in owners.values() if found is not None)})
    counts = dict(zip(asked, (yield from recorded_partitions(asked)), strict=True))
    shown: set[str] = set()
    for name in members:
        found = owners[name]
        if found is not None and (count := counts[found[0]]) is not None and found[1] < count:
            shown.add(found[0])  # a partition of a stream that has its count recorded
        else:
            shown.add(name)
    names = sorted(shown)
    return names, [counts[name] for name in names]


async def _run(client: RedisLike, steps: Steps[T], user: str) -> T:
    return await run_steps_on(client, steps, user, __name__)


def _run_sync(client: str | redis.Redis | None, steps: Steps[T], user: str) -> T:
    return run_steps_on_sync(client, steps, user, __name__)


async def stream_status(client: RedisLike, stream: str, *, per_partition: bool = False) -> StreamStatus:
    """One stream's length, dead letters and groups; a missing key or one of another type says so.

    A partitioned stream's figures are those of its partitions added up; per_partition=True also gives
    each partition's status (partition_details)."""
    return await _run(client, _stream_status(stream, per_partition), "stream_status")


async def known_streams(client: RedisLike) -> list[str]:
    """Streams that have had a streamq worker (kept in keys.REGISTRY_KEY)."""
    return await _run(client, _known_streams(), "known_streams")


async def status(
    client: RedisLike, streams: Sequence[str] | None = None, *, per_partition: bool = False
) -> list[StreamStatus]:
    """The status of each stream named, or of every known stream (a partitioned one once, by its name).

    per_partition=True also gives each partitioned stream's partitions (partition_details)."""
    return await _run(client, _status(streams, per_partition), "status")


def stream_status_sync(
    client: str | redis.Redis | None, stream: str, *, per_partition: bool = False
) -> StreamStatus:
    return _run_sync(client, _stream_status(stream, per_partition), "stream_status")


def known_streams_sync(client: str | redis.Redis | None) -> list[str]:
    return _run_sync(client, _known_streams(), "known_streams")


def status_sync(
    client: str | redis.Redis | None, streams: Sequence[str] | None = None, *, per_partition: bool = False
) -> list[StreamStatus]:
    return _run_sync(client, _status(streams, per_partition), "status")
