"""`streamq publish STREAM --type TAG`: publish events given as JSON, for testing and operations.

cli.py calls add_commands(commands, command). The events are read whole and checked before anything is
published (an invalid line publishes nothing), then published with a SyncProducer, so delayed, dedup-keyed
and partitioned publishes behave as from code.

The JSON becomes an event of the class whose tag is TAG, found in the app (`--app module:app`: its
consumers' event types, then every Event class its modules define) or in a module (`--events module`),
and is validated by that class (msgspec: types, required fields). Without a class, `--raw` publishes the
JSON object as it is, encoded as the producer would encode an event of that tag (a msgpack map with the tag
under `type`), so workers decode it like any other event.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

import msgspec
import structlog

from ._cli_args import non_negative_int
from ._cli_output import print_json
from ._connection import resolve_url
from .errors import AppLoadError
from .events import Event, registered_event_types, tag_of
from .exit_codes import FAILURE, OK, USAGE
from .producer import SyncProducer

log = structlog.get_logger("streamq.cli")

CHUNK = 1_000  # events per publish call (the producer's own chunk size): ids are printed as each is done

PUBLISH_EPILOG = f"""\
The event's data is JSON: one object with --data, else read from stdin, either one object (it may span
lines) or JSON lines, one object per line. Each becomes an event of the class tagged TAG, found with
--app module:app (its consumers' event types, then every event class it imports) or --events module
(the event classes it defines or imports), and is checked by it: field types, required fields. A `type`
field, if given, must be TAG. Without a class, --raw publishes the object unchecked, encoded as an event
of that tag would be (workers decode it as they would the class's own).

Every event is read and checked before any is published: one invalid line publishes nothing (exit
{FAILURE}, naming the line and the field). A TAG no class has, or options that do not fit together, exit
{USAGE}. The ids are printed one per line as they are published (schedule ids for --delay/--at); --json
prints {{stream, ids, duplicates}} once all are.

examples:
  streamq publish orders --type order.placed --app myapp.workers:app --data '{{"order_id": 1, "cents": 999}}'
  jq -c '.[]' orders.json | streamq publish orders --type order.placed --events myapp.events
  streamq publish orders --type order.placed --events myapp.events --delay 60000 < event.json
  streamq publish orders --type order.placed --raw --dedup-key order-3:placed --data '{{"order_id": 3}}'
  streamq publish orders --type order.placed --raw --key customer-42 < event.json   (a partitioned stream)
"""


class InputError(Exception):
    """The JSON given cannot be published: which line (or --data) and why."""


def _at(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a timezone (2027-01-01T09:00:00+00:00 or ...Z), got {text!r}")
    return value


def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `publish` to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
    about = "publish events given as JSON (--data, or stdin: one object or JSON lines)"
    publish = command(commands, "publish", about, PUBLISH_EPILOG, cmd_publish)
    publish.add_argument("stream", metavar="STREAM")
    publish.add_argument("--type", metavar="TAG", required=True, dest="tag", help="the event's tag")
    source = publish.add_mutually_exclusive_group()
    source.add_argument("--app", metavar="MODULE:APP", help="find TAG's class in this streamq.App")
    source.add_argument("--events", metavar="MODULE", help="find TAG's class in this module")
    source.add_argument("--raw", action="store_true", help="publish the JSON unchecked, with TAG as its type")
    publish.add_argument("--data", metavar="JSON", help="the event as one JSON object (default: stdin)")
    when = publish.add_mutually_exclusive_group()
    when.add_argument("--delay", metavar="MS", type=non_negative_int, help="deliver after MS milliseconds")
    when.add_argument("--at", metavar="TIME", type=_at, help="deliver at an ISO 8601 time with a timezone")
    publish.add_argument(
        "--dedup-key",
        metavar="K",
        help="publish once per key within the producer's dedup TTL (one event only)",
    )
    publish.add_argument("--key", metavar="K", help="partition key, for a partitioned stream")
    publish.add_argument("--json", action="store_true", help="print {stream, ids, duplicates} as JSON")


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        decode = _decoder(args)
    except (AppLoadError, LookupError) as exc:
        return _usage(args, str(exc))
    except Exception:  # the user's module failed on import: its traceback, exit 1 (as `streamq worker`)
        log.exception("importing the event classes failed", app=args.app, events=args.events)
        return FAILURE
    if args.data is None and sys.stdin.isatty():
        print("streamq: reading JSON from stdin (end with Ctrl-D)", file=sys.stderr)
    text = args.data if args.data is not None else sys.stdin.read()
    try:
        events = [decode(data, where) for data, where in _objects(text, args.data is not None)]
    except InputError as exc:
        print(f"streamq: error: {exc}; nothing was published", file=sys.stderr)
        return FAILURE
    if not events:
        return _usage(args, "no event given: pass --data JSON, or JSON on stdin")
    if args.dedup_key is not None and len(events) > 1:
        return _usage(args, f"--dedup-key names one event, and {len(events)} were given")
    ids: list[str] = []
    duplicates: list[str] = []
    with SyncProducer(resolve_url(args.redis_url)) as producer:
        for start in range(0, len(events), CHUNK):
            chunk = events[start : start + CHUNK]
            results = producer.publish_many_results(
                args.stream, chunk, delay_ms=args.delay, at=args.at,
                dedup_key=None if args.dedup_key is None else [args.dedup_key],
                key=None if args.key is None else [args.key] * len(chunk),
            )  # fmt: skip
            for result in results:
                ids.append(result.id)
                if result.duplicate:
                    duplicates.append(result.id)
                if not args.json:
                    print(result.id, flush=True)
    if args.json:
        print_json({"stream": args.stream, "ids": ids, "duplicates": duplicates})
    else:
        dup = f" ({len(duplicates)} duplicate dedup keys: nothing appended for those)" if duplicates else ""
        print(f"published {len(ids)} events to {args.stream}{dup}", file=sys.stderr)
    return OK


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.command_parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return USAGE


def _objects(text: str, from_option: bool) -> list[tuple[bytes, str]]:
    """The JSON objects given, each with where it came from (for errors): the whole text when it is one
    JSON value, else one per non-empty line."""
    data = text.encode()
    if from_option:
        return [(data, "--data")]
    if not data.strip():
        return []
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        pass
    else:
        return [(data, "stdin")]
    return [(line, f"line {n}") for n, line in enumerate(data.splitlines(), 1) if line.strip()]


# ---------------------------------------------------------------------------------------------- classes


def _decoder(args: argparse.Namespace) -> Callable[[bytes, str], Event]:
    """A function from one JSON object to the event to publish; raises LookupError for a TAG no class
    has, AppLoadError for an --app or --events that does not load."""
    if args.raw:
        return functools.partial(_raw_event, args.tag)
    if args.app is None and args.events is None:
        raise LookupError(
            f"give the class of {args.tag!r} to check the JSON by (--app module:app or --events module),"
            " or --raw to publish it unchecked"
        )
    candidates = _app_types(args.app, args.stream) if args.app else _module_types(args.events)
    found = [cls for cls in candidates if _tag(cls) == args.tag]
    if not found:
        known = sorted({tag for cls in candidates if (tag := _tag(cls)) is not None})
        where = args.app or args.events
        raise LookupError(
            f"no event class tagged {args.tag!r} in {where} (tags there: {', '.join(known) or 'none'})"
        )
    return functools.partial(_typed_event, found[0])


def _tag(cls: type[Event]) -> str | None:
    try:
        return tag_of(cls)
    except Exception:  # an untagged class, or one inheriting its parent's tag: not publishable
        return None


def _app_types(path: str, stream: str) -> list[type[Event]]:
    """The event types of the app's consumers of `stream` first, then every Event class defined."""
    from .cli import load_app  # cli imports this module

    app = load_app(path)
    own: list[type[Event]] = []
    for settings, handlers in app.specs:
        if settings.stream == stream:
            for spec in handlers.specs:
                own += spec.event_types or []
    return list(dict.fromkeys([*own, *registered_event_types()]))


def _module_types(name: str) -> list[type[Event]]:
    """The Event classes of module `name` first, then every other one it made known by importing it."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `streamq worker` does
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise
        raise AppLoadError(f"cannot import {name!r}: {exc} (searched from {cwd})") from None
    every = registered_event_types()
    return [*(c for c in every if c.__module__ == name), *(c for c in every if c.__module__ != name)]


def _typed_event(cls: type[Event], data: bytes, where: str) -> Event:
    try:
        event: Event = msgspec.json.decode(data, type=cls)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InputError(f"{where}: not a valid {_tag(cls)} event ({cls.__qualname__}): {exc}") from None
    return event


# ---------------------------------------------------------------------------------------------- --raw


def _raw_event(tag: str, data: bytes, where: str) -> Event:
    """The JSON object as an event of `tag`: an Event class made for its field names (kept by their JSON
    names whatever they are), so the producer encodes it as a msgpack map, tag first under `type`."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise InputError(f"{where}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if "type" in value:
        if value["type"] != tag:
            raise InputError(f"{where}: its `type` is {value['type']!r}, not --type {tag!r}")
        del value["type"]
    cls = _raw_class(tag, tuple(value))
    return cls(*value.values())


@functools.cache
def _raw_class(tag: str, names: Sequence[str]) -> type[Event]:
    # Python names f0, f1, ... (any JSON name is allowed), renamed to the JSON names on the wire. One class
    # per tag and field names, made once: each is an Event subclass for the rest of the process.
    fields = [(f"f{n}", Any) for n in range(len(names))]
    rename = {f"f{n}": name for n, name in enumerate(names)}
    made = msgspec.defstruct(
        f"Raw_{len(names)}", fields, bases=(Event,), tag=tag, tag_field="type", rename=rename
    )
    return cast("type[Event]", made)  # defstruct is typed as making a Struct; its base is Event
