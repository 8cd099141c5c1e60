"""The dead-letter stream: what it records, and listing, showing, replaying and purging it.

Each stream has one dead-letter stream (keys.dlq_key), shared by its groups; every entry names its group.
Replay sends an entry back to that group only (through the group's retry stream, with its attempts reset)
and removes it from the dead-letter stream in the same atomic step.

DeadLetters (asyncio) and SyncDeadLetters (blocking code) have the same methods. Each takes a client of
its own kind, or a URL, and refuses one of the other kind with a ConfigurationError naming the right class.
They share everything but the waiting: each operation is written once, as a generator of round trips
(`_wire.Steps`) that yields the commands of one round trip, is sent their replies (errors as values, not
raised) and returns its result; _wire.run_steps and run_steps_sync send them (see streamq/_wire/steps.py).

A partitioned stream (partitions.py) has a dead-letter stream per partition. Every method works across
them when given the partitioned stream's name: count adds them up, page and list merge them (in order of
dead-letter id, then partition), and ids name their partition: `3/1712345678901-0` is the dead letter
`1712345678901-0` of partition 3. Ids in another partition's dead-letter stream may be equal, so an id
without its partition is refused for a partitioned stream, as an id with one is for a plain stream
(ConfigurationError). Each DeadLetter of a partitioned stream has such an id as its dlq_id, its partition
in `partition`, and the partition's stream (``orders:{orders:3}``) in `stream`, as the worker recorded it.

Dead letters are read undecoded whichever client is given, including one built with decode_responses=True:
their payloads are arbitrary bytes (a client that decodes would fail on them, or replace them and lose the
byte-for-byte copy), and the field names are then bytes whichever client was given.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis
from redis.exceptions import NoScriptError

from . import _wire, keys
from ._connection import RedisLike
from ._wire import Steps, adopt_async, adopt_sync, checked, run_steps, run_steps_sync
from ._worker.records import RetryRecord, encode_record
from .errors import ConfigurationError, DeadLetterNotFound
from .partitions import partition_stream, recorded_partitions, side_by_side

DEFAULT_LIMIT = 100  # dead letters per page (page(), `streamq dlq list`)
SCAN_BATCH = 100  # entries read per round trip when a group filter may skip some
REPLAY_CHUNK = 100  # dead letters read and replayed per round trip
PURGE_CHUNK = 1000  # dead letters deleted by id per round trip
# replay/purge's `progress`: called with (dead letters dealt with so far, dead letters to deal with) before
# the first chunk, between chunks and at the end (done == total then). Dealt with: replayed or deleted,
# skipped, or found gone; with --all, every dead letter the stream had when it began is to be dealt with.
Progress = Callable[[int, int], None]

MERGE_BATCH = 20  # entries read per partition and round trip, at least, when merging partitions
_ID = re.compile(r"[0-9]+-[0-9]+")  # a whole entry id: "1712345678901-0"
# An id, maybe with the partition whose dead-letter stream holds it: "1712345678901-0", "3/1712345678901-0".
_REF = re.compile(r"(?:(0|[1-9][0-9]{0,3})/)?([0-9]+-[0-9]+)")


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-lettered event, as an operator sees it."""

    dlq_id: str  # id of the entry in the dead-letter stream; of a partition's: "<partition>/<id>"
    stream: str  # the stream it was dead-lettered from: a partition's own (orders:{orders:3}) if partitioned
    id: str  # the event's id in its stream
    group: str
    consumer: str
    attempts: int
    reason: str  # max_attempts | rejected | undecodable | oversized | deferred_too_long
    detail: str
    error_type: str
    error: str
    traceback: str
    first_failure_ms: int
    last_failure_ms: int
    payload: bytes | None  # the raw payload, byte for byte
    raw_fields: bytes | None = None  # msgpack of the entry's fields, when it had no payload field at all
    headers: dict[str, str] = {}  # the event's headers (Message.headers); replay sends them back with it
    partition: int | None = None  # the partition whose dead-letter stream holds it; None: a plain stream

    def to_dict(self, *, with_payload: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.structs.asdict(self)
        data["payload"] = self.payload.hex() if self.payload is not None and with_payload else None
        data["payload_size"] = len(self.payload) if self.payload is not None else 0
        data["raw_fields"] = self.raw_fields.hex() if self.raw_fields is not None else None
        data["event"] = self.event_preview()
        return data

    def event_preview(self) -> Any:
        """The payload decoded as plain msgpack (no event types needed), or None if it is not msgpack."""
        if self.payload is None:
            return None
        try:
            return msgspec.to_builtins(msgspec.msgpack.decode(self.payload), enc_hook=repr)
        except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
            # ValueError: msgspec's UnicodeDecodeError for a string that is not UTF-8; RecursionError:
            # nesting deeper than Python's limit.
            return None


class DeadLetterPage(msgspec.Struct, kw_only=True):
    """One page of a stream's dead letters, oldest first."""

    letters: list[DeadLetter]
    total: int  # entries in the dead-letter stream (of every partition), of every group
    scanned: int  # entries read for this page: more than len(letters) when filtered by group or merged
    next_after: str | None  # `after` for the next page; None when this page is the last


class DeadLetterResult(msgspec.Struct, kw_only=True):
    """What replay() or purge() did."""

    stream: str
    count: int = 0  # dead letters replayed (sent back to their group) or deleted
    not_found: list[str] = []  # ids asked for that the dead-letter stream (or partition's) does not hold
    skipped: dict[str, str] = {}  # id -> why replay left that dead letter where it is


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    value = fields.get(name)
    return value.decode(errors="replace") if value is not None else ""


_decode_headers = msgspec.msgpack.Decoder(dict[str, str]).decode


def _headers(fields: dict[bytes, bytes]) -> dict[str, str]:
    """The `headers` field (msgpack of a str -> str map); {} when absent or not such a map."""
    value = fields.get(b"headers")
    if value is None:
        return {}
    try:
        return _decode_headers(value)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return {}


def _int(fields: dict[bytes, bytes], name: bytes) -> int:
    try:
        return int(fields.get(name, b"0"))
    except ValueError:
        return 0


def parse_entry(entry_id: bytes | str, flat: Sequence[bytes] | dict[bytes, bytes]) -> DeadLetter:
    """One dead-letter entry as read undecoded (field names and values as bytes)."""
    fields = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
    return DeadLetter(
        dlq_id=_wire.decode_id(entry_id),
        stream=_text(fields, b"stream"),
        id=_text(fields, b"id"),
        group=_text(fields, b"group"),
        consumer=_text(fields, b"consumer"),
        attempts=_int(fields, b"attempts"),
        reason=_text(fields, b"reason"),
        detail=_text(fields, b"detail"),
        error_type=_text(fields, b"error_type"),
        error=_text(fields, b"error"),
        traceback=_text(fields, b"traceback"),
        first_failure_ms=_int(fields, b"first_failure_ms"),
        last_failure_ms=_int(fields, b"last_failure_ms"),
        payload=fields.get(b"d"),
        raw_fields=fields.get(b"raw"),
        headers=_headers(fields),
    )


# ---------------------------------------------------------------------------------------------- steps


def _dlq(stream: str) -> str:
    return keys.dlq_key(keys.validate_name("stream", stream))


def check_id(dlq_id: str) -> str:
    """`dlq_id` if it is a whole entry id (`1712345678901-0`); ConfigurationError otherwise."""
    if not isinstance(dlq_id, str) or not _ID.fullmatch(dlq_id):
        raise ConfigurationError(f"{dlq_id!r} is not a dead-letter id (they look like 1712345678901-0)")
    return dlq_id


def check_ref(dlq_id: str) -> str:
    """`dlq_id` if it is a dead-letter id, of a plain stream (`1712345678901-0`) or of a partition
    (`3/1712345678901-0`); ConfigurationError otherwise. Whether the stream is partitioned is not known
    here: that is checked once it is."""
    if not isinstance(dlq_id, str) or not _REF.fullmatch(dlq_id):
        raise ConfigurationError(
            f"{dlq_id!r} is not a dead-letter id (they look like 1712345678901-0, or 3/1712345678901-0"
            " in partition 3 of a partitioned stream)"
        )
    return dlq_id


def _unique_ids(ids: Sequence[str]) -> list[str]:
    """The ids in order, each once; all are checked before anything is done."""
    return list(dict.fromkeys(check_id(i) for i in ids))


def _count_one(stream: str) -> Steps[int]:
    (size,) = checked((yield [("XLEN", _dlq(stream))]))
    return int(size)


class _Scanned(msgspec.Struct):
    letters: list[DeadLetter]
    scanned: int  # entries read and counted (matching or not)
    next_after: str | None  # the last entry counted, when matching ones may follow; else None


def _scan(key: str, start: str, group: str | None, limit: int, budget: int | None = None) -> Steps[_Scanned]:
    """Up to `limit` dead letters (of `group` only, if given) from `start` ("-", an id, or "(" + id).

    Reads one entry past the page, so next_after is None only when no other entry (of the group) follows.
    `budget`, if given, stops the scan after that many entries whatever they are.
    """
    found: list[DeadLetter] = []
    scanned = 0
    last: str | None = None
    batch = limit + 1 if group is None else max(limit + 1, SCAN_BATCH)
    cursor = start
    while True:
        count = batch if budget is None else min(batch, budget - scanned)
        if count <= 0:
            return _Scanned(found, scanned, last)
        (rows,) = checked((yield [("XRANGE", key, cursor, "+", "COUNT", count)]))
        for entry_id, fields in rows:
            letter = parse_entry(entry_id, fields)
            if group is None or letter.group == group:
                if len(found) == limit:
                    return _Scanned(found, scanned, last)
                found.append(letter)
            scanned += 1
            last = letter.dlq_id
        if len(rows) < count:
            return _Scanned(found, scanned, None)
        cursor = "(" + _wire.decode_id(rows[-1][0])


def _page_one(stream: str, group: str | None, after: str | None, limit: int) -> Steps[DeadLetterPage]:
    key = _dlq(stream)
    if not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit!r}")
    start = "-" if after is None else "(" + check_id(after)
    (total,) = checked((yield [("XLEN", key)]))
    scan = yield from _scan(key, start, group, limit)
    return DeadLetterPage(
        letters=scan.letters, total=int(total), scanned=scan.scanned, next_after=scan.next_after
    )


