"""Publishing events: one XADD per event, one round trip per chunk, from async or plain sync code.

Besides plain appends, a publish may be:

- delayed (`delay_ms=` from the server's now, or `at=` an aware datetime): the event waits in the stream's
  scheduled set and a worker of any group moves it in when due. The call returns a schedule id
  (`sched-<hex>`), which `cancel()` takes and `scheduled()` lists;
- idempotent (`dedup_key=`): within `dedup_ttl_ms` of a key's first publish, publishing the same key again
  appends nothing and returns the first publish's id (entry id, or schedule id if that one was delayed).
  `publish_result()` / `publish_many_results()` also say whether each event was such a duplicate; the
  producer counts them in `duplicates`;
- trimmed (`maxlen=`): the entries trimming drops are counted (the stream's `dropped_by_maxlen` total)
  and logged as a warning.

Those three run one script per chunk (streamq/_wire/publishing.py), so a dedup check and its write are one
atomic step. A plain publish takes the pipelined XADD path, with no script.

With `max_backlog=N`, a publish first makes sure no group of the stream owes more than N entries (not
delivered + pending). It reads that at most once per `backlog_check_ms`; while it is over N it waits, up
to `backlog_timeout_ms`, then raises BacklogFull with nothing of the call published.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple

import msgspec
import redis
import structlog

from . import _wire
from ._connection import RedisLike, async_client, sync_client
from ._wire import publishing
from .errors import BacklogFull, ConfigurationError
from .events import DEFAULT_MAX_EVENT_BYTES, Encoder, Event
from .keys import validate_name
from .scheduling import (
    DEFAULT_LIST_LIMIT,
    ScheduledEvent,
    cancel_steps,
    list_steps,
)
from .settings import (
    DAY_MS,
    DEFAULT_BACKLOG_CHECK_MS,
    DEFAULT_BACKLOG_TIMEOUT_MS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DEDUP_TTL_MS,
    ProducerSettings,
)

log = structlog.get_logger("streamq.producer")

MAX_DELAY_MS = 3650 * DAY_MS  # ten years: a larger delay is a unit mistake (seconds given as ms * 1000)
MAX_DEDUP_KEY_CHARS = 1_024
# Trimming that drops entries warns at most this often per stream, with the count since the last warning:
# a producer at its cap drops on nearly every call, and one line per call would drown the log.
DROP_WARNING_EVERY_S = 10.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DedupKeys = Callable[[Event], "str | None"] | Sequence["str | None"] | None


class PublishResult(msgspec.Struct, frozen=True):
    """What one event's publish did."""

    id: str  # its entry id, or its schedule id when delayed (starts with `sched-`)
    duplicate: bool = False  # its dedup key was known: `id` is the first publish's, nothing was written
    scheduled: bool = False  # `id` is a schedule id (this publish, or the first one for a duplicate)


def is_schedule_id(value: str) -> bool:
    return value.startswith(publishing.SCHEDULE_ID_PREFIX)


class _Call(NamedTuple):
    """One publish call, checked and encoded: the fast path's chunks, or the script's."""

    fast: list[list[bytes]] | None  # plain XADDs, when nothing asks for the script
    scripted: list[list[publishing.Planned]]
    trim: int | None
    due_mode: str  # '' now, 'd' delay from the server's now, 'a' at an absolute time
    due_value: int
    ttl_ms: int


