"""The `streamq` command: run workers, inspect streams, manage dead letters, and run the demo.

`main(argv) -> int` is the whole interface: it parses the arguments, configures logging (the only place
streamq does), runs one command and returns one of the exit codes (defined in exit_codes.py). It never
calls sys.exit, so the tests call it in-process; `streamq` (the console script) and `python -m streamq`
wrap it.

Global options may come before or after the command (`streamq --redis-url URL status` and
`streamq status --redis-url URL` both work), because that is how people type them.

The tables and JSON output are in _cli_output.py, the help texts in _cli_help.py. The inspecting commands
use the blocking API (status_sync, SyncDeadLetters): one command, one connection, no event loop.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import (
    __version__,
    _cli_control,
    _cli_dashboard,
    _cli_inspect,
    _cli_publish,
    _cli_retention,
    _cli_scheduled,
)
from ._cli_args import positive_int
from ._cli_help import (
    DEMO_EPILOG,
    DLQ_EPILOG,
    DLQ_LIST_EPILOG,
    DLQ_PURGE_EPILOG,
    DLQ_REPLAY_EPILOG,
    DLQ_SHOW_EPILOG,
    EPILOG,
    STATUS_EPILOG,
    WORKER_EPILOG,
)
from ._cli_output import (
    ERROR_COLUMN_WIDTH,
    SHOW_FIELD_BYTES,
    dead_letter_json,
    describe_page,
    describe_result,
    format_dead_letter,
    format_dead_letters,
    format_status,
    format_table,
    print_json,
)
from ._cli_progress import ProgressLine
from ._cli_watch import add_top_command, add_watch_options, cmd_watch
from ._connection import ENV_URL, redact, resolve_url
from ._logs import DEFAULT_LEVEL, LEVELS, configure_logging
from ._pool import run_pool
from .app import App, run_app
from .deadletter import DEFAULT_LIMIT, DeadLetterResult, SyncDeadLetters, check_ref
from .errors import AppLoadError, ConfigurationError, StreamqError, connection_failure
from .exit_codes import ABANDONED, FAILURE, INTERRUPTED, OK, USAGE
from .inspect import status_sync

# What other code imports from here. The exit codes (exit_codes.py), AppLoadError (errors.py) and the
# formatters (_cli_output.py) are re-exported: scripts and tests import the codes from here, the demo
# format_dead_letters.
__all__ = [
    "ABANDONED",
    "ERROR_COLUMN_WIDTH",
    "FAILURE",
    "INTERRUPTED",
    "OK",
    "USAGE",
    "AppLoadError",
    "build_parser",
    "format_dead_letters",
    "format_status",
    "format_table",
    "load_app",
    "main",
]

DEFAULT_DEMO_EVENTS = 20_000

log = structlog.get_logger("streamq.cli")

# ---------------------------------------------------------------------------------------------- parser


def _global_options(parser: argparse.ArgumentParser, *, on_command: bool) -> None:
    # On a command's parser the defaults are SUPPRESS, so an option left out there does not overwrite the
    # value given before the command.
    default: Any = argparse.SUPPRESS if on_command else None
    parser.add_argument(
        "--redis-url", metavar="URL", default=default,
        help=f"Redis URL: redis://, rediss://, unix://, or redis+cluster://host:port for a Redis Cluster "
        f"(default: ${ENV_URL}, else redis://localhost:6379/0)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=default if on_command else DEFAULT_LEVEL,
        help=f"least severe log level shown (default: {DEFAULT_LEVEL})",
    )
    style = parser.add_mutually_exclusive_group()
    style.add_argument(
        "--log-json",
        dest="log_json",
        action="store_const",
        const=True,
        default=default,
        help="log JSON lines (the default when stderr is not a terminal)",
    )
    style.add_argument(
        "--log-console",
        dest="log_json",
        action="store_const",
        const=False,
        default=default,
        help="log for people (the default on a terminal)",
    )


def _processes(text: str) -> int:
    """`--processes`: a whole number of at least 1, or `auto` (one per core)."""
    if text == "auto":
        return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return port


def _dlq_id(text: str) -> str:
    try:
        return check_ref(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, on_command=True)

    def command(
        group: Any, name: str, help_text: str, epilog: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        sub.set_defaults(run=run, command_parser=sub)
        return sub

    parser = argparse.ArgumentParser(
        prog="streamq", description="Durable event-batch processing on Redis Streams.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _global_options(parser, on_command=False)
    parser.add_argument("--version", action="version", version=f"streamq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = command(commands, "worker", "run an app's consumers", WORKER_EPILOG, cmd_worker)
    worker.add_argument("app", metavar="APP_PATH", help="module:attribute of a streamq.App")
    worker.add_argument("--burst", action="store_true", help="exit once drained and nothing is pending")
    worker.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop, not uvloop")
    worker.add_argument(
        "--connect-timeout-ms", metavar="N", type=positive_int, default=None,
        help="how long to wait for an unreachable server at start"
        " (default: the app's setting, else 30000 with --burst and for ever without)",
    )  # fmt: skip
    worker.add_argument(
        "--processes", metavar="N", type=_processes, default=1,
        help="run N worker processes under a supervisor that restarts them; auto: one per core"
        " (default: 1, this process alone, no supervisor)",
    )  # fmt: skip
    worker.add_argument(
        "--metrics-port", metavar="PORT", type=_port, default=None,
        help="serve /metrics (Prometheus), /healthz and /readyz on PORT (needs streamq[metrics]); with"
        " --processes N, child i serves PORT + i (0: each picks a free port)",
    )  # fmt: skip
    worker.add_argument(
        "--metrics-host", metavar="HOST", default=None,
        help="the address the metrics port listens on (default: the app's setting, else 0.0.0.0)",
    )  # fmt: skip

    about = "show streams, groups, lag, pending and dead letters"
    show_status = command(commands, "status", about, STATUS_EPILOG, cmd_status)
    show_status.add_argument("streams", metavar="STREAM", nargs="*", help="default: every known stream")
    show_status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show_status.add_argument(
        "--partitions", action="store_true",
        help="also show each partition of a partitioned stream, under the stream's added-up figures",
    )  # fmt: skip
    add_watch_options(show_status, with_switch=True)
    add_top_command(commands, command)  # `streamq top`: the same as `status --watch`

    dlq = commands.add_parser(
        "dlq",
        parents=[common],
        help="list, show, replay or purge dead letters",
        description="List, show, replay or purge dead letters.",
        epilog=DLQ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="action", metavar="ACTION", required=True)
    about = "list a stream's dead letters, oldest first"
    listing = command(actions, "list", about, DLQ_LIST_EPILOG, cmd_dlq_list)
    listing.add_argument("stream", metavar="STREAM")
    listing.add_argument("--group", metavar="G", help="only this group's dead letters")
    listing.add_argument(
        "--limit", metavar="N", type=positive_int, default=DEFAULT_LIMIT,
        help=f"show at most N (default: {DEFAULT_LIMIT})",
    )  # fmt: skip
    # --limit's former name, kept so that scripts written for it still work.
    listing.add_argument("--count", dest="limit", type=positive_int, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)  # fmt: skip
    listing.add_argument(
        "--after", metavar="DLQ_ID", type=_dlq_id,
        help="start after this dead letter (the `--after` printed under the previous page;"
        " P/DLQ_ID for a partitioned stream)",
    )  # fmt: skip
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = command(actions, "show", "show every field of one dead letter", DLQ_SHOW_EPILOG, cmd_dlq_show)
    show.add_argument("stream", metavar="STREAM")
    show.add_argument(
        "dlq_id", metavar="DLQ_ID", type=_dlq_id,
        help="its id in the dead-letter stream (see `dlq list`); P/ID for a partitioned stream",
    )  # fmt: skip
    show.add_argument(
        "--full", action="store_true",
        help=f"print every field whole (default: the first {SHOW_FIELD_BYTES} bytes of each)",
    )  # fmt: skip
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    about = "send dead letters back to their group for fresh attempts"
    replay = command(actions, "replay", about, DLQ_REPLAY_EPILOG, cmd_dlq_replay)
    replay.add_argument("stream", metavar="STREAM")
    replay.add_argument(
        "ids", metavar="DLQ_ID", nargs="*", type=_dlq_id, help="dead letters to replay (P/ID: of partition P)"
    )
    replay.add_argument("--all", action="store_true", help="replay every dead letter of the stream")
    replay.add_argument("--group", metavar="G", help="only this group's dead letters")
    replay.add_argument("--json", action="store_true", help="print what was done as JSON")
    purge = command(actions, "purge", "delete dead letters for good", DLQ_PURGE_EPILOG, cmd_dlq_purge)
    purge.add_argument("stream", metavar="STREAM")
    purge.add_argument(
        "ids", metavar="DLQ_ID", nargs="*", type=_dlq_id, help="dead letters to delete (P/ID: of partition P)"
    )
    purge.add_argument("--all", action="store_true", help="delete all of the stream's (with --yes)")
    purge.add_argument("--yes", action="store_true", help="confirm --all")
    purge.add_argument("--json", action="store_true", help="print what was done as JSON")

    # Retention (trim, group delete), delayed events (scheduled list|cancel), pause and resume.
    _cli_retention.add_commands(commands, command, common)
    _cli_scheduled.add_commands(commands, command)
    _cli_control.add_commands(commands, command)
    _cli_dashboard.add_commands(commands, command)  # the web dashboard
    _cli_inspect.add_commands(commands, command)  # where one event is
    _cli_publish.add_commands(commands, command)  # events from JSON

    about = "publish, crash a worker, recover, and account for every event"
    demo = command(commands, "demo", about, DEMO_EPILOG, cmd_demo)
    demo.add_argument(
        "--events",
        metavar="N",
        type=positive_int,
        default=DEFAULT_DEMO_EVENTS,
        help=f"order events to publish (default: {DEFAULT_DEMO_EVENTS})",
    )
    demo.add_argument("--producer-only", action="store_true", help="only publish the events, then exit")
    return parser


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else USAGE
    configure_logging(args.log_level, args.log_json)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return INTERRUPTED
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _fail(connection_failure(exc, redact(resolve_url(args.redis_url))))
    except (StreamqError, RedisError) as exc:
        return _fail(str(exc))
    return code


def _fail(message: str) -> int:
    print(f"streamq: error: {redact(message)}", file=sys.stderr)
    return FAILURE


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.command_parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return USAGE


# ---------------------------------------------------------------------------------------------- worker


def load_app(path: str) -> App:
    """Import `module:attribute` (dots allowed in both) with the current directory on sys.path."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"APP_PATH must look like module:attribute (e.g. myapp.workers:app), got {path!r}")
    # `python -m` puts the current directory on sys.path, the `streamq` script does not: do it for both.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the named module being absent is the user's typo; a missing import inside it is a real error.
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        raise AppLoadError(f"cannot import {module_name!r}: {exc} (searched from {cwd})") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise AppLoadError(f"{path}: {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, App):
        raise AppLoadError(f"{path} is a {type(target).__name__}, not a streamq.App")
    return target


def cmd_worker(args: argparse.Namespace) -> int:
    if args.processes > 1:
        # The supervisor loads no user code: each child loads the app itself, as a single worker does.
        log.info("worker pool starting", app=args.app, processes=args.processes, burst=args.burst)
        return run_pool(
            _pool_child_argv(args), args.processes, burst=args.burst, slot_args=_metrics_port_of_slot(args)
        )
    try:
        app = load_app(args.app)
    except AppLoadError as exc:
        return _usage(args, str(exc))
    except Exception:  # the user's module failed on import: log its traceback, exit 1
        log.exception("importing the app failed", app=args.app)
        return FAILURE
    if app.redis is None:
        app.redis = resolve_url(args.redis_url)
    elif args.redis_url is not None:
        log.warning("the app was built with its own Redis: --redis-url is ignored", app=args.app)
    if args.metrics_port is not None or args.metrics_host is not None:
        observability = {"metrics_port": args.metrics_port, "metrics_host": args.metrics_host}
        app.settings = msgspec.structs.replace(
            app.settings, **{name: value for name, value in observability.items() if value is not None}
        )
    shown = redact(app.redis) if isinstance(app.redis, str) else "client given by the app"
    log.info("worker starting", app=args.app, redis=shown, consumers=len(app.specs), burst=args.burst)
    try:
        code = run_app(
            app, burst=args.burst, use_uvloop=not args.no_uvloop, connect_timeout_ms=args.connect_timeout_ms
        )
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return _fail(connection_failure(exc, shown))
    log.info("worker stopped", app=args.app, **app.counts())
    return code  # OK, ABANDONED or INTERRUPTED


def _pool_child_argv(args: argparse.Namespace) -> list[str]:
    """The command each child of a pool runs: this worker command with the options given, --processes
    left out. Built from the parsed options, not by editing argv, which may say `--proc 2` or
    `--processes=2`. A URL taken from the environment stays there (children inherit it), out of `ps`."""
    argv = [sys.executable, "-m", "streamq", "worker", args.app, "--log-level", args.log_level]
    if args.redis_url is not None:
        argv += ["--redis-url", args.redis_url]
    if args.log_json is not None:
        argv.append("--log-json" if args.log_json else "--log-console")
    if args.burst:
        argv.append("--burst")
    if args.no_uvloop:
        argv.append("--no-uvloop")
    if args.connect_timeout_ms is not None:
        argv += ["--connect-timeout-ms", str(args.connect_timeout_ms)]
    if args.metrics_host is not None:
        argv += ["--metrics-host", args.metrics_host]
    return argv


def _metrics_port_of_slot(args: argparse.Namespace) -> Callable[[int], list[str]] | None:
    """One metrics port per child: slot i serves --metrics-port + i (a restarted child takes its slot's)."""
    base = args.metrics_port
    if base is None:
        return None
    if base + args.processes - 1 > 65_535:
        raise ConfigurationError(f"--metrics-port {base} + {args.processes} processes runs past port 65535")
    return lambda slot: ["--metrics-port", str(base + slot if base else 0)]


# ---------------------------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return cmd_watch(args)
    if args.interval_ms is not None or args.count is not None:
        return _usage(args, "--interval-ms and --count go with --watch")
    statuses = status_sync(resolve_url(args.redis_url), args.streams or None, per_partition=args.partitions)
    if args.json:
        print_json(statuses)
    elif not statuses:
        print("no streams: none has had a streamq worker yet (name streams to inspect them anyway)")
    else:
        print(format_status(statuses))
    return OK


# ---------------------------------------------------------------------------------------------- dlq


def _dead_letters(args: argparse.Namespace) -> SyncDeadLetters:
    return SyncDeadLetters(resolve_url(args.redis_url))


def cmd_dlq_list(args: argparse.Namespace) -> int:
    with _dead_letters(args) as dead:
        page = dead.page(args.stream, group=args.group, after=args.after, limit=args.limit)
    if args.json:
        print_json({
            "stream": args.stream, "group": args.group, "total": page.total, "scanned": page.scanned,
            "next_after": page.next_after,
            "dead_letters": [letter.to_dict(with_payload=False) for letter in page.letters],
        })  # fmt: skip
        return OK
    if page.letters:
        print(format_dead_letters(page.letters))
    else:
        where = f" in group {args.group}" if args.group else ""
        where += f" after {args.after}" if args.after else ""
        print(f"no dead letters for {args.stream}{where}")
    if page.total:
        # Under the table, on stderr: what is piped on is the table alone.
        more = f"streamq dlq list {args.stream}" + (f" --group {args.group}" if args.group else "")
        more += f" --limit {args.limit}" if args.limit != DEFAULT_LIMIT else ""
        for line in describe_page(page, args.stream, args.group, more):
            print(line, file=sys.stderr)
    return OK


def cmd_dlq_show(args: argparse.Namespace) -> int:
    with _dead_letters(args) as dead:
        letter = dead.show(args.stream, args.dlq_id)
    limit = None if args.full else SHOW_FIELD_BYTES
    if args.json:
        print_json(dead_letter_json(letter, limit))
    else:
        print(format_dead_letter(letter, limit))
    return OK


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == args.all:
        return _usage(args, "give DLQ_IDs or --all (one or the other)")
    # A progress line on stderr while it works, when stderr is a terminal (_cli_progress.py).
    with _dead_letters(args) as dead, ProgressLine(f"replaying dead letters of {args.stream}:") as line:
        result = dead.replay(
            args.stream, None if args.all else args.ids, group=args.group, progress=line.update
        )
    return _report(args, result, "replayed")


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    if bool(args.ids) == args.all:
        return _usage(args, "give DLQ_IDs or --all (one or the other)")
    if args.all and not args.yes:
        return _usage(args, f"--all deletes every dead letter of {args.stream} for good: confirm with --yes")
    with _dead_letters(args) as dead, ProgressLine(f"purging dead letters of {args.stream}:") as line:
        result = dead.purge(args.stream, None if args.all else args.ids, progress=line.update)
    return _report(args, result, "purged")


def _report(args: argparse.Namespace, result: DeadLetterResult, done: str) -> int:
    """Replay's and purge's report, one wording for both. FAILURE if an id given was not done, after
    everything that could be done was: not found, or (replay) left where it is. Not for --all, which
    leaves what cannot be replayed by design, and says so."""
    summary, not_found, left = describe_result(result, done)
    if args.json:
        print_json(result)
    else:
        print(summary)
    failed = bool(not_found) or (bool(args.ids) and bool(left))
    for line in not_found + left:
        print(f"streamq: {'error: ' if failed else ''}{line}", file=sys.stderr)
    return FAILURE if failed else OK


# ---------------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here: the demo imports this module's table formatters.
    from . import _demo as demo

    url = args.redis_url or os.environ.get(ENV_URL)
    return OK if demo.run(url, events=args.events, producer_only=args.producer_only) else FAILURE
