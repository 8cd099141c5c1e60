"""Where is my event: one event's fate in each group of its stream (`streamq inspect STREAM ID`).

locate (asyncio) and locate_sync (blocking) take a client (left open: it is yours) or a URL, a stream and
an id, and return a Whereabouts. The id is an entry id (`1712345678901-0`) or a schedule id (`sched-...`,
what a delayed publish returned); for a partitioned stream, with its partition: `3/1712345678901-0`, as
`streamq dlq` takes them (entry ids repeat across partitions). A schedule id is unique, so a partitioned
stream's may come without its partition (as its publish returned it): every partition's set is asked.

A schedule id is `scheduled` (with its due time) while it waits in the stream's scheduled set, and
`not_scheduled` once it has left it: moved into the stream (the entry id it got there is not recorded) or
cancelled. An entry id is `in_stream` or `gone` (trimmed or deleted; XADD never gave it), and for each
group of the stream (or the one asked about) its state is the first that holds of:

    pending          delivered, not settled: its consumer, idle_ms, deliveries, and lease_alive
    retry_pending    failed before, now delivered again from the group's retry stream: the same details
    waiting_retry    failed (or deferred), waiting out its backoff in the delayed set (due_ms), or due and
                     moved to the retry stream, not read yet (retry_entry_id); with failures, last_error
    dead_lettered    in the dead-letter stream: reason, when (dead_at_ms), by which consumer, its dlq_id
    not_delivered    the stream holds it after the group's last-delivered id
    acknowledged     delivered, and none of the above: the group is done with it
    gone             the stream no longer holds it, and nothing of the group knows it

The lease is not kept in Redis (each worker renews every lease_ms / 3, whatever its lease_ms): lease_alive
is idle_ms < lease_ms, with lease_ms the worker's (given, else the default 30 s). An entry idle past it is
taken over by the next reclaim.

Retries and dead letters name the event by its origin id, so they are found by scanning, each scan bounded
by `scan_limit` entries (10 000 by default): the dead-letter stream and each group's retry stream from the
event's own time on (a retry or a dead letter is written after its event), and each group's delayed set
(ZSCAN MATCH on the id, so only candidates travel). A scan cut short is named in `cut`: then an answer of
`acknowledged` or `gone` may be wrong (the record was beyond the limit).

Everything is read in a few round trips (one more per scan batch), the groups side by side, commands routed
per slot on a Redis Cluster (streamq/_wire/steps.py).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
import redis
from redis.exceptions import ResponseError

from . import keys
from ._connection import RedisLike
from ._wire import Steps, checked, decode_id, run_steps_on, run_steps_on_sync
from ._wire.publishing import SCHEDULE_ID_PREFIX
from ._worker.records import RECORD_FIELD, RetryRecord, decode_record
from .deadletter import DeadLetter, parse_entry
from .errors import ConfigurationError
from .partitions import partition_stream, recorded_partitions, side_by_side
from .settings import DEFAULT_LEASE_MS

DEFAULT_SCAN_LIMIT = 10_000  # entries read per scan (dead letters, a retry stream, a delayed set), at most
SCAN_BATCH = 500  # entries per round trip of a scan
ZSCAN_COUNT = 1_000  # ZSCAN's COUNT hint on a delayed set

# An entry id or a schedule id, maybe with its partition: "1712345678901-0", "3/sched-4f0c...".
_REF = re.compile(r"(?:(0|[1-9][0-9]{0,3})/)?([0-9]+-[0-9]+|" + SCHEDULE_ID_PREFIX + r"[0-9a-f]+)")
# XPENDING for one id. Through a script because redis-py parses a plain XPENDING reply as the summary form.
_PENDING_ONE = "return redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)"

GroupState = Literal[
    "pending", "retry_pending", "waiting_retry", "dead_lettered", "not_delivered", "acknowledged", "gone"
]
EventState = Literal["in_stream", "gone", "scheduled", "not_scheduled"]


class GroupWhereabouts(msgspec.Struct, kw_only=True):
    """The event as one group sees it; fields that do not apply to its state are None."""

    group: str
    state: GroupState
    last_delivered_id: str | None = None  # the group's position in the stream (None: the stream is gone)
    # pending, retry_pending: who holds it
    consumer: str | None = None
    idle_ms: int | None = None  # since it was delivered or its lease last renewed
    deliveries: int | None = None  # times delivered (on the retry stream: since its retry was moved there)
    lease_alive: bool | None = None  # idle_ms < lease_ms
    # retry_pending, waiting_retry: its history (from the retry record)
    due_ms: int | None = None  # when its backoff ends (Unix ms); waiting_retry in the delayed set only
    retry_entry_id: str | None = None  # its entry in the group's retry stream, once moved there
    failures: int | None = None  # attempts used
    lost_deliveries: int | None = None
    last_error: str | None = None
    last_failure_ms: int | None = None
    deferred_since_ms: int | None = None  # when it was first deferred (0: never)
    # dead_lettered
    dead_letter: DeadLetter | None = None  # reason, consumer, attempts, error, last_failure_ms, dlq_id, ...


class Whereabouts(msgspec.Struct, kw_only=True):
    """Where one event is: in its stream or not (or scheduled), and its state in each group."""

    stream: str  # as asked (a partitioned stream's own name)
    id: str  # as asked, partition included
    partition: int | None  # the partition asked about; None for a plain stream
    state: EventState
    due_ms: int | None = None  # scheduled: when it is due (Unix ms)
    groups: list[GroupWhereabouts] = msgspec.field(default_factory=list)
    lease_ms: int = DEFAULT_LEASE_MS  # what lease_alive was judged by
    cut: list[str] = msgspec.field(default_factory=list)  # scans stopped at scan_limit, by what they read


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def check_ref(ref: str) -> str:
    """`ref` if it is an entry id or a schedule id, maybe `P/`-prefixed; ConfigurationError otherwise."""
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise ConfigurationError(
            f"{ref!r} is not an entry id (1712345678901-0) or a schedule id ({SCHEDULE_ID_PREFIX}...),"
            " with its partition first for a partitioned stream (3/1712345678901-0)"
        )
    return ref


def _check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


def _target(stream: str, partitions: int | None, ref: str) -> tuple[str, int | None, str]:
    """(stream key to look in, partition, id there) for `ref`; refuses a form that does not fit. The key
    is "" for a schedule id of a partitioned stream given without its partition: any may hold it."""
    found = _REF.fullmatch(check_ref(ref))
    assert found is not None  # check_ref matched it
    index, bare = found.group(1), found.group(2)
    if partitions is None:
        if index is not None:
            raise ConfigurationError(
                f"{stream!r} is not partitioned: give the id without a partition ({bare})"
            )
        return stream, None, bare
    if index is None and bare.startswith(SCHEDULE_ID_PREFIX):
        return "", None, bare  # schedule ids are unique: every partition's scheduled set is asked
    if index is None:
        raise ConfigurationError(
            f"{stream!r} is partitioned ({partitions} partitions), each with its own ids: give the partition"
            f" with the id, as in 0/{bare}"
        )
    if int(index) >= partitions:
        raise ConfigurationError(
            f"{stream!r} has {partitions} partitions (0 to {partitions - 1}), not {index}"
        )
    return partition_stream(stream, int(index)), int(index), bare


def locate_steps(
    stream: str,
    ref: str,
    *,
    group: str | None = None,
    lease_ms: int = DEFAULT_LEASE_MS,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> Steps[Whereabouts]:
    """The steps of locate (see the module docstring)."""
    keys.validate_name("stream", stream)
    check_ref(ref)
    if group is not None:
        keys.validate_name("group", group)
    _check_positive("lease_ms", lease_ms)
    _check_positive("scan_limit", scan_limit)
    (partitions,) = yield from recorded_partitions([stream])
    target, partition, bare = _target(stream, partitions, ref)
    found = Whereabouts(stream=stream, id=ref, partition=partition, state="gone", lease_ms=lease_ms)
    if bare.startswith(SCHEDULE_ID_PREFIX):
        asked = (
            [(target, partition)]
            if target
            else [(partition_stream(stream, i), i) for i in range(partitions or 0)]
        )
        scores = checked((yield [("ZSCORE", keys.scheduled_key(name), bare) for name, _ in asked]))
        found.state = "not_scheduled"
        for (_, index), score in zip(asked, scores, strict=True):
            if score is not None:
                found.state, found.due_ms, found.partition = "scheduled", int(float(score)), index
        return found
    rows, groups_raw = yield [("XRANGE", target, bare, bare), ("XINFO GROUPS", target)]
    found.state = "in_stream" if checked([rows])[0] else "gone"
    positions: dict[str, str] = {}  # group -> its last-delivered id
    stream_exists = not (isinstance(groups_raw, ResponseError) and "no such key" in str(groups_raw).lower())
    for info in checked([groups_raw])[0] if stream_exists else []:
        positions[_text(info["name"])] = _text(info["last-delivered-id"])
    if group is not None and stream_exists and group not in positions:
        raise ConfigurationError(
            f"{target!r} has no group {group!r} (its groups: {', '.join(positions) or 'none'})"
        )
    names = [group] if group is not None else list(positions)
    readers: list[Steps[Any]] = [_dead_letters(target, bare, scan_limit)]
    readers += [_group_records(target, name, bare, scan_limit) for name in names]
    results = yield from side_by_side(readers)
    letters, dlq_cut = results[0]
    if dlq_cut:
        found.cut.append("dead letters")
    held: dict[str, _Records] = dict(zip(names, results[1:], strict=True))
    if group is None:  # groups the stream no longer has (deleted, or the stream gone) may have dead letters
        for letter in letters:
            held.setdefault(letter.group, _Records())
    for name, records in held.items():
        found.cut += [f"{what} of group {name}" for what in records.cut]
        letter = next((letter for letter in reversed(letters) if letter.group == name), None)  # the latest
        found.groups.append(
            _verdict(name, bare, found.state == "in_stream", positions.get(name), records, letter, lease_ms)
        )
    return found


class _Records(msgspec.Struct):
    """What one group holds of the event, besides its stream's dead letters."""

    pending: list[Any] | None = None  # [id, consumer, idle_ms, deliveries] on the stream
    waiting: tuple[RetryRecord, int] | None = None  # in the delayed set, with its due time
    moved: tuple[str, RetryRecord] | None = None  # in the retry stream: its entry id there
    moved_pending: list[Any] | None = None  # that entry's XPENDING row, when delivered
    retry_position: str | None = None  # the group's last-delivered id on its retry stream
    cut: list[str] = msgspec.field(default_factory=list)


