"""What `streamq top` shows, read and computed: a Reading of the streams, and the Frame of rates between two
Readings (the text, the screen and the command are in _cli_watch.py).

Every interval the command reads the streams' status (inspect.status_sync, as `streamq status` does) and,
in one more run of steps, what status keeps no figure for: the server's clock, each stream's entries ever
added, each group's oldest pending entry and its consumers. From two readings in a row it shows:

- published/s: the change of XINFO STREAM's `entries-added` (every entry ever appended to the stream,
  whoever appended it, trimmed or not; the sum over the partitions of a partitioned stream). The length
  would not do: retention lowers it. Servers before Redis 7.0 have no such figure: shown as `-`.
- acked/s, retried/s, dead-lettered/s: the change of the group's counters (keys.stats_key: acked, retried,
  dead), which workers update in the step that settles the entries.
- the lag and its trend: the change of the group's lag per second (positive: its consumers fall behind).
- the oldest pending entry's age: the smallest id XPENDING gives (of the stream and of the group's retry
  stream) measured against the server's TIME, read in the same round trip: how long ago the oldest entry
  that is delivered and not yet settled was appended (to the stream, or for a retry to the retry stream).
- each consumer with its idle time (XINFO CONSUMERS: since it last read or claimed, the least over the
  stream and the retry stream) and the entries it holds.

Every rate is (counter now - counter before) * 1000 / interval_ms, where interval_ms is the server time
between the two readings (both read with TIME, not this machine's clock). A counter that went down (its
group deleted and made again) gives no rate for that interval (`-`, null in JSON); so does a first reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import redis
from redis.exceptions import ResponseError

from . import keys
from ._cli_output import stream_notes
from ._connection import SyncClient
from ._wire import Steps, checked, run_steps_sync
from .inspect import GroupStatus, StreamStatus, status_sync
from .partitions import partition_streams, side_by_side

# ---------------------------------------------------------------------------------------------- what it shows


class ConsumerView(msgspec.Struct, kw_only=True):
    name: str
    pending: int  # entries it holds, in the stream and the retry stream (and every partition)
    idle_ms: int  # since it last read or claimed: the least of XINFO CONSUMERS' idle over the streams
    inactive_ms: int | None = None  # since its last read that got entries (Redis >= 7.2); None: unknown


class GroupView(msgspec.Struct, kw_only=True):
    name: str
    consumers: int
    pending: int  # delivered, not yet settled (stream + retry stream)
    oldest_pending_id: str | None  # the smallest id pending (P/ID for a partition's); None: nothing pending
    oldest_pending_age_ms: int | None  # server time minus that id's time
    lag: int | None  # entries not yet delivered (None when the server cannot tell)
    lag_per_s: float | None  # the lag's change per second since the previous reading
    retries_waiting: int
    acked: int  # the group's counters, totals since it began
    retried: int
    dead: int
    acked_per_s: float | None
    retried_per_s: float | None
    dead_per_s: float | None
    consumer_details: list[ConsumerView]  # most recently active first


class StreamView(msgspec.Struct, kw_only=True):
    stream: str
    exists: bool
    key_type: str  # as StreamStatus.key_type: "stream", "none", or the type of the key in the way
    length: int
    dead_letters: int
    published: int | None  # entries ever added (XINFO STREAM entries-added); None: the server cannot tell
    published_per_s: float | None
    partitions: int | None  # the partition count of a partitioned stream (its figures are their sums)
    groups: list[GroupView]
    notes: list[str]  # pauses, what holds trimming back, delayed events: as `streamq status` says them


class Frame(msgspec.Struct, kw_only=True):
    """One refresh: what --json prints on a line of its own."""

    time_ms: int  # the server's time of this reading (Unix ms)
    interval_ms: int | None  # server time since the previous reading, the rates' denominator; None: first
    streams: list[StreamView]
    error: str | None = None  # the reading failed (it is retried at the next refresh); streams is empty


class _Extras(msgspec.Struct):
    """What a reading adds to a stream's status."""

    published: int | None
    oldest: dict[str, tuple[tuple[int, int], str]]  # group -> (order, shown id) of its oldest pending
    consumers: dict[str, list[ConsumerView]]  # group -> its consumers, merged over the streams


