"""What a running worker tells about itself: liveness, readiness, work in flight, and the heartbeat line.

Nothing here is on the hot path. The consumers keep plain counters (`counts`, `handling`, `unsettled`,
`redis_errors`, `ready`) that cost an addition per batch; this module reads them when asked: by the
heartbeat every `heartbeat_interval_ms`, and by the metrics server (metrics.py, in its own thread) at each
scrape or probe. It needs no prometheus-client.

Liveness (/healthz) fails when
- the event loop has not run for `loop_stall_ms` (a handler hogging it, a blocking call): LoopWatch stamps
  the time from a task on the loop, and the probe, answered from another thread, reads how old the stamp is;
- the lease keeper gave up (`fatal`), or its renewals are failing: renewals failed and none succeeded for
  longer than the shortest renewal interval of the app's consumers, so a renewal is late by then (a server
  down does that: give the liveness probe a failureThreshold that covers a server restart).
Readiness (/readyz) holds once the server answered at start and every consumer made its groups, and not while
a consumer's last Redis call failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from .. import keys
from .._connection import AsyncClient, for_key
from ..errors import ConfigurationError, describe_error
from ..partitions import streams_holding
from ..settings import AppSettings, ConsumerSettings
from .consumer import Consumer, consumer_name
from .leases import LeaseKeeper
from .partitioned import PartitionedConsumer

AnyConsumer = Consumer | PartitionedConsumer
ClientFor = Callable[[str], aioredis.Redis]  # the client of a key's slot (the client itself off a cluster)
LOOP_BEAT_S = 0.1  # how often LoopWatch stamps the time on the loop
STOP_TIMEOUT_S = 5.0  # how long stopping waits for a loop's round (a Redis call) before cancelling it
# The outcomes counted per event (Consumer.counts), shown as streamq_events_total{outcome=...}.
OUTCOMES = (
    "acked",
    "retried",
    "deferred",
    "dead",
    "held_back",
    "reclaimed",
    "lease_lost",
    "deleted",
    "given_back",
)

log = structlog.get_logger("streamq.worker")


async def stop_task(task: asyncio.Task[None]) -> None:
    """Wait for a loop told to stop to end its round; cancel it if it takes too long."""
    done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
    error = task.exception() if task.done() and not task.cancelled() else None
    if error is not None:
        log.warning("a background loop ended with an error", error=describe_error(error))


def lanes_of(consumers: Iterable[AnyConsumer]) -> list[Consumer]:
    """Every lane running now: a partitioned consumer's lanes are those of the partitions it owns."""
    found: list[Consumer] = []
    for consumer in consumers:
        if isinstance(consumer, PartitionedConsumer):
            found.extend(consumer.lanes())
        else:
            found.append(consumer)
    return found


@dataclass
class InFlight:
    batches: int = 0  # handed to the handler, or handled with their settlement not yet confirmed
    events: int = 0


def in_flight(consumers: Iterable[AnyConsumer]) -> dict[tuple[str, str], InFlight]:
    """Work in flight per (stream, group); a partitioned stream under its own name, not its partitions'."""
    found: dict[tuple[str, str], InFlight] = {}
    for consumer in consumers:
        total = found.setdefault((consumer.stream, consumer.group), InFlight())
        for lane in lanes_of([consumer]):
            unsettled = list(lane.unsettled)  # one C call: safe from another thread while the loop appends
            handling = lane.handling
            total.batches += len(unsettled) + (1 if handling else 0)
            total.events += sum(events for events, _ in unsettled) + handling
    return found


def redis_errors(consumer: AnyConsumer) -> tuple[int, int]:
    """(errors, reconnects) of a consumer: its own and, for a partitioned one, its running lanes'."""
    errors, reconnects = consumer.redis_errors, consumer.reconnects
    if isinstance(consumer, PartitionedConsumer):
        for lane in consumer.lanes():
            errors += lane.redis_errors
            reconnects += lane.reconnects
    return errors, reconnects


