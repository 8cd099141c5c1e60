"""Pause and resume, and the group-wide rate limit, as one consumer sees them.

Pause. `run()` reads the stream's pause hash (fields `*` and this group) every control_every_ms and keeps
`paused` up to date; the consumer reads and reclaims nothing while it is set, and the retry mover moves
nothing. Until the first reading has answered the state is unknown and counts as paused, so a worker
started while paused never reads a batch first. A reading that fails (the server is down) keeps the last
state known: a pause stays in force, and nothing could be read anyway. The consumer of a partition reads
the logical stream's pause hash as well as its partition's: a pause set before the stream was partitioned
(or before a partition existed) is in the logical stream's hash only, and must hold its workers too.

Rate limit. `admit(n)` reserves n events of the group's rate on the server (see streamq/_wire/control.py)
and sleeps until their turn; the entries stay held meanwhile (the lease keeper renews them). Every worker
of the group, in every process, reserves from the same key, so adding workers does not raise the rate.
  - Burst: a limiter that was idle lets one read through at once; after that, events are spaced 1 / rate
    apart. In any window of w seconds, at most rate * w events plus one read's worth start being handled.
    One read is at most `rate` events: a read (or a claim) takes up to its COUNT from each of its two
    keys, the stream and the group's retry stream, so the consumer's COUNT is at most half the rate
    (read_count). Below 2 events/s it is 1: a read may hold one new event and one due retry.
  - A rate under 1 event/s: reads of one event (two with a retry), each waiting for its turn.
  - A worker that dies or stops after reserving does not give its reservation back: it is spent, and the
    group runs below its rate for that long. Waiting ends as soon as the worker stops (`stopping`, or
    `stop()`): the task is cancelled, so the consumer gives back the entries it holds unhandled.
  - A server that cannot be reached while reserving is retried with backoff: a handler is never called
    without its events admitted. An ACL that refuses the script is a ConfigurationError.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from .. import keys
from .._wire import TRANSIENT, is_denied
from .._wire import control as wire
from ..control import EVERY_GROUP, PauseInfo, decode_pause
from ..errors import ConfigurationError, describe_error
from ..partitions import logical_stream
from ..settings import ConsumerSettings

# While the pause state is still unknown (no reading has answered yet), wait_resumed waits for the first
# answer up to this long, whatever the consumer's block_ms: returning sooner would let a burst run take
# "unknown" for "paused" and end before it began.
UNKNOWN_WAIT_S = 5.0
ADMIT_FIRST_BACKOFF_S = 0.05
ADMIT_MAX_BACKOFF_S = 5.0


class Control:
    """Whether the group may read, and how fast it may handle."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: ConsumerSettings,
        *,
        log: Any,
        counts: dict[str, int],
        parent_client: aioredis.Redis | None = None,
        consumer: str = "",
    ) -> None:
        """`client` serves the stream's keys; `parent_client` its logical stream's when the stream is a
        partition (on a cluster, another slot; None: `client`). `consumer`: the name this worker gives in
        the group's live set (see announce; empty: it gives none)."""
        self.client = client
        self.settings = settings
        self.log = log
        self.counts = counts
        self.done = asyncio.Event()
        self.paused = True  # unknown until the first reading: see the module docstring
        self.stream_paused = True  # the whole stream (`*`): what holds its scheduled events back
        self.pause: PauseInfo | None = None  # the pause in force, when paused
        self.known = False  # a reading of the pause state has answered
        self.limited = settings.rate_limit is not None
        # The consumer's stop signal, set from outside (Consumer.run): it ends an admission wait at once.
        # Without it an admission wait ends on stop() or cancellation only.
        self.stopping: asyncio.Event | None = None
        self._resumed = asyncio.Event()  # known and not paused
        self._answered = asyncio.Event()  # known
        parent = logical_stream(settings.stream)
        # Its own pause hash first, then its logical stream's when it is a partition (module docstring),
        # each read through the client of its slot.
        self._pause_sources = [(client, keys.paused_key(settings.stream))]
        if parent is not None:
            self._pause_sources.append((parent_client or client, keys.paused_key(parent[0])))
        self._rate_key = keys.rate_key(settings.stream, settings.group)
        self._fields = (EVERY_GROUP, settings.group)
        self._consumer = consumer
        self._live_key = keys.live_key(settings.stream, settings.group)
        self._next_announce = 0.0  # loop time of the next announcement: at once

    def stop(self) -> None:
        self.done.set()

    # ------------------------------------------------------------------------------------------ pause

    async def run(self) -> None:
        """Read the pause state every control_every_ms, and say this worker runs every LIVE_EVERY_MS,
        until `done` is set."""
        every_s = self.settings.control_every_ms / 1000
        while not self.done.is_set():
            await self.refresh()
            await self._announce()
            await _first_of([self.done], every_s)

    async def _announce(self) -> None:
        """Renew this worker's word in the group's live set when due: what `streamq group delete` reads to
        refuse while the group has a running worker, even one that reads nothing (paused, a quiet stream).
        A failure only delays it: the word outlasts two missed renewals."""
        loop = asyncio.get_running_loop()
        if not self._consumer or loop.time() < self._next_announce:
            return
        try:
            await wire.announce(self.client, self._live_key, self._consumer, wire.LIVE_TTL_MS)
        except (*TRANSIENT, ResponseError) as exc:
            # A denial (an ACL written before this key existed) must not stop the worker: it only makes
            # group delete fall back on idle times. Said once, at warning level.
            if isinstance(exc, ResponseError) and is_denied(exc):
                self.log.warning(
                    "may not announce this worker (group delete will not see it while it reads nothing)",
                    key=self._live_key, error=describe_error(exc),
                )  # fmt: skip
                self._consumer = ""
                return
            self.log.debug("could not announce this worker, trying again", error=describe_error(exc))
            self._next_announce = loop.time() + self.settings.control_every_ms / 1000
            return
        self._next_announce = loop.time() + wire.LIVE_EVERY_MS / 1000

    async def leave(self) -> None:
        """Take this worker's word back (it stops): best effort; otherwise it lapses within LIVE_TTL_MS."""
        if not self._consumer:
            return
        try:
            await asyncio.wait_for(wire.announce(self.client, self._live_key, self._consumer, 0), 2)
        except (TimeoutError, *TRANSIENT, ResponseError) as exc:
            self.log.debug("could not take this worker's word back", error=describe_error(exc))

    async def refresh(self) -> None:
        """Read the pause state once; on a transient error keep the last one known."""
        try:
            read = [await self._read(source, key) for source, key in self._pause_sources]
        except TRANSIENT as exc:
            self.log.debug("pause state unreadable, keeping the last one known", error=describe_error(exc))
            return
        # The partition's own record first; a pause set since it existed is in both hashes alike.
        every = next((fields[0] for fields in read if fields[0] is not None), None)
        group = next((fields[1] for fields in read if fields[1] is not None), None)
        self._apply(every, group)

    async def _read(self, client: aioredis.Redis, key: str) -> list[bytes | None]:
        """The `*` and group fields of one pause hash; what waiting will not cure as a ConfigurationError."""
        try:
            return await wire.pause_fields(client, key, self._fields)
        except ResponseError as exc:
            if is_denied(exc):
                raise ConfigurationError(
                    f"the Redis user may not read the pause state (HMGET on {key!r}): {exc}"
                ) from exc
            if str(exc).startswith("WRONGTYPE"):
                raise ConfigurationError(
                    f"key {key!r} exists and is not streamq's pause hash: {exc}"
                ) from exc
            raise

    def _apply(self, every: bytes | None, group: bytes | None) -> None:
        raw, scope = (every, EVERY_GROUP) if every is not None else (group, self.settings.group)
        pause = decode_pause(raw) if raw is not None else None
        was_known, was_paused, before = self.known, self.paused, self.pause
        self.known = True
        self._answered.set()
        self.stream_paused = every is not None
        self.paused = pause is not None
        self.pause = pause
        if pause is None:
            self._resumed.set()
            if was_known and was_paused:
                self.log.info("resumed")
        else:
            self._resumed.clear()
            if not (was_known and was_paused) or pause != before:
                self.log.info(
                    "paused", scope=scope, reason=pause.reason, since_ms=pause.since_ms,
                    by=f"{pause.user}@{pause.host}:{pause.pid}" if pause.host else "",
                )  # fmt: skip

    async def wait_resumed(self, timeout_s: float) -> None:
        """Wait until resumed, or at most timeout_s (longer while the state is still unknown)."""
        if not self.known and not await _first_of([self._answered, *self._stop_events()], UNKNOWN_WAIT_S):
            return
        if self._resumed.is_set():
            return
        await _first_of([self._resumed, *self._stop_events()], timeout_s)

    # ------------------------------------------------------------------------------------------ rate

    def read_count(self, count: int) -> int:
        """The COUNT of one read (and claim): see read_count() below."""
        return read_count(count, self.settings.rate_limit)

    async def admit(self, n: int) -> None:
        """Wait until n more events may be handled under the group's rate limit.

        Stopped while waiting, it cancels the task it runs in (see the module docstring).
        """
        rate = self.settings.rate_limit
        if rate is None or n <= 0:
            return
        backoff_s = ADMIT_FIRST_BACKOFF_S
        while True:
            try:
                wait_s = await wire.reserve(self.client, self._rate_key, n, rate)
                break
            except TRANSIENT as exc:
                problem = describe_error(exc)
            except ResponseError as exc:
                self._raise_if_for_good(exc)
                problem = describe_error(exc)
            self.log.warning("rate limiter unavailable, retrying", error=problem, retry_in_s=backoff_s)
            if await _first_of(self._stop_events(), backoff_s):
                await _give_up()
            backoff_s = min(backoff_s * 2, ADMIT_MAX_BACKOFF_S)
        if wait_s > 0 and await _first_of(self._stop_events(), wait_s):
            await _give_up()

    def _raise_if_for_good(self, exc: ResponseError) -> None:
        """Raise what waiting will not cure; return for what may pass (out of memory, a failover)."""
        if is_denied(exc):
            raise ConfigurationError(
                f"the Redis user may not run the rate limiter (EVALSHA, EVAL; TIME, GET, SET on"
                f" {self._rate_key!r}): {exc}"
            ) from exc
        if str(exc).startswith("WRONGTYPE"):
            raise ConfigurationError(
                f"key {self._rate_key!r} exists and is not streamq's rate limiter: {exc}"
            ) from exc
        if not isinstance(exc, OutOfMemoryError | ReadOnlyError) and not str(exc).startswith("BUSY"):
            raise exc

    def _stop_events(self) -> list[asyncio.Event]:
        return [self.done] if self.stopping is None else [self.done, self.stopping]


def read_count(count: int, rate: float | None) -> int:
    """The COUNT a consumer reads and claims with, given its batch_size (`count`) and rate limit: COUNT
    applies to each of the read's two keys (the stream, the retry stream), so half the rate keeps a read
    within one second's worth of events, the burst a read may start at once (see the module docstring)."""
    return count if rate is None else max(1, min(count, int(rate) // 2))


async def _first_of(events: list[asyncio.Event], timeout_s: float) -> bool:
    """Wait until one of `events` is set, or timeout_s; returns whether one was set."""
    if any(event.is_set() for event in events):
        return True
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)


async def _give_up() -> NoReturn:
    """Stopped while waiting for admission: end as a cancellation, the path on which the consumer gives
    back the entries it holds unhandled (holding.py gives back only while its task is being cancelled).
    The reservation is spent."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)  # the cancellation lands here
    raise asyncio.CancelledError  # not reached: only if something swallowed the cancel above