def _pending_one(key: str, group: str, entry_id: str) -> tuple[Any, ...]:
    return ("EVAL", _PENDING_ONE, 1, key, group, entry_id)


def _pending_row(reply: Any) -> list[Any] | None:
    """The row of one id's XPENDING, None when it is not pending (or the key or group does not exist)."""
    if isinstance(reply, ResponseError) and ("NOGROUP" in str(reply) or "no such key" in str(reply)):
        return None
    rows = checked([reply])[0]
    return list(rows[0]) if rows else None


def _group_records(stream: str, group: str, entry_id: str, limit: int) -> Steps[_Records]:
    delayed, retry = keys.delayed_key(stream, group), keys.retry_key(stream, group)
    found = _Records()
    readers: list[Steps[Any]] = [
        _one(_pending_one(stream, group, entry_id)),
        _delayed_scan(delayed, entry_id, limit),
        _retry_scan(retry, entry_id, limit),
    ]
    pending, waiting, moved = yield from side_by_side(readers)
    found.pending = _pending_row(pending)
    found.waiting, cut = waiting
    if cut:
        found.cut.append("retries waiting")
    found.moved, cut = moved
    if cut:
        found.cut.append("retry stream")
    if found.moved is not None:
        row, groups_raw = yield [_pending_one(retry, group, found.moved[0]), ("XINFO GROUPS", retry)]
        found.moved_pending = _pending_row(row)
        for info in checked([groups_raw])[0]:
            if _text(info["name"]) == group:
                found.retry_position = _text(info["last-delivered-id"])
    return found


