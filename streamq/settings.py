"""Consumer, app and producer settings: validated, frozen values with named defaults (all durations in ms).

msgspec checks field types only when it decodes. A Struct built directly (`ConsumerSettings(lease_ms="5")`)
is not type-checked, so every __post_init__ checks types as well as ranges: a bad value is a
ConfigurationError naming the setting when the value is built, never a traceback later.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import ConfigurationError
from .events import DEFAULT_MAX_EVENT_BYTES
from .keys import validate_name
from .partitions import check_partitioning

DAY_MS = 86_400_000

# Consumers
DEFAULT_BATCH_SIZE = 100  # entries per XREADGROUP, and per handler call
DEFAULT_MAX_ATTEMPTS = 5  # failed attempts (raised, timed out, asked to retry) before dead-lettering
DEFAULT_MAX_DELIVERIES = 10  # deliveries that never settled (worker died, lease lost) before dead-lettering
DEFAULT_MAX_DEFER_MS = DAY_MS  # an event deferred this long since its first deferral is dead-lettered
DEFAULT_LEASE_MS = 30_000  # an entry unrenewed this long may be reclaimed by another worker
DEFAULT_BLOCK_MS = 1_000  # how long one XREADGROUP waits for new entries; also bounds shutdown latency
DEFAULT_PARTITION_LEASE_MS = 5_000  # a partitioned group rebalances within about this
DEFAULT_RETRY_BASE_MS = 1_000  # first retry's backoff ceiling; doubles per attempt
DEFAULT_RETRY_MAX_MS = 300_000  # backoff ceiling
DEFAULT_RETRY_POLL_MS = 500  # how often due retries are looked for when none is known to be due sooner
DEFAULT_REAP_IDLE_MS = 3_600_000  # consumers idle this long with nothing pending are deleted from the group
# Retention: entries every group has acknowledged are trimmed (XTRIM MINID ~) by the workers, this often.
DEFAULT_TRIM_INTERVAL_MS = 1_000
DEFAULT_KEEP_ACKED_MS = 0  # keep acknowledged entries this long after they were appended (replay, audit)
DEFAULT_DLQ_MAX_AGE_MS = 14 * 86_400_000  # dead letters older than this are trimmed
DEFAULT_DLQ_MAX_LEN = 1_000_000  # and the dead-letter stream is capped at about this many
DEFAULT_SCHEDULED_POLL_MS = 200  # how often delayed events are looked for when none is known to be due
MAX_RATE_LIMIT = 10_000_000.0  # events per second
MAX_BATCH_SIZE = 10_000
MAX_CONCURRENCY = 1_000  # batches of one consumer in flight at once in one process (its lanes)
MIN_EVENT_BYTES = 16  # bytes; the smallest max_event_bytes
MAX_EVENT_BYTES = 512 * 1024 * 1024  # bytes; the largest max_event_bytes (Redis's default proto-max-bulk-len)

# The app (App(...))
DEFAULT_SHUTDOWN_GRACE_MS = 30_000  # time to finish and settle in-flight batches after the first signal
DEFAULT_BURST_CONNECT_TIMEOUT_MS = 30_000  # burst mode gives up on an unreachable server after this long
DEFAULT_HEARTBEAT_INTERVAL_MS = 60_000  # one `heartbeat` info line per worker this often
DEFAULT_METRICS_HOST = "0.0.0.0"  # the metrics port listens on every interface (a pod's probes, a scraper)
DEFAULT_METRICS_REFRESH_MS = 15_000  # how often the per stream/group gauges are read from Redis
DEFAULT_LOOP_STALL_MS = 10_000  # /healthz fails once the event loop has not run for this long
MAX_EXECUTOR_WORKERS = 1_024  # threads for plain `def` handlers

# Producers
DEFAULT_CHUNK_SIZE = 1_000  # events per round trip in publish_many
DEFAULT_DEDUP_TTL_MS = 86_400_000  # a dedup key stays known this long after its first publish
DEFAULT_BACKLOG_TIMEOUT_MS = 10_000  # how long a publish waits for the backlog to drop below max_backlog
DEFAULT_BACKLOG_CHECK_MS = 100  # how old a backlog reading may be before a publish reads it again
DEFAULT_REPLICA_TIMEOUT_MS = 1_000  # how long a publish with min_replicas waits for the replicas, per chunk
MAX_MIN_REPLICAS = 100  # replicas; far more than any real primary has
MAX_CHUNK_SIZE = 1_000_000
MAX_MAXLEN = 2**63 - 1  # entries; the largest MAXLEN Redis accepts

# Headers (publish(headers=...), Message.headers): the entry's fields besides the payload field `d`.
MAX_HEADERS = 64  # header fields one publish may give an event
MAX_HEADER_BYTES = 8 * 1024  # bytes (UTF-8) of an event's header names and values together
MAX_HEADER_NAME_CHARS = 128  # characters of one header name
# The trace context a producer adds when tracing (traceparent, tracestate, baggage) comes on top, within this
# many bytes; a consumer keeps at most MAX_HEADERS + 8 headers and MAX_HEADER_BYTES + this many bytes of an
# entry (a raw entry written by another tool may hold more: the rest is left out and the message marked).
MAX_TRACE_HEADER_BYTES = 1_024

S = TypeVar("S", bound=msgspec.Struct)


class ConsumerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How one consumer reads, retries and recovers. Unknown keys are an error, never silently dropped."""

    stream: str
    group: str
    batch_size: int = DEFAULT_BATCH_SIZE
    # Batches handled at once in one process: the consumer runs as this many lanes, each a consumer of the
    # group with its own name, its own leases and its own read-ahead, settling on its own. With more than
    # one, batches of the group are handled concurrently: no order between them (see app.py).
    concurrency: int = 1
    # Failures only: the handler raised, timed out or asked to retry. Deliveries that never settled are
    # counted against max_deliveries instead, and deferrals against max_defer_ms.
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    max_defer_ms: int = DEFAULT_MAX_DEFER_MS
    lease_ms: int = DEFAULT_LEASE_MS
    block_ms: int = DEFAULT_BLOCK_MS
    handler_timeout_ms: int | None = None  # None: no limit (the lease keeps the entries held meanwhile)
    retry_base_ms: int = DEFAULT_RETRY_BASE_MS
    retry_max_ms: int = DEFAULT_RETRY_MAX_MS
    retry_poll_ms: int = DEFAULT_RETRY_POLL_MS
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    # How often to look for entries abandoned by dead workers; None: half the lease.
    reclaim_interval_ms: int | None = None
    reap_idle_ms: int = DEFAULT_REAP_IDLE_MS
    consumer_prefix: str = "streamq"
    # Read the next batch while this one is handled, so the server works while the handler does. Only
    # while entries keep coming and handling is quick (see consumer.READ_AHEAD_MAX_HANDLE_S).
    read_ahead: bool = True
    # Retention (see streamq/retention.py): trim what every group of the stream has acknowledged, once it
    # is keep_acked_ms old. max_len is a hard cap that drops entries some group has not acknowledged yet,
    # counted and logged: None (the default) never does.
    retention: bool = True
    keep_acked_ms: int = DEFAULT_KEEP_ACKED_MS
    trim_interval_ms: int = DEFAULT_TRIM_INTERVAL_MS
    max_len: int | None = None
    dlq_max_age_ms: int | None = DEFAULT_DLQ_MAX_AGE_MS  # None: dead letters never expire by age
    dlq_max_len: int | None = DEFAULT_DLQ_MAX_LEN  # None: no cap on the number of dead letters
    # Delayed events of the stream are moved in when due by any worker of any group (scheduling.py).
    scheduled_poll_ms: int = DEFAULT_SCHEDULED_POLL_MS
    # Events per second for the whole group, across every worker and process (None: unlimited).
    rate_limit: float | None = None
    # A partitioned stream (partitions.py): spread over this many partition streams, which the group's
    # workers share by leases of partition_lease_ms (a joining or leaving worker rebalances within about
    # one). None: a plain stream.
    partitions: int | None = None
    partition_lease_ms: int = DEFAULT_PARTITION_LEASE_MS
    # Events of a partition handled in publish order, a failed one holding back those after it (see
    # README, "Partitioned streams"). Needs partitions, and one lane (concurrency=1).
    ordered: bool = False

    def __post_init__(self) -> None:
        validate_name("stream", self.stream)
        validate_name("group", self.group)
        validate_name("consumer prefix", self.consumer_prefix)
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_range("concurrency", self.concurrency, 1, MAX_CONCURRENCY)
        _check_range("max_attempts", self.max_attempts, 1, 1_000)
        # At least 2: one delivery lost to a worker's crash or restart is routine, not a poison event.
        _check_range("max_deliveries", self.max_deliveries, 2, 1_000)
        _check_range("max_defer_ms", self.max_defer_ms, 1, 30 * DAY_MS)
        _check_range("lease_ms", self.lease_ms, 100, DAY_MS)
        # Not 0: a read that never waits would spin on an empty stream (and BLOCK 0 means forever to Redis).
        _check_range("block_ms", self.block_ms, 1, 600_000)
        _check_range("retry_base_ms", self.retry_base_ms, 0, DAY_MS)
        _check_range("retry_max_ms", self.retry_max_ms, self.retry_base_ms, 30 * DAY_MS)
        _check_range("retry_poll_ms", self.retry_poll_ms, 10, 60_000)
        _check_range("max_event_bytes", self.max_event_bytes, MIN_EVENT_BYTES, MAX_EVENT_BYTES)
        _check_range("reap_idle_ms", self.reap_idle_ms, self.lease_ms, 365 * DAY_MS)
        _check_optional_range("handler_timeout_ms", self.handler_timeout_ms, 1, DAY_MS)
        _check_optional_range("reclaim_interval_ms", self.reclaim_interval_ms, 10, self.lease_ms)
        _check_bool("read_ahead", self.read_ahead)
        _check_bool("retention", self.retention)
        _check_range("keep_acked_ms", self.keep_acked_ms, 0, 365 * DAY_MS)
        _check_range("trim_interval_ms", self.trim_interval_ms, 10, DAY_MS)
        _check_optional_range("max_len", self.max_len, 1, MAX_MAXLEN)
        _check_optional_range("dlq_max_age_ms", self.dlq_max_age_ms, 1, 3650 * DAY_MS)
        _check_optional_range("dlq_max_len", self.dlq_max_len, 1, MAX_MAXLEN)
        _check_range("scheduled_poll_ms", self.scheduled_poll_ms, 10, 60_000)
        if self.partitions is not None:
            check_partitioning(self.stream, self.partitions)
            if self.rate_limit is not None:
                raise ConfigurationError("rate_limit is not supported on a partitioned stream yet")
        _check_range("partition_lease_ms", self.partition_lease_ms, 300, DAY_MS)
        _check_bool("ordered", self.ordered)
        if self.ordered and self.concurrency != 1:
            raise ConfigurationError("ordered=True handles a partition one batch at a time: concurrency=1")
        if self.rate_limit is not None and not (
            isinstance(self.rate_limit, int | float)
            and not isinstance(self.rate_limit, bool)
            and 0 < self.rate_limit <= MAX_RATE_LIMIT
        ):
            raise ConfigurationError(
                f"rate_limit must be None or a number of events per second above 0 and at most"
                f" {MAX_RATE_LIMIT:g}, got {self.rate_limit!r}"
            )

    @property
    def reclaim_every_ms(self) -> int:
        return (
            self.reclaim_interval_ms if self.reclaim_interval_ms is not None else max(self.lease_ms // 2, 10)
        )

    @property
    def control_every_ms(self) -> int:
        # How often a pause or resume is looked for: within block_ms (the latency a pause promises), but
        # not more often than 20 times a second, nor less than once a second.
        return min(max(self.block_ms, 50), 1_000)

    @property
    def renew_every_ms(self) -> int:
        # Three renewals per lease: one late or failed renewal still leaves the lease intact.
        return max(self.lease_ms // 3, 10)


class AppSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How an App runs its consumers: App(**options) builds one. Unknown keys are an error."""

    shutdown_grace_ms: int = DEFAULT_SHUTDOWN_GRACE_MS
    executor_workers: int | None = None  # threads for plain `def` handlers; None: the executor's default
    # gc.freeze() once started (process-wide: False when the app shares its process with other work).
    freeze_gc: bool = True
    # How long run() waits for an unreachable server; None: DEFAULT_BURST_CONNECT_TIMEOUT_MS in burst mode
    # (a burst run should end), for ever otherwise (a worker outlives a server restart).
    connect_timeout_ms: int | None = None
    # Observability (streamq/metrics.py). metrics_port: serve /metrics, /healthz and /readyz on it (0: any
    # free port; None: no server, no metrics kept). heartbeat_interval_ms: None, no heartbeat lines.
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_refresh_ms: int = DEFAULT_METRICS_REFRESH_MS
    loop_stall_ms: int = DEFAULT_LOOP_STALL_MS
    heartbeat_interval_ms: int | None = DEFAULT_HEARTBEAT_INTERVAL_MS

    def __post_init__(self) -> None:
        _check_range("shutdown_grace_ms", self.shutdown_grace_ms, 0, DAY_MS)
        _check_optional_range("executor_workers", self.executor_workers, 1, MAX_EXECUTOR_WORKERS)
        _check_bool("freeze_gc", self.freeze_gc)
        _check_optional_range("connect_timeout_ms", self.connect_timeout_ms, 1, DAY_MS)
        _check_optional_range("metrics_port", self.metrics_port, 0, 65_535)
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise ConfigurationError(
                f"metrics_host must be a host name or address, got {self.metrics_host!r}"
            )
        _check_range("metrics_refresh_ms", self.metrics_refresh_ms, 100, DAY_MS)
        _check_range("loop_stall_ms", self.loop_stall_ms, 100, DAY_MS)
        _check_optional_range("heartbeat_interval_ms", self.heartbeat_interval_ms, 100, DAY_MS)

    def connect_timeout_for(self, *, burst: bool) -> int | None:
        """How long, in ms, run() may wait for the server; None: for ever."""
        if self.connect_timeout_ms is not None:
            return self.connect_timeout_ms
        return DEFAULT_BURST_CONNECT_TIMEOUT_MS if burst else None


class ProducerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What Producer and SyncProducer are built with: size cap, trimming, chunking, backpressure and how many
    replicas must have a publish before it returns."""

    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    maxlen: int | None = None  # trim the stream to about this many entries on every append; None: never
    approximate_trim: bool = True  # MAXLEN ~ (whole nodes, cheap) rather than exact
    chunk_size: int = DEFAULT_CHUNK_SIZE
    dedup_ttl_ms: int = DEFAULT_DEDUP_TTL_MS
    # Backpressure: publishing waits while the slowest group's backlog (undelivered + pending) exceeds
    # max_backlog, up to backlog_timeout_ms (0: raise BacklogFull at once). None: never checked.
    max_backlog: int | None = None
    backlog_timeout_ms: int = DEFAULT_BACKLOG_TIMEOUT_MS
    backlog_check_ms: int = DEFAULT_BACKLOG_CHECK_MS
    # Durability on failover: every chunk of a publish is followed, in its round trip, by WAIT min_replicas
    # replica_timeout_ms; fewer replicas in time raises ReplicationTimeout (the entries stay published).
    # None: never waits (0 is refused rather than a second way to say so). replica_aof: WAITAOF instead, so
    # the replicas have also fsynced the entries to their AOF (Redis >= 7.2 or Valkey; checked at the first
    # publish).
    min_replicas: int | None = None
    replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS
    replica_aof: bool = False

    def __post_init__(self) -> None:
        _check_range("max_event_bytes", self.max_event_bytes, MIN_EVENT_BYTES, MAX_EVENT_BYTES)
        _check_optional_range("maxlen", self.maxlen, 1, MAX_MAXLEN)
        _check_bool("approximate_trim", self.approximate_trim)
        _check_range("chunk_size", self.chunk_size, 1, MAX_CHUNK_SIZE)
        _check_range("dedup_ttl_ms", self.dedup_ttl_ms, 1, 365 * DAY_MS)
        _check_optional_range("max_backlog", self.max_backlog, 1, MAX_MAXLEN)
        _check_range("backlog_timeout_ms", self.backlog_timeout_ms, 0, DAY_MS)
        _check_range("backlog_check_ms", self.backlog_check_ms, 1, 60_000)
        _check_optional_range("min_replicas", self.min_replicas, 1, MAX_MIN_REPLICAS)
        # Not 0: to WAIT, a timeout of 0 means for ever, and a publish that can hang for ever is no option.
        _check_range("replica_timeout_ms", self.replica_timeout_ms, 1, DAY_MS)
        _check_bool("replica_aof", self.replica_aof)
        if self.replica_aof and self.min_replicas is None:
            raise ConfigurationError(
                "replica_aof=True needs min_replicas (how many replicas must have fsynced each publish)"
            )

    def for_call(self, chunk_size: int | None, maxlen: int | None) -> tuple[int, int | None]:
        """The chunk size and trim length of one publish call: its own when given (checked), else these."""
        if chunk_size is None:
            chunk_size = self.chunk_size
        else:
            _check_range("chunk_size", chunk_size, 1, MAX_CHUNK_SIZE)
        if maxlen is None:
            maxlen = self.maxlen
        else:
            _check_range("maxlen", maxlen, 1, MAX_MAXLEN)
        return chunk_size, maxlen


def build(settings_type: type[S], /, **options: Any) -> S:
    """settings_type(**options), with an unknown or missing option a ConfigurationError naming it."""
    try:
        return settings_type(**options)
    except TypeError as exc:  # msgspec: "Unexpected keyword argument 'lease_msec'"
        raise ConfigurationError(f"{settings_type.__name__}: {exc}") from None


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if not _is_int_in(value, low, high):
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _check_optional_range(name: str, value: object, low: int, high: int) -> None:
    if value is not None and not _is_int_in(value, low, high):
        raise ConfigurationError(f"{name} must be None or an integer from {low} to {high}, got {value!r}")


def _is_int_in(value: object, low: int, high: int) -> bool:
    # bool is an int subclass, but True is no duration or count.
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
