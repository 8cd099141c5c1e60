"""`streamq status --watch` and `streamq top` (the same view): streams and groups live, refreshed in place.

Every interval it reads the streams' status (inspect.status_sync, as `streamq status` does) and, in one
more run of steps, what status keeps no figure for: the server's clock, each stream's entries ever added,
each group's oldest pending entry and its consumers. From two readings in a row it shows:

- published/s: the change of XINFO STREAM's `entries-added` (every entry ever appended to the stream,
  whoever appended it, trimmed or not; the sum over the partitions of a partitioned stream). The length
  would not do: retention lowers it. Servers before Redis 7.0 have no such figure: shown as `-`.
- acked/s, retried/s, dead-lettered/s: the change of the group's counters (keys.stats_key: acked, retried,
  dead), which workers update in the step that settles the entries.
- the lag and its trend: the change of the group's lag per second (positive: its consumers fall behind).
- the oldest pending entry's age: the smallest id XPENDING gives (of the stream and of the group's retry
  stream) measured against the server's TIME, read in the same round trip: how long ago the oldest entry
  that is delivered and not yet settled was appended (to the stream, or for a retry to the retry stream).
- each consumer with its idle time (XINFO CONSUMERS: since it last read or claimed, the least over the
  stream and the retry stream) and the entries it holds.

Every rate is (counter now - counter before) * 1000 / interval_ms, where interval_ms is the server time
between the two readings (both read with TIME, not this machine's clock). A counter that went down (its
group deleted and made again) gives no rate for that interval (`-`, null in JSON); so does a first reading.

Output: on a terminal (stdout; STREAMQ_TTY=1 or 0 overrides the check, see _cli_progress.py), each refresh
redraws the screen in place with ANSI codes (cursor home, each line cleared to its end, the rest of the
screen cleared; no curses), clipped to the terminal's size. Otherwise a plain block per refresh headed by
its time, or with --json one JSON object per line (Frame). Ctrl-C ends it with exit code 0, --count N
after N refreshes. A reading that fails once it has started (the server restarting) is shown as an error
and retried at the next refresh; the first must succeed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

import msgspec
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys
from ._cli_args import positive_int, whole_number
from ._cli_output import format_timestamp, stream_notes
from ._cli_progress import is_terminal
from ._connection import SyncClient, redact, resolve_url, sync_client
from ._wire import Steps, checked, run_steps_sync
from .exit_codes import OK, USAGE
from .inspect import GroupStatus, StreamStatus, status_sync
from .partitions import partition_streams, side_by_side

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
    "ConsumerView",
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

# ---------------------------------------------------------------------------------------------- what it shows


class ConsumerView(msgspec.Struct, kw_only=True):
    name: str
    pending: int  # entries it holds, in the stream and the retry stream (and every partition)
    idle_ms: int  # since it last read or claimed: the least of XINFO CONSUMERS' idle over the streams
    inactive_ms: int | None = None  # since its last read that got entries (Redis >= 7.2); None: unknown


class GroupView(msgspec.Struct, kw_only=True):
    name: str
    consumers: int
    pending: int  # delivered, not yet settled (stream + retry stream)
    oldest_pending_id: str | None  # the smallest id pending (P/ID for a partition's); None: nothing pending
    oldest_pending_age_ms: int | None  # server time minus that id's time
    lag: int | None  # entries not yet delivered (None when the server cannot tell)
    lag_per_s: float | None  # the lag's change per second since the previous reading
    retries_waiting: int
    acked: int  # the group's counters, totals since it began
    retried: int
    dead: int
    acked_per_s: float | None
    retried_per_s: float | None
    dead_per_s: float | None
    consumer_details: list[ConsumerView]  # most recently active first


class StreamView(msgspec.Struct, kw_only=True):
    stream: str
    exists: bool
    key_type: str  # as StreamStatus.key_type: "stream", "none", or the type of the key in the way
    length: int
    dead_letters: int
    published: int | None  # entries ever added (XINFO STREAM entries-added); None: the server cannot tell
    published_per_s: float | None
    partitions: int | None  # the partition count of a partitioned stream (its figures are their sums)
    groups: list[GroupView]
    notes: list[str]  # pauses, what holds trimming back, delayed events: as `streamq status` says them


class Frame(msgspec.Struct, kw_only=True):
    """One refresh: what --json prints on a line of its own."""

    time_ms: int  # the server's time of this reading (Unix ms)
    interval_ms: int | None  # server time since the previous reading, the rates' denominator; None: first
    streams: list[StreamView]
    error: str | None = None  # the reading failed (it is retried at the next refresh); streams is empty


class _Extras(msgspec.Struct):
    """What a reading adds to a stream's status."""

    published: int | None
    oldest: dict[str, tuple[tuple[int, int], str]]  # group -> (order, shown id) of its oldest pending
    consumers: dict[str, list[ConsumerView]]  # group -> its consumers, merged over the streams