def _one(command: tuple[Any, ...]) -> Steps[Any]:
    (reply,) = yield [command]
    return reply


def _delayed_scan(key: str, entry_id: str, limit: int) -> Steps[tuple[tuple[RetryRecord, int] | None, bool]]:
    """The event's retry record in a delayed set, with its due time; and whether the scan was cut."""
    cursor: Any = 0
    calls = 0
    while True:
        (reply,) = checked((yield [("ZSCAN", key, cursor, "MATCH", f"*{entry_id}*", "COUNT", ZSCAN_COUNT)]))
        cursor, members = reply
        calls += 1
        for member, score in _pairs(members):
            record = decode_record(member)
            if record is not None and record.origin_id == entry_id:
                return (record, int(float(score))), False
        if int(cursor) == 0:
            return None, False
        if calls * ZSCAN_COUNT >= limit:
            return None, True


def _pairs(members: Any) -> list[tuple[bytes, Any]]:
    """ZSCAN's members: redis-py's [(member, score), ...], or the flat [member, score, ...] of the wire."""
    if members and isinstance(members[0], list | tuple):
        return [(member, score) for member, score in members]
    return [(members[i], members[i + 1]) for i in range(0, len(members), 2)]


def _stream_scan(
    key: str, entry_id: str, limit: int
) -> Steps[tuple[list[tuple[str, dict[bytes, bytes]]], bool]]:
    """Entries of `key` from the event's own millisecond on, up to `limit`: (entries, whether cut)."""
    start = entry_id.split("-")[0]
    out: list[tuple[str, dict[bytes, bytes]]] = []
    while True:
        count = min(SCAN_BATCH, limit - len(out))
        if count <= 0:
            return out, True
        (rows,) = yield [("XRANGE", key, start, "+", "COUNT", count)]
        if isinstance(rows, ResponseError) and "WRONGTYPE" not in str(rows):
            rows = []
        for row_id, fields in checked([rows])[0]:
            flat = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
            out.append((decode_id(row_id), flat))
        if len(rows) < count:
            return out, False
        start = "(" + out[-1][0]