def _list_one(stream: str, group: str | None, start: str, count: int) -> Steps[list[DeadLetter]]:
    scan = yield from _scan(_dlq(stream), start, group, count)
    return scan.letters


def _show_one(stream: str, dlq_id: str) -> Steps[DeadLetter]:
    key = _dlq(stream)
    (rows,) = checked((yield [("XRANGE", key, check_id(dlq_id), dlq_id)]))
    if not rows:
        raise DeadLetterNotFound(f"no dead letter {dlq_id} for stream {stream!r}")
    return parse_entry(rows[0][0], rows[0][1])


def _replay_one(
    stream: str, ids: Sequence[str] | None, group: str | None, progress: Progress | None = None
) -> Steps[DeadLetterResult]:
    key = _dlq(stream)
    result = DeadLetterResult(stream=stream)
    report = progress or _unreported
    if ids is not None:
        wanted = _unique_ids(ids)
        for at in range(0, len(wanted), REPLAY_CHUNK):
            report(at, len(wanted))
            chunk = wanted[at : at + REPLAY_CHUNK]
            replies = checked((yield [("XRANGE", key, i, i) for i in chunk]))
            letters = []
            for dlq_id, rows in zip(chunk, replies, strict=True):
                if rows:
                    letters.append(parse_entry(rows[0][0], rows[0][1]))
                else:
                    result.not_found.append(dlq_id)
            yield from _move(stream, key, letters, group, result)
        report(len(wanted), len(wanted))
        return result
    # Only the entries there now: a replayed event that fails again comes back as a new entry at the end,
    # which a scan to the end would replay again, for as long as a worker runs.
    (budget,) = checked((yield [("XLEN", key)]))
    budget, start = int(budget), "-"
    total = budget
    while budget > 0:
        report(total - budget, total)
        scan = yield from _scan(key, start, group, REPLAY_CHUNK, budget)
        yield from _move(stream, key, scan.letters, group, result)
        budget -= scan.scanned
        if scan.next_after is None:
            break
        start = "(" + scan.next_after
    report(total, total)
    return result


