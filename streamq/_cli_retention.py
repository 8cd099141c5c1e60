"""The `streamq` commands of retention: `trim` and `group delete` (cli.py calls add_commands).

Both use the blocking API of streamq/retention.py. Errors it raises (GroupInUse, a key of another type,
Redis unreachable) are reported by cli.main; what is left for here is the output and the exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cli_args import non_negative_int, positive_int
from ._cli_output import print_json
from ._cli_progress import working
from ._connection import resolve_url
from .exit_codes import FAILURE, OK
from .retention import DEFAULT_LIVE_IDLE_MS, GroupDeleted, TrimResult, delete_group_sync, trim_sync

TRIM_EPILOG = """\
Removes the entries every group of STREAM has been delivered and has acknowledged (XTRIM MINID ~ below
the lowest position of any group): an entry some group has pending or has not read yet is never removed,
and a stream without groups is never trimmed. Whole nodes of the stream are freed, so a few acknowledged
entries may stay. Workers do this on their own every trim_interval_ms; this is for streams without a
running worker, or to see what holds trimming back.

Dead letters are expired only with --dlq-max-age-ms or --dlq-max-len (a worker applies its
dlq_max_age_ms and dlq_max_len).

--max-len N is a hard cap: entries beyond it are dropped even if a group has not acknowledged them (their
count and id range are printed). --dry-run removes nothing; its count is of the entries below the cut,
exact unless 10000 or more are on each side of it ("at least"), an upper bound of what the trim frees.

examples:
  streamq trim orders --dry-run
  streamq trim orders --keep-acked-ms 86400000      keep a day of acknowledged entries
  streamq trim orders --max-len 1000000 --json
  streamq trim orders --dlq-max-age-ms 1209600000      also expire dead letters older than 14 days
"""

GROUP_EPILOG = """\
examples:
  streamq group delete orders old-billing
  streamq group delete orders old-billing --force
"""

GROUP_DELETE_EPILOG = f"""\
Deletes GROUP from STREAM and from its retry stream (XGROUP DESTROY), with its retries waiting, counters,
rate limiter and pause. Its pending entries are dropped with it, and trimming no longer waits for it: a
group nobody consumes any more otherwise keeps every entry from its position on.