class Reading(msgspec.Struct):
    time_ms: int
    statuses: list[StreamStatus]
    extras: dict[str, _Extras]


# ---------------------------------------------------------------------------------------------- reading


def read(client: SyncClient, url: str, streams: Sequence[str] | None) -> Reading:
    """The streams' status and their extras, with the server's time."""
    # status_sync takes a plain client or a URL: a cluster's per-slot clients are made again from the URL.
    statuses = status_sync(client if isinstance(client, redis.Redis) else url, list(streams or []) or None)
    time_ms, extras = run_steps_sync(client, _extras_of(statuses))
    return Reading(time_ms, statuses, extras)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _absent(reply: Any) -> bool:
    """A reply saying the group or its stream is not there (a retry stream made at the group's first retry,
    a partition the group has not reached): nothing to show. Any other error is raised."""
    if isinstance(reply, ResponseError):
        text = str(reply)
        if text.startswith("NOGROUP") or "no such key" in text:
            return True
        raise reply
    return False


def _extras_of(statuses: list[StreamStatus]) -> Steps[tuple[int, dict[str, _Extras]]]:
    shown = [st for st in statuses if st.exists]
    readers: list[Steps[Any]] = [_server_time(), *(_stream_extras(st) for st in shown)]
    found = yield from side_by_side(readers)
    extras = {st.stream: extra for st, extra in zip(shown, found[1:], strict=True)}
    for st in statuses:
        if st.key_type == "none":  # no such stream (yet): nothing added, so its first entries make a rate
            extras[st.stream] = _Extras(0, {}, {})
    return found[0], extras


def _server_time() -> Steps[int]:
    ((seconds, micros),) = checked((yield [("TIME",)]))
    return int(seconds) * 1000 + int(micros) // 1000


def _stream_extras(st: StreamStatus) -> Steps[_Extras]:
    names = [st.stream] if st.partitions is None else partition_streams(st.stream, st.partitions)
    groups = [g.name for g in st.groups]
    parts = yield from side_by_side([_part_extras(name, groups) for name in names])
    published = [part.published for part in parts]
    merged = _Extras(None if None in published else sum(p or 0 for p in published), {}, {})
    for index, part in enumerate(parts):
        for group, (order, entry_id) in part.oldest.items():
            shown = entry_id if st.partitions is None else f"{index}/{entry_id}"
            if group not in merged.oldest or order < merged.oldest[group][0]:
                merged.oldest[group] = (order, shown)
    for group in groups:
        merged.consumers[group] = _merged_consumers(
            c for part in parts for c in part.consumers.get(group, [])
        )
    return merged


def _part_extras(stream: str, groups: list[str]) -> Steps[_Extras]:
    """One stream's (a plain one, or a partition): entries added, and per group its oldest pending entry
    and its consumers, in one round trip."""
    commands: list[tuple[Any, ...]] = [("XINFO STREAM", stream)]
    for group in groups:
        retry = keys.retry_key(stream, group)
        commands += [
            ("XPENDING", stream, group), ("XPENDING", retry, group),
            ("XINFO CONSUMERS", stream, group), ("XINFO CONSUMERS", retry, group),
        ]  # fmt: skip
    replies = yield commands
    info = replies[0]
    if _absent(info):
        published: int | None = 0  # a partition nothing was ever published to
    else:
        added = info.get("entries-added")  # Redis >= 7.0, Valkey
        published = None if added is None else int(added)
    extras = _Extras(published, {}, {})
    for n, group in enumerate(groups):
        pending, retry_pending, consumers, retry_consumers = replies[1 + 4 * n : 5 + 4 * n]
        oldest = [
            _s(summary["min"])
            for summary in (pending, retry_pending)
            if not _absent(summary) and summary.get("min") is not None
        ]
        if oldest:
            first = min(oldest, key=_id_order)
            extras.oldest[group] = (_id_order(first), first)
        extras.consumers[group] = [
            _consumer(c) for reply in (consumers, retry_consumers) if not _absent(reply) for c in reply
        ]
    return extras


