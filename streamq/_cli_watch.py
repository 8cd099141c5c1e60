"""`streamq status --watch` and `streamq top` (the same view): streams and groups live, refreshed in place.

What it reads and how it computes rates is _watch_frames.py. Output: on a terminal (stdout; STREAMQ_TTY=1
or 0 overrides the check, see _cli_progress.py), each refresh redraws the screen in place with ANSI codes
(cursor home, each line cleared to its end, the rest of the screen cleared; no curses), clipped to the
terminal's size. Otherwise a plain block per refresh headed by its time, or with --json one JSON object per
line (Frame). Ctrl-C ends it with exit code 0, --count N after N refreshes. A reading that fails once it
has started (the server restarting) is shown as an error and retried at the next refresh; the first must
succeed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._cli_args import positive_int, whole_number
from ._cli_output import format_timestamp
from ._cli_progress import is_terminal
from ._connection import redact, resolve_url, sync_client
from ._watch_frames import Frame, GroupView, Reading, StreamView, frame, read
from .exit_codes import OK, USAGE

DEFAULT_INTERVAL_MS = 2_000  # between refreshes
MIN_INTERVAL_MS = 100  # each refresh is a few round trips per stream: no point hammering the server
CONSUMERS_SHOWN = 5  # per group on a terminal, most recently active first; --json and plain output: all

TOP_EPILOG = f"""\
A live view of streams (every stream that has had a worker, or those named): per stream, its length,
dead letters and entries published per second; per group, pending entries and the age of the oldest,
lag and its change per second, and entries acknowledged, retried and dead-lettered per second; each
consumer with how long it has been idle. Rates are counted between two refreshes (`-` on the first).
On a terminal the screen is redrawn in place; otherwise a block per refresh, or one JSON object per line
with --json. Ctrl-C quits (exit code {OK}). Same as `streamq status --watch`.

examples:
  streamq top
  streamq top orders payments --interval-ms 5000
  streamq top orders --json --count 10 > orders.jsonl   ten readings, two seconds apart
"""

__all__ = [
    "DEFAULT_INTERVAL_MS",
    "TOP_EPILOG",
    "Frame",
    "GroupView",
    "Reading",
    "StreamView",
    "add_top_command",
    "add_watch_options",
    "cmd_watch",
    "frame",
    "read",
    "render",
]


# ---------------------------------------------------------------------------------------------- text


def _per_s(rate: float | None, *, signed: bool = False) -> str:
    if rate is None:
        return "-"
    return f"{rate:+.1f}" if signed else f"{rate:.1f}"


def _age(ms: int | None) -> str:
    """A duration for people: 0.4s, 12.0s, 3m05s, 2h10m, 3d04h."""
    if ms is None:
        return "-"
    seconds = ms // 1000
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], text_columns: int) -> list[str]:
    """Columns two spaces apart: the first `text_columns` (names) left-aligned, the figures right-aligned."""
    cells = [[str(h) for h in headers], *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return [
        "  ".join(
            c.ljust(widths[i]) if i < text_columns else c.rjust(widths[i]) for i, c in enumerate(line)
        ).rstrip()
        for line in cells
    ]


_GROUP_HEADERS = (
    "STREAM", "GROUP", "CONSUMERS", "PENDING", "OLDEST PENDING", "LAG", "LAG/S", "RETRIES WAITING", "ACKED/S",
    "RETRIED/S", "DEAD-LETTERED/S",
)  # fmt: skip


def _group_row(st: StreamView, g: GroupView) -> list[object]:
    return [
        st.stream, g.name, g.consumers, g.pending, _age(g.oldest_pending_age_ms), g.lag,
        _per_s(g.lag_per_s, signed=True), g.retries_waiting, _per_s(g.acked_per_s), _per_s(g.retried_per_s),
        _per_s(g.dead_per_s),
    ]  # fmt: skip


def render(view: Frame, interval_ms: int, *, consumers_shown: int | None = None) -> list[str]:
    """The lines of one refresh. consumers_shown: at most that many consumers per group (None: all)."""
    every = f"every {interval_ms / 1000:g} s"
    head = f"streamq top  {format_timestamp(view.time_ms)} (server time)  {every}"
    if view.error is not None:
        return [head, "", f"reading failed, trying again at the next refresh: {view.error}"]
    if not view.streams:
        return [head, "", "no streams: none has had a streamq worker yet (name streams to watch them anyway)"]
    lines = [head + ("" if view.interval_ms is not None else "  (rates from the next refresh on)"), ""]
    lines += _table(
        ["STREAM", "LENGTH", "DEAD LETTERS", "PUBLISHED/S"],
        [[st.stream, st.length, st.dead_letters, _per_s(st.published_per_s)] for st in view.streams],
        1,
    )
    groups = [(st, g) for st in view.streams for g in st.groups]
    if groups:
        lines += ["", *_table(_GROUP_HEADERS, [_group_row(st, g) for st, g in groups], 2)]
    rows: list[list[object]] = []
    for st, g in groups:
        shown = g.consumer_details if consumers_shown is None else g.consumer_details[:consumers_shown]
        rows += [[st.stream, g.name, c.name, c.pending, _age(c.idle_ms)] for c in shown]
        if len(shown) < len(g.consumer_details):
            rest = g.consumer_details[len(shown) :]
            rows.append(
                [st.stream, g.name, f"(and {len(rest)} more, idle up to {_age(rest[-1].idle_ms)})", "", ""]
            )
    if rows:
        lines.append("")
        lines += _table(["STREAM", "GROUP", "CONSUMER", "PENDING", "IDLE"], rows, 3)
    notes = [f"{st.stream}: {note}" for st in view.streams for note in st.notes]
    if notes:
        lines += ["", *notes]
    return lines


# ---------------------------------------------------------------------------------------------- screen

_HOME, _CLEAR_SCREEN, _CLEAR_LINE_END, _CLEAR_BELOW = "\x1b[H", "\x1b[2J", "\x1b[K", "\x1b[J"
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


class _Screen:
    """Redraws a terminal in place: home, each line cleared to its end, the rest of the screen cleared.
    Nothing scrolls, nothing flickers (the screen is cleared once, at the start), and the last refresh
    stays on the screen after the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.out.write(_HIDE_CURSOR + _HOME + _CLEAR_SCREEN)

    def show(self, lines: list[str]) -> None:
        columns, rows = shutil.get_terminal_size()
        if len(lines) > rows - 1:
            hidden = len(lines) - (rows - 2)
            lines = [*lines[: rows - 2], f"({hidden} more lines: a taller terminal, or name fewer streams)"]
        self.out.write(
            _HOME + "".join(line[:columns] + _CLEAR_LINE_END + "\n" for line in lines) + _CLEAR_BELOW
        )
        self.out.flush()

    def close(self) -> None:
        self.out.write(_SHOW_CURSOR)
        self.out.flush()