def _unreported(done: int, total: int) -> None:
    """The progress callback when none is given."""


def _move(
    stream: str, key: str, letters: list[DeadLetter], group: str | None, result: DeadLetterResult
) -> Steps[None]:
    """Replay `letters`: one round trip to make sure of their groups, one to move them (and one more if
    the server has to be sent the script)."""
    calls: list[tuple[str, str, str, bytes]] = []  # KEYS and ARGV of _wire.REPLAY, one per letter
    moving: list[str] = []
    groups: dict[str, None] = {}  # the groups replayed to, in order
    for letter in letters:
        if letter.payload is None:
            result.skipped[letter.dlq_id] = "no payload field (a raw entry streamq could not read)"
        elif group is not None and letter.group != group:
            result.skipped[letter.dlq_id] = f"dead-lettered by group {letter.group}, not {group}"
        else:
            record = RetryRecord(
                origin_id=letter.id, failures=0, first_failure_ms=0, last_failure_ms=0, error="",
                payload=letter.payload, headers=letter.headers,
            )  # fmt: skip
            calls.append((key, keys.retry_key(stream, letter.group), letter.dlq_id, encode_record(record)))
            moving.append(letter.dlq_id)
            groups[letter.group] = None
    if not calls:
        return
    # Each group on its retry stream, created at the stream's start so that nothing already there is
    # skipped; apart from the moves, so that none is made when a group cannot be.
    creates = [("XGROUP", "CREATE", keys.retry_key(stream, g), g, "0", "MKSTREAM") for g in groups]
    for reply in (yield creates):
        if isinstance(reply, Exception) and not str(reply).startswith("BUSYGROUP"):
            raise reply
    moved = yield [("EVALSHA", _wire.REPLAY.sha, 2, *call) for call in calls]
    unknown = [n for n, reply in enumerate(moved) if isinstance(reply, NoScriptError)]
    if unknown:  # the server's script cache was flushed: send the script itself
        again = yield [("EVAL", _wire.REPLAY.source, 2, *calls[n]) for n in unknown]
        for n, reply in zip(unknown, again, strict=True):
            moved[n] = reply
    for dlq_id, reply in zip(moving, checked(moved), strict=True):
        if reply is None:  # gone since it was read: replayed or purged by someone else
            result.not_found.append(dlq_id)
        else:
            result.count += 1


