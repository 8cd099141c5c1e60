"""What the `streamq` command prints: tables, `dlq show`'s fields, what replay and purge did, JSON.

Apart from cli.py so that the parser and the commands read without the column arithmetic. The demo prints
its dead letters with format_dead_letters. The exit codes live in exit_codes.py; they are re-exported here
and from streamq.cli, where scripts have imported them from. streamq.cli re-exports the format_* tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from .deadletter import DeadLetter, DeadLetterPage, DeadLetterResult
from .exit_codes import ABANDONED, FAILURE, INTERRUPTED, OK, USAGE
from .inspect import StreamStatus
from .partitions import partition_stream

__all__ = [
    "ABANDONED",
    "ERROR_COLUMN_WIDTH",
    "FAILURE",
    "INTERRUPTED",
    "OK",
    "SHOW_FIELD_BYTES",
    "USAGE",
    "dead_letter_fields",
    "dead_letter_json",
    "describe_page",
    "describe_result",
    "format_dead_letter",
    "format_dead_letters",
    "format_status",
    "format_table",
    "format_timestamp",
    "print_json",
]

ERROR_COLUMN_WIDTH = 60  # characters of an error shown in a table row; `dlq show` prints more
SHOW_FIELD_BYTES = 4096  # bytes of any one field `dlq show` prints unless --full (of the payload: its first)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain columns: numbers right-aligned, text left-aligned, two spaces apart."""
    cells = [[str(h) for h in headers], *[["-" if v is None else str(v) for v in row] for row in rows]]
    numeric = [
        all(isinstance(row[i], int) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = []
    for line in cells:
        parts = [c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(line)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _clip(text: str, width: int = ERROR_COLUMN_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_timestamp(ms: int) -> str:
    """A time in Unix milliseconds as ISO 8601 UTC to the second; 0 (never) as `-`. One no datetime can
    hold (an entry id written by hand, `XADD s 999999999999999-0`) is shown as its number, not a crash."""
    if not ms:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms since 1970"


def format_dead_letters(letters: Sequence[DeadLetter]) -> str:
    rows = [
        [d.dlq_id, d.id, d.group, d.attempts, d.reason, format_timestamp(d.last_failure_ms),
         _clip(f"{d.error_type}: {d.error}" if d.error_type else d.detail)]
        for d in letters
    ]  # fmt: skip
    return format_table(["DLQ ID", "EVENT ID", "GROUP", "ATTEMPTS", "REASON", "FAILED AT", "ERROR"], rows)


# The counters with a column of their own; the others (deleted_pending, any unknown) go to OTHER when not 0.
_STAT_COLUMNS = {
    "acked": "ACKED",
    "retried": "RETRIED",
    "deferred": "DEFERRED",
    "dead": "DEAD-LETTERED",
    "reclaimed": "RECLAIMED",
    "lease_lost": "LEASE LOST",
}


def _no_groups(st: StreamStatus) -> str:
    if st.key_type == "none":
        return "(no such stream)"
    if st.key_type == "stream":
        return "(no groups)"
    return (
        f"({st.stream} is a {st.key_type}, not a stream)" if st.key_type else f"({st.stream} is not a stream)"
    )


def format_status(statuses: Sequence[StreamStatus]) -> str:
    headers = [
        "STREAM", "LENGTH", "DEAD LETTERS", "GROUP", "CONSUMERS", "PENDING", "LAG", "RETRIES WAITING",
        *_STAT_COLUMNS.values(), "OTHER",
    ]  # fmt: skip
    rows: list[list[object]] = []
    for st in statuses:
        rows += _status_rows(st, st.stream, len(headers))
        # A partitioned stream's partitions (when asked for), indented under its added-up rows.
        for part in st.partition_details or []:
            rows += _status_rows(part, "  " + part.stream, len(headers))
    if not any(row[-1] for row in rows):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    notes = [
        f"{shown.stream}: {note}"
        for st in statuses
        for shown in [st, *(st.partition_details or [])]
        for note in stream_notes(shown)
    ]
    return "\n".join([format_table(headers, rows), *notes])


def _status_rows(st: StreamStatus, name: str, columns: int) -> list[list[object]]:
    head: list[object] = [name, st.length if st.key_type in ("stream", "none") else None, st.dead_letters]
    if not st.groups:
        return [[*head, _no_groups(st), *[None] * (columns - len(head) - 1)]]
    rows: list[list[object]] = []
    for g in st.groups:
        other = " ".join(f"{k}={v}" for k, v in sorted(g.stats.items()) if k not in _STAT_COLUMNS and v)
        rows.append(
            [
                *head,
                g.name,
                g.consumers,
                g.pending,
                g.lag,
                g.retries_waiting,
                *[g.stats.get(k, 0) for k in _STAT_COLUMNS],
                other,
            ]
        )
    return rows


def stream_notes(st: StreamStatus) -> list[str]:
    """What the table has no column for: partitions, pauses, what holds trimming back, the stream's own
    counters."""
    notes = []
    if st.partitions is not None:
        first, last = partition_stream(st.stream, 0), partition_stream(st.stream, st.partitions - 1)
        shown = "one row each under it" if st.partition_details is not None else "--partitions shows each"
        notes.append(f"partitioned: the sum of its {st.partitions} partitions, {first} to {last} ({shown})")
    for scope, info in sorted(st.paused.items()):
        who = f" by {info.user or '?'}@{info.host or '?'} (pid {info.pid})" if info.host else ""
        why = f": {info.reason}" if info.reason else ""
        target = "every group" if scope == "*" else f"group {scope}"
        notes.append(f"paused for {target} since {format_timestamp(info.since_ms)}{who}{why}")
    held = st.trimming_held_back_by
    if held is not None:
        what = "oldest entry it has pending" if held.reason == "pending" else "first entry it has not read"
        kept = f"at least {held.kept}" if held.capped else str(held.kept)
        where = f" in {held.stream}" if held.stream != st.stream else ""
        if held.tied:  # at one entry: deleting one of them alone would free nothing
            groups = ", ".join([held.group, *held.tied])
            who, them, why = f"groups {groups}", "them", f"all at {held.bound_id}"
        else:
            who, them, why = f"group {held.group}", "it", f"its {what}, {held.bound_id}"
        notes.append(
            f"trimming held back by {who}{where}: {kept} entries kept for {them} alone, since"
            f" {format_timestamp(held.since_ms)} ({why})"
        )
    if st.scheduled:
        notes.append(
            f"{st.scheduled} delayed event{'' if st.scheduled == 1 else 's'} scheduled, the next due"
            f" {format_timestamp(st.next_scheduled_due_ms or 0)}"
        )
    counted = [f"{name}={value}" for name, value in st.totals.items() if value]
    if counted:
        notes.append("totals: " + " ".join(counted))
    return notes


# ---------------------------------------------------------------------------------------------- dlq


def describe_page(page: DeadLetterPage, stream: str, group: str | None, more: str) -> list[str]:
    """What `dlq list` says under its table: how many of how many, and how to get the next page.

    `more` is the command for the next page without --after, e.g. `streamq dlq list orders --limit 20`.
    """
    shown = len(page.letters)
    if group is None:
        lines = [f"showing {shown} of the {_dead_letters(page.total)} of {stream}"]
    else:
        lines = [
            f"showing {shown} of group {group}'s dead letters, found among {page.scanned} scanned"
            f" of the {_dead_letters(page.total)} of {stream} (all groups)"
        ]
    if page.next_after is not None:
        lines.append(f"more: {more} --after {page.next_after}")
    return lines


def _dead_letters(n: int) -> str:
    return f"{n} dead letter{'' if n == 1 else 's'}"


def _clip_bytes(data: bytes, limit: int | None) -> tuple[bytes, int]:
    if limit is None or len(data) <= limit:
        return data, 0
    return data[:limit], len(data) - limit


def _clip_text(text: str, limit: int | None) -> tuple[str, int]:
    """The text cut to `limit` bytes of UTF-8 (never inside a character), and how many bytes were cut."""
    if limit is None or len(text) * 4 <= limit:  # fits whatever the characters
        return text, 0
    data = text.encode()
    if len(data) <= limit:
        return text, 0
    head = data[:limit].decode(errors="ignore")
    return head, len(data) - len(head.encode())


def dead_letter_fields(letter: DeadLetter, limit: int | None) -> tuple[dict[str, Any], dict[str, int]]:
    """`dlq show`'s fields, each cut to `limit` bytes (None: whole), and how many bytes were cut from which.

    The payload and raw fields are cut before they are written as hex, so their counts are of their own
    bytes; `event` (the payload decoded as plain msgpack) is given as JSON text, or None if not msgpack.
    """
    data: dict[str, Any] = msgspec.structs.asdict(letter)
    cut: dict[str, int] = {}
    for name, value in data.items():
        if isinstance(value, bytes):
            data[name], cut[name] = _clip_bytes(value, limit)
            data[name] = data[name].hex()
        elif isinstance(value, str):
            data[name], cut[name] = _clip_text(value, limit)
    data["payload_size"] = len(letter.payload) if letter.payload is not None else 0
    preview = letter.event_preview()
    data["event"], cut["event"] = (
        _clip_text(msgspec.json.encode(preview).decode(), limit) if preview is not None else (None, 0)
    )
    return data, {name: n for name, n in cut.items() if n}


def format_dead_letter(letter: DeadLetter, limit: int | None) -> str:
    """`dlq show` as text: one field a line, then the headers (one a line), the traceback last; a cut field
    ends with how much was cut."""
    data, cut = dead_letter_fields(letter, limit)
    for name, n in cut.items():
        data[name] += f" ... {n} more bytes, use --full"
    if letter.partition is None:
        del data["partition"]  # a plain stream's: no line that says nothing
    trace = data.pop("traceback")
    headers: dict[str, str] = data.pop("headers")
    if data["event"] is None:
        data["event"] = "(not msgpack)"
    data["first_failure_ms"] = f"{letter.first_failure_ms} ({format_timestamp(letter.first_failure_ms)})"
    data["last_failure_ms"] = f"{letter.last_failure_ms} ({format_timestamp(letter.last_failure_ms)})"
    width = max(len(k) for k in data)
    lines = [
        f"{key.ljust(width)}  {'-' if value is None or value == '' else value}" for key, value in data.items()
    ]
    if headers:
        lines.append("headers:")
        lines += [f"  {name}: {_clip_text(value, limit)[0]}" for name, value in headers.items()]
    if trace:
        lines += ["traceback:", trace.rstrip()]
    return "\n".join(lines)


def dead_letter_json(letter: DeadLetter, limit: int | None) -> dict[str, Any]:
    """`dlq show --json`: the fields, each cut to `limit` bytes, and `truncated`: bytes cut, by field.

    An event preview too long to show whole is left out (null) rather than cut into invalid JSON.
    """
    data, cut = dead_letter_fields(letter, limit)
    if "event" in cut:
        cut["event"] += len(data["event"].encode())  # none of it is shown
        data["event"] = None
    elif data["event"] is not None:
        data["event"] = msgspec.json.decode(data["event"])
    data["truncated"] = cut
    return data


def describe_result(result: DeadLetterResult, done: str) -> tuple[str, list[str], list[str]]:
    """What replay or purge did (`done`: "replayed" or "purged"): a line saying how many, a line naming
    the ids not found (if any), and a line for each dead letter left where it was, with why."""
    not_found = [f"not found: {' '.join(result.not_found)} (no such dead letter of {result.stream})"]
    return (
        f"{done} {_dead_letters(result.count)} of {result.stream}",
        not_found if result.not_found else [],
        [f"left {dlq_id}: {why}" for dlq_id, why in result.skipped.items()],
    )


def print_json(value: Any) -> None:
    """`--json` output: indented, so it reads as well as it pipes into jq."""
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
