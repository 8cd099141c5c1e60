"""Delayed events for tools: list them, cancel them, and sum them up for `streamq status`.

Events published with `delay_ms=` or `at=` (Producer.publish) wait in the stream's scheduled set until a
worker of any group of the stream moves them in (streamq/_worker/scheduling.py). Each waits under a
schedule id (`sched-<hex>`), the id its publish returned.

Every operation is written once as steps (streamq/_wire/steps.py) and run on an asyncio client
(`list_scheduled`, `cancel`, `scheduled_summary`) or a blocking one (the `_sync` twins); each takes a
client (left open: it is yours) or a URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import redis

from . import keys
from ._connection import RedisLike
from ._wire import Steps, checked, run_steps_on, run_steps_on_sync
from ._wire.publishing import SCHEDULE_ID_PREFIX, cancel_command
from .errors import ConfigurationError
from .partitions import partition_streams, recorded_partitions, side_by_side, streams_holding

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 100_000
# The stream's own counters (keys.totals_key) that delayed delivery, dedup and counted trimming keep.
FLOW_COUNTERS = ("scheduled", "scheduled_moved", "cancelled", "deduplicated", "dropped_by_maxlen")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# The due times a datetime can hold. `at=` takes any aware datetime, and one near datetime's ends in another
# timezone is due in year 0 or 10000 in UTC; a score written by hand may even be infinite. Such a due time
# is shown at the nearest end: taken as it is, it failed every listing of the stream (and its summary).
FIRST_DUE_MS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MS
LAST_DUE_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MS


def due_ms_of(score: float) -> int:
    """A scheduled set's score -> a due time in Unix ms that a datetime can hold."""
    return FIRST_DUE_MS if score <= FIRST_DUE_MS else LAST_DUE_MS if score >= LAST_DUE_MS else int(score)


class ScheduledEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One delayed event not yet moved into its stream."""

    schedule_id: str
    due_ms: int  # Unix time in ms, on the server's clock
    size: int  # payload bytes
    type: str | None  # the event's tag, when its payload says so (a map with a `type` field)

    @property
    def due(self) -> datetime:
        # Whole ms from the epoch, not a float of seconds (fromtimestamp): exact at the calendar's ends.
        return _EPOCH + due_ms_of(self.due_ms) * _MS


class ScheduledSummary(msgspec.Struct, kw_only=True):
    """A stream's delayed events in figures, for `streamq status`."""

    stream: str
    scheduled_count: int  # waiting, not yet due or not yet moved
    next_due_ms: int | None  # the soonest due time (Unix ms), None when nothing waits
    dedup_keys: int  # dedup keys remembered (expired ones included until a publish forgets them)
    totals: dict[str, int]  # every counter of FLOW_COUNTERS, 0 until it first counts


class _Tagged(msgspec.Struct):
    """The only field read from a payload to name its type: unknown fields are skipped, not built."""

    type: str | None = None


_read_tag = msgspec.msgpack.Decoder(_Tagged).decode


def type_of(payload: bytes) -> str | None:
    """The tag of a streamq payload, or None when the payload does not carry one where streamq puts it."""
    try:
        tag = _read_tag(payload).type
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return tag if isinstance(tag, str) else None


def check_schedule_id(schedule_id: str) -> str:
    if not isinstance(schedule_id, str) or not schedule_id.startswith(SCHEDULE_ID_PREFIX):
        raise ConfigurationError(f"schedule id must look like {SCHEDULE_ID_PREFIX}<hex>, got {schedule_id!r}")
    return schedule_id


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ConfigurationError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
    return limit


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """ZRANGE ... WITHSCORES, flat [member, score, ...] (RESP2) or [[member, score], ...] (RESP3)."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, float(score)) for member, score in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def list_steps(stream: str, limit: int = DEFAULT_LIST_LIMIT) -> Steps[list[ScheduledEvent]]:
    """The `limit` soonest delayed events of the stream (of all its partitions), soonest first."""
    keys.validate_name("stream", stream)
    _check_limit(limit)
    (partitions,) = yield from recorded_partitions([stream])
    if not partitions:
        return (yield from _list_one(stream, limit))
    names = partition_streams(stream, partitions)
    found = yield from side_by_side([_list_one(name, limit) for name in names])
    return sorted((event for events in found for event in events), key=lambda e: e.due_ms)[:limit]


def _list_one(stream: str, limit: int) -> Steps[list[ScheduledEvent]]:
    (due,) = checked((yield [("ZRANGE", keys.scheduled_key(stream), 0, limit - 1, "WITHSCORES")]))
    pairs = _pairs(due)
    if not pairs:
        return []
    (payloads,) = checked((yield [("HMGET", keys.scheduled_events_key(stream), *(m for m, _ in pairs))]))
    return [
        ScheduledEvent(
            schedule_id=_text(member),
            due_ms=due_ms_of(score),
            size=len(payload) if payload is not None else 0,
            type=type_of(payload) if payload is not None else None,
        )
        for (member, score), payload in zip(pairs, payloads, strict=True)
    ]


def cancel_steps(stream: str, schedule_ids: Sequence[str]) -> Steps[list[bool]]:
    """Cancel delayed events not moved yet; one flag per id, True where it was cancelled now. A cancelled
    event's dedup key is forgotten, so the same key may be published again."""
    keys.validate_name("stream", stream)
    if isinstance(schedule_ids, str):
        raise ConfigurationError("schedule_ids must be a sequence of schedule ids, not one string")
    ids = [check_schedule_id(i) for i in schedule_ids]
    if not ids:
        return []
    # A partitioned stream's delayed events wait in their partition; schedule ids are unique, so each is
    # cancelled wherever it is.
    (partitions,) = yield from recorded_partitions([stream])
    names = streams_holding(stream, partitions)
    replies = checked((yield [cancel_command(name, ids) for name in names]))
    return [any(int(flags[n]) == 1 for flags in replies) for n in range(len(ids))]