def _purge_one(
    stream: str, ids: Sequence[str] | None, progress: Progress | None = None
) -> Steps[DeadLetterResult]:
    key = _dlq(stream)
    report = progress or _unreported
    if ids is None:
        size, _ = checked((yield [("XLEN", key), ("DEL", key)]))
        report(int(size), int(size))
        return DeadLetterResult(stream=stream, count=int(size))
    wanted = _unique_ids(ids)
    result = DeadLetterResult(stream=stream)
    for at in range(0, len(wanted), PURGE_CHUNK):
        report(at, len(wanted))
        chunk = wanted[at : at + PURGE_CHUNK]
        for dlq_id, deleted in zip(chunk, checked((yield [("XDEL", key, i) for i in chunk])), strict=True):
            if deleted:
                result.count += 1
            else:
                result.not_found.append(dlq_id)
    report(len(wanted), len(wanted))
    return result


# ------------------------------------------------------------------------ plain or partitioned streams
#
# Each operation asks first whether the stream is partitioned (one round trip), then runs the one-stream
# steps above on the stream, or on every partition it concerns side by side (partitions.side_by_side: as
# many round trips as for one stream), and puts the partitions' answers together.


def _partitions(stream: str) -> Steps[int | None]:
    keys.validate_name("stream", stream)
    (count,) = yield from recorded_partitions([stream])
    return count


def _split(stream: str, partitions: int | None, dlq_id: str) -> tuple[int, str]:
    """(partition, id in its dead-letter stream) of a partitioned stream's dead-letter id; for a plain
    stream, (0, the id). Refuses an id whose form does not fit the stream."""
    found = _REF.fullmatch(check_ref(dlq_id))
    assert found is not None  # check_ref matched it
    index, entry_id = found.group(1), found.group(2)
    if partitions is None:
        if index is not None:
            raise ConfigurationError(
                f"{stream!r} is not partitioned: give its dead-letter ids without a partition ({entry_id})"
            )
        return 0, entry_id
    if index is None:
        raise ConfigurationError(
            f"{stream!r} is partitioned ({partitions} partitions), and each has its own dead-letter ids:"
            f" give the partition with the id, as in 0/{entry_id} (see `dlq list`)"
        )
    if int(index) >= partitions:
        raise ConfigurationError(
            f"{stream!r} has {partitions} partitions (0 to {partitions - 1}), not {index}"
        )
    return int(index), entry_id


def _in_partition(letter: DeadLetter, index: int) -> DeadLetter:
    letter.dlq_id, letter.partition = f"{index}/{letter.dlq_id}", index
    return letter


