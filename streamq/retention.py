"""Retention: trim what every group of a stream has acknowledged, delete a group, see who holds trimming back.

Workers trim on their own (ConsumerSettings.retention, keep_acked_ms, trim_interval_ms, max_len and the
dead-letter limits); these are the same operations for operators and scripts (`streamq trim`, `streamq
group delete`, `streamq status`).

- trim / trim_sync: removes the entries every group of the stream has delivered and acknowledged, at least
  keep_acked_ms old. It never removes an entry a group has pending or has not been delivered yet, and never
  trims a stream that has no group. Trimming is approximate (`XTRIM MINID ~`): it frees whole nodes of the
  stream (about 100 entries each), so up to a node of acknowledged entries stays; counts are exact. An
  optional max_len is a hard cap that does drop entries some group still needs, and says how many.
  A dry run computes what would be removed without removing anything; its count of entries below the cut
  is exact when fewer than COUNT_CAP entries are below it or from it on (else `estimated`: at least that
  many), and an upper bound of what the approximate trim would remove.
- delete_group / delete_group_sync: XGROUP DESTROY on the stream and on the group's retry stream, with the
  group's retries waiting, counters, rate limiter and pause, refused (GroupInUse) while a consumer of the
  group is live. A group nobody consumes any more pins trimming for ever: deleting it lets trimming go on.
- holdback / holdback_sync (and holdback_steps, for inspect.py): which group holds trimming back, from
  which id and since when, and how many entries are kept only because of it.

Each accepts a URL, a client of the right kind (redis.asyncio.Redis for the async ones, redis.Redis for
the _sync ones) or None ($STREAMQ_REDIS_URL, else localhost).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
import redis
from redis.exceptions import ResponseError

from . import keys
from ._connection import RedisLike, for_key, for_key_sync
from ._wire import (
    Steps,
    T,
    borrowed_async,
    borrowed_sync,
    checked,
    run_steps,
    run_steps_on,
    run_steps_on_sync,
    run_steps_sync,
)
from ._wire import retention as wire
from ._wire.replies import raise_for_key
from .errors import ConfigurationError, GroupInUse
from .partitions import recorded_partitions, streams_holding
from .settings import ConsumerSettings

COUNT_CAP = wire.COUNT_CAP  # entries counted with XRANGE at most, in dry runs and holdback
DEFAULT_LIVE_IDLE_MS = 60_000  # a consumer idle less than this is live: its worker reads every block_ms

__all__ = [
    "COUNT_CAP",
    "DEFAULT_LIVE_IDLE_MS",
    "GroupDeleted",
    "Holdback",
    "TrimResult",
    "delete_group",
    "delete_group_sync",
    "holdback",
    "holdback_steps",
    "holdback_sync",
    "trim",
    "trim_sync",
]


class TrimResult(msgspec.Struct, kw_only=True):
    """What a trim did (or, with dry_run, would do)."""

    stream: str
    dry_run: bool
    removed: int  # acknowledged by every group, trimmed (dry run: entries below the cut, see `estimated`)
    dropped: int  # over max_len: entries dropped whether or not every group had acknowledged them
    length_after: int
    groups: int
    safe_id: str | None  # every group has acknowledged every entry below this id (None: no group)
    held_by: str | None  # the group whose position is safe_id: the one holding trimming back
    cut_id: str | None  # trimmed below this id: safe_id, or lower to keep keep_acked_ms of entries
    dropped_first: str | None  # the first id dropped over max_len (not in dry runs)
    dropped_until: str | None  # the first id kept after those dropped (not in dry runs)
    dead_letters_expired: int
    estimated: bool  # a dry run's count reached COUNT_CAP on both sides of the cut: at least that many
    # A partitioned stream: each partition's own result (the counts above add them up; the ids are None).
    partitions: list[TrimResult] | None = None


class GroupDeleted(msgspec.Struct, kw_only=True):
    stream: str
    group: str
    existed: bool  # False: there was no such group; only leftover keys of that name were removed
    pending: int  # entries the group had delivered and not acknowledged, dropped with it
    consumers: int
    forced: bool  # deleted despite live consumers


class Holdback(msgspec.Struct, kw_only=True):
    """The group that holds trimming back, and by how much."""

    stream: str
    group: str
    # "pending": its oldest unacknowledged entry; "unread": it has acknowledged all it was delivered and
    # has not read past bound_id yet.
    reason: Literal["pending", "unread"]
    bound_id: str  # entries from this id on are kept for it
    # When the oldest entry kept for it was appended (the time part of its id; bound_id itself may be no
    # entry's: a group that has read nothing is at 0-1).
    since_ms: int
    kept: int  # entries kept only because of it (between bound_id and next_id); at least, when capped
    capped: bool
    next_id: str | None  # where trimming would stop without it (another group's bound); None: the end
    # Other groups at the very same position: the entries are kept for all of them, and deleting one alone
    # frees nothing.
    tied: list[str] = msgspec.field(default_factory=list)


def _result(stream: str, reply: wire.TrimReply, dry_run: bool) -> TrimResult:
    return TrimResult(
        stream=stream, dry_run=dry_run, removed=reply.removed, dropped=reply.dropped,
        length_after=reply.length_after, groups=reply.groups, safe_id=reply.safe_id, held_by=reply.held_by,
        cut_id=reply.cut_id, dropped_first=reply.dropped_first, dropped_until=reply.dropped_until,
        dead_letters_expired=reply.dead_letters_expired, estimated=reply.estimated,
    )  # fmt: skip


async def trim(
    client: RedisLike,
    stream: str,
    *,
    keep_acked_ms: int = 0,
    max_len: int | None = None,
    dry_run: bool = False,
    dlq_max_age_ms: int | None = None,
    dlq_max_len: int | None = None,
) -> TrimResult:
    """Trim `stream` below what every group has acknowledged (see the module docstring)."""
    _check(stream, keep_acked_ms, max_len, dlq_max_age_ms, dlq_max_len)
    results = []
    async with borrowed_async(client, "trim", __name__) as connection:
        (count,) = await run_steps(connection, recorded_partitions([stream]))
        for name in streams_holding(stream, count):
            reply = await wire.trim(
                for_key(connection, name), name, keep_acked_ms=keep_acked_ms, max_len=max_len,
                dlq_max_age_ms=dlq_max_age_ms, dlq_max_len=dlq_max_len, dry_run=dry_run,
            )  # fmt: skip
            results.append(_result(name, reply, dry_run))
    return _combined(stream, results, dry_run) if count else results[0]


def trim_sync(
    client: str | redis.Redis | None,
    stream: str,
    *,
    keep_acked_ms: int = 0,
    max_len: int | None = None,
    dry_run: bool = False,
    dlq_max_age_ms: int | None = None,
    dlq_max_len: int | None = None,
) -> TrimResult:
    """trim() for blocking code."""
    _check(stream, keep_acked_ms, max_len, dlq_max_age_ms, dlq_max_len)
    results = []
    with borrowed_sync(client, "trim", __name__) as connection:
        (count,) = run_steps_sync(connection, recorded_partitions([stream]))
        for name in streams_holding(stream, count):
            reply = wire.trim_sync(
                for_key_sync(connection, name), name, keep_acked_ms=keep_acked_ms, max_len=max_len,
                dlq_max_age_ms=dlq_max_age_ms, dlq_max_len=dlq_max_len, dry_run=dry_run,
            )  # fmt: skip
            results.append(_result(name, reply, dry_run))
    return _combined(stream, results, dry_run) if count else results[0]


def _combined(stream: str, parts: list[TrimResult], dry_run: bool) -> TrimResult:
    return TrimResult(
        stream=stream, dry_run=dry_run, removed=sum(p.removed for p in parts),
        dropped=sum(p.dropped for p in parts), length_after=sum(p.length_after for p in parts),
        groups=max(p.groups for p in parts), safe_id=None, held_by=None, cut_id=None, dropped_first=None,
        dropped_until=None, dead_letters_expired=sum(p.dead_letters_expired for p in parts),
        estimated=any(p.estimated for p in parts), partitions=parts,
    )  # fmt: skip


def _check(
    stream: str, keep_acked_ms: int, max_len: int | None, dlq_max_age_ms: int | None, dlq_max_len: int | None
) -> None:
    # The same ranges as the worker's settings, checked by building them: one place says what is valid.
    keys.validate_name("stream", stream)
    ConsumerSettings(
        stream=stream, group="check", keep_acked_ms=keep_acked_ms, max_len=max_len,
        dlq_max_age_ms=dlq_max_age_ms, dlq_max_len=dlq_max_len,
    )  # fmt: skip


def _deleted(stream: str, group: str, reply: wire.GroupDeleteReply, force: bool) -> GroupDeleted:
    if not reply.deleted:
        raise GroupInUse(stream, group, reply.live)
    return GroupDeleted(
        stream=stream, group=group, existed=reply.existed, pending=reply.pending, consumers=reply.consumers,
        forced=force,
    )  # fmt: skip


async def delete_group(
    client: RedisLike,
    stream: str,
    group: str,
    *,
    force: bool = False,
    live_idle_ms: int = DEFAULT_LIVE_IDLE_MS,
) -> GroupDeleted:
    """Delete `group` of `stream` and its companion keys; GroupInUse while a consumer is live, unless force.

    A worker still running on the group recreates it (after what it settled): stop the workers first. Its
    pending entries are dropped with it, and trimming no longer waits for it.
    """
    _check_group(stream, group, live_idle_ms)
    async with borrowed_async(client, "delete_group", __name__) as connection:
        count, live = await run_steps(connection, _partitioned_group(stream, group))
        if count and not force:
            # Every partition is checked before any is deleted, so a refusal leaves the group whole (unless a
            # consumer turns live between the check and the delete: each partition is a script of its own).
            for name in streams_holding(stream, count):
                found = await wire.delete_group(
                    for_key(connection, name), name, group, live_idle_ms=live_idle_ms, force=False, check=True
                )
                live = _joined(live, found.live)
        if live and not force:
            raise GroupInUse(stream, group, live)
        replies = []
        for name in streams_holding(stream, count):
            reply = await wire.delete_group(
                for_key(connection, name), name, group, live_idle_ms=live_idle_ms, force=force
            )
            replies.append(_deleted(name, group, reply, force))
        if count:
            await run_steps(connection, _forget_members(stream, group))
    return _all_deleted(stream, group, replies, force)


def delete_group_sync(
    client: str | redis.Redis | None,
    stream: str,
    group: str,
    *,
    force: bool = False,
    live_idle_ms: int = DEFAULT_LIVE_IDLE_MS,
) -> GroupDeleted:
    """delete_group() for blocking code."""
    _check_group(stream, group, live_idle_ms)
    with borrowed_sync(client, "delete_group", __name__) as connection:
        count, live = run_steps_sync(connection, _partitioned_group(stream, group))
        if count and not force:
            # Every partition is checked before any is deleted, so a refusal leaves the group whole (unless a
            # consumer turns live between the check and the delete: each partition is a script of its own).
            for name in streams_holding(stream, count):
                found = wire.delete_group_sync(
                    for_key_sync(connection, name), name, group, live_idle_ms=live_idle_ms, force=False,
                    check=True,
                )  # fmt: skip
                live = _joined(live, found.live)
        if live and not force:
            raise GroupInUse(stream, group, live)
        replies = []
        for name in streams_holding(stream, count):
            reply = wire.delete_group_sync(
                for_key_sync(connection, name), name, group, live_idle_ms=live_idle_ms, force=force
            )
            replies.append(_deleted(name, group, reply, force))
        if count:
            run_steps_sync(connection, _forget_members(stream, group))
    return _all_deleted(stream, group, replies, force)


def _partitioned_group(stream: str, group: str) -> Steps[tuple[int | None, list[tuple[str, int]]]]:
    """(the stream's partition count or None, the group's live workers as (name, ms their lease has left))."""
    (count,) = yield from recorded_partitions([stream])
    if not count:
        return None, []
    clock, members = checked(
        (yield [("TIME",), ("ZRANGE", keys.members_key(stream, group), 0, -1, "WITHSCORES")])
    )
    now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
    # redis-py pairs WITHSCORES replies up itself (its response callback runs in pipelines too).
    pairs = (
        members
        if members and isinstance(members[0], list | tuple)
        else zip(members[::2], members[1::2], strict=True)
    )
    live = [(name.decode() if isinstance(name, bytes) else str(name), int(float(score)) - now_ms)
            for name, score in pairs if float(score) > now_ms]  # fmt: skip
    return count, live


def _joined(live: list[tuple[str, int]], more: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Live consumers of several partitions, each named once (one worker reads several partitions)."""
    joined = list(live)
    named = {name for name, _ in live}
    for name, ms in more:
        if name not in named:
            named.add(name)
            joined.append((name, ms))
    return joined