def summary_steps(stream: str) -> Steps[ScheduledSummary]:
    """scheduled_steps for a stream whose delayed events may wait in its partitions: they are added up (the
    counts and counters summed, the soonest due time of all), as `streamq status` shows them."""
    keys.validate_name("stream", stream)
    (partitions,) = yield from recorded_partitions([stream])
    if not partitions:
        return (yield from scheduled_steps(stream))
    parts = yield from side_by_side([scheduled_steps(name) for name in partition_streams(stream, partitions)])
    dues = [part.next_due_ms for part in parts if part.next_due_ms is not None]
    return ScheduledSummary(
        stream=stream,
        scheduled_count=sum(part.scheduled_count for part in parts),
        next_due_ms=min(dues, default=None),
        dedup_keys=sum(part.dedup_keys for part in parts),
        totals={name: sum(part.totals[name] for part in parts) for name in FLOW_COUNTERS},
    )


def scheduled_steps(stream: str) -> Steps[ScheduledSummary]:
    """How many delayed events wait, the soonest due time, the dedup keys kept, and the stream's counters
    of delayed delivery and dedup, in one round trip: of this one stream key (a partition's, or a stream
    that is not partitioned; summary_steps adds a partitioned stream's up)."""
    keys.validate_name("stream", stream)
    count, soonest, dedup_keys, totals_raw = checked(
        (
            yield [
                ("ZCARD", keys.scheduled_key(stream)),
                ("ZRANGE", keys.scheduled_key(stream), 0, 0, "WITHSCORES"),
                ("ZCARD", keys.dedup_expiry_key(stream)),
                ("HGETALL", keys.totals_key(stream)),
            ]
        )
    )
    pairs = _pairs(soonest)
    flat = (
        totals_raw.items()
        if isinstance(totals_raw, dict)
        else zip(totals_raw[::2], totals_raw[1::2], strict=True)
    )
    found = {_text(k): int(v) for k, v in flat}
    return ScheduledSummary(
        stream=stream,
        scheduled_count=int(count),
        next_due_ms=due_ms_of(pairs[0][1]) if pairs else None,
        dedup_keys=int(dedup_keys),
        totals={name: found.get(name, 0) for name in FLOW_COUNTERS},
    )


# ---------------------------------------------------------------------------------------------- API


async def list_scheduled(
    client: RedisLike, stream: str, *, limit: int = DEFAULT_LIST_LIMIT
) -> list[ScheduledEvent]:
    return await run_steps_on(client, list_steps(stream, limit), "list_scheduled", __name__)


def list_scheduled_sync(
    client: str | redis.Redis | None, stream: str, *, limit: int = DEFAULT_LIST_LIMIT
) -> list[ScheduledEvent]:
    return run_steps_on_sync(client, list_steps(stream, limit), "list_scheduled", __name__)


async def cancel(client: RedisLike, stream: str, schedule_ids: Sequence[str]) -> list[bool]:
    return await run_steps_on(client, cancel_steps(stream, schedule_ids), "cancel", __name__)


def cancel_sync(client: str | redis.Redis | None, stream: str, schedule_ids: Sequence[str]) -> list[bool]:
    return run_steps_on_sync(client, cancel_steps(stream, schedule_ids), "cancel", __name__)


async def scheduled_summary(client: RedisLike, stream: str) -> ScheduledSummary:
    return await run_steps_on(client, summary_steps(stream), "scheduled_summary", __name__)


def scheduled_summary_sync(client: str | redis.Redis | None, stream: str) -> ScheduledSummary:
    return run_steps_on_sync(client, summary_steps(stream), "scheduled_summary", __name__)
