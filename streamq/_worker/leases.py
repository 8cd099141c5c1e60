"""Leases: a thread that keeps in-flight entries from being reclaimed while their worker is alive.

While entries are held (read, being handled, being settled), the keeper renews them every third of the
lease: XCLAIM to their holder with JUSTID, fenced by ownership. A thread, not a task, so a handler that
hogs the event loop still keeps its lease; a process that is killed or stopped (SIGSTOP) stops renewing
and its entries become reclaimable after lease_ms, as they should.

A hold is taken the moment entries are asked for, not when the worker gets round to parsing the reply:
a read-ahead's reply may wait in the socket while the batch before it is handled. Until its ids are known,
such a hold (`ids=None`) renews everything its consumer holds on that key after the last id it had read there
(`after`): the entries read before have holds of their own.

The keeper is supervised: an error it does not expect is logged, counted, and the thread goes on with a
new client after a backoff. Once it has failed MAX_FAILURES_IN_A_ROW times in a row, leases can no longer
be trusted: it reports WorkerFailed through `on_fatal`, and the worker stops rather than let live work be
duplicated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog

from .. import _wire
from .._connection import SyncClient, for_key_sync
from ..errors import WorkerFailed, describe_error

log = structlog.get_logger("streamq.leases")

POLL_S = 0.05
MAX_FAILURES_IN_A_ROW = 8  # unexpected errors in a row before the keeper gives up (about 10 s of backoff)
MAX_BACKOFF_S = 2.0
# Entries renewed per key by a hold whose ids are not known yet: a read-ahead (at most MAX_BATCH_SIZE), and
# as many again left unparsed by a read-ahead whose reply was lost.
HELD_RENEW_LIMIT = 20_000


class Hold:
    """Entries of one stream key held by one consumer while their batch is processed.

    `ids=None`: entries asked for whose ids are not known yet; every entry the consumer holds after id
    `after` (None: from the start) is renewed.
    """

    __slots__ = ("after", "consumer", "group", "ids", "key", "lost", "next_due", "renew_every_s")

    def __init__(
        self,
        key: str,
        group: str,
        consumer: str,
        ids: Sequence[bytes] | None,
        renew_every_ms: int,
        after: bytes | None = None,
    ) -> None:
        self.key = key
        self.after = after
        self.group = group
        self.consumer = consumer
        self.ids = list(ids) if ids is not None else None
        self.renew_every_s = renew_every_ms / 1000
        self.next_due = time.monotonic() + self.renew_every_s
        self.lost: set[bytes] = set()


class LeaseKeeper:
    """One thread per process renewing every Hold registered with it."""

    def __init__(
        self,
        make_client: Callable[[], SyncClient],
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._make_client = make_client
        self._on_fatal = on_fatal
        self._holds: set[Hold] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.failures = 0  # renewals that failed (server unreachable, ...)
        self.restarts = 0  # unexpected errors the keeper recovered from
        self.fatal: BaseException | None = None

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

    def hold(
        self,
        key: str,
        group: str,
        consumer: str,
        ids: Sequence[bytes] | None,
        renew_every_ms: int,
        after: bytes | None = None,
    ) -> Hold:
        held = Hold(key, group, consumer, ids, renew_every_ms, after)
        with self._lock:
            self._holds.add(held)
        return held

    def release(self, held: Hold) -> None:
        with self._lock:
            self._holds.discard(held)

    def _run(self) -> None:
        client: SyncClient | None = None
        failures_in_a_row = 0
        try:
            while not self._stop.wait(POLL_S):
                try:
                    now = time.monotonic()
                    with self._lock:
                        due = [h for h in self._holds if h.next_due <= now]
                    if not due:
                        continue
                    if client is None:
                        client = self._make_client()
                    for held in due:
                        self._renew(client, held)
                    failures_in_a_row = 0
                except Exception as exc:  # anything unexpected: a bad client factory, a bug
                    failures_in_a_row += 1
                    self.restarts += 1
                    log.error(
                        "lease keeper failed, restarting it",
                        error=describe_error(exc),
                        failures_in_a_row=failures_in_a_row,
                        exc_info=exc,
                    )
                    _close_quietly(client)
                    client = None
                    if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                        self._give_up(exc, failures_in_a_row)
                        return
                    self._stop.wait(min(MAX_BACKOFF_S, 0.05 * 2**failures_in_a_row))
        except BaseException as exc:  # the thread is ending for a reason nobody planned: say so
            self._give_up(exc, failures_in_a_row)
            raise
        finally:
            _close_quietly(client)

    def _give_up(self, error: BaseException, failures: int) -> None:
        self.fatal = WorkerFailed(
            f"the lease keeper failed {failures} times in a row ({describe_error(error)}): leases of"
            " in-flight entries can no longer be renewed"
        )
        log.critical("lease keeper gave up: stopping the worker", error=describe_error(error))
        if self._on_fatal is not None:
            self._on_fatal(self.fatal)

    def _renew(self, whole: SyncClient, held: Hold) -> None:
        client = for_key_sync(whole, held.key)  # on a cluster, the client of the stream's slot
        try:
            if held.ids is None:
                _wire.renew_held_sync(
                    client, held.key, held.group, held.consumer, HELD_RENEW_LIMIT, held.after
                )
                lost: list[bytes] = []
            else:
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
                entries=len(held.ids) if held.ids is not None else "all held",
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


def _close_quietly(client: SyncClient | None) -> None:
    if client is not None:
        try:
            client.close()
        except Exception as exc:  # closing a broken client must not hide why it broke
            log.debug("closing the lease keeper's client failed", error=describe_error(exc))


def _ids(ids: Any) -> list[str]:
    return sorted(_wire.decode_id(i) for i in ids)[:50]
