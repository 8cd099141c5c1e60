"""`streamq inspect STREAM ID`: where one event is, group by group (streamq/where.py's locate_sync).

cli.py calls add_commands(commands, command). One command, one connection, no event loop.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ._cli_args import positive_int
from ._cli_output import format_timestamp, print_json
from ._connection import resolve_url
from .errors import ConfigurationError
from .exit_codes import OK
from .settings import DEFAULT_LEASE_MS
from .where import DEFAULT_SCAN_LIMIT, GroupWhereabouts, Whereabouts, check_ref, locate_sync

INSPECT_EPILOG = f"""\
ID is an entry id (1712345678901-0) or the schedule id a delayed publish returned (sched-...); for a
partitioned stream, the partition first: 3/1712345678901-0.

For each group of STREAM (or --group), the event is: pending (which consumer holds it, idle for how long,
delivered how many times), retry_pending (delivered again from the group's retry stream), waiting_retry
(due when, attempts failed, last error), dead_lettered (reason, when, by which consumer), not_delivered,
acknowledged (the stream still holds it; the group is done with it), or gone (trimmed or deleted, and
nothing of the group knows it). A schedule id is scheduled (due when) or not_scheduled (moved into the
stream, or cancelled: its entry id is not recorded).

The lease is not kept in Redis: "lease alive" means idle < --lease-ms (default {DEFAULT_LEASE_MS}, the
consumers' default; give your workers' lease_ms). Retries and dead letters are found by scanning, each
scan reading at most --scan-limit entries (default {DEFAULT_SCAN_LIMIT}); a scan cut short is said, and
then acknowledged or gone may be wrong. Exit status {OK} whatever the answer: it is in the output.

examples:
  streamq inspect orders 1712345678901-0
  streamq inspect orders 1712345678901-0 --group billing --lease-ms 60000
  streamq inspect orders sched-4f0c...
  streamq inspect orders 1712345678901-0 --json | jq -r '.groups[].state'
"""


def _ref(text: str) -> str:
    try:
        return check_ref(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `inspect` to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
    about = "show where one event is in each group: pending, retrying, dead-lettered or acknowledged"
    inspect = command(commands, "inspect", about, INSPECT_EPILOG, cmd_inspect)
    inspect.add_argument("stream", metavar="STREAM")
    inspect.add_argument(
        "id", metavar="ID", type=_ref, help="entry id or schedule id (P/ID for a partitioned stream)"
    )
    inspect.add_argument("--group", metavar="G", help="only this group (default: every group of the stream)")
    inspect.add_argument(
        "--lease-ms", metavar="N", type=positive_int, default=DEFAULT_LEASE_MS,
        help=f"your workers' lease_ms, to tell a live lease from a dead one (default: {DEFAULT_LEASE_MS})",
    )  # fmt: skip
    inspect.add_argument(
        "--scan-limit", metavar="N", type=positive_int, default=DEFAULT_SCAN_LIMIT,
        help=f"entries read at most per scan for retries and dead letters (default: {DEFAULT_SCAN_LIMIT})",
    )  # fmt: skip
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")


def cmd_inspect(args: argparse.Namespace) -> int:
    found = locate_sync(
        resolve_url(args.redis_url), args.stream, args.id, group=args.group, lease_ms=args.lease_ms,
        scan_limit=args.scan_limit,
    )  # fmt: skip
    if args.json:
        data = msgspec.to_builtins(found)
        for shown, group in zip(data["groups"], found.groups, strict=True):
            if group.dead_letter is not None:  # as `dlq list --json` shows it: the payload left out
                shown["dead_letter"] = group.dead_letter.to_dict(with_payload=False)
        print_json(data)
    else:
        print(format_whereabouts(found, int(time.time() * 1000)))
    return OK


def _when(ms: int, now_ms: int) -> str:
    delta_s = (ms - now_ms) / 1000
    relative = f"in {delta_s:.1f} s" if delta_s >= 0 else f"{-delta_s:.1f} s ago"
    return f"{format_timestamp(ms)} ({relative})"


def format_whereabouts(found: Whereabouts, now_ms: int) -> str:
    """The human answer: a line for the event, then one block per group."""
    shown = f" (partition {found.partition})" if found.partition is not None and "/" not in found.id else ""
    head = f"{found.stream} {found.id}{shown}: "
    if found.state == "scheduled":
        assert found.due_ms is not None
        due = _when(found.due_ms, now_ms)
        return head + f"scheduled, due {due}; no group sees it before a worker moves it into the stream"
    if found.state == "not_scheduled":
        return head + (
            "not scheduled (any more): moved into the stream when due (its entry id is not recorded),"
            " cancelled, or never scheduled"
        )
    lines = [
        head
        + ("in the stream" if found.state == "in_stream" else "gone from the stream (trimmed or deleted)")
    ]
    if not found.groups:
        lines.append(
            "  no groups: nothing has read it" if found.state == "in_stream" else "  no group knows it"
        )
    for group in found.groups:
        lines += _group_lines(found, group, now_ms)
    for what in found.cut:
        lines.append(f"  note: the scan of {what} stopped at --scan-limit: acknowledged or gone may be wrong")
    return "\n".join(lines)


def _group_lines(found: Whereabouts, g: GroupWhereabouts, now_ms: int) -> list[str]:
    name = f"  {g.group}: "
    if g.state in ("pending", "retry_pending"):
        assert g.idle_ms is not None
        if g.lease_alive:
            lease = f"lease alive (idle < lease_ms {found.lease_ms})"
        else:
            lease = f"lease expired (idle >= lease_ms {found.lease_ms}): the next reclaim takes it"
        again = (
            "" if g.state == "pending" else f" again after a retry (retry stream entry {g.retry_entry_id})"
        )
        lines = [
            f"{name}pending{again}, held by {g.consumer}",
            f"    idle {g.idle_ms} ms, delivered {g.deliveries} time(s), {lease}",
        ]
        return lines + _history_lines(g, now_ms)
    if g.state == "waiting_retry":
        if g.due_ms is not None:
            first = f"{name}waiting for a retry, due {_when(g.due_ms, now_ms)}"
        else:
            moved = f"due and moved to the retry stream ({g.retry_entry_id}), not read yet"
            first = f"{name}waiting for a retry, {moved}"
        return [first, *_history_lines(g, now_ms)]
    if g.state == "dead_lettered":
        letter = g.dead_letter
        assert letter is not None
        at = format_timestamp(letter.last_failure_ms) if letter.last_failure_ms else "-"
        lines = [
            f"{name}dead-lettered ({letter.reason}) at {at} by consumer {letter.consumer or '-'},"
            f" after {letter.attempts} attempt(s); dead letter {letter.dlq_id}"
            f" (streamq dlq show {found.stream} {_dlq_ref(found, letter.dlq_id)})"
        ]
        error = f"{letter.error_type}: {letter.error}" if letter.error_type else letter.error or letter.detail
        if error:
            lines.append(f"    error: {error[:200]}")
        return lines
    if g.state == "not_delivered":
        return [f"{name}not delivered yet (the group is at {g.last_delivered_id})"]
    if g.state == "acknowledged":
        return [f"{name}acknowledged"]
    return [f"{name}gone: the stream no longer holds it, and the group has no retry or dead letter of it"]


def _dlq_ref(found: Whereabouts, dlq_id: str) -> str:
    return dlq_id if found.partition is None else f"{found.partition}/{dlq_id}"


def _history_lines(g: GroupWhereabouts, now_ms: int) -> list[str]:
    if g.failures is None:
        return []
    lines = [f"    {g.failures} attempt(s) failed, {g.lost_deliveries or 0} delivery(ies) lost"]
    if g.last_error:
        when = f" at {_when(g.last_failure_ms, now_ms)}" if g.last_failure_ms else ""
        lines.append(f"    last error{when}: {g.last_error[:200]}")
    if g.deferred_since_ms:
        lines.append(f"    deferred since {format_timestamp(g.deferred_since_ms)}")
    return lines