class Reading(msgspec.Struct):
    time_ms: int
    statuses: list[StreamStatus]
    extras: dict[str, _Extras]


# ---------------------------------------------------------------------------------------------- reading


def read(client: SyncClient, url: str, streams: Sequence[str] | None) -> Reading:
    """The streams' status and their extras, with the server's time."""
    # status_sync takes a plain client or a URL: a cluster's per-slot clients are made again from the URL.
    statuses = status_sync(client if isinstance(client, redis.Redis) else url, list(streams or []) or None)
    time_ms, extras = run_steps_sync(client, _extras_of(statuses))
    return Reading(time_ms, statuses, extras)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _absent(reply: Any) -> bool:
    """A reply saying the group or its stream is not there (a retry stream made at the group's first retry,
    a partition the group has not reached): nothing to show. Any other error is raised."""
    if isinstance(reply, ResponseError):
        text = str(reply)
        if text.startswith("NOGROUP") or "no such key" in text:
            return True
        raise reply
    return False


def _extras_of(statuses: list[StreamStatus]) -> Steps[tuple[int, dict[str, _Extras]]]:
    shown = [st for st in statuses if st.exists]
    readers: list[Steps[Any]] = [_server_time(), *(_stream_extras(st) for st in shown)]
    found = yield from side_by_side(readers)
    extras = {st.stream: extra for st, extra in zip(shown, found[1:], strict=True)}
    for st in statuses:
        if st.key_type == "none":  # no such stream (yet): nothing added, so its first entries make a rate
            extras[st.stream] = _Extras(0, {}, {})
    return found[0], extras


def _server_time() -> Steps[int]:
    ((seconds, micros),) = checked((yield [("TIME",)]))
    return int(seconds) * 1000 + int(micros) // 1000


def _stream_extras(st: StreamStatus) -> Steps[_Extras]:
    names = [st.stream] if st.partitions is None else partition_streams(st.stream, st.partitions)
    groups = [g.name for g in st.groups]
    parts = yield from side_by_side([_part_extras(name, groups) for name in names])
    published = [part.published for part in parts]
    merged = _Extras(None if None in published else sum(p or 0 for p in published), {}, {})
    for index, part in enumerate(parts):
        for group, (order, entry_id) in part.oldest.items():
            shown = entry_id if st.partitions is None else f"{index}/{entry_id}"
            if group not in merged.oldest or order < merged.oldest[group][0]:
                merged.oldest[group] = (order, shown)
    for group in groups:
        merged.consumers[group] = _merged_consumers(
            c for part in parts for c in part.consumers.get(group, [])
        )
    return merged


def _part_extras(stream: str, groups: list[str]) -> Steps[_Extras]:
    """One stream's (a plain one, or a partition): entries added, and per group its oldest pending entry
    and its consumers, in one round trip."""
    commands: list[tuple[Any, ...]] = [("XINFO STREAM", stream)]
    for group in groups:
        retry = keys.retry_key(stream, group)
        commands += [
            ("XPENDING", stream, group), ("XPENDING", retry, group),
            ("XINFO CONSUMERS", stream, group), ("XINFO CONSUMERS", retry, group),
        ]  # fmt: skip
    replies = yield commands
    info = replies[0]
    if _absent(info):
        published: int | None = 0  # a partition nothing was ever published to
    else:
        added = info.get("entries-added")  # Redis >= 7.0, Valkey
        published = None if added is None else int(added)
    extras = _Extras(published, {}, {})
    for n, group in enumerate(groups):
        pending, retry_pending, consumers, retry_consumers = replies[1 + 4 * n : 5 + 4 * n]
        oldest = [
            _s(summary["min"])
            for summary in (pending, retry_pending)
            if not _absent(summary) and summary.get("min") is not None
        ]
        if oldest:
            first = min(oldest, key=_id_order)
            extras.oldest[group] = (_id_order(first), first)
        extras.consumers[group] = [
            _consumer(c) for reply in (consumers, retry_consumers) if not _absent(reply) for c in reply
        ]
    return extras