class _Options:
    """What Producer and SyncProducer share: their checked settings and the encoder built from them."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self.encoder = Encoder(settings.max_event_bytes)
        self.approximate_trim = settings.approximate_trim

    def plan(
        self,
        stream: str,
        events: Iterable[Event],
        chunk_size: int | None,
        maxlen: int | None,
        *,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_keys: DedupKeys = None,
        dedup_ttl_ms: int | None = None,
    ) -> _Call:
        """The payloads of one publish call cut into chunks, and how to send them; raises before any write."""
        validate_name("stream", stream)
        size, trim = self.settings.for_call(chunk_size, maxlen)
        due_mode, due_value = _due(delay_ms, at)
        ttl_ms = self.settings.dedup_ttl_ms if dedup_ttl_ms is None else _ttl(dedup_ttl_ms)
        if not isinstance(events, list):
            events = list(events)
        keys = _dedup_keys(events, dedup_keys)
        # Encode everything first: an event that is too large or of the wrong type fails the call before
        # anything of it is written, instead of leaving half a batch published.
        payloads = self.encoder.encode_many(events)
        if keys is None and not due_mode and trim is None:
            chunks = [payloads[start : start + size] for start in range(0, len(payloads), size)]
            return _Call(chunks, [], None, "", 0, ttl_ms)
        if keys is None:
            keys = [None] * len(payloads)
        planned = [
            publishing.Planned(
                key or "", publishing.SCHEDULE_ID_PREFIX + uuid.uuid4().hex if due_mode else "", payload
            )
            for key, payload in zip(keys, payloads, strict=True)
        ]
        scripted = [planned[start : start + size] for start in range(0, len(planned), size)]
        return _Call(None, scripted, trim, due_mode, due_value, ttl_ms)

    def pack(self, stream: str, call: _Call, chunk: Sequence[publishing.Planned]) -> bytes:
        return publishing.pack_publish(
            stream, chunk, ttl_ms=call.ttl_ms, maxlen=call.trim, approximate=self.approximate_trim,
            due_mode=call.due_mode, due_value=call.due_value,
        )  # fmt: skip


def _due(delay_ms: int | None, at: datetime | None) -> tuple[str, int]:
    if delay_ms is not None and at is not None:
        raise ConfigurationError("give delay_ms or at, not both")
    if delay_ms is not None:
        if not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or not 0 <= delay_ms <= MAX_DELAY_MS:
            raise ConfigurationError(f"delay_ms must be an integer from 0 to {MAX_DELAY_MS}, got {delay_ms}")
        return "d", delay_ms
    if at is not None:
        if not isinstance(at, datetime):
            raise ConfigurationError(f"at must be a datetime, got {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            # A naive datetime is local time to one machine and UTC to another: refuse to guess.
            raise ConfigurationError(
                f"at must be an aware datetime (with a timezone, e.g. datetime.now(UTC)), got naive {at!r}"
            )
        return "a", (at - _EPOCH) // timedelta(milliseconds=1)
    return "", 0


def _ttl(ttl_ms: int) -> int:
    if not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool) or not 1 <= ttl_ms <= 365 * DAY_MS:
        raise ConfigurationError(f"dedup_ttl_ms must be an integer from 1 to {365 * DAY_MS}, got {ttl_ms!r}")
    return ttl_ms


def _dedup_keys(events: list[Event], given: DedupKeys) -> list[str | None] | None:
    """One dedup key (or None) per event, from a callable or an aligned sequence; None when none has one."""
    if given is None:
        return None
    if isinstance(given, str | bytes):
        raise ConfigurationError(
            "publish_many's dedup_key is a callable (event -> key or None) or a sequence of keys aligned"
            " with the events, not one string"
        )
    if callable(given):
        found = [given(event) for event in events]
    else:
        found = list(given)
        if len(found) != len(events):
            raise ConfigurationError(f"dedup_key has {len(found)} keys for {len(events)} events")
    for key in found:
        _check_key(key)
    return found if any(key is not None for key in found) else None


def _check_key(key: object) -> None:
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_DEDUP_KEY_CHARS):
        raise ConfigurationError(
            f"a dedup key must be None or a string of 1 to {MAX_DEDUP_KEY_CHARS} characters, got {key!r}"
        )


def _results(replies: list[publishing.PublishReply]) -> list[PublishResult]:
    return [
        PublishResult(p.id, p.duplicate, is_schedule_id(p.id)) for reply in replies for p in reply.published
    ]


class _DropLog:
    """Warns of entries dropped by maxlen, at most once per DROP_WARNING_EVERY_S per stream."""

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


class _Backlog:
    """The last backlog reading per stream, and whether it is recent enough to go by."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.limit = settings.max_backlog
        self.check_s = settings.backlog_check_ms / 1000
        self.timeout_s = settings.backlog_timeout_ms / 1000
        self.readings: dict[str, tuple[float, publishing.Backlog]] = {}

    def fresh(self, stream: str) -> publishing.Backlog | None:
        found = self.readings.get(stream)
        if found is None or time.monotonic() - found[0] >= self.check_s:
            return None
        return found[1]

    def note(self, stream: str, reading: publishing.Backlog) -> None:
        self.readings[stream] = (time.monotonic(), reading)

    def over(self, reading: publishing.Backlog) -> bool:
        return self.limit is not None and reading.backlog > self.limit

    def refuse(self, stream: str, reading: publishing.Backlog, waited_s: float) -> BacklogFull:
        return BacklogFull(
            f"stream {stream!r}: group {reading.group!r} owes {reading.backlog} entries ({reading.lag} not"
            f" delivered, {reading.pending} pending), over max_backlog={self.limit}; waited"
            f" {round(waited_s * 1000)} ms (backlog_timeout_ms={round(self.timeout_s * 1000)})",
            stream=stream, group=reading.group, backlog=reading.backlog, lag=reading.lag,
            pending=reading.pending, max_backlog=self.limit or 0, waited_ms=round(waited_s * 1000),
        )  # fmt: skip