class LoopWatch:
    """Stamps the time from a task on the event loop; `stalled_s()`, from any thread, says how old it is."""

    def __init__(self) -> None:
        self.last_beat = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.last_beat = time.monotonic()
        self._task = asyncio.create_task(self._beat(), name="streamq-loop-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _beat(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            await asyncio.sleep(LOOP_BEAT_S)

    def stalled_s(self) -> float:
        return max(0.0, time.monotonic() - self.last_beat - LOOP_BEAT_S)


class LeaseWatch:
    """Whether the lease keeper's renewals are failing for longer than `late_after_s`: sampled from any
    thread (the metrics server's), comparing its renewal and failure counters with the last sample."""

    def __init__(self, keeper: LeaseKeeper, late_after_s: float) -> None:
        self.keeper = keeper
        self.late_after_s = late_after_s
        self._lock = threading.Lock()
        self._renewals = keeper.renewals
        self._failures = keeper.failures
        self._failing_since: float | None = None

    def sample(self) -> None:
        with self._lock:
            renewals, failures = self.keeper.renewals, self.keeper.failures
            if renewals != self._renewals:
                self._failing_since = None
            elif failures != self._failures and self._failing_since is None:
                self._failing_since = time.monotonic()
            self._renewals, self._failures = renewals, failures

    def problem(self) -> str | None:
        """Why leases cannot be trusted now, or None."""
        if self.keeper.fatal is not None:
            return f"lease keeper failed: {self.keeper.fatal}"
        self.sample()
        with self._lock:
            since = self._failing_since
        if since is not None and time.monotonic() - since >= self.late_after_s:
            return f"lease renewals failing for {time.monotonic() - since:.1f} s"
        return None


class Health:
    """Liveness and readiness of one running app, answered from any thread."""

    def __init__(
        self,
        consumers: Callable[[], Sequence[AnyConsumer]],
        loop_watch: LoopWatch,
        lease_watch: LeaseWatch,
        loop_stall_ms: int,
    ) -> None:
        self._consumers = consumers
        self.loop_watch = loop_watch
        self.lease_watch = lease_watch
        self.loop_stall_s = loop_stall_ms / 1000
        self.connected = False  # the server answered at start

    def live(self) -> tuple[bool, str]:
        stalled_s = self.loop_watch.stalled_s()
        if stalled_s >= self.loop_stall_s:
            return False, f"event loop stalled for {stalled_s:.1f} s"
        problem = self.lease_watch.problem()
        if problem is not None:
            return False, problem
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.connected:
            return False, "not connected to Redis yet"
        consumers = self._consumers()
        waiting = [c.name for c in consumers if not c.ready]
        if not consumers or waiting:
            return False, f"consumers not ready: {', '.join(waiting) or 'none started'}"
        return True, "ok"


class Heartbeat:
    """Logs one `heartbeat` line every interval: rates over the interval, work in flight, lag per stream.

    The lag comes from `read_lag` (XLEN and XINFO GROUPS per consumer stream); when that read fails the line
    goes out without it.
    """

    def __init__(
        self,
        consumers: Callable[[], Sequence[AnyConsumer]],
        counts: Callable[[], dict[str, int]],
        read_lag: Callable[[], Any],
        interval_ms: int,
    ) -> None:
        self._consumers = consumers
        self._counts = counts
        self._read_lag = read_lag
        self.interval_s = interval_ms / 1000
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._stopping), name="streamq-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            await stop_task(self._task)
            self._task = None

    async def _run(self, stopping: asyncio.Event) -> None:
        before, since = self._counts(), time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await stopping.wait()
            if stopping.is_set():
                return
            try:
                now_counts, now = self._counts(), time.monotonic()
                await self.beat(before, now_counts, now - since)
                before, since = now_counts, now
            except Exception as exc:  # a heartbeat must never stop the worker: say so and go on
                log.warning("heartbeat failed", error=describe_error(exc))

    async def beat(self, before: dict[str, int], after: dict[str, int], elapsed_s: float) -> None:
        def rate(name: str) -> float:
            return round((after.get(name, 0) - before.get(name, 0)) / elapsed_s, 1) if elapsed_s > 0 else 0.0

        flight = in_flight(self._consumers())
        try:
            lag: dict[str, int | None] | None = await self._read_lag()
        except Exception as exc:  # the line goes out without the lag: it is what the worker knows now
            log.debug("heartbeat could not read the lag", error=describe_error(exc))
            lag = None
        log.info(
            "heartbeat",
            interval_s=round(elapsed_s, 1),
            acked_per_s=rate("acked"),
            retried_per_s=rate("retried"),
            dead_per_s=rate("dead"),
            fetched_per_s=rate("fetched"),
            in_flight_batches=sum(f.batches for f in flight.values()),
            in_flight_events=sum(f.events for f in flight.values()),
            lag=lag,
        )


@dataclass
class GroupFigures:
    lag: int | None = 0  # None when the server cannot tell (for any partition)
    pending: int = 0  # stream and retry stream
    consumers: int = 0
    retries_waiting: int = 0
    oldest_pending_ms: int | None = None  # the id time (Unix ms) of the oldest pending entry


@dataclass
class StreamFigures:
    length: int = 0
    dead_letters: int = 0
    scheduled: int = 0
    groups: dict[str, GroupFigures] = field(default_factory=dict)


async def read_figures(
    client_for: ClientFor,
    stream: str,
    partitions: int | None,
    groups: Sequence[str],
    *,
    lag_only: bool = False,
) -> StreamFigures:
    """What the gauges and the heartbeat show of a stream (its partitions added up) and of the app's groups.

    Only commands the worker's ACL of SECURITY.md allows (XLEN, XINFO GROUPS, XPENDING, ZCARD), per key on
    the client of its slot; `lag_only`: XLEN and XINFO GROUPS alone. As `streamq status` does, a group's lag
    is capped at the stream's length (servers overstate it once entries past its position were trimmed).
    """
    figures = StreamFigures(groups={group: GroupFigures() for group in groups})
    for name in streams_holding(stream, partitions):
        client = client_for(name)
        length = int(await client.xlen(name))
        figures.length += length
        try:
            infos = await client.xinfo_groups(name)
        except ResponseError:  # no stream yet
            infos = []
        found = {_text(info["name"]): info for info in infos}
        for group, shown in figures.groups.items():
            info = found.get(group)
            if info is None:
                continue
            lag = info.get("lag")
            shown.lag = None if lag is None or shown.lag is None else shown.lag + min(int(lag), length)
            shown.pending += int(info["pending"])
            shown.consumers += int(info["consumers"])
            if not lag_only:
                await _read_group(client, name, group, shown)
        if not lag_only:
            figures.dead_letters += int(await client.xlen(keys.dlq_key(name)))
            figures.scheduled += int(await client.zcard(keys.scheduled_key(name)))
    return figures