def _by_partition(stream: str, partitions: int, ids: Sequence[str]) -> dict[int, list[str]]:
    """The ids (each once, all checked first) grouped by partition, as ids of its dead-letter stream."""
    grouped: dict[int, list[str]] = {}
    for dlq_id in dict.fromkeys(ids):
        index, entry_id = _split(stream, partitions, dlq_id)
        grouped.setdefault(index, []).append(entry_id)
    return grouped


def _count(stream: str) -> Steps[int]:
    partitions = yield from _partitions(stream)
    if partitions is None:
        return (yield from _count_one(stream))
    sizes = yield from side_by_side([_count_one(partition_stream(stream, i)) for i in range(partitions)])
    return sum(sizes)


def _page(stream: str, group: str | None, after: str | None, limit: int) -> Steps[DeadLetterPage]:
    if not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit!r}")
    if after is not None:
        check_ref(after)
    partitions = yield from _partitions(stream)
    if partitions is None:
        return (
            yield from _page_one(
                stream, group, None if after is None else _split(stream, None, after)[1], limit
            )
        )
    starts = _starts(stream, partitions, after, inclusive=False)
    total, scan = yield from _total_and_merged(stream, partitions, starts, group, limit)
    return DeadLetterPage(letters=scan.letters, total=total, scanned=scan.scanned, next_after=scan.next_after)


def _total_and_merged(
    stream: str, partitions: int, starts: list[str], group: str | None, limit: int
) -> Steps[tuple[int, _Scanned]]:
    steps: list[Steps[Any]] = [_count_one(partition_stream(stream, i)) for i in range(partitions)]
    steps.append(_merged(stream, starts, group, limit))
    found = yield from side_by_side(steps)
    scan: _Scanned = found[-1]
    return sum(found[:-1]), scan


def _list(stream: str, group: str | None, start: str, count: int) -> Steps[list[DeadLetter]]:
    partitions = yield from _partitions(stream)
    if partitions is None:
        return (yield from _list_one(stream, group, start, count))
    if start != "-":
        check_ref(start)
    starts = _starts(stream, partitions, None if start == "-" else start, inclusive=True)
    scan = yield from _merged(stream, starts, group, count)
    return scan.letters


def _starts(stream: str, partitions: int, at: str | None, *, inclusive: bool) -> list[str]:
    """Each partition's XRANGE start for reading from the dead letter `at` on (in the merged order: by
    id, then partition), taking it in if `inclusive`; from the first when `at` is None."""
    if at is None:
        return ["-"] * partitions
    index, entry_id = _split(stream, partitions, at)
    # Partitions after `at`'s hold their entries of the same id after it; those before it, before it.
    return [
        entry_id if i > index or (i == index and inclusive) else "(" + entry_id for i in range(partitions)
    ]


