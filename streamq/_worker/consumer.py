"""One consumer's loop: it wires the steps of an event's path together and does little else.

    reading.py      XREADGROUP of new entries (stream and retry stream); holding.py holds them from then on,
                    leases.py renews the holds, and a cancelled consumer gives back what it held
    reclaiming.py   XAUTOCLAIM of entries whose worker died; repeat suspects are handled one at a time
    decoding.py     entries -> Messages with their events, or Rejections
    handling.py     the user's handler(s) over the messages -> one Outcome per message
    settling.py     outcomes and rejections -> a settlement plan per key, sent in one round trip
    retries.py      the retry mover, beside the loop, under supervision.py
    scheduling.py   the mover of delayed events into the stream, beside the loop (any group's worker)
    trimming.py     retention: trims what every group has acknowledged, beside the loop
    control.py      pause and resume, and the group-wide rate limit
    lanes.py        concurrency=N: the lanes of one consumer, and the one copy of the loops above they share
    reaping.py      consumers that hold nothing leave the group

Read-ahead. While entries keep coming, the consumer keeps the server busy during handling: as soon as
batch k is handled, its settlement and the read of batch k+2 go out in one write, and batch k+1 (read the
same way one round earlier) is handled while the server works; the replies are collected after. Client
and server then work at the same time instead of taking turns. The entries of a read-ahead are leased
from the moment it is sent (a hold whose ids are not known yet renews everything the consumer holds), so a
batch that turns slow cannot expose the next one to a rival worker. There is no reading ahead before a
first batch has shown that handling is quick, while handling is slow (READ_AHEAD_MAX_HANDLE_S), and when
stopping. A read-ahead that finds nothing ends the flow: the next read blocks as usual.

Lanes (concurrency=N). A consumer with concurrency N runs as N Consumers of the same stream and group, each
with its own consumer name: Redis keeps each lane's pending entries apart, its leases are renewed and its
batches settled on their own, and a lane that loses a lease or is cancelled touches only its own batch.
What a process needs once per consumer rather than per lane (pause state and rate limiter, retry mover,
scheduled mover, trimmer, reaping idle consumers) belongs to the first lane, the lead, and is shared through
Lanes: those loops start with the first lane to run and stop with the last one to end, so a lane that
finishes early (a burst run drained, a shutdown) does not take the retry mover from lanes still working.

Cancellation (a task running App.run cancelled, or the grace period over): the consumer stops reading,
settles a batch already handled, and gives back the entries it holds unhandled (they are marked idle, so
any worker reclaims them at once), then re-raises.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .. import _wire, keys, tracing
from .._wire import partitioning
from ..batch import Message
from ..errors import ConfigurationError, describe_error
from ..events import Decoder
from ..settings import ConsumerSettings
from .control import Control, read_count
from .decoding import decode
from .handlers import HandlerSet
from .handling import handle
from .holding import GIVE_BACK_TIMEOUT_S, Holdings
from .lanes import Lanes
from .leases import Hold, LeaseKeeper
from .reading import Reader
from .reaping import reap_idle, reap_self
from .reclaiming import Deliveries, Reclaimer, sort_claimed
from .retries import RetryMover
from .scheduling import ScheduledMover
from .settling import Settlement
from .trimming import Trimmer

TRANSIENT = _wire.TRANSIENT
MAX_RECONNECT_DELAY_S = 5.0
REAP_CHECK_EVERY_S = 60.0  # how often a consumer looks for idle, empty consumers of its group to delete
# Read ahead only while handling a batch takes less than this: far below any lease (>= 100 ms), and a
# handler this quick holds entries for too short a time to starve other workers of them.
READ_AHEAD_MAX_HANDLE_S = 0.05
# Burst mode's wait for retries about to come due, once a read that does not wait found nothing.
BURST_BLOCK_MS = 100


def consumer_name(prefix: str) -> str:
    """Unique per process and consumer: a restarted worker never inherits a dead one's identity."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{prefix}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class Consumer:
    """Runs the handlers of one stream and group (one lane of them, with concurrency above 1)."""

    # Built by a lead lane (_own_chores), shared by its other lanes.
    control: Control
    mover: RetryMover
    trimmer: Trimmer
    scheduler: ScheduledMover
    lanes: Lanes

    def __init__(
        self,
        settings: ConsumerSettings,
        handlers: HandlerSet,
        client: aioredis.Redis,
        lease_keeper: LeaseKeeper,
        executor: Executor | None = None,
        *,
        on_batch: Callable[[dict[str, int]], None] | None = None,
        lead: Consumer | None = None,
        lane: int = 0,
        registry_client: aioredis.Redis | None = None,
        parent_client: aioredis.Redis | None = None,
    ) -> None:
        """`lead`: the first lane of this consumer, whose pause state, rate limiter and background loops
        this lane shares (None: this consumer is a lead, or has one lane). `client` serves the stream's
        keys; `registry_client` the registry's and `parent_client` the logical stream's when the stream is a
        partition (on a cluster, other slots; None: `client`)."""
        self.settings = settings
        self.handlers = handlers
        self.client = client
        self.registry_client = registry_client if registry_client is not None else client
        self.lease_keeper = lease_keeper
        self.executor = executor
        self.name = consumer_name(settings.consumer_prefix)
        self.stream = settings.stream
        self.group = settings.group
        self.retry_key = keys.retry_key(settings.stream, settings.group)
        self.keys = [self.stream, self.retry_key]
        self.decoder: Decoder | None = None
        self.lane = lane
        self.log = structlog.get_logger("streamq.consumer").bind(
            stream=self.stream, group=self.group, consumer=self.name
        )
        if settings.concurrency > 1:
            self.log = self.log.bind(lane=lane)
        # A rate limit caps what one read takes, and one claim of a dead worker's entries likewise: each is
        # admitted whole and handed to the handler at once, so more than the rate would be a burst above it.
        batch_size = read_count(settings.batch_size, settings.rate_limit)
        self.reader = Reader(self.group, self.name, self.keys, batch_size=batch_size)
        # An ordered partition reads only its retries while one waits, so that new events stay behind it.
        self.retries_reader = Reader(self.group, self.name, [self.retry_key], batch_size=batch_size)
        self.reclaimer = Reclaimer(
            self.keys, self.group, self.name, lease_ms=settings.lease_ms,
            every_ms=settings.reclaim_every_ms, count=batch_size,
        )  # fmt: skip
        self.counts = {
            "fetched": 0, "acked": 0, "retried": 0, "deferred": 0, "dead": 0, "held_back": 0, "reclaimed": 0,
            "lease_lost": 0, "deleted": 0, "batches": 0, "loop_restarts": 0, "given_back": 0,
            "scheduled_moved": 0, "trimmed": 0, "dropped_over_max_len": 0, "dead_letters_expired": 0,
        }  # fmt: skip
        if lead is not None:
            self.control, self.mover = lead.control, lead.mover
            self.trimmer, self.scheduler, self.lanes = lead.trimmer, lead.scheduler, lead.lanes
        else:
            self._own_chores(client, settings, parent_client)
        self.fatal: BaseException | None = None  # a background part failed for good: the consumer stops
        self._on_batch = on_batch
        # Observed per batch, never per event (observing.py reads these; the metrics set `observer`, called
        # with the events and the decode + handle seconds of each settled batch).
        self.observer: Callable[[int, float], None] | None = None
        self.handling = 0  # events being decoded and handled now
        self.unsettled: deque[tuple[int, float]] = deque()  # (events, seconds) handled, settlement owed
        self.ready = False  # its groups are made and Redis answered its last call
        self.redis_errors = 0  # Redis calls that failed on the connection (then retried)
        self.reconnects = 0  # times it worked again after such failures
        self._stopping = asyncio.Event()
        # How long the last batch took to decode and handle; unknown at first, so the first batch is not
        # read ahead of (a slow handler would hold two batches for its first call).
        self._last_work_s = math.inf
        self._idle_reads = 0  # reads in a row that found nothing
        # Idle consumers of the group are looked for by the lead lane only: once per process is enough.
        self._next_reap_check = time.monotonic() + REAP_CHECK_EVERY_S if lead is None else math.inf
        self.holdings = Holdings(
            lease_keeper, client, self.group, self.name, renew_every_ms=settings.renew_every_ms, log=self.log
        )
        # The last id of the stream up to which everything this consumer read is settled (confirmed):
        # where a group deleted under it is recreated.
        self._settled_through: bytes | None = None

    def _own_chores(
        self, client: aioredis.Redis, settings: ConsumerSettings, parent_client: aioredis.Redis | None
    ) -> None:
        """The pause state, rate limiter and background loops of a lead lane, shared with its other lanes."""
        self.control = Control(
            client, settings, log=self.log, counts=self.counts, parent_client=parent_client,
            consumer=self.name,
        )  # fmt: skip
        self.mover = RetryMover(
            client,
            keys.delayed_key(settings.stream, settings.group),
            self.retry_key,
            poll_ms=settings.retry_poll_ms,
            log=self.log,
            paused=lambda: self.control.paused,
            wait_resumed=self.control.wait_resumed,
        )
        self.trimmer = Trimmer(client, settings, log=self.log, counts=self.counts)
        self.scheduler = ScheduledMover(
            client, self.stream, poll_ms=settings.scheduled_poll_ms, log=self.log, counts=self.counts,
            paused=lambda: self.control.stream_paused, wait_resumed=self.control.wait_resumed,
        )  # fmt: skip
        self.lanes = Lanes(
            [
                ("retry mover", self.mover), ("control", self.control), ("scheduled mover", self.scheduler),
                ("trimmer", self.trimmer),
            ],
            log=self.log,
            counts=self.counts,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        partitions = await self.client.get(keys.partitions_key(self.stream))
        if partitions is not None:
            raise ConfigurationError(
                f"stream {self.stream!r} is partitioned into {int(partitions)}: its events are in its"
                f" partitions, which this consumer would never read; give it partitions={int(partitions)}"
            )
        for key in self.keys:
            if await _wire.ensure_group(self.client, key, self.group):
                self.log.info("group created", key=key)
        await _wire.register_stream(self.registry_client, keys.REGISTRY_KEY, self.stream)
        if self.decoder is None:
            self.decoder = Decoder(self.handlers.resolve_event_types(), self.settings.max_event_bytes)

    def fail(self, error: BaseException) -> None:
        """Stop this consumer with `error` (a background part that cannot go on)."""
        if self.fatal is None:
            self.fatal = error
        self._stopping.set()

    async def run(self, stopping: asyncio.Event, *, burst: bool = False) -> None:
        """Process until `stopping` is set (after settling the batch in hand), or in burst mode until idle.

        Raises what stopped it for good (self.fatal, a configuration error); cancelled, it settles or gives
        back what it holds and re-raises.
        """
        self._stopping = stopping
        self.control.stopping = stopping  # a rate-limit wait ends when the consumer is told to stop
        link = _wire.Link(self.client)
        self.lanes.enter(self)
        self.log.info(
            "consumer started",
            batch_size=self.settings.batch_size,
            lease_ms=self.settings.lease_ms,
            max_attempts=self.settings.max_attempts,
            max_deliveries=self.settings.max_deliveries,
            burst=burst,
            concurrency=self.settings.concurrency,
        )
        delay_s = 0.05
        try:
            await self._with_reconnect(self.setup, stopping)
            self.ready = True
            while not stopping.is_set():
                try:
                    worked = await self._tick(link, burst=burst)
                    if not self.ready:
                        self.ready = True
                        self.reconnects += 1
                    delay_s = 0.05
                    if not worked and burst and await self._drained(link):
                        break
                except (*TRANSIENT, ResponseError) as exc:
                    if not _wire.waits_out(exc):
                        if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                            raise
                        # The stream or group vanished (XGROUP DESTROY, a DEL, a server restarted without
                        # persistence). A read blocked at that moment fails with UNBLOCKED (Redis >= 7.0).
                        await self._with_reconnect(self._recreate_group, stopping)
                        continue
                    # Unreachable, or it cannot serve for now (another client's long script: BUSY).
                    self.redis_errors += 1
                    self.ready = False
                    self.log.warning(
                        "redis unavailable, retrying", error=describe_error(exc), retry_in_s=delay_s
                    )
                    await _sleep_or_stop(stopping, delay_s)
                    delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
            self._raise_if_failed()
        except asyncio.CancelledError:
            self.counts["given_back"] += await self.holdings.give_back()
            raise
        finally:
            self.ready = False
            self.unsettled.clear()
            await self.lanes.leave(self)
            if not self.lanes.running:  # the last lane out: the worker stops
                await self.control.leave()
            await link.close()
            await reap_self(self.client, self.keys, self.group, self.name, self.log)
            self.log.info("consumer stopped", **self.counts)

    def _raise_if_failed(self) -> None:
        if self.fatal is None and self.lease_keeper.fatal is not None:
            self.fatal = self.lease_keeper.fatal
        if self.fatal is not None:
            raise self.fatal

    async def _with_reconnect(self, step: Callable[[], Any], stopping: asyncio.Event) -> None:
        delay_s = 0.05
        while True:
            try:
                await step()
                return
            except (*TRANSIENT, ResponseError) as exc:
                if not _wire.waits_out(exc):
                    raise
                self.redis_errors += 1
                if stopping.is_set():
                    raise
                self.log.warning("redis unavailable, retrying", error=describe_error(exc), retry_in_s=delay_s)
                await _sleep_or_stop(stopping, delay_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)

    async def _recreate_group(self) -> None:
        """Recreate a vanished group where this consumer's settled work ends, never back at the start.

        Starting at 0 would hand every entry of the stream to the handler again (XGROUP DESTROY under a
        running worker re-handled all of them). Not where it had read up to either: a batch handled but not
        yet settled (its settlement failed on the missing group) would then be lost, failures included. So
        the group restarts after the last entry whose settlement this consumer saw confirmed, and racing
        workers leave it at the earliest of theirs (see ENSURE_GROUP_AT): what was in flight is delivered
        again, a duplicate rather than a loss. A stream that is gone too starts at 0: its entries are new.
        The retry stream starts at 0: it holds only unsettled retries (settled ones are deleted).
        """
        settled = self._settled_through
        at = settled.decode() if settled is not None else "0"
        outcome = await _wire.ensure_group_at(self.client, self.stream, self.group, at)
        await _wire.ensure_group(self.client, self.retry_key, self.group)
        self.log.warning(
            "group was missing, recreated it after the last entry this consumer settled",
            at=at,
            created=outcome == 1,
            moved_back=outcome == 2,
        )

    # ------------------------------------------------------------------------------------------ one tick

    async def _tick(self, link: _wire.Link, *, burst: bool) -> bool:
        """Fetch and process one batch; returns False when there was nothing to do."""
        self._raise_if_failed()
        if time.monotonic() >= self._next_reap_check:
            self._next_reap_check = time.monotonic() + REAP_CHECK_EVERY_S
            await reap_idle(
                self.client, self.stream, self.keys, self.group, self.name, self.settings.reap_idle_ms,
                self.log,
            )  # fmt: skip
        if self.control.paused:
            # Paused: nothing new is read or reclaimed; what is held was settled before this tick.
            await self.control.wait_resumed(self.settings.block_ms / 1000)
            self._idle_reads += 1
            return False
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
        reader = self.reader
        if self.settings.ordered and not await partitioning.may_read_new(
            link, self.stream, self.group, self.name
        ):
            reader = self.retries_reader
        batches = await reader.read(link, block_ms=block_ms)
        if not batches:
            self._idle_reads += 1
            return False
        self._idle_reads = 0
        await self._flow(link, batches)
        return True

    async def _drained(self, link: _wire.Link) -> bool:
        """Nothing left for this group: no pending entries anywhere, no retries waiting or due."""
        if self.control.paused:
            return True  # nothing it may do until resumed: a burst run ends here
        if self.reclaimer.scanning:
            return False
        if await _wire.group_backlog(self.client, self.keys, self.group, self.mover.delayed_key):
            return False
        # The retry mover may have moved a retry into the retry stream after the read that found nothing
        # and before the check above; one more read sees it (nothing can be moved after the check).
        batches = await self.reader.read(link, block_ms=0)
        if batches:
            self._idle_reads = 0
            await self._flow(link, batches)
            return False
        return True

    async def _process_claimed(self, link: _wire.Link, claimed: list[_wire.Claimed]) -> None:
        work = sort_claimed(claimed)
        if work.deleted:
            await self._ack_deleted(link, work.deleted)
        if not work.claimed:
            return
        self.counts["reclaimed"] += work.claimed
        self.log.info(
            "reclaimed entries of a dead or stalled worker",
            count=work.claimed,
            handler_calls=len(work.batches),
            entry_ids=_first_ids(i for batches in work.batches for b in batches for i in b.ids),
        )
        await _wire.count(self.client, keys.stats_key(self.stream, self.group), "reclaimed", work.claimed)
        holds = [self.holdings.read(batches) for batches in work.batches]
        # Repeat suspects are handled one at a time, but the claim counted a delivery for all of them at
        # once. Should one of them kill this worker, those not yet handed to the handler would be charged
        # a lost delivery they never had, and the batch-mates queued behind a poison event ended in the
        # dead letters as max_deliveries with it. So the claim's delivery is taken back at once from every
        # suspect but the first, and counted again just before each one is handled.
        first_alone = len(work.batches) - work.alone
        try:
            await self._count_deliveries(link, work.batches[first_alone + 1 :], work.deliveries, -1)
            for index, batches in enumerate(work.batches):
                if index > first_alone:
                    await self._count_deliveries(link, [batches], work.deliveries, 0, holds[index])
                await self._process_held(link, batches, holds[index], work.deliveries)
                holds[index] = []
        finally:
            for held in holds:
                self.holdings.release(held)

    async def _count_deliveries(
        self,
        link: _wire.Link,
        suspects: list[list[_wire.StreamBatch]],
        deliveries: Deliveries,
        offset: int,
        holds: Sequence[Hold] = (),
    ) -> None:
        """Set the delivery counter of repeat suspects to what the claim made it, plus `offset`: a fenced
        script (only entries this consumer still holds), whose XCLAIM JUSTID doubles as a renewal."""
        lost = {entry_id for held in holds for entry_id in held.lost}
        counts: dict[str, list[tuple[bytes, int]]] = {}
        for (batch,) in suspects:
            (entry_id,) = batch.ids
            if entry_id not in lost:
                counts.setdefault(batch.key, []).append((entry_id, deliveries[batch.key][entry_id] + offset))
        await _wire.set_deliveries(link, self.group, self.name, counts)

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
        await _wire.count(self.client, keys.stats_key(self.stream, self.group), "deleted_pending", total)

    # ------------------------------------------------------------------------------------------ a batch

    def _may_read_ahead(self, batches: list[_wire.StreamBatch]) -> bool:
        return (
            self.settings.read_ahead
            and not self.settings.ordered  # the next batch may have to wait behind a failure of this one
            and not self._stopping.is_set()
            # Paused: the flow ends with the batch in hand, so the pause is seen as at the loop's next read
            # (a flow through a backlog would otherwise read on until the backlog is drained).
            and not self.control.paused
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
        batches, holds = first, self.holdings.read(first)  # received, not handled yet
        unread: list[Hold] = []  # the lease of a read-ahead sent, its reply not parsed yet
        work: Settlement | None = None  # handled, not sent yet
        work_holds: list[Hold] = []
        sent: Settlement | None = None  # sent, its replies still owed
        sent_replies = 0
        reading = False  # a read-ahead was sent, its reply owed after the settlement's
        try:
            if self._may_read_ahead(batches):
                unread = self.holdings.unread(self.keys, self.reader.position)
                await link.send(self.reader.read_ahead(), 1)
                reading = True
            while batches:
                work, work_holds = await self._work(batches, None), holds
                batches, holds = [], []
                replies = await link.receive(link.owed) if link.owed else []
                if reading:
                    reading = False
                    batches = self.reader.parse_read_ahead(replies[-1])
                    holds = self.holdings.read(batches)
                    self.holdings.release(unread)
                    unread = []
                if sent is not None:
                    self._settled(sent, await self._confirm(link, sent, replies[:sent_replies]))
                    sent = None
                # The settlement decides these entries' fate from here on: no more renewals needed.
                self.holdings.drop(work_holds)
                work_holds = []
                reading = bool(batches) and self._may_read_ahead(batches)
                payload, sent_replies = _wire.pack_settle(self.group, self.name, work.plans())
                if reading:
                    unread = self.holdings.unread(self.keys, self.reader.position)
                    payload += self.reader.read_ahead()
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
            self.redis_errors += 1
            self.log.warning("connection lost mid-flow, settling what was handled", error=describe_error(exc))
            self.holdings.release(unread)
            unread = []
            for settlement in (sent, work):
                if settlement is not None:
                    await self._settle(link, settlement, resent=settlement is sent)
            if batches:
                await self._process_held(link, batches, holds)
                holds = []
        except asyncio.CancelledError:
            if work is not None:
                # Handled already: settle it rather than give it back to be handled again.
                await self._settle_cancelled(link, work)
                self.holdings.drop(work_holds)
                work_holds = []
                work = None
            raise
        finally:
            self.holdings.release(unread)
            self.holdings.release(holds)
            self.holdings.release(work_holds)
            if link.owed:
                # Left by an error that is not the connection's (an error reply, a cancel): the replies
                # still owed would be read as answers to the next commands.
                await link.abandon()

    async def _settle_cancelled(self, link: _wire.Link, settlement: Settlement) -> None:
        await link.abandon()
        try:
            async with asyncio.timeout(GIVE_BACK_TIMEOUT_S):
                self._settled(settlement, await _wire.settle(link, self.group, self.name, settlement.plans()))
        except (RedisError, OSError, TimeoutError) as exc:
            self.log.info("cancelled: could not settle a handled batch", error=describe_error(exc))

    async def _confirm(self, link: _wire.Link, settlement: Settlement, replies: list[Any]) -> _wire.Settled:
        """The replies of a settlement sent ahead; settled again in a round trip if the scripts were gone."""
        try:
            return _wire.settled(replies)
        except NoScriptError:
            # The server restarted or flushed its scripts: nothing of that settlement ran.
            await link.load_scripts()
            return await _wire.settle(link, self.group, self.name, settlement.plans())

    async def _work(self, batches: list[_wire.StreamBatch], deliveries: Deliveries | None) -> Settlement:
        """_decode_and_handle, with its events counted in flight from now until their settlement."""
        events = sum(len(batch.ids) for batch in batches)
        self.handling += events
        try:
            settlement = await self._decode_and_handle(batches, deliveries)
        finally:
            self.handling -= events
        self.unsettled.append((events, self._last_work_s))
        return settlement

    async def _decode_and_handle(
        self, batches: list[_wire.StreamBatch], deliveries: Deliveries | None
    ) -> Settlement:
        """Decode, handle, and plan the settlement of one read: the event's path, step by step."""
        started = time.perf_counter()
        assert self.decoder is not None
        decoded = decode(batches, self.stream, self.decoder, self.settings, deliveries)
        self.reader.saw_oversized(decoded.oversized)
        self.counts["fetched"] += decoded.entries
        settlement = Settlement(self.settings, self.name, decoded.bounds)
        settlement.trace = tracing.processing(
            self.stream, self.group, self.name, decoded.messages, decoded.entries
        )
        if decoded.rejected:
            now_ms = _now_ms()
            for rejection in decoded.rejected:
                self.log.warning(
                    "dead-lettering an event the handler cannot take",
                    entry_id=rejection.message.id,
                    reason=rejection.reason,
                    error=rejection.detail,
                )
                settlement.dead(
                    rejection.message,
                    now_ms,
                    rejection.reason,
                    rejection.detail,
                    error_type=rejection.error_type,
                    error_text=rejection.error_text,
                    raw_fields=rejection.raw_fields,
                )
        messages = decoded.messages
        if messages and self.settings.ordered:
            await self._handle_in_order(messages, settlement)
        elif messages:
            if self.control.limited:
                await self.control.admit(len(messages))
            handled = await handle(
                self.handlers, messages, stream=self.stream, group=self.group, consumer=self.name,
                executor=self.executor, timeout_ms=self.settings.handler_timeout_ms, trace=settlement.trace,
            )  # fmt: skip
            if handled.outcomes is None:
                settlement.ack_all(messages)
            else:
                if handled.error is not None:
                    self.log.warning(
                        "handler failed",
                        error=describe_error(handled.error),
                        count=len(messages),
                        first_id=messages[0].id,
                        last_id=messages[-1].id,
                    )
                now_ms = _now_ms()
                for message, outcome in zip(messages, handled.outcomes, strict=True):
                    settlement.apply(message, outcome, now_ms)
        if settlement.trace is not None:
            settlement.trace.end(settlement.counts)
        self._last_work_s = time.perf_counter() - started
        return settlement

    async def _handle_in_order(self, messages: list[Message[Any]], settlement: Settlement) -> None:
        """Handle an ordered partition's read: the first message that fails (or is deferred) is handled
        again where it is, after its backoff, with the messages after it, which the handler had not reached
        (an ordered handler stops at the first failure); the partition waits meanwhile, its entries leased.
        Out of attempts, it is dead-lettered and the rest go on. Told to stop while waiting, the consumer
        puts them back in order, for the partition's next owner."""
        remaining = messages
        while remaining:
            if self.control.limited:
                await self.control.admit(len(remaining))
            handled = await handle(
                self.handlers, remaining, stream=self.stream, group=self.group, consumer=self.name,
                executor=self.executor, timeout_ms=self.settings.handler_timeout_ms, trace=settlement.trace,
            )  # fmt: skip
            if handled.outcomes is None:
                settlement.ack_all(remaining)
                return
            now_ms = _now_ms()
            head = next(
                (i for i, o in enumerate(handled.outcomes) if o.kind in ("retry", "fail", "defer")), None
            )
            done = len(remaining) if head is None else head
            for message, outcome in zip(remaining[:done], handled.outcomes[:done], strict=True):
                settlement.apply(message, outcome, now_ms)
            if head is None:
                return
            message, outcome = remaining[head], handled.outcomes[head]
            self.log.warning(
                "ordered partition waits: handling an event again before the ones after it",
                entry_id=message.id, error=describe_error(outcome.error) if outcome.error else outcome.reason,
                behind=len(remaining) - head - 1,
            )  # fmt: skip
            delay_ms = settlement.again_in_place(message, outcome, now_ms)
            if delay_ms is None:
                remaining = remaining[head + 1 :]  # dead-lettered: the others go on
                continue
            resume_at = time.monotonic() + delay_ms / 1000
            if await _stopped_within(self._stopping, delay_ms / 1000):
                # What is left of its backoff goes with it: a stop does not shorten it.
                left_ms = max(0, int((resume_at - time.monotonic()) * 1000))
                settlement.put_back_in_order(remaining[head:], outcome, _now_ms(), left_ms)
                return
            if outcome.kind != "defer":
                message.attempt += 1
            settlement.counts["retried" if outcome.kind != "defer" else "deferred"] += 1
            remaining = remaining[head:]

    async def _process_held(
        self,
        link: _wire.Link,
        batches: list[_wire.StreamBatch],
        holds: list[Hold],
        deliveries: Deliveries | None = None,
    ) -> None:
        """Handle and settle one read whose entries are held, one step after the other."""
        try:
            settlement = await self._work(batches, deliveries)
        except BaseException:
            self.holdings.release(holds)
            raise
        try:
            await self._settle(link, settlement)
        finally:
            self.holdings.drop(holds)

    async def _settle(self, link: _wire.Link, settlement: Settlement, *, resent: bool = False) -> None:
        """Settle in one round trip; on a connection error keep the lease and try again.

        Settling is idempotent (the scripts act only on entries still pending, and the fenced ones only on
        entries this consumer holds), so running it again after a reply was lost cannot double anything.
        `resent`: it may have run already, so entries no longer pending are not counted as lost leases.
        """
        plans = settlement.plans()
        holds = [self.holdings.entries(p.key, _plan_ids(p)) for p in plans]
        delay_s = 0.05
        try:
            while True:
                try:
                    done = await _wire.settle(link, self.group, self.name, plans, resent=resent)
                    break
                except (*TRANSIENT, ResponseError) as exc:
                    if not _wire.waits_out(exc):
                        raise
                    self.redis_errors += 1
                    self.log.warning("settle failed, retrying", error=describe_error(exc), retry_in_s=delay_s)
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
                    resent = True
        finally:
            self.holdings.drop(holds)
        self._settled(settlement, done)

    def _settled(self, settlement: Settlement, done: _wire.Settled) -> None:
        """Count and log a confirmed settlement."""
        last = settlement.last_id(self.stream)
        # Settlements are confirmed in the order their entries were read; reclaimed entries are older
        # than what was read: the position only moves forward.
        if last is not None and (
            self._settled_through is None or _wire.id_key(last) > _wire.id_key(self._settled_through)
        ):
            self._settled_through = last
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
        if settlement.counts["retried"] or settlement.counts["deferred"] or settlement.counts["held_back"]:
            self.mover.due_at(time.monotonic() + settlement.min_retry_delay_ms() / 1000)
        if settlement.counts["dead"]:
            # One line per dead letter (at most DEAD_LOGGED per batch), so each can be found by its id.
            letters = _dead_letters(settlement.plans(), done.lost_ids)
            for entry_id, reason in letters[:DEAD_LOGGED]:
                self.log.warning("dead-lettered", entry_id=entry_id, reason=reason)
            if len(letters) > DEAD_LOGGED:
                self.log.warning("dead-lettered, not logged one by one", count=len(letters) - DEAD_LOGGED)
        if self._on_batch is not None:
            self._on_batch(settlement.counts)
        if self.unsettled:  # settlements are confirmed in the order their batches were handled
            events, work_s = self.unsettled.popleft()
            if self.observer is not None:
                self.observer(events, work_s)


async def _stopped_within(stopping: asyncio.Event, delay_s: float) -> bool:
    """Wait delay_s; True if `stopping` was set first (or already)."""
    await _sleep_or_stop(stopping, delay_s)
    return stopping.is_set()


async def _sleep_or_stop(stopping: asyncio.Event, delay_s: float) -> None:
    try:
        async with asyncio.timeout(delay_s):
            await stopping.wait()
    except TimeoutError:
        pass


def _plan_ids(plan: _wire.SettlePlan) -> list[bytes]:
    later = (*plan.retries, *plan.defers)
    return [*plan.acks, *(r[0] for r in later), *(d[0] for d in plan.dead)]


DEAD_LOGGED = 20  # dead letters of one batch logged one by one; the rest are counted in one line


def _dead_letters(plans: Sequence[_wire.SettlePlan], lost: Sequence[bytes]) -> list[tuple[str, str]]:
    """(event id, reason) of each dead letter the plans wrote, leaving out those the lease was lost for."""
    gone = set(lost)
    found = []
    for plan in plans:
        for entry_id, fields in plan.dead:
            if entry_id in gone:
                continue
            named = dict(zip(fields[::2], fields[1::2], strict=True))
            found.append((str(named.get(b"id", _wire.decode_id(entry_id))), str(named.get(b"reason", ""))))
    return found


def _first_ids(ids: Any) -> list[str]:
    out = []
    for entry_id in ids:
        out.append(_wire.decode_id(entry_id))
        if len(out) == 20:
            break
    return out