async def _read_group(client: Any, stream: str, group: str, shown: GroupFigures) -> None:
    """A group's retries (pending in its retry stream, waiting in its delayed set) and oldest pending id."""
    shown.retries_waiting += int(await client.zcard(keys.delayed_key(stream, group)))
    for key in (stream, keys.retry_key(stream, group)):
        try:
            summary = await client.xpending(key, group)
        except ResponseError:  # the retry stream is made at the group's first retry
            continue
        if key != stream:
            shown.pending += int(summary["pending"])
        if summary["pending"] and summary["min"] is not None:
            first = int(_text(summary["min"]).split("-")[0])
            shown.oldest_pending_ms = (
                first if shown.oldest_pending_ms is None else min(shown.oldest_pending_ms, first)
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_lag(
    client_for: ClientFor, pairs: Sequence[tuple[str, str]], partitions: dict[str, int | None]
) -> dict[str, int | None]:
    """The lag of each (stream, group), as "stream/group" (neither name may hold a "/")."""
    lag: dict[str, int | None] = {}
    for stream in sorted({stream for stream, _ in pairs}):
        groups = sorted({group for s, group in pairs if s == stream})
        figures = await read_figures(client_for, stream, partitions.get(stream), groups, lag_only=True)
        for group in groups:
            lag[f"{stream}/{group}"] = figures.groups[group].lag
    return lag


def _metrics_module() -> ModuleType:
    try:
        from .. import metrics
    except ImportError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise ConfigurationError(
            "metrics_port needs prometheus-client: pip install 'streamq[metrics]'"
        ) from None
    return metrics


class Observation:
    """Everything of this module (and metrics.py, when a metrics port is set) for one run of an app.

    Built before connecting (a missing prometheus-client fails the run at once); start() serves the port
    at once, so /readyz says "not connected yet" during the wait for the server; start_loops() starts the
    heartbeat and the gauge refresher once the consumers exist; stop() ends them all.
    """

    def __init__(
        self,
        settings: AppSettings,
        specs: Sequence[ConsumerSettings],
        consumers: Callable[[], Sequence[AnyConsumer]],
        counts: Callable[[], dict[str, int]],
        client: AsyncClient,
        keeper: LeaseKeeper,
    ) -> None:
        self.settings = settings
        self.pairs = [(spec.stream, spec.group) for spec in specs]
        partitions = {spec.stream: spec.partitions for spec in specs}
        self.client = client

        def client_for(key: str) -> aioredis.Redis:
            return for_key(client, key)

        self.loop_watch = LoopWatch()
        renew_every_ms = min((spec.renew_every_ms for spec in specs), default=10_000)
        self.health = Health(consumers, self.loop_watch, LeaseWatch(keeper, renew_every_ms / 1000),
                             settings.loop_stall_ms)  # fmt: skip
        self.heartbeat: Heartbeat | None = None
        if settings.heartbeat_interval_ms is not None:
            self.heartbeat = Heartbeat(
                consumers,
                counts,
                lambda: read_lag(client_for, self.pairs, partitions),
                settings.heartbeat_interval_ms,
            )
        self.metrics: Any = None  # metrics.WorkerMetrics, when a port is set
        self.server: Any = None  # _metrics_server.MetricsServer
        self.refresher: Any = None  # metrics.GaugeRefresher
        if settings.metrics_port is not None:
            metrics = _metrics_module()
            from .._metrics_server import MetricsServer

            self.metrics = metrics.WorkerMetrics(
                consumers, keeper, self.pairs, partitions, settings.metrics_refresh_ms
            )
            self.server = MetricsServer(
                settings.metrics_host, settings.metrics_port, self.metrics.exposition, self.health
            )
            self.refresher = metrics.GaugeRefresher(
                self.metrics.gauges, client_for, consumer_name("metrics"),
            )  # fmt: skip

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    def observer_for(self, stream: str, group: str) -> Callable[[int, float], None] | None:
        return self.metrics.observer(stream, group) if self.metrics is not None else None

    def start(self) -> None:
        if self.server is not None:  # only /healthz reads the loop watch: no task without it
            self.loop_watch.start()
            self.server.start()

    def connected(self) -> None:
        self.health.connected = True

    def start_loops(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.start()
        if self.refresher is not None:
            self.refresher.start()

    async def stop(self) -> None:
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.refresher is not None:
            await self.refresher.stop()
        await self.loop_watch.stop()
        if self.server is not None:
            self.server.stop()