def _retry_scan(key: str, entry_id: str, limit: int) -> Steps[tuple[tuple[str, RetryRecord] | None, bool]]:
    rows, cut = yield from _stream_scan(key, entry_id, limit)
    for row_id, fields in rows:
        data = fields.get(RECORD_FIELD)
        record = decode_record(data) if data is not None else None
        if record is not None and record.origin_id == entry_id:
            return (row_id, record), False
    return None, cut


def _dead_letters(stream: str, entry_id: str, limit: int) -> Steps[tuple[list[DeadLetter], bool]]:
    rows, cut = yield from _stream_scan(keys.dlq_key(stream), entry_id, limit)
    letters = [parse_entry(row_id, fields) for row_id, fields in rows]
    return [letter for letter in letters if letter.id == entry_id and letter.stream == stream], cut


def _verdict(
    group: str,
    entry_id: str,
    in_stream: bool,
    position: str | None,
    records: _Records,
    letter: DeadLetter | None,
    lease_ms: int,
) -> GroupWhereabouts:
    found = GroupWhereabouts(group=group, state="gone", last_delivered_id=position)
    held = records.pending if records.pending is not None else records.moved_pending
    if held is not None:
        found.state = "pending" if records.pending is not None else "retry_pending"
        found.consumer, found.idle_ms, found.deliveries = _text(held[1]), int(held[2]), int(held[3])
        found.lease_alive = found.idle_ms < lease_ms
    if records.pending is None and records.moved is not None:
        found.retry_entry_id = records.moved[0]
        _history(found, records.moved[1])
        if records.moved_pending is None:
            found.state = "waiting_retry"
    elif records.pending is None and records.waiting is not None:
        found.state = "waiting_retry"
        _history(found, records.waiting[0])
        found.due_ms = records.waiting[1]
    elif records.pending is None and letter is not None:
        found.state, found.dead_letter = "dead_lettered", letter
    elif records.pending is None and in_stream:
        delivered = position is not None and _order(position) >= _order(entry_id)
        found.state = "acknowledged" if delivered else "not_delivered"
    return found


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _history(found: GroupWhereabouts, record: RetryRecord) -> None:
    found.failures, found.lost_deliveries = record.failures, record.lost_deliveries
    found.last_error = record.error or None
    found.last_failure_ms = record.last_failure_ms or None
    found.deferred_since_ms = record.deferred_since_ms


# ---------------------------------------------------------------------------------------------- API


async def locate(
    client: RedisLike,
    stream: str,
    entry_id: str,
    *,
    group: str | None = None,
    lease_ms: int = DEFAULT_LEASE_MS,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> Whereabouts:
    """Where the event `entry_id` (or schedule id) of `stream` is, for each group (or `group` only)."""
    steps = locate_steps(stream, entry_id, group=group, lease_ms=lease_ms, scan_limit=scan_limit)
    return await run_steps_on(client, steps, "locate", __name__)


def locate_sync(
    client: str | redis.Redis | None,
    stream: str,
    entry_id: str,
    *,
    group: str | None = None,
    lease_ms: int = DEFAULT_LEASE_MS,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> Whereabouts:
    """locate for blocking code: a redis.Redis (left open) or a URL."""
    steps = locate_steps(stream, entry_id, group=group, lease_ms=lease_ms, scan_limit=scan_limit)
    return run_steps_on_sync(client, steps, "locate", __name__)
