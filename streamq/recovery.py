"""Crash recovery that never takes entries from a live worker.

Two halves:
- LeaseKeeper: while a batch is in flight, a thread resets the idle time of its entries every third of the
  lease (XCLAIM to itself with JUSTID, fenced by ownership). A thread, not a task, so a handler that hogs
  the event loop still keeps its lease; a process that is killed or stopped (SIGSTOP) stops renewing and
  its entries become reclaimable after lease_ms, as they should.
- Reclaimer: each consumer periodically runs XAUTOCLAIM with min-idle = lease_ms on its stream and its
  retry stream, following the cursor to 0-0 across ticks, a bounded number of entries per tick. Entries
  deleted or trimmed while pending are acknowledged and logged. There is no external lock: XAUTOCLAIM's
  idle check is atomic, so a crash can leave nothing held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog

from . import _wire
from .errors import describe_error

log = structlog.get_logger("streamq.recovery")


class Hold:
    """Entries of one stream key held by one consumer while their batch is processed."""

    __slots__ = ("consumer", "group", "ids", "key", "lost", "next_due", "renew_every_s")

    def __init__(
        self, key: str, group: str, consumer: str, ids: Sequence[bytes], renew_every_ms: int
    ) -> None:
        self.key = key
        self.group = group
        self.consumer = consumer
        self.ids = list(ids)
        self.renew_every_s = renew_every_ms / 1000
        self.next_due = time.monotonic() + self.renew_every_s
        self.lost: set[bytes] = set()


class LeaseKeeper:
    """One thread per process renewing every Hold that is registered with it."""

    POLL_S = 0.05

    def __init__(self, make_client: Callable[[], redis.Redis]) -> None:
        self._make_client = make_client
        self._holds: set[Hold] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.failures = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="streamq-lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)

    def hold(self, key: str, group: str, consumer: str, ids: Sequence[bytes], renew_every_ms: int) -> Hold:
        held = Hold(key, group, consumer, ids, renew_every_ms)
        with self._lock:
            self._holds.add(held)
        return held

    def release(self, held: Hold) -> None:
        with self._lock:
            self._holds.discard(held)

    def _run(self) -> None:
        client: redis.Redis | None = None
        try:
            while not self._stop.wait(self.POLL_S):
                now = time.monotonic()
                with self._lock:
                    due = [h for h in self._holds if h.next_due <= now]
                if not due:
                    continue
                if client is None:
                    client = self._make_client()
                for held in due:
                    self._renew(client, held)
        finally:
            if client is not None:
                client.close()

    def _renew(self, client: redis.Redis, held: Hold) -> None:
        try:
            lost = _wire.renew_sync(client, held.key, held.group, held.consumer, held.ids)
        except (redis.exceptions.RedisError, OSError) as exc:
            # Try again soon: one failed renewal leaves two thirds of the lease.
            self.failures += 1
            held.next_due = time.monotonic() + min(0.2, held.renew_every_s)
            log.warning(
                "lease renewal failed",
                key=held.key,
                group=held.group,
                consumer=held.consumer,
                entries=len(held.ids),
                error=describe_error(exc),
            )
            return
        self.renewals += 1
        held.next_due = time.monotonic() + held.renew_every_s
        if lost:
            fresh = set(lost) - held.lost
            held.lost.update(lost)
            if fresh:
                log.warning(
                    "lease lost: entries were reclaimed by another worker",
                    key=held.key,
                    group=held.group,
                    consumer=held.consumer,
                    entry_ids=_ids(fresh),
                )


class Reclaimer:
    """XAUTOCLAIM state of one consumer: cursor per stream key, and when the next scan is due."""

    def __init__(
        self, keys: Sequence[str], group: str, consumer: str, *, lease_ms: int, every_ms: int, count: int
    ) -> None:
        self.keys = list(keys)
        self.group = group
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.every_s = every_ms / 1000
        self.count = count
        self._cursors: dict[str, bytes] = {key: b"0-0" for key in self.keys}
        self._scanning: set[str] = set()
        self.next_due = 0.0  # scan at once on start: a restarted worker's dead predecessor may hold entries

    def due(self) -> bool:
        return bool(self._scanning) or time.monotonic() >= self.next_due

    def ms_until_due(self) -> int:
        if self._scanning:
            return 0
        return max(0, int((self.next_due - time.monotonic()) * 1000))

    async def step(self, link: _wire.Link) -> list[_wire.Claimed]:
        """Claim at most `count` entries per key; the scan resumes where it stopped on the next call."""
        if not self._scanning:
            self._scanning = set(self.keys)
        out: list[_wire.Claimed] = []
        for key in list(self._scanning):
            claimed = await _wire.autoclaim(
                link, key, self.group, self.consumer,
                min_idle_ms=self.lease_ms, cursor=self._cursors[key], count=self.count,
            )  # fmt: skip
            if claimed.cursor in (b"0-0", b"0"):
                self._cursors[key] = b"0-0"
                self._scanning.discard(key)
            else:
                self._cursors[key] = claimed.cursor
            if claimed.batch.ids or claimed.deleted:
                out.append(claimed)
        if not self._scanning:
            self.next_due = time.monotonic() + self.every_s
        return out

    @property
    def scanning(self) -> bool:
        return bool(self._scanning)


def _ids(ids: Any) -> list[str]:
    return sorted(_wire.decode_id(i) for i in ids)[:50]