def _merged(stream: str, starts: list[str], group: str | None, limit: int) -> Steps[_Scanned]:
    """Up to `limit` dead letters (of `group` only, if given) of every partition, from each one's start,
    merged by id, then partition. Reads a few of each partition per round trip, more of those it needs more
    of, and one past the page, so next_after is None only when no other dead letter (of the group) follows."""
    partitions = len(starts)
    wanted = limit + 1
    batch = max(-(-wanted // partitions), MERGE_BATCH)
    dlqs = [keys.dlq_key(partition_stream(stream, i)) for i in range(partitions)]
    read: list[deque[tuple[tuple[int, int, int], DeadLetter]]] = [deque() for _ in range(partitions)]
    cursors, ended = list(starts), [False] * partitions
    taken: list[DeadLetter] = []
    scanned = 0
    while len(taken) < wanted:
        refill = [i for i in range(partitions) if not read[i] and not ended[i]]
        if refill:
            replies = checked((yield [("XRANGE", dlqs[i], cursors[i], "+", "COUNT", batch) for i in refill]))
            for i, rows in zip(refill, replies, strict=True):
                scanned += len(rows)
                for entry_id, fields in rows:
                    letter = parse_entry(entry_id, fields)
                    if group is None or letter.group == group:
                        ms, seq = letter.dlq_id.split("-")
                        read[i].append(((int(ms), int(seq), i), _in_partition(letter, i)))
                ended[i] = len(rows) < batch
                if rows:
                    cursors[i] = "(" + _wire.decode_id(rows[-1][0])
            continue
        heads = [queue[0] for queue in read if queue]
        if not heads:
            break
        _, first = min(heads, key=lambda head: head[0])
        read[first.partition or 0].popleft()
        taken.append(first)
    if len(taken) > limit:
        return _Scanned(taken[:limit], scanned, taken[limit - 1].dlq_id)
    return _Scanned(taken, scanned, None)


def _show(stream: str, dlq_id: str) -> Steps[DeadLetter]:
    check_ref(dlq_id)
    partitions = yield from _partitions(stream)
    if partitions is None:
        return (yield from _show_one(stream, _split(stream, None, dlq_id)[1]))
    index, entry_id = _split(stream, partitions, dlq_id)
    try:
        letter = yield from _show_one(partition_stream(stream, index), entry_id)
    except DeadLetterNotFound:
        raise DeadLetterNotFound(f"no dead letter {dlq_id} for stream {stream!r}") from None
    return _in_partition(letter, index)


def _replay(
    stream: str, ids: Sequence[str] | None, group: str | None, progress: Progress | None = None
) -> Steps[DeadLetterResult]:
    if ids is not None:
        for dlq_id in ids:
            check_ref(dlq_id)
    partitions = yield from _partitions(stream)
    if partitions is None:
        plain = None if ids is None else [_split(stream, None, i)[1] for i in ids]
        return (yield from _replay_one(stream, plain, group, progress))
    if ids is None:
        chosen: dict[int, list[str] | None] = dict.fromkeys(range(partitions))
    else:
        chosen = dict(_by_partition(stream, partitions, ids))
    tally = _Tally(progress, len(chosen))
    results = yield from side_by_side([
        _replay_one(partition_stream(stream, i), wanted, group, tally.of(n))
        for n, (i, wanted) in enumerate(chosen.items())
    ])  # fmt: skip
    return _joined(stream, list(chosen), results, ids)


def _purge(
    stream: str, ids: Sequence[str] | None, progress: Progress | None = None
) -> Steps[DeadLetterResult]:
    if ids is not None:
        for dlq_id in ids:
            check_ref(dlq_id)
    partitions = yield from _partitions(stream)
    if partitions is None:
        return (
            yield from _purge_one(
                stream, None if ids is None else [_split(stream, None, i)[1] for i in ids], progress
            )
        )
    if ids is None:
        chosen: dict[int, list[str] | None] = dict.fromkeys(range(partitions))
    else:
        chosen = dict(_by_partition(stream, partitions, ids))
    tally = _Tally(progress, len(chosen))
    results = yield from side_by_side([
        _purge_one(partition_stream(stream, i), wanted, tally.of(n))
        for n, (i, wanted) in enumerate(chosen.items())
    ])  # fmt: skip
    return _joined(stream, list(chosen), results, ids)


class _Tally:
    """The progress of partitions worked on side by side, added up: reported once each has said how much
    it has to do (each does before its first chunk), so the total shown never grows."""

    def __init__(self, progress: Progress | None, parts: int) -> None:
        self.progress, self.parts = progress, parts
        self.done: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def of(self, part: int) -> Progress | None:
        if self.progress is None:
            return None

        def report(done: int, total: int) -> None:
            self.done[part], self.total[part] = done, total
            if len(self.total) == self.parts and self.progress is not None:
                self.progress(sum(self.done.values()), sum(self.total.values()))

        return report


def _joined(
    stream: str, indexes: list[int], results: list[DeadLetterResult], ids: Sequence[str] | None
) -> DeadLetterResult:
    """The partitions' results as one, with partition ids, in the order the ids were given."""
    joined = DeadLetterResult(stream=stream, count=sum(result.count for result in results))
    answers = list(zip(indexes, results, strict=True))
    not_found = {f"{i}/{dlq_id}" for i, result in answers for dlq_id in result.not_found}
    skipped = {f"{i}/{dlq_id}": why for i, result in answers for dlq_id, why in result.skipped.items()}
    order = list(dict.fromkeys(ids)) if ids is not None else sorted({*not_found, *skipped}, key=_ref_order)
    joined.not_found = [dlq_id for dlq_id in order if dlq_id in not_found]
    joined.skipped = {dlq_id: skipped[dlq_id] for dlq_id in order if dlq_id in skipped}
    return joined


def _ref_order(dlq_id: str) -> tuple[int, int, int]:
    index, _, entry_id = dlq_id.partition("/")
    ms, seq = entry_id.split("-")
    return int(ms), int(seq), int(index)


# ---------------------------------------------------------------------------------------------- API


class DeadLetters:
    """Operator's API over the dead-letter streams, for asyncio code; SyncDeadLetters is the blocking one.

    `client` is a redis.asyncio.Redis (left open: it is yours) or a URL (its client is closed by aclose()).
    """

    def __init__(self, client: RedisLike = None) -> None:
        self.client, self._owns_client = adopt_async(client, "DeadLetters", "streamq.SyncDeadLetters")

    async def count(self, stream: str) -> int:
        """Dead letters of the stream, of every group (and partition)."""
        return await run_steps(self.client, _count(stream))

    async def page(
        self, stream: str, *, group: str | None = None, after: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> DeadLetterPage:
        """Up to `limit` dead letters, oldest first, after the id `after` (exclusive), of `group` only.

        Pass the page's next_after as `after` for the next page; total counts every group's dead letters.
        """
        return await run_steps(self.client, _page(stream, group, after, limit))

    async def list(
        self, stream: str, *, group: str | None = None, start: str = "-", count: int = DEFAULT_LIMIT
    ) -> list[DeadLetter]:
        """Oldest first, from `start` (an id, inclusive), at most `count`, optionally one group's only.

        A partitioned stream's are merged by id, then partition; `start` is then "-" or a `P/ID` id."""
        return await run_steps(self.client, _list(stream, group, start, count))

    async def show(self, stream: str, dlq_id: str) -> DeadLetter:
        """One dead letter by its id in the dead-letter stream (`P/ID` in partition P's, for a partitioned
        stream); DeadLetterNotFound if it is not there."""
        return await run_steps(self.client, _show(stream, dlq_id))

    async def replay(
        self,
        stream: str,
        ids: Sequence[str] | None = None,
        *,
        group: str | None = None,
        progress: Progress | None = None,
    ) -> DeadLetterResult:
        """Send dead letters back to their group for a fresh set of attempts.

        ids=None replays every dead letter the stream has now (of `group` only, if given). Whatever can be
        replayed is; the result lists the rest: `not_found`, ids the dead-letter stream does not hold;
        `skipped`, dead letters left where they are, with why: an entry without a payload field (a raw
        entry streamq could not read at all) cannot be replayed, and an id given of another group than
        `group` is not.

        `progress`, if given, is called with (dealt with so far, to deal with) between the chunks it works
        in (REPLAY_CHUNK dead letters per round trip), last with both equal: for a progress line.
        """
        return await run_steps(self.client, _replay(stream, ids, group, progress))

    async def purge(
        self, stream: str, ids: Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> DeadLetterResult:
        """Delete the given dead letters (ids not there are listed in `not_found`), or all of the stream's.

        `progress` as for replay (PURGE_CHUNK ids per round trip; all of them is one DEL, reported once)."""
        return await run_steps(self.client, _purge(stream, ids, progress))

    async def aclose(self) -> None:
        """Close the client if it was built here from a URL."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> DeadLetters:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncDeadLetters:
    """DeadLetters for blocking code (scripts, a Django view): the same methods, returning their results.

    `client` is a redis.Redis (left open: it is yours) or a URL (its client is closed by close()).
    """

    def __init__(self, client: str | redis.Redis | None = None) -> None:
        self.client, self._owns_client = adopt_sync(client, "SyncDeadLetters", "streamq.DeadLetters")

    def count(self, stream: str) -> int:
        return run_steps_sync(self.client, _count(stream))

    def page(
        self, stream: str, *, group: str | None = None, after: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> DeadLetterPage:
        return run_steps_sync(self.client, _page(stream, group, after, limit))

    def list(
        self, stream: str, *, group: str | None = None, start: str = "-", count: int = DEFAULT_LIMIT
    ) -> list[DeadLetter]:
        return run_steps_sync(self.client, _list(stream, group, start, count))

    def show(self, stream: str, dlq_id: str) -> DeadLetter:
        return run_steps_sync(self.client, _show(stream, dlq_id))

    def replay(
        self,
        stream: str,
        ids: Sequence[str] | None = None,
        *,
        group: str | None = None,
        progress: Progress | None = None,
    ) -> DeadLetterResult:
        return run_steps_sync(self.client, _replay(stream, ids, group, progress))

    def purge(
        self, stream: str, ids: Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> DeadLetterResult:
        return run_steps_sync(self.client, _purge(stream, ids, progress))

    def close(self) -> None:
        """Close the client if it was built here from a URL."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SyncDeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
