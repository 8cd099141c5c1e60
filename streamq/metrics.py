"""Prometheus metrics of a worker: `streamq worker APP --metrics-port 9400`, or App(metrics_port=9400).

Needs the `metrics` extra (`pip install 'streamq[metrics]'`, prometheus-client). The worker serves, on that
port (_metrics_server.py, a thread of its own, so a blocked event loop still gets an answer):

    /metrics   every metric of METRICS, in Prometheus' text format
    /healthz   200 while the event loop runs and lease renewals are not late; 503 otherwise (observing.py)
    /readyz    200 once connected and every consumer's groups exist; 503 before, and while Redis is lost

Cost. The consumers are not touched per event: the counters by outcome, the errors and the work in flight
are the consumers' own plain counters, read at scrape time by WorkerCollector; the two histograms are
observed once per settled batch (Consumer.observer).

Gauges read from Redis (length, lag, pending, ...) are refreshed every `metrics_refresh_ms` by one worker
at a time per stream: the one that holds the stream's metrics lease (keys.metrics_lease_key, SET NX PX for
twice the refresh period, renewed at every refresh, deleted when that worker stops). The other workers do not
serve those gauges at all, so a sum or max over every worker's series is the stream's figure; when the
lease holder stops, another worker takes over within two refresh periods and the series move to it (use
`max by (stream, group) (...)` to follow them). `streamq_redis_gauges_refresher{stream}` says which worker
holds the lease.

With --processes N, each child serves its own port, base + slot index (see _pool.py): one target per
process, as Prometheus prefers, with no multiprocess directory to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from . import keys
from ._worker.leases import LeaseKeeper
from ._worker.observing import (
    OUTCOMES,
    STOP_TIMEOUT_S,
    AnyConsumer,
    ClientFor,
    in_flight,
    read_figures,
    redis_errors,
    stop_task,
)
from .errors import describe_error

log = structlog.get_logger("streamq.metrics")

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EVENTS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SG = ("stream", "group")


@dataclass(frozen=True)
class MetricDoc:
    name: str  # as exposed (counters with their _total)
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str
    source: str  # "worker": this process's own figures; "redis": read from Redis by the lease holder


# Every metric a worker serves: the README's table is this list.
METRICS = (
    MetricDoc("streamq_events_total", "counter", (*SG, "outcome"),
              f"events settled or taken over, by outcome: {', '.join(OUTCOMES)}", "worker"),
    MetricDoc("streamq_events_fetched_total", "counter", SG, "entries read and decoded", "worker"),
    MetricDoc("streamq_batches_total", "counter", SG, "batches settled", "worker"),
    MetricDoc("streamq_handler_duration_seconds", "histogram", SG,
              "time to decode and handle one batch (the handler's call, its timeout included)", "worker"),
    MetricDoc("streamq_batch_size_events", "histogram", SG, "events per settled batch", "worker"),
    MetricDoc("streamq_batches_in_flight", "gauge", SG,
              "batches being handled, or handled with their settlement not yet confirmed", "worker"),
    MetricDoc("streamq_events_in_flight", "gauge", SG, "events of those batches", "worker"),
    MetricDoc("streamq_redis_errors_total", "counter", SG,
              "Redis calls of the consumer that failed on the connection (each retried)", "worker"),
    MetricDoc("streamq_redis_reconnects_total", "counter", SG,
              "times the consumer worked again after such failures", "worker"),
    MetricDoc("streamq_loop_restarts_total", "counter", SG,
              "background loops (retry mover, trimmer, ...) restarted after an unexpected error", "worker"),
    MetricDoc("streamq_lease_renewals_total", "counter", (), "lease renewals by the lease keeper", "worker"),
    MetricDoc("streamq_lease_renewal_failures_total", "counter", (), "lease renewals that failed", "worker"),
    MetricDoc("streamq_stream_length", "gauge", ("stream",), "entries in the stream (XLEN)", "redis"),
    MetricDoc("streamq_stream_dead_letters", "gauge", ("stream",), "dead-letter stream entries", "redis"),
    MetricDoc("streamq_stream_scheduled", "gauge", ("stream",), "delayed events waiting to be due", "redis"),
    MetricDoc("streamq_group_lag", "gauge", SG, "entries not yet delivered to the group", "redis"),
    MetricDoc("streamq_group_pending", "gauge", SG,
              "entries delivered and not yet settled (stream and retry stream)", "redis"),
    MetricDoc("streamq_group_oldest_pending_age_seconds", "gauge", SG,
              "age of the oldest pending entry, from its id's time (0 when none is pending)", "redis"),
    MetricDoc("streamq_group_retries_waiting", "gauge", SG, "failed events in their backoff", "redis"),
    MetricDoc("streamq_group_consumers", "gauge", SG, "consumers the group has in Redis", "redis"),
    MetricDoc("streamq_redis_gauges_refresher", "gauge", ("stream",),
              "1 when this worker holds the stream's metrics lease (serves its Redis gauges)", "worker"),
    MetricDoc("streamq_redis_gauges_refreshed_timestamp_seconds", "gauge", ("stream",),
              "when this worker last read the stream's gauges from Redis (Unix time)", "redis"),
)  # fmt: skip
_DOC = {doc.name: doc for doc in METRICS}


def _counter(name: str) -> CounterMetricFamily:
    doc = _DOC[name]
    return CounterMetricFamily(name.removesuffix("_total"), doc.help, labels=doc.labels)


def _gauge(name: str) -> GaugeMetricFamily:
    doc = _DOC[name]
    return GaugeMetricFamily(name, doc.help, labels=doc.labels)


class WorkerMetrics:
    """The registry of one running app: the histograms, the collector of its counters, the Redis gauges."""

    def __init__(
        self,
        consumers: Callable[[], Sequence[AnyConsumer]],
        keeper: LeaseKeeper,
        pairs: Sequence[tuple[str, str]],
        partitions: dict[str, int | None],
        refresh_ms: int,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.handler_seconds = Histogram(
            "streamq_handler_duration_seconds", _DOC["streamq_handler_duration_seconds"].help, SG,
            buckets=SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_events = Histogram(
            "streamq_batch_size_events", _DOC["streamq_batch_size_events"].help, SG,
            buckets=EVENTS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.gauges = RedisGauges(pairs, partitions, refresh_ms)
        self.registry.register(WorkerCollector(consumers, keeper, self.gauges))

    def observer(self, stream: str, group: str) -> Callable[[int, float], None]:
        """What a consumer of `stream` and `group` calls once per settled batch."""
        seconds = self.handler_seconds.labels(stream, group)
        events = self.batch_events.labels(stream, group)

        def observe(count: int, handle_s: float) -> None:
            seconds.observe(handle_s)
            events.observe(count)

        return observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WorkerCollector(Collector):
    """The consumers' own counters and in-flight work, read at scrape time (from the server's thread)."""

    def __init__(
        self, consumers: Callable[[], Sequence[AnyConsumer]], keeper: LeaseKeeper, gauges: RedisGauges
    ) -> None:
        self._consumers = consumers
        self._keeper = keeper
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for attempt in range(3):
            try:
                return list(self._collect())
            except RuntimeError:  # a partitioned consumer's partitions changed while being read
                if attempt == 2:
                    raise
        return []

    def _collect(self) -> Iterator[Metric]:
        consumers = list(self._consumers())
        events = _counter("streamq_events_total")
        fetched = _counter("streamq_events_fetched_total")
        batches = _counter("streamq_batches_total")
        errors = _counter("streamq_redis_errors_total")
        reconnects = _counter("streamq_redis_reconnects_total")
        restarts = _counter("streamq_loop_restarts_total")
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for consumer in consumers:
            total = totals.setdefault((consumer.stream, consumer.group), {})
            for name, value in consumer.counts.items():
                total[name] = total.get(name, 0) + value
            failed, back = redis_errors(consumer)
            total["_errors"] = total.get("_errors", 0) + failed
            total["_reconnects"] = total.get("_reconnects", 0) + back
        for (stream, group), total in totals.items():
            for outcome in OUTCOMES:
                events.add_metric([stream, group, outcome], total.get(outcome, 0))
            fetched.add_metric([stream, group], total.get("fetched", 0))
            batches.add_metric([stream, group], total.get("batches", 0))
            errors.add_metric([stream, group], total["_errors"])
            reconnects.add_metric([stream, group], total["_reconnects"])
            restarts.add_metric([stream, group], total.get("loop_restarts", 0))
        yield from (events, fetched, batches, errors, reconnects, restarts)
        flight_batches = _gauge("streamq_batches_in_flight")
        flight_events = _gauge("streamq_events_in_flight")
        for (stream, group), flight in in_flight(consumers).items():
            flight_batches.add_metric([stream, group], flight.batches)
            flight_events.add_metric([stream, group], flight.events)
        yield from (flight_batches, flight_events)
        renewals = _counter("streamq_lease_renewals_total")
        renewals.add_metric([], self._keeper.renewals)
        failures = _counter("streamq_lease_renewal_failures_total")
        failures.add_metric([], self._keeper.failures)
        yield from (renewals, failures)
        yield from self._gauges.families()


class RedisGauges:
    """The per stream/group gauges this worker read from Redis, for the streams whose lease it holds."""

    def __init__(
        self, pairs: Sequence[tuple[str, str]], partitions: dict[str, int | None], refresh_ms: int
    ) -> None:
        self.pairs = sorted(set(pairs))
        self.partitions = partitions  # stream -> its partition count (None: a plain stream)
        self.streams = sorted({stream for stream, _ in pairs})
        self.refresh_ms = refresh_ms
        self.lease_ms = 2 * refresh_ms
        # stream -> [(metric name, labels, value)] read at its last refresh; only streams whose lease is held.
        self.values: dict[str, list[tuple[str, tuple[str, ...], float]]] = {}
        self.refreshed_at: dict[str, float] = {}

    def families(self) -> Iterator[Metric]:
        values = dict(self.values)
        found = {doc.name: _gauge(doc.name) for doc in METRICS if doc.source == "redis"}
        refresher = _gauge("streamq_redis_gauges_refresher")
        for stream in self.streams:
            refresher.add_metric([stream], 1 if stream in values else 0)
            for name, labels, value in values.get(stream, ()):
                found[name].add_metric(list(labels), value)
        yield refresher
        yield from found.values()

    async def refresh(self, client_for: ClientFor, holder: str) -> None:
        """One round: for each stream, take or renew its lease, then read its gauges; or drop them."""
        for stream in self.streams:
            if not await self._lease(client_for(stream), stream, holder):
                self.values.pop(stream, None)
                continue
            try:
                self.values[stream] = await self._read(client_for, stream)
            except (RedisError, OSError) as exc:
                self.values.pop(stream, None)  # stale figures are worse than none
                log.warning("reading the metrics gauges failed", stream=stream, error=describe_error(exc))

    async def _lease(self, client: aioredis.Redis, stream: str, holder: str) -> bool:
        key = keys.metrics_lease_key(stream)
        if await client.set(key, holder, nx=True, px=self.lease_ms):
            return True
        if not _is(await client.get(key), holder):
            return False
        # Held by this worker: renew it. Should it have lapsed between the GET and here, another worker may
        # refresh the same stream for one round: harmless, the gauges are read-only.
        await client.pexpire(key, self.lease_ms)
        return True

    async def release(self, client_for: ClientFor, holder: str) -> None:
        """Stopping: give up the leases held, so another worker takes over at its next refresh."""
        for stream in list(self.values):
            key = keys.metrics_lease_key(stream)
            client = client_for(stream)
            if _is(await client.get(key), holder):
                await client.pexpire(key, 1)  # PEXPIRE, not DEL: within the worker's ACL (SECURITY.md)
        self.values.clear()

    async def _read(self, client_for: ClientFor, stream: str) -> list[tuple[str, tuple[str, ...], float]]:
        groups = sorted({group for s, group in self.pairs if s == stream})  # only the app's own groups
        figures = await read_figures(client_for, stream, self.partitions.get(stream), groups)
        now_s = time.time()
        found: list[tuple[str, tuple[str, ...], float]] = [
            ("streamq_stream_length", (stream,), figures.length),
            ("streamq_stream_dead_letters", (stream,), figures.dead_letters),
            ("streamq_stream_scheduled", (stream,), figures.scheduled),
            ("streamq_redis_gauges_refreshed_timestamp_seconds", (stream,), now_s),
        ]
        for group, shown in figures.groups.items():
            labels = (stream, group)
            if shown.lag is not None:
                found.append(("streamq_group_lag", labels, shown.lag))
            oldest_ms = shown.oldest_pending_ms
            found += [
                ("streamq_group_pending", labels, shown.pending),
                ("streamq_group_oldest_pending_age_seconds", labels,
                 max(0.0, now_s - oldest_ms / 1000) if oldest_ms is not None else 0.0),
                ("streamq_group_retries_waiting", labels, shown.retries_waiting),
                ("streamq_group_consumers", labels, shown.consumers),
            ]  # fmt: skip
        return found


def _is(value: object, holder: str) -> bool:
    return value in (holder, holder.encode())


class GaugeRefresher:
    """The loop beside the consumers that refreshes RedisGauges every refresh period; it logs and goes on."""

    def __init__(self, gauges: RedisGauges, client_for: ClientFor, holder: str) -> None:
        self.gauges = gauges
        self.client_for = client_for
        self.holder = holder
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._stopping), name="streamq-metrics-refresh")

    async def stop(self) -> None:
        """Ends the loop after its round (a cancel could be lost inside a Redis call), then releases the
        leases held."""
        if self._task is not None:
            self._stopping.set()
            await stop_task(self._task)
            self._task = None
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.gauges.release(self.client_for, self.holder)
        except (RedisError, OSError, TimeoutError) as exc:  # it lapses by itself within two refresh periods
            log.info("could not release the metrics lease", error=describe_error(exc))

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.gauges.refresh(self.client_for, self.holder)
            except Exception as exc:  # the gauges must never stop the worker: say so and go on
                self.gauges.values.clear()
                log.warning("refreshing the metrics gauges failed", error=describe_error(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.gauges.refresh_ms / 1000):
                    await stopping.wait()