def _forget_members(stream: str, group: str) -> Steps[None]:
    """A partitioned group's own keys on the logical stream: its workers, its partitions' owners and its
    pause (a pause of a partitioned stream's group is also kept in the stream's own hash, which status
    reads: control.py)."""
    checked((yield [
        ("DEL", keys.members_key(stream, group)), ("DEL", keys.owners_key(stream, group)),
        ("HDEL", keys.paused_key(stream), group),
    ]))  # fmt: skip


def _all_deleted(stream: str, group: str, parts: list[GroupDeleted], force: bool) -> GroupDeleted:
    if len(parts) == 1:
        return parts[0]
    return GroupDeleted(
        stream=stream, group=group, existed=any(p.existed for p in parts),
        pending=sum(p.pending for p in parts), consumers=sum(p.consumers for p in parts), forced=force,
    )  # fmt: skip


def _check_group(stream: str, group: str, live_idle_ms: int) -> None:
    keys.validate_name("stream", stream)
    keys.validate_name("group", group)
    if not isinstance(live_idle_ms, int) or isinstance(live_idle_ms, bool) or live_idle_ms < 0:
        raise ConfigurationError(f"live_idle_ms must be an integer >= 0, got {live_idle_ms!r}")


# ---------------------------------------------------------------------------------------------- holdback


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _successor(entry_id: str) -> str:
    """The id after `entry_id`, as the TRIM script has it: a sequence number of 14 digits or more keeps the
    id itself (one entry more kept), which also keeps the largest sequence number from becoming an id the
    server refuses."""
    ms, _, seq = entry_id.partition("-")
    if len(seq) < 14:
        return f"{ms}-{int(seq or 0) + 1}"
    return entry_id


