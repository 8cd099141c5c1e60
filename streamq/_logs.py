"""Logging for the command line: structlog set up once, by the CLI only.

The library logs through ``structlog.get_logger()`` and never configures anything, so an application that
embeds streamq keeps its own logging. The CLI calls ``configure_logging`` before running a command:

- a terminal gets structlog's console renderer (aligned, coloured); anything else (a pipe, a file,
  docker logs, journald) gets one JSON object per line, which log shippers parse without rules;
- timestamps are ISO 8601 in UTC, so lines from workers on different hosts sort together;
- every string value passes through ``connection.redact``, so a Redis URL with a password, wherever it
  appears (an option echoed back, an error message), is logged as ``redis://user:***@host``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from ._connection import redact

LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LEVEL = "info"


class _Stderr:
    """Writes to whatever sys.stderr is at the time of the write, not at configure time.

    Tests swap sys.stderr per test (capsys), and a logger built with the old object would write into a
    closed capture.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _redact_urls(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = redact(value)
    return event_dict


def wants_json(stream: TextIO | None = None) -> bool:
    """True unless ``stream`` (stderr by default) is a terminal."""
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return not (callable(isatty) and isatty())


def configure_logging(level: str = DEFAULT_LEVEL, json: bool | None = None) -> None:
    """Set structlog up for a CLI run: ``level`` and above, as JSON lines or for a console (None: JSON
    unless stderr is a terminal)."""
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    as_json = wants_json() if json is None else json
    renderer: Any
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks become a string field before redaction runs, so they are redacted too.
        exceptions: list[Any] = [structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=not wants_json())
        exceptions = []  # the console renderer formats exc_info itself, readably
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            *exceptions,
            _redact_urls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[name.upper()]),
        # WriteLogger, not PrintLogger: print() writes a line and its newline in two writes, so the
        # children of a process pool, sharing one stderr, interleaved their lines when they logged at
        # the same instant (as they do when the pool forwards a signal), and a log shipper lost both.
        # WriteLogger only calls write() and flush(), which _Stderr has, hence the ignore: it is no TextIO.
        logger_factory=structlog.WriteLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        # Not cached: a cached logger keeps the level it was first used with, and main() may run several
        # times in one process (the tests do). Workers log per batch, not per event, so this costs nothing.
        cache_logger_on_first_use=False,
    )
