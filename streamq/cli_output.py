"""What the `streamq` command prints: tables and JSON.

Apart from cli.py so that the parser and the commands read without the column arithmetic. The demo prints
its dead letters with format_dead_letters. The exit codes live in exit_codes.py; they are re-exported here
and from streamq.cli, where scripts have imported them from. streamq.cli re-exports the format_* tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from .deadletter import DeadLetter
from .exit_codes import ABANDONED, FAILURE, INTERRUPTED, OK, USAGE
from .inspect import StreamStatus

__all__ = [
    "ABANDONED",
    "ERROR_COLUMN_WIDTH",
    "FAILURE",
    "INTERRUPTED",
    "OK",
    "USAGE",
    "format_dead_letters",
    "format_status",
    "format_table",
    "format_timestamp",
    "print_json",
]

ERROR_COLUMN_WIDTH = 60  # characters of an error shown in a table row; `dlq show` prints all of it


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
    """A time in Unix milliseconds as ISO 8601 UTC to the second; 0 (never) as `-`."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else "-"


def format_dead_letters(letters: Sequence[DeadLetter]) -> str:
    rows = [
        [d.dlq_id, d.id, d.group, d.attempts, d.reason, format_timestamp(d.last_failure_ms),
         _clip(f"{d.error_type}: {d.error}" if d.error_type else d.detail)]
        for d in letters
    ]  # fmt: skip
    return format_table(["DLQ ID", "EVENT ID", "GROUP", "ATTEMPTS", "REASON", "FAILED AT", "ERROR"], rows)


_KNOWN_STATS = ("acked", "retried", "dead", "reclaimed", "lease_lost")


def format_status(statuses: Sequence[StreamStatus]) -> str:
    headers = [
        "STREAM",
        "LENGTH",
        "DEAD LETTERS",
        "GROUP",
        "CONSUMERS",
        "PENDING",
        "LAG",
        "RETRIES WAITING",
        "ACKED",
        "RETRIED",
        "DEAD-LETTERED",
        "RECLAIMED",
        "LEASE LOST",
        "OTHER",
    ]
    rows: list[list[object]] = []
    for st in statuses:
        head: list[object] = [st.stream, st.length, st.dead_letters]
        if not st.groups:
            rows.append([*head, "(no groups)" if st.exists else "(no such stream)", *[None] * 10])
        for g in st.groups:
            other = " ".join(f"{k}={v}" for k, v in sorted(g.stats.items()) if k not in _KNOWN_STATS)
            rows.append(
                [
                    *head,
                    g.name,
                    g.consumers,
                    g.pending,
                    g.lag,
                    g.retries_waiting,
                    *[g.stats.get(k, 0) for k in _KNOWN_STATS],
                    other,
                ]
            )
    if not any(row[-1] for row in rows):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    return format_table(headers, rows)


def print_json(value: Any) -> None:
    """`--json` output: indented, so it reads as well as it pipes into jq."""
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