# Counts entries in a range on the server (XRANGE's entries are not sent to the client), and gives the
# first one's id: when the oldest entry kept was appended.
_COUNT_RANGE = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
return {#found, found[1] and found[1][1] or ''}
"""


def holdback_steps(stream: str, *, keep_acked_ms: int = 0) -> Steps[Holdback | None]:
    """Which group holds trimming of `stream` back; None when none does (no such stream, no group, or the
    entries before the lowest group's position are all trimmable already).

    The bounds are those of the TRIM script (see _wire/retention.py). With keep_acked_ms, entries the keep
    window keeps anyway are not counted against the group (the window is measured on this machine's clock).
    Three round trips at most: the groups, their oldest pending entries, the count.
    """
    keys.validate_name("stream", stream)
    (groups_raw,) = yield [("XINFO GROUPS", stream)]
    if isinstance(groups_raw, ResponseError) and "no such key" in str(groups_raw):
        return None
    if isinstance(groups_raw, ResponseError):
        raise_for_key(stream, groups_raw)  # a key of another type, a denial: ConfigurationError
    (groups_raw,) = checked([groups_raw])
    if not groups_raw:
        return None
    infos = [(_s(info["name"]), _s(info["last-delivered-id"]), int(info["pending"])) for info in groups_raw]
    with_pending = [name for name, _, pending in infos if pending > 0]
    summaries: dict[str, Any] = {}
    if with_pending:
        replies = checked((yield [("XPENDING", stream, name) for name in with_pending]))
        summaries = dict(zip(with_pending, replies, strict=True))
    bounds: list[tuple[tuple[int, int], str, str, Literal["pending", "unread"]]] = []
    for name, last, pending in infos:
        bound, reason = _successor(last), "unread"
        oldest = summaries.get(name, {}).get("min") if pending else None
        if oldest is not None and _id_order(_s(oldest)) < _id_order(bound):
            bound, reason = _s(oldest), "pending"
        bounds.append((_id_order(bound), name, bound, reason))  # type: ignore[arg-type]
    bounds.sort()
    _, group, bound, reason = bounds[0]
    later = [b for b in bounds[1:] if b[0] > bounds[0][0]]
    tied = [b[1] for b in bounds[1:] if b[0] == bounds[0][0]]
    next_id = later[0][2] if later else None
    end = f"({next_id}" if next_id is not None else "+"
    if keep_acked_ms > 0:
        window = f"{max(int(time.time() * 1000) - keep_acked_ms, 0)}-0"
        if _id_order(window) <= bounds[0][0]:
            return None  # the keep window keeps these entries whatever the group does
        if next_id is None or _id_order(window) < _id_order(next_id):
            end = f"({window}"
    ((kept, first),) = checked((yield [("EVAL", _COUNT_RANGE, 1, stream, bound, end, COUNT_CAP)]))
    if int(kept) == 0:
        return None
    return Holdback(
        stream=stream, group=group, reason=reason, bound_id=bound, since_ms=_id_order(_s(first))[0],
        kept=int(kept), capped=int(kept) >= COUNT_CAP, next_id=next_id, tied=tied,
    )  # fmt: skip


async def _run(client: RedisLike, steps: Steps[T], user: str) -> T:
    return await run_steps_on(client, steps, user, __name__)


def _run_sync(client: str | redis.Redis | None, steps: Steps[T], user: str) -> T:
    return run_steps_on_sync(client, steps, user, __name__)


async def holdback(client: RedisLike, stream: str, *, keep_acked_ms: int = 0) -> Holdback | None:
    """The group holding trimming of `stream` back (see holdback_steps)."""
    return await _run(client, holdback_steps(stream, keep_acked_ms=keep_acked_ms), "holdback")


def holdback_sync(
    client: str | redis.Redis | None, stream: str, *, keep_acked_ms: int = 0
) -> Holdback | None:
    return _run_sync(client, holdback_steps(stream, keep_acked_ms=keep_acked_ms), "holdback")
