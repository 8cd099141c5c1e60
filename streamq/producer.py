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

Any publish may carry headers (`headers=`): string fields written beside the payload, which consumers read
as `message.headers` (see _publish_plan.py for the rules and bounds). With OpenTelemetry configured, every
publish call is a `send {stream}` span whose context goes into each event's headers (streamq/tracing.py).

Those three run one script per chunk (streamq/_wire/publishing.py), so a dedup check and its write are one
atomic step. A plain publish takes the pipelined XADD path, with no script.

With `max_backlog=N`, a publish first makes sure no group of the stream owes more than N entries (not
delivered + pending). It reads that at most once per `backlog_check_ms`; while it is over N it waits, up
to `backlog_timeout_ms`, then raises BacklogFull with nothing of the call published.

With `min_replicas=N`, every chunk is followed by `WAIT N replica_timeout_ms` (WAITAOF with `replica_aof`)
in the chunk's own round trip, and too few replicas raise ReplicationTimeout (see Producer).

This module holds the public surface and the sending; each step before a send lives in its own module, so
Producer and SyncProducer share it instead of each keeping a copy: checking, encoding and chunking a call
(_publish_plan.py), the backlog gate (_backpressure.py), and the warning of entries trimming dropped
(_trim_warnings.py). The names that used to live here (MAX_DELAY_MS, MAX_DEDUP_KEY_CHARS, DedupKeys,
DROP_WARNING_EVERY_S) are still importable from here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import msgspec
import redis

from . import _wire, tracing
from ._backpressure import AsyncBacklogGate, SyncBacklogGate
from ._connection import RedisLike, async_client, for_key, for_key_sync, sync_client
from ._partition_routing import Part, PartitionKeys, Routing, check_partition_key, needs_partitions, take
from ._partition_routing import lookup as partition_lookup
from ._partition_routing import lookup_sync as partition_lookup_sync
from ._publish_plan import MAX_DEDUP_KEY_CHARS as MAX_DEDUP_KEY_CHARS
from ._publish_plan import MAX_DELAY_MS as MAX_DELAY_MS
from ._publish_plan import DedupKeys as DedupKeys
from ._publish_plan import (
    HeaderFields,
    Planner,
    PublishPlan,
    check_dedup_key,
    check_headers,
    events_after,
    header_fields_for,
    replication_timeout,
)
from ._publish_plan import Headers as Headers
from ._trim_warnings import DROP_WARNING_EVERY_S as DROP_WARNING_EVERY_S
from ._trim_warnings import DropLog
from ._wire import publishing
from .events import DEFAULT_MAX_EVENT_BYTES, Encoder, Event
from .scheduling import (
    DEFAULT_LIST_LIMIT,
    ScheduledEvent,
    cancel_steps,
    list_steps,
)
from .settings import (
    DEFAULT_BACKLOG_CHECK_MS,
    DEFAULT_BACKLOG_TIMEOUT_MS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DEDUP_TTL_MS,
    DEFAULT_REPLICA_TIMEOUT_MS,
    ProducerSettings,
)


class PublishResult(msgspec.Struct, frozen=True):
    """What one event's publish did."""

    id: str  # its entry id, or its schedule id when delayed (starts with `sched-`)
    duplicate: bool = False  # its dedup key was known: `id` is the first publish's, nothing was written
    scheduled: bool = False  # `id` is a schedule id (this publish, or the first one for a duplicate)


def is_schedule_id(value: str) -> bool:
    return value.startswith(publishing.SCHEDULE_ID_PREFIX)


def _plan_parts(
    planner: Planner, parts: list[Part], events: list[Event], dedup: DedupKeys,
    fields: list[HeaderFields] | None, options: dict[str, Any],
) -> list[PublishPlan]:  # fmt: skip
    """Every partition's share of a call planned (checked, encoded) before any is sent: an event too large
    or a bad dedup key in one share refuses the whole call, not only its share after others were written."""
    return [
        planner.plan(
            part.stream, [events[i] for i in part.positions], options["chunk_size"], options["maxlen"],
            delay_ms=options["delay_ms"], at=options["at"],
            dedup_keys=dedup if callable(dedup) else take(dedup, part.positions),
            dedup_ttl_ms=options["dedup_ttl_ms"], header_fields=take(fields, part.positions),
        )
        for part in parts
    ]  # fmt: skip


