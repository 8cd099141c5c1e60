"""Warning that `maxlen=` trimming dropped entries, which a lagging group may never have read.

The publish script counts what each chunk's trimming dropped (and adds it to the stream's
`dropped_by_maxlen` total); this module turns those counts into log lines a person can act on.
"""

from __future__ import annotations

import threading
import time

import structlog

# The producer's logger name, which these warnings have always carried: log filters keyed on it still match.
log = structlog.get_logger("streamq.producer")

# Trimming that drops entries warns at most this often per stream, with the count since the last warning:
# a producer at its cap drops on nearly every call, and one line per call would drown the log.
DROP_WARNING_EVERY_S = 10.0


class DropLog:
    """Warns of entries dropped by maxlen, at most once per DROP_WARNING_EVERY_S per stream. Thread-safe."""

    def __init__(self) -> None:
        self._owed: dict[str, tuple[float, int]] = {}  # stream -> (last warning, dropped since)
        self._lock = threading.Lock()

    def add(self, stream: str, dropped: int) -> None:
        if dropped <= 0:
            return
        now = time.monotonic()
        with self._lock:
            last, owed = self._owed.get(stream, (-DROP_WARNING_EVERY_S, 0))
            owed += dropped
            if now - last < DROP_WARNING_EVERY_S:
                self._owed[stream] = (last, owed)
                return
            self._owed[stream] = (now, 0)
        log.warning(
            "maxlen trimming dropped entries, delivered or not", stream=stream, dropped=owed,
            hint="entries a lagging group had not read are lost; raise maxlen or let retention trim",
        )  # fmt: skip