def _plain(out: TextIO) -> Callable[[Frame, int], None]:
    def show(view: Frame, interval_ms: int) -> None:
        out.write("\n".join(render(view, interval_ms)) + "\n\n")
        out.flush()

    return show


def _json_lines(out: TextIO) -> Callable[[Frame, int], None]:
    def show(view: Frame, interval_ms: int) -> None:
        out.write(msgspec.json.encode(view).decode() + "\n")
        out.flush()

    return show


# ---------------------------------------------------------------------------------------------- command


def _interval_ms(text: str) -> int:
    return whole_number(text, MIN_INTERVAL_MS)


def add_watch_options(parser: argparse.ArgumentParser, *, with_switch: bool) -> None:
    """--interval-ms and --count (and --watch itself, on `status`)."""
    if with_switch:
        parser.add_argument(
            "--watch", action="store_true", help="refresh every --interval-ms with rates, as `streamq top`"
        )
    parser.add_argument(
        "--interval-ms",
        metavar="N",
        type=_interval_ms,
        default=None,
        help=f"between refreshes (default: {DEFAULT_INTERVAL_MS}, at least {MIN_INTERVAL_MS})",
    )
    parser.add_argument(
        "--count", metavar="N", type=positive_int, default=None, help="stop after N refreshes"
    )


def add_top_command(commands: Any, command: Any) -> None:
    """Add `streamq top` to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
    about = "watch streams live: rates, lag and its trend, oldest pending, consumers"
    top = command(commands, "top", about, TOP_EPILOG, cmd_watch)
    top.add_argument("streams", metavar="STREAM", nargs="*", help="default: every known stream")
    top.add_argument("--json", action="store_true", help="one JSON object per refresh, a line each")
    add_watch_options(top, with_switch=False)


def cmd_watch(args: argparse.Namespace) -> int:
    """`streamq top`, and `streamq status --watch`."""
    if getattr(args, "partitions", False):
        return _usage(args, "--partitions is not shown live: use it without --watch")
    interval_ms: int = args.interval_ms or DEFAULT_INTERVAL_MS
    url = resolve_url(args.redis_url)
    out = sys.stdout
    screen = _Screen(out) if not args.json and is_terminal(out) else None
    show = _json_lines(out) if args.json else _plain(out)
    client = sync_client(url)
    previous: Reading | None = None
    shown = 0
    try:
        while True:
            started = time.monotonic()
            try:
                current = read(client, url, args.streams)
                view = frame(previous, current)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if shown == 0:
                    raise  # the first reading must work: cli.main says Redis cannot be reached
                current, view = None, Frame(time_ms=int(time.time() * 1000), interval_ms=None, streams=[],
                                            error=redact(str(exc)))  # fmt: skip
            if screen is not None:
                screen.show(render(view, interval_ms, consumers_shown=CONSUMERS_SHOWN))
            else:
                show(view, interval_ms)
            shown += 1
            if args.count is not None and shown >= args.count:
                return OK
            previous = current
            time.sleep(max(interval_ms / 1000 - (time.monotonic() - started), 0))
    except KeyboardInterrupt:  # Ctrl-C is how one leaves a live view: not a failure
        return OK
    finally:
        if screen is not None:
            screen.close()
        client.close()


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.command_parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return USAGE
