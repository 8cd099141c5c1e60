"""A progress line on stderr for long CLI work: replaying or purging thousands of dead letters, trimming.

Shown only when stderr is a terminal: redrawn in place (a carriage return, then the line, then "clear to
the end of the line") and erased when the work ends, so the report printed after it stands alone. Not on
a terminal (a pipe, a log file, a CI job) nothing is written at all: no stream of carriage returns in a log.
STREAMQ_TTY=1 (or 0) says stderr and stdout are terminals (or are not) whatever they seem: for terminals
that do not say so (some IDEs' consoles), and for tests.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

TTY_ENV = "STREAMQ_TTY"
REDRAW_EVERY_S = 0.1  # a progress line is redrawn at most this often (its last figures always are)
TICK_EVERY_S = 1.0  # a line for work that cannot be counted shows its elapsed time, redrawn this often
_ERASE_LINE = "\r\x1b[K"  # back to the start of the line, clear to its end


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal, unless STREAMQ_TTY says (1: it is, 0: it is not)."""
    forced = os.environ.get(TTY_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # not a file, or a closed one
        return False


class ProgressLine:
    """`what done/total (n%)` on one line of stderr, while the work goes on; see the module docstring.

    Pass `update` where a progress callback (done, total) goes; close() (or leaving the `with` block)
    erases the line.
    """

    def __init__(self, what: str, *, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.what = what
        self.shown = is_terminal(self.out)
        self._drawn_at: float | None = None
        self._lock = threading.Lock()  # working() draws from a thread of its own

    def update(self, done: int, total: int) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if done < total and self._drawn_at is not None and now - self._drawn_at < REDRAW_EVERY_S:
            return
        share = f" ({100 * done // total}%)" if total else ""
        self.draw(f"{self.what} {done}/{total}{share}", now)

    def draw(self, text: str, now: float | None = None) -> None:
        with self._lock:
            self.out.write(_ERASE_LINE + text)
            self.out.flush()
            self._drawn_at = time.monotonic() if now is None else now

    def close(self) -> None:
        with self._lock:
            if self._drawn_at is not None:
                self.out.write(_ERASE_LINE)
                self.out.flush()
                self._drawn_at = None

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def working(what: str, *, out: TextIO | None = None) -> Iterator[None]:
    """`what (N s)` on stderr while the block runs, for work done in one step that cannot be counted (a
    trim is one script on the server per stream); erased at the end. Nothing when stderr is no terminal."""
    line = ProgressLine(what, out=out)
    if not line.shown:
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while True:
            line.draw(f"{what} ({time.monotonic() - started:.0f} s)")
            if stop.wait(TICK_EVERY_S):
                return

    ticker = threading.Thread(target=tick, name="streamq-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        line.close()
