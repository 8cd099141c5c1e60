"""One consumer's loop: fetch -> decode -> handle -> settle, with the reclaimer and the retry mover beside it.

Attempts. The stream's delivery counter counts deliveries, not failures, and resets when an event moves to
the retry stream, so streamq counts attempts itself: an event's attempt number is the failures recorded in
its retry record plus the deliveries of its current entry. A delivery that never settled (the worker was
killed, or lost its lease) therefore counts as an attempt too: an event that crashes every worker it reaches
is dead-lettered after max_attempts deliveries instead of looping forever.

Read-ahead. While entries keep coming, the consumer keeps the server busy during handling: as soon as
batch k is handled, its settlement and the read of batch k+2 go out in one write, and batch k+1 (read the
same way one round earlier) is handled while the server works; the replies are collected after. Client
and server then work at the same time instead of taking turns. Entries read ahead wait, unrenewed, for
the batch in hand, so there is no reading ahead before a first batch has shown that handling is quick,
while handling is slow (READ_AHEAD_MAX_HANDLE_S), and when stopping. A read-ahead that finds nothing ends
the flow: the next read blocks as usual. Reading ahead of partial batches too (not only of full ones) cut
the end-to-end p99 at the max sustainable rate from ~220 ms to under 50 ms (benchmarks/RESULTS.md): a
worker that took turns with the server fell behind a producer at ~90% of its flat-out rate.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _wire, keys
from .batch import Batch, Message
from .errors import ConfigurationError, HandlerTimeout, Reject, Retry, ServerError, describe_error
from .events import PAYLOAD_FIELD, DecodeFailure, Decoder
from ._worker.handlers import HandlerSpec
from .recovery import Hold, LeaseKeeper, Reclaimer
from .settings import ConsumerSettings
from .settle import RECORD_FIELD, Settlement, decode_record

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
MAX_RECONNECT_DELAY_S = 5.0
REAP_CHECK_EVERY_S = 60.0  # how often a consumer looks for idle, empty consumers of its group to delete
# Read ahead only while handling a batch takes less than this: far below any lease (>= 100 ms), and a
# handler this quick holds entries for too short a time to starve other workers of them.
READ_AHEAD_MAX_HANDLE_S = 0.05
# Burst mode's wait for retries about to come due, once a read that does not wait found nothing.
BURST_BLOCK_MS = 100


# Times each reclaimed entry was delivered, per stream key (ids are unique within one stream only).
Deliveries = dict[str, dict[bytes, int]]


def consumer_name(prefix: str) -> str:
    """Unique per process and consumer: a restarted worker never inherits a dead one's identity."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{prefix}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class Consumer:
    """Runs one handler over one stream for one group."""

    def __init__(
        self,
        settings: ConsumerSettings,
        handler: HandlerSpec,
        client: aioredis.Redis,
        lease_keeper: LeaseKeeper,
        executor: Executor | None = None,
        *,
        on_batch: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.client = client
        self.lease_keeper = lease_keeper
        self.executor = executor
        self.name = consumer_name(settings.consumer_prefix)
        self.stream = settings.stream
        self.group = settings.group
        self.retry_key = keys.retry_key(settings.stream, settings.group)
        self.delayed_key = keys.delayed_key(settings.stream, settings.group)
        self.keys = [self.stream, self.retry_key]
        self.decoder: Decoder | None = None
        self.reclaimer = Reclaimer(
            self.keys, self.group, self.name, lease_ms=settings.lease_ms,
            every_ms=settings.reclaim_every_ms, count=settings.batch_size,
        )  # fmt: skip
        self.counts = {
            "fetched": 0,
            "acked": 0,
            "retried": 0,
            "dead": 0,
            "reclaimed": 0,
            "lease_lost": 0,
            "deleted": 0,
            "batches": 0,
        }
        self._on_batch = on_batch
        self._stopping = asyncio.Event()
        # How long the last batch took to decode and handle; unknown at first, so the first batch is not
        # read ahead of (a slow handler would hold two batches for its first call).
        self._last_work_s = math.inf
        self._idle_reads = 0  # reads in a row that found nothing
        self._read_ahead = _wire.pack_read(
            self.group, self.name, self.keys, count=settings.batch_size, block_ms=0
        )
        self._retry_wakeup = asyncio.Event()
        self._mover_wake_at = 0.0  # when the retry mover next looks for due retries (monotonic)
        self._mover_failed: ConfigurationError | None = None
        self._next_reap_check = time.monotonic() + REAP_CHECK_EVERY_S
        self.log = structlog.get_logger("streamq.consumer").bind(
            stream=self.stream, group=self.group, consumer=self.name
        )

    # ------------------------------------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        for key in self.keys:
            if await _wire.ensure_group(self.client, key, self.group):
                self.log.info("group created", key=key)
        await self.client.sadd(keys.REGISTRY_KEY, self.stream)
        if self.decoder is None:
            self.decoder = Decoder(self.handler.resolve_event_types(), self.settings.max_event_bytes)

    async def run(self, stopping: asyncio.Event, *, burst: bool = False) -> None:
        """Process until `stopping` is set (after settling the batch in hand), or in burst mode until idle."""
        self._stopping = stopping
        link = _wire.Link(self.client)
        mover_done = asyncio.Event()
        mover = asyncio.create_task(
            self._move_due_loop(stopping, mover_done), name=f"streamq-retries-{self.name}"
        )
        self.log.info(
            "consumer started",
            batch_size=self.settings.batch_size,
            lease_ms=self.settings.lease_ms,
            max_attempts=self.settings.max_attempts,
            burst=burst,
        )
        delay_s = 0.05
        try:
            await self._with_reconnect(self.setup, stopping)
            while not stopping.is_set():
                try:
                    worked = await self._tick(link, burst=burst)
                    delay_s = 0.05
                    if not worked and burst and await self._drained(link):
                        break
                except TRANSIENT as exc:
                    self.log.warning(
                        "redis unavailable, retrying", error=describe_error(exc), retry_in_s=delay_s
                    )
                    await _sleep_or_stop(stopping, delay_s)
                    delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
                except ResponseError as exc:
                    if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                        raise
                    # The stream or group vanished (a server restarted without persistence, a DEL): recreate
                    # them and go on rather than crash; the log says what happened. A read blocked at that
                    # moment fails with UNBLOCKED (Redis >= 7.0) rather than NOGROUP.
                    self.log.warning("group missing, recreating it", error=str(exc))
                    await self._with_reconnect(self.setup, stopping)
        finally:
            # Tell the mover to stop as well as cancelling it: on Python 3.11 asyncio.wait_for (which
            # redis-py awaits inside its commands) can swallow a cancel that lands just as its inner await
            # completes (CPython gh-86296), and the gather below would then wait forever.
            mover_done.set()
            self._retry_wakeup.set()
            mover.cancel()
            await asyncio.gather(mover, return_exceptions=True)
            await link.close()
            await self._reap_self()
            self.log.info("consumer stopped", **self.counts)

    async def _with_reconnect(self, step: Callable[[], Any], stopping: asyncio.Event) -> None:
        delay_s = 0.05
        while True:
            try:
                await step()
                return
            except TRANSIENT as exc:
                if stopping.is_set():
                    raise
                self.log.warning("redis unavailable, retrying", error=describe_error(exc), retry_in_s=delay_s)
                await _sleep_or_stop(stopping, delay_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)

    async def _reap_self(self) -> None:
        # Leave no empty consumer behind (they pile up otherwise); one that still holds entries stays, so
        # those remain claimable by others.
        try:
            await _wire.reap(self.client, self.keys, self.group, self.name)
        except (RedisError, OSError) as exc:
            self.log.info("could not remove consumer from group", error=describe_error(exc))

    # ------------------------------------------------------------------------------------------ one tick

    async def _tick(self, link: _wire.Link, *, burst: bool) -> bool:
        """Fetch and process one batch; returns False when there was nothing to do."""
        if self._mover_failed is not None:
            raise self._mover_failed
        if time.monotonic() >= self._next_reap_check:
            await self._reap_idle_consumers()
        if self.reclaimer.due():
            claimed = await self.reclaimer.step(link)
            if claimed:
                await self._process_claimed(link, claimed)
                return True
            # Nothing claimable in this step: read as well before the scan goes on, so a long PEL held by
            # live workers (each step scans at most ~10x COUNT of it) slows new entries down, not stops them.
        block_ms = min(self.settings.block_ms, max(self.reclaimer.ms_until_due(), 1))
        if burst:
            # Idle as soon as a read that does not wait finds nothing (and nothing is pending); wait briefly
            # after that only while retries are still to come due.
            block_ms = min(block_ms, BURST_BLOCK_MS) if self._idle_reads else 0
        batches = await _wire.read_group(
            link, self.group, self.name, self.keys, count=self.settings.batch_size, block_ms=block_ms
        )
        if not batches:
            self._idle_reads += 1
            return False
        self._idle_reads = 0
        await self._flow(link, batches)
        return True

    async def _reap_idle_consumers(self) -> None:
        """Delete consumers that hold nothing and have been idle for reap_idle_ms.

        Every process has a consumer name of its own, so names of past processes would pile up in the group
        (one application leaked millions, redis#8635). The delete is an atomic check-then-delete script:
        DELCONSUMER would drop a consumer's pending entries for good.
        """
        self._next_reap_check = time.monotonic() + REAP_CHECK_EVERY_S
        try:
            consumers = await self.client.xinfo_consumers(self.stream, self.group)
        except ResponseError:
            return  # the group is being recreated; try next time
        reaped = []
        for info in consumers:
            name = _wire.decode_id(info["name"])
            # `idle`: since the consumer's last read attempt from 7.2 on, its last successful one before.
            idle = int(info["idle"]) >= self.settings.reap_idle_ms
            candidate = name != self.name and int(info["pending"]) == 0 and idle
            try:
                if candidate and await _wire.reap(self.client, self.keys, self.group, name):
                    reaped.append(name)
            except ResponseError as exc:  # an ACL without XGROUP DELCONSUMER: keep working, say why
                self.log.warning("could not remove idle consumers", error=describe_error(exc))
                break
        if reaped:
            self.log.info("removed idle consumers holding nothing", consumers=reaped[:20], count=len(reaped))

    async def _drained(self, link: _wire.Link) -> bool:
        """Nothing left for this group: no pending entries anywhere, no retries waiting or due."""
        if self.reclaimer.scanning:
            return False
        if await _wire.group_backlog(self.client, self.keys, self.group, self.delayed_key):
            return False
        # The retry mover may have moved a retry into the retry stream after the read that found nothing
        # and before the check above; one more read sees it (nothing can be moved after the check).
        batches = await _wire.read_group(
            link, self.group, self.name, self.keys, count=self.settings.batch_size, block_ms=0
        )
        if batches:
            self._idle_reads = 0
            await self._flow(link, batches)
            return False
        return True

    async def _process_claimed(self, link: _wire.Link, claimed: list[_wire.Claimed]) -> None:
        batches = []
        deliveries: Deliveries = {}
        deleted_by_key: dict[str, list[bytes]] = {}
        for step in claimed:
            if step.deleted:
                deleted_by_key[step.batch.key] = step.deleted
            if step.batch.ids:
                batches.append(step.batch)
                deliveries[step.batch.key] = step.deliveries  # ids are unique per key only
                self.counts["reclaimed"] += len(step.batch.ids)
                self.log.info(
                    "reclaimed entries of a dead or stalled worker",
                    key=step.batch.key,
                    count=len(step.batch.ids),
                    entry_ids=_first_ids(step.batch.ids),
                )
        if deleted_by_key:
            await self._ack_deleted(link, deleted_by_key)
        if batches:
            stats = keys.stats_key(self.stream, self.group)
            await self.client.hincrby(stats, "reclaimed", sum(len(b.ids) for b in batches))
            await self._process(link, batches, deliveries)

    async def _ack_deleted(self, link: _wire.Link, deleted_by_key: dict[str, list[bytes]]) -> None:
        """Pending entries deleted or trimmed from the stream: nothing to process, acknowledge them."""
        total = 0
        for key, ids in deleted_by_key.items():
            self.log.warning(
                "pending entries were deleted or trimmed before processing; acknowledging",
                key=key,
                count=len(ids),
                entry_ids=_first_ids(ids),
            )
            # Count the ids, not XACK's reply: from Redis 7.0 XAUTOCLAIM has already dropped them from the
            # PEL, so the XACK (needed before 7.0) removes nothing there and would report 0.
            await link.call("XACK", key, self.group, *ids)
            total += len(ids)
        self.counts["deleted"] += total
        await self.client.hincrby(keys.stats_key(self.stream, self.group), "deleted_pending", total)

    # ------------------------------------------------------------------------------------------ a batch

    def _messages(
        self,
        batch: _wire.StreamBatch,
        deliveries: Deliveries | None,
        settlement: Settlement,
        now_ms: int,
    ) -> list[Message[Any]]:
        """The messages of one stream key's entries; entries without a payload go to the dead letters."""
        counts = deliveries.get(batch.key, {}) if deliveries else {}
        if batch.key == self.stream:
            return self._stream_messages(batch, counts, settlement, now_ms)
        out: list[Message[Any]] = []
        for entry_id, fields in zip(batch.ids, batch.fields, strict=True):
            delivered = counts.get(entry_id, 1)
            raw = _wire.payload_of(fields, RECORD_FIELD)
            record = decode_record(raw) if raw is not None else None
            if record is None:
                message: Message[Any] = Message(
                    0, batch.key, entry_id, _wire.decode_id(entry_id), delivered, None
                )
                settlement.dead(
                    message,
                    now_ms,
                    "undecodable",
                    "retry entry without a valid record",
                    raw_fields=fields or [],
                )
                continue
            out.append(
                Message(
                    0,
                    batch.key,
                    entry_id,
                    record.origin_id,
                    record.failures + delivered,
                    record.payload,
                    record.first_failure_ms,
                    record.error,
                )
            )
        return out

    def _stream_messages(
        self, batch: _wire.StreamBatch, counts: dict[bytes, int], settlement: Settlement, now_ms: int
    ) -> list[Message[Any]]:
        """_messages for entries of the stream itself: the hot path, one pass with little per event."""
        out: list[Message[Any]] = []
        key = batch.key
        for entry_id, fields in zip(batch.ids, batch.fields, strict=True):
            payload = _wire.payload_of(fields, PAYLOAD_FIELD)
            delivered = counts.get(entry_id, 1) if counts else 1
            message: Message[Any] = Message(0, key, entry_id, entry_id.decode(), delivered, payload)
            if payload is None:
                settlement.dead(
                    message, now_ms, "undecodable", "entry has no 'd' payload field", raw_fields=fields or []
                )
                continue
            out.append(message)
        return out

    def _hold(self, batches: list[_wire.StreamBatch]) -> list[Hold]:
        renew_every_ms = self.settings.renew_every_ms
        return [self.lease_keeper.hold(b.key, self.group, self.name, b.ids, renew_every_ms) for b in batches]

    def _release(self, holds: list[Hold]) -> None:
        for held in holds:
            self.lease_keeper.release(held)

    def _may_read_ahead(self, batches: list[_wire.StreamBatch]) -> bool:
        return (
            self.settings.read_ahead
            and not self._stopping.is_set()
            and self._last_work_s < READ_AHEAD_MAX_HANDLE_S
            and any(b.ids for b in batches)
            and not self.reclaimer.due()
            and time.monotonic() < self._next_reap_check
        )

    async def _flow(self, link: _wire.Link, first: list[_wire.StreamBatch]) -> None:
        """Handle `first` and, while entries keep coming, the batches after it, reading ahead.

        One write per batch carries its settlement and the next read-ahead; see the module docstring.
        Returns once a batch is handled without a read-ahead, with every settlement confirmed.
        """
        batches, holds = first, self._hold(first)  # received, not handled yet
        work: Settlement | None = None  # handled, not sent yet
        work_holds: list[Hold] = []
        sent: Settlement | None = None  # sent, its replies still owed
        sent_replies = 0
        reading = False  # a read-ahead was sent, its reply owed after the settlement's
        try:
            if self._may_read_ahead(batches):
                await link.send(self._read_ahead, 1)
                reading = True
            while batches:
                work, work_holds = await self._work(batches, None), holds
                batches, holds = [], []
                replies = await link.receive(link.owed) if link.owed else []
                if reading:
                    reading = False
                    batches = _wire.read_reply(replies[-1])
                    holds = self._hold(batches)
                if sent is not None:
                    self._settled(sent, await self._confirm(link, sent, replies[:sent_replies]))
                    sent = None
                # The settlement decides these entries' fate from here on: no more renewals needed.
                self._release(work_holds)
                reading = bool(batches) and self._may_read_ahead(batches)
                payload, sent_replies = _wire.pack_settle(self.group, self.name, work.plans())
                if reading:
                    payload += self._read_ahead
                sent, work = work, None
                await link.send(payload, sent_replies + reading)
            if sent is not None:
                replies = await link.receive(link.owed)
                self._settled(sent, await self._confirm(link, sent, replies))
                sent = None
        except TRANSIENT as exc:
            # The connection broke with replies owed. What was handled is settled now, with retries; a
            # batch received and not handled yet is handled; one whose reply was lost stays pending under
            # this consumer and is reclaimed after the lease.
            self.log.warning("connection lost mid-flow, settling what was handled", error=describe_error(exc))
            for settlement in (sent, work):
                if settlement is not None:
                    await self._settle(link, settlement, resent=settlement is sent)
            if batches:
                await self._process_held(link, batches, holds)
        finally:
            self._release(holds)
            self._release(work_holds)
            if link.owed:
                # Left by an error that is not the connection's (an error reply, a cancel): the replies
                # still owed would be read as answers to the next commands.
                await link.abandon()

    async def _confirm(self, link: _wire.Link, settlement: Settlement, replies: list[Any]) -> _wire.Settled:
        """The replies of a settlement sent ahead; settled again in a round trip if the scripts were gone."""
        try:
            return _wire.settled(replies)
        except NoScriptError:
            # The server restarted or flushed its scripts: nothing of that settlement ran.
            await link.load_scripts()
            return await _wire.settle(link, self.group, self.name, settlement.plans())

    async def _work(self, batches: list[_wire.StreamBatch], deliveries: Deliveries | None) -> Settlement:
        """Decode and handle one fetch; returns what to settle."""
        started = time.perf_counter()
        now_ms = _now_ms()
        settlement = Settlement(self.settings, self.name, {b.key: (b.ids[0], b.ids[-1]) for b in batches})
        messages: list[Message[Any]] = []
        for b in batches:
            messages.extend(self._messages(b, deliveries, settlement, now_ms))
        self.counts["fetched"] += sum(len(b.ids) for b in batches)
        ready = self._decode(messages, settlement, now_ms)
        if ready:
            await self._handle(ready, settlement)
        self._last_work_s = time.perf_counter() - started
        return settlement

    async def _process(
        self, link: _wire.Link, batches: list[_wire.StreamBatch], deliveries: Deliveries | None
    ) -> None:
        """Handle and settle one fetch, one step after the other (reclaimed entries)."""
        await self._process_held(link, batches, self._hold(batches), deliveries)

    async def _process_held(
        self,
        link: _wire.Link,
        batches: list[_wire.StreamBatch],
        holds: list[Hold],
        deliveries: Deliveries | None = None,
    ) -> None:
        try:
            settlement = await self._work(batches, deliveries)
        finally:
            self._release(holds)
        await self._settle(link, settlement)

    def _decode(
        self, messages: list[Message[Any]], settlement: Settlement, now_ms: int
    ) -> list[Message[Any]]:
        assert self.decoder is not None
        decoded = self.decoder.decode_batch([m.payload for m in messages])
        max_attempts = self.settings.max_attempts
        ready = []
        for message, event in zip(messages, decoded, strict=True):
            if isinstance(event, DecodeFailure):
                self.log.warning(
                    "undecodable event, dead-lettering",
                    entry_id=message.id,
                    kind=event.kind,
                    error=event.message,
                )
                settlement.dead(
                    message,
                    now_ms,
                    event.kind,
                    event.message,
                    error_type=event.error_type,
                    error_text=event.message,
                )
            elif message.attempt > max_attempts:
                # Its earlier deliveries never settled: the workers holding it died or lost their leases.
                detail = (
                    f"delivered {message.attempt} times without a result (max_attempts={max_attempts}):"
                    " workers crashed or lost their lease while holding it"
                )
                self.log.warning(
                    "event exhausted its attempts in crashes, dead-lettering",
                    entry_id=message.id,
                    attempt=message.attempt,
                )
                settlement.dead(
                    message,
                    now_ms,
                    "max_attempts",
                    detail,
                    error_type="WorkerLost",
                    error_text=message.previous_error,
                )
            else:
                message.event = event
                ready.append(message)
        return ready

    async def _handle(self, messages: list[Message[Any]], settlement: Settlement) -> None:
        batch: Batch[Any] = Batch(self.stream, self.group, self.name, messages)
        error: BaseException | None = None
        timeout_ms = self.settings.handler_timeout_ms
        try:
            call: Awaitable[None]
            if self.handler.is_async:
                call = self.handler.invoke(batch)
            else:
                loop = asyncio.get_running_loop()
                call = loop.run_in_executor(self.executor, self.handler.invoke_sync, batch)
            if timeout_ms is None:
                await call
            else:
                async with asyncio.timeout(timeout_ms / 1000):
                    await call
        except TimeoutError:
            error = HandlerTimeout(f"handler did not finish within {timeout_ms} ms")
        except Exception as exc:
            error = exc
        finally:
            batch._seal()
        now_ms = _now_ms()
        if error is not None:
            self.log.warning(
                "handler failed",
                error=describe_error(error),
                count=len(messages),
                first_id=messages[0].id,
                last_id=messages[-1].id,
            )
        if error is None and not batch._chosen:
            settlement.ack_all(messages)  # the common case, without a step per message
            return
        for message in messages:
            outcome = batch.outcome(message)
            if outcome is None:
                if error is None:
                    settlement.ack(message)
                elif isinstance(error, Retry):
                    settlement.fail(message, now_ms, error, delay_ms=error.delay_ms, reason=error.reason)
                elif isinstance(error, Reject):
                    settlement.dead(
                        message,
                        now_ms,
                        "rejected",
                        error.reason,
                        error_type="Reject",
                        error_text=error.reason,
                    )
                else:
                    settlement.fail(message, now_ms, error)
            elif outcome.kind == "ack":
                settlement.ack(message)
            elif outcome.kind == "retry":
                settlement.fail(
                    message, now_ms, outcome.error, delay_ms=outcome.delay_ms, reason=outcome.reason
                )
            elif outcome.kind == "fail":
                settlement.fail(message, now_ms, outcome.error)
            else:
                error_type = type(outcome.error).__name__ if outcome.error else "Reject"
                settlement.dead(
                    message,
                    now_ms,
                    "rejected",
                    outcome.reason,
                    error_type=error_type,
                    error_text=str(outcome.error or outcome.reason),
                )

    async def _settle(self, link: _wire.Link, settlement: Settlement, *, resent: bool = False) -> None:
        """Settle in one round trip; on a connection error keep the lease and try again.

        Settling is idempotent (the scripts act only on entries still pending, and the fenced ones only on
        entries this consumer holds), so running it again after a reply was lost cannot double anything.
        `resent`: it may have run already, so entries no longer pending are not counted as lost leases.
        """
        plans = settlement.plans()
        holds = [
            self.lease_keeper.hold(p.key, self.group, self.name, _plan_ids(p), self.settings.renew_every_ms)
            for p in plans
        ]
        delay_s = 0.05
        try:
            while True:
                try:
                    done = await _wire.settle(link, self.group, self.name, plans, resent=resent)
                    break
                except TRANSIENT as exc:
                    self.log.warning("settle failed, retrying", error=describe_error(exc), retry_in_s=delay_s)
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
                    resent = True
        finally:
            self._release(holds)
        self._settled(settlement, done)

    def _settled(self, settlement: Settlement, done: _wire.Settled) -> None:
        """Count and log a confirmed settlement."""
        for name, value in settlement.counts.items():
            self.counts[name] += value
        self.counts["batches"] += 1
        if done.lost:
            self.counts["lease_lost"] += done.lost
            self.log.warning(
                "lease lost before settling: another worker took these entries and will process"
                " them again, or already has (counted as lease_lost)",
                count=done.lost,
                entry_ids=_first_ids(done.lost_ids),
            )
        if settlement.counts["retried"]:
            due = time.monotonic() + settlement.min_retry_delay_ms() / 1000
            if due < self._mover_wake_at:
                self._mover_wake_at = due
                self._retry_wakeup.set()
        if settlement.counts["dead"]:
            self.log.warning("dead-lettered", count=settlement.counts["dead"])
        if self._on_batch is not None:
            self._on_batch(settlement.counts)

    # ------------------------------------------------------------------------------------------ retries

    async def _move_due_loop(self, stopping: asyncio.Event, done: asyncio.Event) -> None:
        """Move due retries into the retry stream; wakes at the next due time or on a new retry."""
        link = _wire.Link(self.client)
        poll_s = self.settings.retry_poll_ms / 1000
        try:
            while not (stopping.is_set() or done.is_set()):
                wait_s = poll_s
                try:
                    moved, next_ms = await _wire.move_due(link, self.delayed_key, self.retry_key, 1000)
                    if moved:
                        self.log.debug("retries due", count=moved)
                        continue
                    if next_ms >= 0:
                        wait_s = min(poll_s, next_ms / 1000)
                except TRANSIENT as exc:
                    self.log.debug("retry mover waiting for redis", error=describe_error(exc))
                    wait_s = min(1.0, poll_s * 2)
                except ConfigurationError as exc:
                    # Waiting will not help (an ACL rule missing, a key of another type): the consumer stops
                    # with this error rather than keep retries from ever coming back.
                    self._mover_failed = exc
                    break
                except (ResponseError, ServerError) as exc:
                    self.log.warning("retry mover error", error=str(exc))
                    wait_s = 1.0
                self._mover_wake_at = time.monotonic() + wait_s
                while not done.is_set() and (left_s := self._mover_wake_at - time.monotonic()) > 0:
                    # Woken early only by a retry due before the planned wake-up (see _settled), not by
                    # every batch that schedules one: most are due later and the zset says when.
                    self._retry_wakeup.clear()
                    try:
                        async with asyncio.timeout(left_s):
                            await self._retry_wakeup.wait()
                    except TimeoutError:
                        pass
        finally:
            await link.close()


async def _sleep_or_stop(stopping: asyncio.Event, delay_s: float) -> None:
    try:
        async with asyncio.timeout(delay_s):
            await stopping.wait()
    except TimeoutError:
        pass


def _plan_ids(plan: _wire.SettlePlan) -> list[bytes]:
    return [*plan.acks, *(r[0] for r in plan.retries), *(d[0] for d in plan.dead)]


def _first_ids(ids: Any) -> list[str]:
    return [_wire.decode_id(i) for i in list(ids)[:20]]