def _settings(
    max_event_bytes: int, maxlen: int | None, approximate_trim: bool, chunk_size: int, dedup_ttl_ms: int,
    max_backlog: int | None, backlog_timeout_ms: int, backlog_check_ms: int,
) -> ProducerSettings:  # fmt: skip
    # Checked here, so a bad value fails when the producer is built, not at its first publish.
    return ProducerSettings(
        max_event_bytes=max_event_bytes, maxlen=maxlen, approximate_trim=approximate_trim,
        chunk_size=chunk_size, dedup_ttl_ms=dedup_ttl_ms, max_backlog=max_backlog,
        backlog_timeout_ms=backlog_timeout_ms, backlog_check_ms=backlog_check_ms,
    )  # fmt: skip


class Producer:
    """Publishes events from async code.

    `maxlen` trims the stream to about that many entries on every append (XADD MAXLEN ~). Trimming ignores
    consumer groups: entries not yet delivered to a lagging group are dropped (counted in the stream's
    `dropped_by_maxlen` total, and logged). Size it well above any lag.

    `duplicates` counts the publishes this producer found to be duplicates of an earlier dedup key.
    """

    def __init__(
        self,
        redis: RedisLike = None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        maxlen: int | None = None,
        approximate_trim: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dedup_ttl_ms: int = DEFAULT_DEDUP_TTL_MS,
        max_backlog: int | None = None,
        backlog_timeout_ms: int = DEFAULT_BACKLOG_TIMEOUT_MS,
        backlog_check_ms: int = DEFAULT_BACKLOG_CHECK_MS,
    ) -> None:
        settings = _settings(
            max_event_bytes, maxlen, approximate_trim, chunk_size, dedup_ttl_ms, max_backlog,
            backlog_timeout_ms, backlog_check_ms,
        )  # fmt: skip
        self._options = _Options(settings)
        self.client, self._owns_client = async_client(redis)
        self._backlog = _Backlog(self._options.settings)
        self._backlog_lock: asyncio.Lock | None = None
        self._drops = _DropLog()
        self.duplicates = 0

    async def publish(
        self,
        stream: str,
        event: Event,
        *,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: str | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> str:
        """Append one event; returns its entry id, or its schedule id when delayed (`delay_ms`, `at`).

        With `dedup_key`, a key already published within the dedup TTL appends nothing and returns the
        first publish's id (publish_result tells which happened).
        """
        _check_key(dedup_key)
        (entry_id,) = await self.publish_many(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        return entry_id

    async def publish_result(
        self,
        stream: str,
        event: Event,
        *,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: str | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> PublishResult:
        """publish(), returning whether the event was a duplicate and whether its id is a schedule id."""
        _check_key(dedup_key)
        (result,) = await self.publish_many_results(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        return result

    async def publish_many(
        self,
        stream: str,
        events: Iterable[Event],
        *,
        chunk_size: int | None = None,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: DedupKeys = None,
        dedup_ttl_ms: int | None = None,
    ) -> list[str]:
        """Append events in order, one round trip per chunk; returns their entry ids (schedule ids when
        delayed, the first publish's id for a duplicate).

        `dedup_key` is a callable (event -> key or None) or a sequence of keys (or None) aligned with
        `events`. If the connection fails midway, earlier chunks are published and the error is raised:
        publishing again may then duplicate those (delivery is at least once), unless they had dedup keys.
        """
        call = self._options.plan(
            stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
            dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        if call.fast is not None:
            return await self._fast(stream, call.fast)
        return [result.id for result in await self._scripted(stream, call)]

    async def publish_many_results(
        self,
        stream: str,
        events: Iterable[Event],
        *,
        chunk_size: int | None = None,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: DedupKeys = None,
        dedup_ttl_ms: int | None = None,
    ) -> list[PublishResult]:
        """publish_many(), with a PublishResult per event."""
        call = self._options.plan(
            stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
            dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        if call.fast is not None:
            return [PublishResult(entry_id) for entry_id in await self._fast(stream, call.fast)]
        return await self._scripted(stream, call)

    async def _fast(self, stream: str, chunks: list[list[bytes]]) -> list[str]:
        options = self._options
        ids: list[str] = []
        link = _wire.Link(self.client)
        try:
            if chunks and self._backlog.limit is not None:
                await self._wait_for_room(link, stream)
            for chunk in chunks:
                ids += await _wire.xadd_many(
                    link, stream, chunk, maxlen=None, approximate=options.approximate_trim
                )
        finally:
            await link.close()
        return ids

    async def _scripted(self, stream: str, call: _Call) -> list[PublishResult]:
        replies: list[publishing.PublishReply] = []
        link = _wire.Link(self.client)
        try:
            if call.scripted and self._backlog.limit is not None:
                await self._wait_for_room(link, stream)
            for chunk in call.scripted:
                reply = await publishing.publish(link, stream, self._options.pack(stream, call, chunk))
                replies.append(reply)
                self._drops.add(stream, reply.dropped_by_maxlen)
        finally:
            await link.close()
        results = _results(replies)
        self.duplicates += sum(result.duplicate for result in results)
        return results

    async def _wait_for_room(self, link: _wire.Link, stream: str) -> None:
        """Return once the stream's worst group owes at most max_backlog; BacklogFull after the timeout."""
        backlog = self._backlog
        reading = backlog.fresh(stream)
        if reading is not None and not backlog.over(reading):
            return
        started = time.monotonic()
        while True:
            if reading is None:
                reading = await self._read_backlog(link, stream)
            if not backlog.over(reading):
                return
            waited = time.monotonic() - started
            if waited >= backlog.timeout_s:
                raise backlog.refuse(stream, reading, waited)
            await asyncio.sleep(min(backlog.check_s, backlog.timeout_s - waited))
            reading = None

    async def _read_backlog(self, link: _wire.Link, stream: str) -> publishing.Backlog:
        # One reader at a time: many tasks publishing at once find the reading stale together, and one
        # read serves them all.
        if self._backlog_lock is None:
            self._backlog_lock = asyncio.Lock()
        async with self._backlog_lock:
            reading = self._backlog.fresh(stream)
            if reading is None:
                assert self._backlog.limit is not None
                reading = await publishing.backlog(link, stream, self._backlog.limit + 1)
                self._backlog.note(stream, reading)
            return reading

    async def cancel(self, stream: str, schedule_id: str) -> bool:
        """Cancel a delayed event not moved into the stream yet; False if there is none of that id (never
        scheduled, already moved, already cancelled). Its dedup key, if any, is forgotten."""
        (cancelled,) = await _wire.run_steps(self.client, cancel_steps(stream, [schedule_id]))
        return cancelled

    async def scheduled(self, stream: str, *, limit: int = DEFAULT_LIST_LIMIT) -> list[ScheduledEvent]:
        """The stream's delayed events not yet moved in, soonest first, at most `limit`."""
        return await _wire.run_steps(self.client, list_steps(stream, limit))

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class SyncProducer:
    """Publishes events from plain synchronous code (a Django view, a script). Thread-safe.

    The same options and methods as Producer, blocking.
    """

    def __init__(
        self,
        redis: str | redis.Redis | None = None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        maxlen: int | None = None,
        approximate_trim: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dedup_ttl_ms: int = DEFAULT_DEDUP_TTL_MS,
        max_backlog: int | None = None,
        backlog_timeout_ms: int = DEFAULT_BACKLOG_TIMEOUT_MS,
        backlog_check_ms: int = DEFAULT_BACKLOG_CHECK_MS,
    ) -> None:
        settings = _settings(
            max_event_bytes, maxlen, approximate_trim, chunk_size, dedup_ttl_ms, max_backlog,
            backlog_timeout_ms, backlog_check_ms,
        )  # fmt: skip
        self._options = _Options(settings)
        self._owns_client = not isinstance(redis, _SyncRedis)
        self.client = sync_client(redis)
        self._backlog = _Backlog(self._options.settings)
        self._backlog_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._drops = _DropLog()
        self.duplicates = 0

    def publish(
        self,
        stream: str,
        event: Event,
        *,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: str | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> str:
        _check_key(dedup_key)
        (entry_id,) = self.publish_many(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        return entry_id

    def publish_result(
        self,
        stream: str,
        event: Event,
        *,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: str | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> PublishResult:
        _check_key(dedup_key)
        (result,) = self.publish_many_results(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        return result

    def publish_many(
        self,
        stream: str,
        events: Iterable[Event],
        *,
        chunk_size: int | None = None,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: DedupKeys = None,
        dedup_ttl_ms: int | None = None,
    ) -> list[str]:
        call = self._options.plan(
            stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
            dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        if call.fast is not None:
            return self._fast(stream, call.fast)
        return [result.id for result in self._scripted(stream, call)]

    def publish_many_results(
        self,
        stream: str,
        events: Iterable[Event],
        *,
        chunk_size: int | None = None,
        maxlen: int | None = None,
        delay_ms: int | None = None,
        at: datetime | None = None,
        dedup_key: DedupKeys = None,
        dedup_ttl_ms: int | None = None,
    ) -> list[PublishResult]:
        call = self._options.plan(
            stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
            dedup_ttl_ms=dedup_ttl_ms,
        )  # fmt: skip
        if call.fast is not None:
            return [PublishResult(entry_id) for entry_id in self._fast(stream, call.fast)]
        return self._scripted(stream, call)

    def _fast(self, stream: str, chunks: list[list[bytes]]) -> list[str]:
        options = self._options
        if chunks and self._backlog.limit is not None:
            self._wait_for_room(stream)
        ids: list[str] = []
        for chunk in chunks:
            ids += _wire.xadd_many_sync(
                self.client, stream, chunk, maxlen=None, approximate=options.approximate_trim
            )
        return ids

    def _scripted(self, stream: str, call: _Call) -> list[PublishResult]:
        if call.scripted and self._backlog.limit is not None:
            self._wait_for_room(stream)
        replies: list[publishing.PublishReply] = []
        for chunk in call.scripted:
            reply = publishing.publish_sync(self.client, stream, self._options.pack(stream, call, chunk))
            replies.append(reply)
            self._drops.add(stream, reply.dropped_by_maxlen)
        results = _results(replies)
        duplicates = sum(result.duplicate for result in results)
        if duplicates:
            with self._count_lock:
                self.duplicates += duplicates
        return results

    def _wait_for_room(self, stream: str) -> None:
        backlog = self._backlog
        reading = backlog.fresh(stream)
        if reading is not None and not backlog.over(reading):
            return
        started = time.monotonic()
        while True:
            if reading is None:
                reading = self._read_backlog(stream)
            if not backlog.over(reading):
                return
            waited = time.monotonic() - started
            if waited >= backlog.timeout_s:
                raise backlog.refuse(stream, reading, waited)
            time.sleep(min(backlog.check_s, backlog.timeout_s - waited))
            reading = None

    def _read_backlog(self, stream: str) -> publishing.Backlog:
        with self._backlog_lock:
            reading = self._backlog.fresh(stream)
            if reading is None:
                assert self._backlog.limit is not None
                reading = publishing.backlog_sync(self.client, stream, self._backlog.limit + 1)
                self._backlog.note(stream, reading)
            return reading

    def cancel(self, stream: str, schedule_id: str) -> bool:
        (cancelled,) = _wire.run_steps_sync(self.client, cancel_steps(stream, [schedule_id]))
        return cancelled

    def scheduled(self, stream: str, *, limit: int = DEFAULT_LIST_LIMIT) -> list[ScheduledEvent]:
        return _wire.run_steps_sync(self.client, list_steps(stream, limit))

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_SyncRedis = redis.Redis


def encode_events(events: Sequence[Event], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[bytes]:
    """Payload bytes of events as a producer would write them (for tests and tools)."""
    return Encoder(max_event_bytes).encode_many(events)