def _consumer(info: dict[str, Any]) -> ConsumerView:
    inactive = info.get("inactive")  # Redis >= 7.2, Valkey
    return ConsumerView(
        name=_s(info["name"]), pending=int(info["pending"]), idle_ms=int(info["idle"]),
        inactive_ms=int(inactive) if inactive is not None else None,
    )  # fmt: skip


def _merged_consumers(seen: Iterable[ConsumerView]) -> list[ConsumerView]:
    """One row per consumer name (a worker keeps its name on the retry stream and every partition):
    entries held added up, idle the least (its latest read anywhere), most recently active first."""
    by_name: dict[str, ConsumerView] = {}
    for c in seen:
        known = by_name.get(c.name)
        if known is None:
            by_name[c.name] = msgspec.structs.replace(c)
            continue
        known.pending += c.pending
        known.idle_ms = min(known.idle_ms, c.idle_ms)
        if c.inactive_ms is not None:
            known.inactive_ms = (
                c.inactive_ms if known.inactive_ms is None else min(known.inactive_ms, c.inactive_ms)
            )
    return sorted(by_name.values(), key=lambda c: (c.idle_ms, c.name))


# ---------------------------------------------------------------------------------------------- rates


def _rate(
    now: int | None, before: int | None, interval_ms: int | None, *, signed: bool = False
) -> float | None:
    """The change per second; None without a previous figure, or for a counter that went down."""
    if now is None or before is None or not interval_ms or interval_ms <= 0:
        return None
    if now < before and not signed:
        return None
    return (now - before) * 1000 / interval_ms


def frame(previous: Reading | None, current: Reading) -> Frame:
    """What one refresh shows: the current reading, with rates from the previous one (if any)."""
    interval_ms = current.time_ms - previous.time_ms if previous is not None else None
    before = {st.stream: st for st in previous.statuses} if previous is not None else {}
    before_extras = previous.extras if previous is not None else {}
    views = []
    for st in current.statuses:
        extras = current.extras.get(st.stream, _Extras(None, {}, {}))
        was = before.get(st.stream)
        was_groups = {g.name: g for g in was.groups} if was is not None else {}
        was_published = before_extras[st.stream].published if st.stream in before_extras else None
        view = StreamView(
            stream=st.stream, exists=st.exists, key_type=st.key_type, length=st.length,
            dead_letters=st.dead_letters, published=extras.published,
            published_per_s=_rate(extras.published, was_published, interval_ms), partitions=st.partitions,
            groups=[_group_view(g, was_groups.get(g.name), extras, current.time_ms, interval_ms)
                    for g in st.groups],
            notes=[note for note in stream_notes(st) if not note.startswith("totals:")],
        )  # fmt: skip
        views.append(view)
    return Frame(time_ms=current.time_ms, interval_ms=interval_ms, streams=views)


def _group_view(
    g: GroupStatus, old: GroupStatus | None, extras: _Extras, time_ms: int, interval_ms: int | None
) -> GroupView:
    def per_s(counter: str) -> float | None:
        return _rate(g.stats.get(counter, 0), old.stats.get(counter, 0) if old else None, interval_ms)

    oldest = extras.oldest.get(g.name)
    return GroupView(
        name=g.name, consumers=g.consumers, pending=g.pending,
        oldest_pending_id=oldest[1] if oldest else None,
        oldest_pending_age_ms=max(time_ms - oldest[0][0], 0) if oldest else None,
        lag=g.lag, lag_per_s=_rate(g.lag, old.lag if old else None, interval_ms, signed=True),
        retries_waiting=g.retries_waiting,
        acked=g.stats.get("acked", 0), retried=g.stats.get("retried", 0), dead=g.stats.get("dead", 0),
        acked_per_s=per_s("acked"), retried_per_s=per_s("retried"), dead_per_s=per_s("dead"),
        consumer_details=extras.consumers.get(g.name, []),
    )  # fmt: skip