def _results(replies: list[publishing.PublishReply]) -> list[PublishResult]:
    return [
        PublishResult(p.id, p.duplicate, is_schedule_id(p.id)) for reply in replies for p in reply.published
    ]


def _settings(
    max_event_bytes: int, maxlen: int | None, approximate_trim: bool, chunk_size: int, dedup_ttl_ms: int,
    max_backlog: int | None, backlog_timeout_ms: int, backlog_check_ms: int, min_replicas: int | None,
    replica_timeout_ms: int, replica_aof: bool,
) -> ProducerSettings:  # fmt: skip
    # Checked here, so a bad value fails when the producer is built, not at its first publish.
    return ProducerSettings(
        max_event_bytes=max_event_bytes, maxlen=maxlen, approximate_trim=approximate_trim,
        chunk_size=chunk_size, dedup_ttl_ms=dedup_ttl_ms, max_backlog=max_backlog,
        backlog_timeout_ms=backlog_timeout_ms, backlog_check_ms=backlog_check_ms, min_replicas=min_replicas,
        replica_timeout_ms=replica_timeout_ms, replica_aof=replica_aof,
    )  # fmt: skip


class Producer:
    """Publishes events from async code.

    `maxlen` trims the stream to about that many entries on every append (XADD MAXLEN ~). Trimming ignores
    consumer groups: entries not yet delivered to a lagging group are dropped (counted in the stream's
    `dropped_by_maxlen` total, and logged). Size it well above any lag.

    `duplicates` counts the publishes this producer found to be duplicates of an earlier dedup key.

    Replication is asynchronous: a publish returns once the primary has the entries, and a failover before
    a replica got them loses them. `min_replicas=N` narrows that window: each chunk of a call is followed,
    in the chunk's own round trip, by `WAIT N replica_timeout_ms`, and the call returns only once N
    replicas have confirmed every chunk. With `replica_aof=True` it is `WAITAOF 0 N replica_timeout_ms`
    instead: the replicas have also fsynced the entries to their AOF (Redis >= 7.2 or Valkey; replicas
    without `appendonly yes` never confirm, and with `appendfsync everysec` a confirmation takes up to a
    second). The first publish checks, once per producer, that the server runs the command, and refuses
    with ConfigurationError (naming the server's version) before writing anything if not.

    When fewer replicas confirm within replica_timeout_ms, ReplicationTimeout is raised: the entries WERE
    appended on the primary (its `ids`), the call's later chunks are not sent (`unsent`), and publishing
    again appends them again unless they carry dedup keys.

    What it does NOT promise: WAIT does not make Redis strongly consistent. A failover can still promote a
    replica that did not get the write (one that was not among the N, or when whatever drives the failover
    does not pick the most up-to-date replica), and nothing is undone on a ReplicationTimeout: published
    entries are never rolled back, and consumers may already be handling them. It makes a loss on failover
    less likely, not impossible, and adds the replicas' acknowledgement to every chunk's round trip.
    Delayed events and dedup keys are waited for the same way (they live in keys beside the stream).
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
        min_replicas: int | None = None,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
        replica_aof: bool = False,
        partitions: Mapping[str, int] | None = None,
    ) -> None:
        settings = _settings(
            max_event_bytes, maxlen, approximate_trim, chunk_size, dedup_ttl_ms, max_backlog,
            backlog_timeout_ms, backlog_check_ms, min_replicas, replica_timeout_ms, replica_aof,
        )  # fmt: skip
        self._planner = Planner(settings)
        self._routing = Routing(partitions)
        self.client, self._owns_client = async_client(redis)
        self._gate = AsyncBacklogGate.for_settings(settings)
        self._wait_checked = False  # the server runs the replica wait (checked at the first publish)
        self._drops = DropLog()
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
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Append one event; returns its entry id, or its schedule id when delayed (`delay_ms`, `at`).

        With `dedup_key`, a key already published within the dedup TTL appends nothing and returns the
        first publish's id (publish_result tells which happened). `headers` (str -> str) are written beside
        the event and read by consumers as `message.headers`; bad names or more than MAX_HEADERS headers or
        MAX_HEADER_BYTES bytes of them raise ConfigurationError before anything is written.
        """
        check_dedup_key(dedup_key)
        check_partition_key(key)
        if headers is not None:
            check_headers(headers)
        (entry_id,) = await self.publish_many(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
            key=None if key is None else [key], headers=headers,
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
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PublishResult:
        """publish(), returning whether the event was a duplicate and whether its id is a schedule id."""
        check_dedup_key(dedup_key)
        check_partition_key(key)
        if headers is not None:
            check_headers(headers)
        (result,) = await self.publish_many_results(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
            key=None if key is None else [key], headers=headers,
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
        key: PartitionKeys = None,
        headers: Headers = None,
    ) -> list[str]:
        """Append events in order, one round trip per chunk; returns their entry ids (schedule ids when
        delayed, the first publish's id for a duplicate).

        `dedup_key` is a callable (event -> key or None) or a sequence of keys (or None) aligned with
        `events`; `headers` the same, or one mapping for every event. If the connection fails midway,
        earlier chunks are published and the error is raised: publishing again may then duplicate those
        (delivery is at least once), unless they had dedup keys.
        """
        events = events if isinstance(events, list) else list(events)
        with tracing.sending(stream, len(events)) as send:
            fields = None  # no headers: nothing per event (the common case)
            if headers is not None or send.headers is not None:
                fields = header_fields_for(events, headers, send.headers)
            count = await self._partition_count(stream, key)
            if count is not None:
                options = {"chunk_size": chunk_size, "maxlen": maxlen, "delay_ms": delay_ms, "at": at,
                           "dedup_ttl_ms": dedup_ttl_ms}  # fmt: skip
                routed = await self._routed(stream, count, events, key, dedup_key, fields, options)
                ids = [result.id for result in routed]
            else:
                plan = self._planner.plan(
                    stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
                    dedup_ttl_ms=dedup_ttl_ms, header_fields=fields,
                )  # fmt: skip
                if plan.fast is not None:
                    ids = await self._fast(stream, plan.fast, plan.fast_headers)
                else:
                    ids = [result.id for result in await self._scripted(plan)]
            send.published(ids)
            return ids

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
        key: PartitionKeys = None,
        headers: Headers = None,
    ) -> list[PublishResult]:
        """publish_many(), with a PublishResult per event."""
        events = events if isinstance(events, list) else list(events)
        with tracing.sending(stream, len(events)) as send:
            fields = None  # no headers: nothing per event (the common case)
            if headers is not None or send.headers is not None:
                fields = header_fields_for(events, headers, send.headers)
            count = await self._partition_count(stream, key)
            options: dict[str, Any] = {"chunk_size": chunk_size, "maxlen": maxlen, "delay_ms": delay_ms,
                                       "at": at, "dedup_ttl_ms": dedup_ttl_ms}  # fmt: skip
            if count is not None:
                results = await self._routed(stream, count, events, key, dedup_key, fields, options)
            else:
                results = await self._plain_results(
                    stream, events, dedup_key=dedup_key, header_fields=fields, **options
                )
            send.published([result.id for result in results])
            return results

    async def _plain_results(
        self, stream: str, events: list[Event], *, chunk_size: int | None, maxlen: int | None,
        delay_ms: int | None, at: datetime | None, dedup_key: DedupKeys, dedup_ttl_ms: int | None,
        header_fields: list[HeaderFields] | None,
    ) -> list[PublishResult]:  # fmt: skip
        plan = self._planner.plan(
            stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
            dedup_ttl_ms=dedup_ttl_ms, header_fields=header_fields,
        )  # fmt: skip
        return await self._send(plan)

    async def _send(self, plan: PublishPlan) -> list[PublishResult]:
        if plan.fast is not None:
            ids = await self._fast(plan.stream, plan.fast, plan.fast_headers)
            return [PublishResult(entry_id) for entry_id in ids]
        return await self._scripted(plan)

    async def _partition_count(self, stream: str, key: PartitionKeys) -> int | None:
        """The stream's partition count (None: a plain stream), asked of Redis when not known yet."""
        known, count = self._routing.known(stream)
        if not known:
            client = for_key(self.client, stream)
            count = await partition_lookup(client, stream, self._routing.declared.get(stream))
            self._routing.learn(stream, count)
        if count is None and key is not None:
            raise needs_partitions(stream)
        return count

    async def _routed(
        self, stream: str, count: int, events: list[Event], key: PartitionKeys, dedup_key: DedupKeys,
        fields: list[HeaderFields] | None, options: dict[str, Any],
    ) -> list[PublishResult]:  # fmt: skip
        """Publish each partition's share of the call at once (on a cluster, to their nodes in parallel);
        the results in the events' order."""
        dedup = dedup_key if dedup_key is None or callable(dedup_key) else list(dedup_key)
        parts = self._routing.split(stream, count, events, key, dedup)
        plans = _plan_parts(self._planner, parts, events, dedup, fields, options)
        gate = self._gate
        if gate is not None and len(plans) > 1:
            # Every share's partition has room before any share is written, so BacklogFull means nothing
            # was published. Each send then finds its partition's reading fresh: no second read.
            waits = await asyncio.gather(
                *(self._room(gate, plan.stream) for plan in plans), return_exceptions=True
            )
            for refused in waits:
                if refused is not None:
                    raise refused
        # return_exceptions: a part that fails does not leave the others writing after the call has raised.
        outcomes = await asyncio.gather(*(self._send(plan) for plan in plans), return_exceptions=True)
        results: list[PublishResult] = [PublishResult("")] * len(events)
        for part, got in zip(parts, outcomes, strict=True):
            if isinstance(got, BaseException):
                raise got
            for position, result in zip(part.positions, got, strict=True):
                results[position] = result
        return results

    async def _room(self, gate: AsyncBacklogGate, stream: str) -> None:
        link = _wire.Link(for_key(self.client, stream))
        try:
            await gate.wait_for_room(link, stream)
        finally:
            await link.close()

    async def _before_writing(self, link: _wire.Link, stream: str) -> None:
        """What a call checks before its first write: that the server runs the replica wait (once per
        producer), and that the backlog leaves room."""
        wait = self._planner.wait
        if wait is not None and not self._wait_checked:
            await _wire.check_replica_wait(link, wait)
            self._wait_checked = True
        if self._gate is not None:
            await self._gate.wait_for_room(link, stream)

    async def _fast(
        self, stream: str, chunks: list[list[bytes]], headers: list[list[HeaderFields]] | None
    ) -> list[str]:
        # Never trims (maxlen=None): a trimmed publish counts what it drops, so it takes the script.
        ids: list[str] = []
        wait = self._planner.wait
        link = _wire.Link(for_key(self.client, stream))
        try:
            if chunks:
                await self._before_writing(link, stream)
            for sent, chunk in enumerate(chunks, 1):
                extra = None if headers is None else headers[sent - 1]
                if wait is None:
                    ids += await _wire.xadd_many(
                        link, stream, chunk, maxlen=None, approximate=False, headers=extra
                    )
                    continue
                appended = await _wire.xadd_many_waiting(link, stream, chunk, wait, headers=extra)
                ids += appended.ids
                if appended.replicas < wait.replicas:
                    unsent = events_after(chunks, sent)
                    raise replication_timeout(stream, wait, appended.replicas, ids, unsent)
        finally:
            await link.close()
        return ids

    async def _scripted(self, plan: PublishPlan) -> list[PublishResult]:
        stream = plan.stream
        wait = self._planner.wait
        replies: list[publishing.PublishReply] = []
        link = _wire.Link(for_key(self.client, stream))
        try:
            if plan.scripted:
                await self._before_writing(link, stream)
            for sent, call in enumerate(plan.packed(), 1):
                reply = await publishing.publish(link, stream, call, wait)
                replies.append(reply)
                self._drops.add(stream, reply.dropped_by_maxlen)
                if wait is not None and reply.replicas is not None and reply.replicas < wait.replicas:
                    ids = [result.id for result in self._tally(replies)]  # the call ends here
                    unsent = events_after(plan.scripted, sent)
                    raise replication_timeout(stream, wait, reply.replicas, ids, unsent)
        finally:
            await link.close()
        return self._tally(replies)

    def _tally(self, replies: list[publishing.PublishReply]) -> list[PublishResult]:
        """The results of the chunks published, their duplicates counted: once per call, at its end."""
        results = _results(replies)
        self.duplicates += sum(result.duplicate for result in results)
        return results

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
        min_replicas: int | None = None,
        replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS,
        replica_aof: bool = False,
        partitions: Mapping[str, int] | None = None,
    ) -> None:
        settings = _settings(
            max_event_bytes, maxlen, approximate_trim, chunk_size, dedup_ttl_ms, max_backlog,
            backlog_timeout_ms, backlog_check_ms, min_replicas, replica_timeout_ms, replica_aof,
        )  # fmt: skip
        self._planner = Planner(settings)
        self._routing = Routing(partitions)
        self._owns_client = not isinstance(redis, _SyncRedis)
        self.client = sync_client(redis)
        self._gate = SyncBacklogGate.for_settings(settings)
        self._wait_checked = False  # as in Producer; threads racing to check it both check, harmlessly
        self._count_lock = threading.Lock()
        self._drops = DropLog()
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
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        check_dedup_key(dedup_key)
        check_partition_key(key)
        if headers is not None:
            check_headers(headers)
        (entry_id,) = self.publish_many(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
            key=None if key is None else [key], headers=headers,
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
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PublishResult:
        check_dedup_key(dedup_key)
        check_partition_key(key)
        if headers is not None:
            check_headers(headers)
        (result,) = self.publish_many_results(
            stream, [event], maxlen=maxlen, delay_ms=delay_ms, at=at,
            dedup_key=None if dedup_key is None else [dedup_key], dedup_ttl_ms=dedup_ttl_ms,
            key=None if key is None else [key], headers=headers,
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
        key: PartitionKeys = None,
        headers: Headers = None,
    ) -> list[str]:
        events = events if isinstance(events, list) else list(events)
        with tracing.sending(stream, len(events)) as send:
            fields = None  # no headers: nothing per event (the common case)
            if headers is not None or send.headers is not None:
                fields = header_fields_for(events, headers, send.headers)
            count = self._partition_count(stream, key)
            if count is not None:
                options = {"chunk_size": chunk_size, "maxlen": maxlen, "delay_ms": delay_ms, "at": at,
                           "dedup_ttl_ms": dedup_ttl_ms}  # fmt: skip
                routed = self._routed(stream, count, events, key, dedup_key, fields, options)
                ids = [result.id for result in routed]
            else:
                plan = self._planner.plan(
                    stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
                    dedup_ttl_ms=dedup_ttl_ms, header_fields=fields,
                )  # fmt: skip
                if plan.fast is not None:
                    ids = self._fast(stream, plan.fast, plan.fast_headers)
                else:
                    ids = [result.id for result in self._scripted(plan)]
            send.published(ids)
            return ids

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
        key: PartitionKeys = None,
        headers: Headers = None,
    ) -> list[PublishResult]:
        events = events if isinstance(events, list) else list(events)
        with tracing.sending(stream, len(events)) as send:
            fields = None  # no headers: nothing per event (the common case)
            if headers is not None or send.headers is not None:
                fields = header_fields_for(events, headers, send.headers)
            count = self._partition_count(stream, key)
            options: dict[str, Any] = {"chunk_size": chunk_size, "maxlen": maxlen, "delay_ms": delay_ms,
                                       "at": at, "dedup_ttl_ms": dedup_ttl_ms}  # fmt: skip
            if count is not None:
                results = self._routed(stream, count, events, key, dedup_key, fields, options)
            else:
                results = self._plain_results(
                    stream, events, dedup_key=dedup_key, header_fields=fields, **options
                )
            send.published([result.id for result in results])
            return results

    def _plain_results(
        self, stream: str, events: list[Event], *, chunk_size: int | None, maxlen: int | None,
        delay_ms: int | None, at: datetime | None, dedup_key: DedupKeys, dedup_ttl_ms: int | None,
        header_fields: list[HeaderFields] | None,
    ) -> list[PublishResult]:  # fmt: skip
        plan = self._planner.plan(
            stream, events, chunk_size, maxlen, delay_ms=delay_ms, at=at, dedup_keys=dedup_key,
            dedup_ttl_ms=dedup_ttl_ms, header_fields=header_fields,
        )  # fmt: skip
        return self._send(plan)

    def _send(self, plan: PublishPlan) -> list[PublishResult]:
        if plan.fast is not None:
            ids = self._fast(plan.stream, plan.fast, plan.fast_headers)
            return [PublishResult(entry_id) for entry_id in ids]
        return self._scripted(plan)

    def _partition_count(self, stream: str, key: PartitionKeys) -> int | None:
        with self._count_lock:
            known, count = self._routing.known(stream)
        if not known:
            count = partition_lookup_sync(
                for_key_sync(self.client, stream), stream, self._routing.declared.get(stream)
            )
            with self._count_lock:
                self._routing.learn(stream, count)
        if count is None and key is not None:
            raise needs_partitions(stream)
        return count

    def _routed(
        self, stream: str, count: int, events: list[Event], key: PartitionKeys, dedup_key: DedupKeys,
        fields: list[HeaderFields] | None, options: dict[str, Any],
    ) -> list[PublishResult]:  # fmt: skip
        dedup = dedup_key if dedup_key is None or callable(dedup_key) else list(dedup_key)
        with self._count_lock:
            parts = self._routing.split(stream, count, events, key, dedup)
        plans = _plan_parts(self._planner, parts, events, dedup, fields, options)
        if self._gate is not None and len(plans) > 1:
            # As in Producer: room in every share's partition before any is written. One after another,
            # so a call whose partitions are all over waits up to backlog_timeout_ms for each.
            for plan in plans:
                self._gate.wait_for_room(for_key_sync(self.client, plan.stream), plan.stream)
        results: list[PublishResult] = [PublishResult("")] * len(events)
        for part, plan in zip(parts, plans, strict=True):
            got = self._send(plan)
            for position, result in zip(part.positions, got, strict=True):
                results[position] = result
        return results

    def _before_writing(self, client: redis.Redis, stream: str) -> None:
        wait = self._planner.wait
        if wait is not None and not self._wait_checked:
            _wire.check_replica_wait_sync(client, wait)
            self._wait_checked = True
        if self._gate is not None:
            self._gate.wait_for_room(client, stream)

    def _fast(
        self, stream: str, chunks: list[list[bytes]], headers: list[list[HeaderFields]] | None
    ) -> list[str]:
        # Never trims, as in Producer._fast.
        client = for_key_sync(self.client, stream)
        if chunks:
            self._before_writing(client, stream)
        wait = self._planner.wait
        ids: list[str] = []
        for sent, chunk in enumerate(chunks, 1):
            extra = None if headers is None else headers[sent - 1]
            if wait is None:
                ids += _wire.xadd_many_sync(
                    client, stream, chunk, maxlen=None, approximate=False, headers=extra
                )
                continue
            appended = _wire.xadd_many_waiting_sync(client, stream, chunk, wait, headers=extra)
            ids += appended.ids
            if appended.replicas < wait.replicas:
                raise replication_timeout(stream, wait, appended.replicas, ids, events_after(chunks, sent))
        return ids

    def _scripted(self, plan: PublishPlan) -> list[PublishResult]:
        stream = plan.stream
        client = for_key_sync(self.client, stream)
        if plan.scripted:
            self._before_writing(client, stream)
        wait = self._planner.wait
        replies: list[publishing.PublishReply] = []
        for sent, call in enumerate(plan.packed(), 1):
            reply = publishing.publish_sync(client, stream, call, wait)
            replies.append(reply)
            self._drops.add(stream, reply.dropped_by_maxlen)
            if wait is not None and reply.replicas is not None and reply.replicas < wait.replicas:
                ids = [result.id for result in self._tally(replies)]  # the call ends here
                unsent = events_after(plan.scripted, sent)
                raise replication_timeout(stream, wait, reply.replicas, ids, unsent)
        return self._tally(replies)

    def _tally(self, replies: list[publishing.PublishReply]) -> list[PublishResult]:
        results = _results(replies)
        duplicates = sum(result.duplicate for result in results)
        if duplicates:
            with self._count_lock:
                self.duplicates += duplicates
        return results

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


# SyncProducer.__init__'s `redis` parameter hides the module there, so the class is named out here.
_SyncRedis = redis.Redis


def encode_events(events: Sequence[Event], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[bytes]:
    """Payload bytes of events as a producer would write them (for tests and tools)."""
    return Encoder(max_event_bytes).encode_many(events)