Refused while a worker of the group runs: one whose word in the group's live set holds (renewed every
few seconds, also while paused or idle), or a consumer idle less than {DEFAULT_LIVE_IDLE_MS // 1000} s. Stop
its workers first: a worker running on a deleted group recreates it. --force deletes it anyway (the
consumers of a worker that has just died look live for a minute).

examples:
  streamq group delete orders old-billing
  streamq group delete orders old-billing --force --json
"""


def add_commands(commands: Any, command: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Add this module's commands to the `streamq` parser: `command(commands, name, help, epilog, run)`.

    `common`, the parser of the global options, lets them come between `group` and its action too
    (`streamq group --redis-url URL delete ...`), as they may for `dlq`; without it they go after the action.
    """
    about = "trim what every group of a stream has acknowledged"
    trim = command(commands, "trim", about, TRIM_EPILOG, cmd_trim)
    trim.add_argument("stream", metavar="STREAM")
    trim.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    trim.add_argument(
        "--keep-acked-ms", metavar="N", type=non_negative_int, default=0,
        help="keep acknowledged entries younger than N ms (default: 0)",
    )  # fmt: skip
    trim.add_argument(
        "--max-len", metavar="N", type=positive_int, default=None,
        help="then drop the oldest entries beyond N, acknowledged or not (default: no cap)",
    )  # fmt: skip
    trim.add_argument(
        "--dlq-max-age-ms", metavar="N", type=positive_int, default=None,
        help="also expire dead letters older than N ms (default: dead letters are left alone)",
    )  # fmt: skip
    trim.add_argument(
        "--dlq-max-len", metavar="N", type=positive_int, default=None,
        help="also trim the dead letters to about N, the oldest first (default: no cap)",
    )  # fmt: skip
    trim.add_argument("--json", action="store_true", help="print JSON instead of text")

    # A command with actions, like `dlq`: `streamq group delete STREAM GROUP`.
    group = commands.add_parser(
        "group", parents=[common] if common is not None else [], help="delete a consumer group",
        description="Delete a consumer group.",
        epilog=GROUP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    about = "delete a group and everything streamq keeps for it"
    delete = command(actions, "delete", about, GROUP_DELETE_EPILOG, cmd_group_delete)
    delete.add_argument("stream", metavar="STREAM")
    delete.add_argument("group", metavar="GROUP")
    delete.add_argument("--force", action="store_true", help="delete it even with live consumers")
    delete.add_argument("--json", action="store_true", help="print what was done as JSON")


def cmd_trim(args: argparse.Namespace) -> int:
    # A trim is one script per stream on the server, nothing to count: a line with the time it has taken,
    # on stderr when it is a terminal (_cli_progress.py).
    with working(f"{'measuring' if args.dry_run else 'trimming'} {args.stream}"):
        result = trim_sync(
            resolve_url(args.redis_url), args.stream, keep_acked_ms=args.keep_acked_ms,
            max_len=args.max_len, dry_run=args.dry_run, dlq_max_age_ms=args.dlq_max_age_ms,
            dlq_max_len=args.dlq_max_len,
        )  # fmt: skip
    if args.json:
        print_json(result)
    else:
        for line in describe_trim(result):
            print(line)
    return OK


def describe_trim(result: TrimResult) -> list[str]:
    """`streamq trim`'s report, a line per fact."""
    stream = result.stream
    at_least = "at least " if result.estimated else ""
    expired = []
    if result.dead_letters_expired:
        verb = "would expire up to" if result.dry_run else "expired"
        expired = [f"{stream}: {verb} {at_least}{result.dead_letters_expired} dead letters"]
    if result.groups == 0:
        return [f"{stream}: no consumer group, nothing trimmed (length {result.length_after})", *expired]
    if result.dry_run:
        lines = [f"{stream}: would trim up to {at_least}{result.removed} acknowledged entries"]
    else:
        lines = [f"{stream}: trimmed {result.removed} acknowledged entries"]
    if result.cut_id is not None:
        lines[0] += f" (below {result.cut_id})"
    if result.dropped:
        verb = "would drop" if result.dry_run else "dropped"
        span = f" ({result.dropped_first} up to {result.dropped_until})" if result.dropped_first else ""
        lines.append(f"{stream}: {verb} {result.dropped} entries over --max-len{span}")
    lines.append(f"{stream}: length {'would be ' if result.dry_run else ''}{result.length_after}")
    lines += expired
    if result.held_by is not None:
        lines.append(f"{stream}: held back by group {result.held_by} at {result.safe_id}")
    # A partitioned stream's result adds its partitions up and names no group: say per partition who holds
    # trimming back, what the command is also for.
    for part in result.partitions or []:
        if part.held_by is not None and part.length_after > 0:
            lines.append(f"{part.stream}: held back by group {part.held_by} at {part.safe_id}")
    return lines


def cmd_group_delete(args: argparse.Namespace) -> int:
    deleted = delete_group_sync(resolve_url(args.redis_url), args.stream, args.group, force=args.force)
    if args.json:
        print_json(deleted)
    else:
        print(describe_deleted(deleted))
    if not deleted.existed:
        print(f"streamq: error: {args.stream} has no group {args.group}", file=sys.stderr)
        return FAILURE
    return OK


def describe_deleted(deleted: GroupDeleted) -> str:
    if not deleted.existed:
        return f"no group {deleted.group} on {deleted.stream}: removed any keys left of it"
    forced = " (--force)" if deleted.forced else ""
    return (
        f"deleted group {deleted.group} of {deleted.stream}{forced}: {deleted.pending} pending entries"
        f" dropped, {deleted.consumers} consumers"
    )