def _consumer(info: dict[str, Any]) -> ConsumerView:
    inactive = info.get("inactive")  # Redis >= 7.2, Valkey
    return ConsumerView(
        name=_s(info["name"]), pending=int(info["pending"]), idle_ms=int(info["idle"]),
        inactive_ms=int(inactive) if inactive is not None else None,
    )  # fmt: skip


def _merged_consumers(seen: Iterable[ConsumerView]) -> list[ConsumerView]:
    """One row per consumer name (a worker keeps its name on the retry stream and every partition):
    entries held added up, idle the least (its latest read anywhere), most recently active first."""
    by_name: dict[str, ConsumerView] = {}
    for c in seen:
        known = by_name.get(c.name)
        if known is None:
            by_name[c.name] = msgspec.structs.replace(c)
            continue
        known.pending += c.pending
        known.idle_ms = min(known.idle_ms, c.idle_ms)
        if c.inactive_ms is not None:
            known.inactive_ms = (
                c.inactive_ms if known.inactive_ms is None else min(known.inactive_ms, c.inactive_ms)
            )
    return sorted(by_name.values(), key=lambda c: (c.idle_ms, c.name))


# ---------------------------------------------------------------------------------------------- rates


def _rate(
    now: int | None, before: int | None, interval_ms: int | None, *, signed: bool = False
) -> float | None:
    """The change per second; None without a previous figure, or for a counter that went down."""
    if now is None or before is None or not interval_ms or interval_ms <= 0:
        return None
    if now < before and not signed:
        return None
    return (now - before) * 1000 / interval_ms


def frame(previous: Reading | None, current: Reading) -> Frame:
    """What one refresh shows: the current reading, with rates from the previous one (if any)."""
    interval_ms = current.time_ms - previous.time_ms if previous is not None else None
    before = {st.stream: st for st in previous.statuses} if previous is not None else {}
    before_extras = previous.extras if previous is not None else {}
    views = []
    for st in current.statuses:
        extras = current.extras.get(st.stream, _Extras(None, {}, {}))
        was = before.get(st.stream)
        was_groups = {g.name: g for g in was.groups} if was is not None else {}
        was_published = before_extras[st.stream].published if st.stream in before_extras else None
        view = StreamView(
            stream=st.stream, exists=st.exists, key_type=st.key_type, length=st.length,
            dead_letters=st.dead_letters, published=extras.published,
            published_per_s=_rate(extras.published, was_published, interval_ms), partitions=st.partitions,
            groups=[_group_view(g, was_groups.get(g.name), extras, current.time_ms, interval_ms)
                    for g in st.groups],
            notes=[note for note in stream_notes(st) if not note.startswith("totals:")],
        )  # fmt: skip
        views.append(view)
    return Frame(time_ms=current.time_ms, interval_ms=interval_ms, streams=views)


def _group_view(
    g: GroupStatus, old: GroupStatus | None, extras: _Extras, time_ms: int, interval_ms: int | None
) -> GroupView:
    def per_s(counter: str) -> float | None:
        return _rate(g.stats.get(counter, 0), old.stats.get(counter, 0) if old else None, interval_ms)

    oldest = extras.oldest.get(g.name)
    return GroupView(
        name=g.name, consumers=g.consumers, pending=g.pending,
        oldest_pending_id=oldest[1] if oldest else None,
        oldest_pending_age_ms=max(time_ms - oldest[0][0], 0) if oldest else None,
        lag=g.lag, lag_per_s=_rate(g.lag, old.lag if old else None, interval_ms, signed=True),
        retries_waiting=g.retries_waiting,
        acked=g.stats.get("acked", 0), retried=g.stats.get("retried", 0), dead=g.stats.get("dead", 0),
        acked_per_s=per_s("acked"), retried_per_s=per_s("retried"), dead_per_s=per_s("dead"),
        consumer_details=extras.consumers.get(g.name, []),
    )  # fmt: skip


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
