"""`streamq scheduled list|cancel`: the delayed events of a stream (Producer.publish(delay_ms=..., at=...)).

cli.py calls add_commands(commands, command). Blocking API (streamq/scheduling.py's _sync functions): one
command, one connection, no event loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from ._cli_args import whole_number
from ._cli_output import format_table, print_json
from ._connection import resolve_url
from .errors import ConfigurationError
from .exit_codes import FAILURE, OK
from .scheduling import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    cancel_sync,
    check_schedule_id,
    list_scheduled_sync,
    scheduled_summary_sync,
)

SCHEDULED_EPILOG = """\
Events published with a delay (Producer.publish(stream, event, delay_ms=...) or at=...) wait under a
schedule id (sched-...) until a worker of any group of the stream moves them in, when due.

examples:
  streamq scheduled list orders
  streamq scheduled cancel orders sched-4f0c...
"""
LIST_EPILOG = """\
Soonest first. DUE is UTC, IN the time left by this machine's clock (negative: due, waiting for a
worker to move it); when it is due is decided by the Redis server's clock.

examples:
  streamq scheduled list orders --limit 20
  streamq scheduled list orders --json | jq '.scheduled[].schedule_id'
"""
CANCEL_EPILOG = """\
A cancelled event is never delivered, and its dedup key (if it had one) may be published again.
Exit status 1 if an id given was not waiting (never scheduled, already moved or cancelled); the others
are cancelled all the same.

examples:
  streamq scheduled cancel orders sched-4f0c... sched-9a1b...
"""


def _limit(text: str) -> int:
    return whole_number(text, 1, MAX_LIST_LIMIT)


def _schedule_id(text: str) -> str:
    try:
        return check_schedule_id(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add this module's commands to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
    # The parent is made by `command` too (it carries the global options); its own `run` is never
    # reached, since an action is required and each action sets its own.
    scheduled = command(
        commands, "scheduled", "list or cancel delayed events", SCHEDULED_EPILOG, cmd_scheduled_list
    )
    actions = scheduled.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = command(actions, "list", "list a stream's delayed events, soonest first", LIST_EPILOG,
                      cmd_scheduled_list)  # fmt: skip
    listing.add_argument("stream", metavar="STREAM")
    listing.add_argument(
        "--limit", metavar="N", type=_limit, default=DEFAULT_LIST_LIMIT,
        help=f"show at most N (default: {DEFAULT_LIST_LIMIT})",
    )  # fmt: skip
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cancelling = command(actions, "cancel", "cancel delayed events before they are delivered",
                         CANCEL_EPILOG, cmd_scheduled_cancel)  # fmt: skip
    cancelling.add_argument("stream", metavar="STREAM")
    cancelling.add_argument("ids", metavar="SCHEDULE_ID", nargs="+", type=_schedule_id)
    cancelling.add_argument("--json", action="store_true", help="print what was done as JSON")


def _left(ms: int) -> str:
    return f"{ms / 1000:.1f}s"


def cmd_scheduled_list(args: argparse.Namespace) -> int:
    url = resolve_url(args.redis_url)
    events = list_scheduled_sync(url, args.stream, limit=args.limit)
    summary = scheduled_summary_sync(url, args.stream)
    if args.json:
        print_json({
            "stream": args.stream, "total": summary.scheduled_count,
            "scheduled": [
                {"schedule_id": e.schedule_id, "due_ms": e.due_ms, "due": e.due.isoformat(), "size": e.size,
                 "type": e.type}
                for e in events
            ],
        })  # fmt: skip
        return OK
    if not events:
        print(f"no delayed events for {args.stream}")
        return OK
    now_ms = int(time.time() * 1000)
    # e.due, not format_timestamp, which shows a due time of 0 (1970-01-01, an `at=` long past) as "-".
    rows = [
        [e.schedule_id, e.due.isoformat(timespec="seconds"), _left(e.due_ms - now_ms), e.size, e.type]
        for e in events
    ]
    print(format_table(["SCHEDULE_ID", "DUE", "IN", "BYTES", "TYPE"], rows))
    if summary.scheduled_count > len(events):
        print(f"{len(events)} of {summary.scheduled_count} shown (--limit)", file=sys.stderr)
    return OK


def cmd_scheduled_cancel(args: argparse.Namespace) -> int:
    ids = list(dict.fromkeys(args.ids))  # a repeated id is cancelled once, reported once
    flags = cancel_sync(resolve_url(args.redis_url), args.stream, ids)
    cancelled = [i for i, done in zip(ids, flags, strict=True) if done]
    not_found = [i for i, done in zip(ids, flags, strict=True) if not done]
    if args.json:
        print_json({"stream": args.stream, "cancelled": cancelled, "not_found": not_found})
    else:
        print(f"cancelled {len(cancelled)} of {len(ids)} delayed events of {args.stream}")
    for schedule_id in not_found:
        print(f"streamq: error: {schedule_id} is not waiting (already moved, or cancelled)", file=sys.stderr)
    return FAILURE if not_found else OK
