"""The `streamq pause` and `streamq resume` commands. cli.py calls add_commands(commands, command).

Not imported from streamq.cli (which imports this module): exit codes come from streamq.exit_codes, and
errors (Redis unreachable, a bad name) are raised for cli.main to report.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis

from ._connection import resolve_url
from .control import EVERY_GROUP, PauseInfo, pause_sync, pauses_sync, resume_sync
from .errors import StreamqError
from .exit_codes import OK
from .inspect import stream_status_sync

PAUSE_EPILOG = """\
A pause is stored in Redis and lasts until `streamq resume`, whatever workers start or stop meanwhile.
Workers see it within a second (within block_ms when that is shorter): they stop reading new entries and
reclaiming, retries wait, and the batches they hold are still handled and settled. Without --group, every
group of the stream is paused.

examples:
  streamq pause orders --group billing --reason "ledger migration"
  streamq pause orders --json
"""

RESUME_EPILOG = """\
Removes one pause: the group's (--group), or the stream-wide one. A group paused by name stays paused
when the stream is resumed, and a group resumed while its stream is paused stays paused: the output
lists the pauses still in force.

examples:
  streamq resume orders --group billing
  streamq resume orders --json
"""


def add_commands(commands: Any, command: Any) -> None:
    """Add this module's commands to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
    pause = command(commands, "pause", "pause a consumer group, or every group of a stream", PAUSE_EPILOG,
                    cmd_pause)  # fmt: skip
    pause.add_argument("stream", metavar="STREAM")
    pause.add_argument("--group", metavar="G", default=None, help="the group to pause (default: every group)")
    pause.add_argument("--reason", metavar="TEXT", default="", help="why (one line): in logs and status")
    pause.add_argument("--json", action="store_true", help="print the pause as JSON")
    resume = command(commands, "resume", "resume a paused group, or a paused stream", RESUME_EPILOG,
                     cmd_resume)  # fmt: skip
    resume.add_argument("stream", metavar="STREAM")
    resume.add_argument(
        "--group", metavar="G", default=None, help="the group to resume (default: the stream)"
    )
    resume.add_argument("--json", action="store_true", help="print what was done as JSON")


def _scope_text(stream: str, scope: str) -> str:
    return f"every group of {stream}" if scope == EVERY_GROUP else f"group {scope} of {stream}"


def _describe(info: PauseInfo) -> str:
    # 0: a record written by hand, when unknown
    since = (
        datetime.fromtimestamp(info.since_ms / 1000, UTC).isoformat(timespec="seconds")
        if info.since_ms
        else "?"
    )
    who = f" by {info.user or '?'}@{info.host}" if info.host else ""
    reason = f": {info.reason}" if info.reason else ""
    return f"since {since}{who}{reason}"


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _nothing_to_hold(url: str, stream: str, group: str | None) -> str | None:
    """A note when the pause holds nothing yet: a mistyped name is paused as readily as the right one (a
    pause set ahead of the stream or group is kept, and holds it once it exists). Best effort: a user who
    may not read the stream's status gets no note."""
    try:
        status = stream_status_sync(url, stream)
    except (redis.RedisError, StreamqError):
        return None
    if not status.exists:
        return f"note: stream {stream} does not exist (yet); check the name"
    if group not in (None, EVERY_GROUP) and group not in {g.name for g in status.groups}:
        return f"note: stream {stream} has no group {group} (yet); check the name"
    return None


def cmd_pause(args: argparse.Namespace) -> int:
    url = resolve_url(args.redis_url)
    info = pause_sync(url, args.stream, args.group, args.reason)
    scope = args.group or EVERY_GROUP
    note = _nothing_to_hold(url, args.stream, args.group)
    if note is not None:
        print(note, file=sys.stderr)  # stderr: --json output stays one JSON document
    if args.json:
        _print_json({"stream": args.stream, "scope": scope, "pause": info})
    else:
        print(f"paused {_scope_text(args.stream, scope)} {_describe(info)}")
    return OK


def cmd_resume(args: argparse.Namespace) -> int:
    url = resolve_url(args.redis_url)
    resumed = resume_sync(url, args.stream, args.group)
    scope = args.group or EVERY_GROUP
    still = pauses_sync(url, args.stream)
    if args.json:
        _print_json({"stream": args.stream, "scope": scope, "resumed": resumed, "still_paused": still})
        return OK
    print(f"resumed {_scope_text(args.stream, scope)}" if resumed
          else f"{_scope_text(args.stream, scope)} was not paused")  # fmt: skip
    for other, info in sorted(still.items()):
        print(f"still paused: {_scope_text(args.stream, other)} {_describe(info)}")
    return OK
