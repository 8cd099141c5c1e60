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

DAY_MS = 86_400_000

# Consumers
DEFAULT_BATCH_SIZE = 100  # entries per XREADGROUP, and per handler call
DEFAULT_MAX_ATTEMPTS = 5  # failed attempts (raised, timed out, asked to retry) before dead-lettering
DEFAULT_MAX_DELIVERIES = 10  # deliveries that never settled (worker died, lease lost) before dead-lettering
DEFAULT_MAX_DEFER_MS = DAY_MS  # an event deferred this long since its first deferral is dead-lettered
DEFAULT_LEASE_MS = 30_000  # an entry unrenewed this long may be reclaimed by another worker
DEFAULT_BLOCK_MS = 1_000  # how long one XREADGROUP waits for new entries; also bounds shutdown latency
DEFAULT_RETRY_BASE_MS = 1_000  # first retry's backoff ceiling; doubles per attempt
DEFAULT_RETRY_MAX_MS = 300_000  # backoff ceiling
DEFAULT_RETRY_POLL_MS = 500  # how often due retries are looked for when none is known to be due sooner
DEFAULT_REAP_IDLE_MS = 3_600_000  # consumers idle this long with nothing pending are deleted from the group
MAX_BATCH_SIZE = 10_000
MIN_EVENT_BYTES = 16  # bytes; the smallest max_event_bytes
MAX_EVENT_BYTES = 512 * 1024 * 1024  # bytes; the largest max_event_bytes (Redis's default proto-max-bulk-len)

# The app (App(...))
DEFAULT_SHUTDOWN_GRACE_MS = 30_000  # time to finish and settle in-flight batches after the first signal
DEFAULT_BURST_CONNECT_TIMEOUT_MS = 30_000  # burst mode gives up on an unreachable server after this long
MAX_EXECUTOR_WORKERS = 1_024  # threads for plain `def` handlers

# Producers
DEFAULT_CHUNK_SIZE = 1_000  # events per round trip in publish_many
MAX_CHUNK_SIZE = 1_000_000
MAX_MAXLEN = 2**63 - 1  # entries; the largest MAXLEN Redis accepts

S = TypeVar("S", bound=msgspec.Struct)


class ConsumerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How one consumer reads, retries and recovers. Unknown keys are an error, never silently dropped."""

    stream: str
    group: str
    batch_size: int = DEFAULT_BATCH_SIZE
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

    def __post_init__(self) -> None:
        validate_name("stream", self.stream)
        validate_name("group", self.group)
        validate_name("consumer prefix", self.consumer_prefix)
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
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

    @property
    def reclaim_every_ms(self) -> int:
        return (
            self.reclaim_interval_ms if self.reclaim_interval_ms is not None else max(self.lease_ms // 2, 10)
        )

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

    def __post_init__(self) -> None:
        _check_range("shutdown_grace_ms", self.shutdown_grace_ms, 0, DAY_MS)
        _check_optional_range("executor_workers", self.executor_workers, 1, MAX_EXECUTOR_WORKERS)
        _check_bool("freeze_gc", self.freeze_gc)
        _check_optional_range("connect_timeout_ms", self.connect_timeout_ms, 1, DAY_MS)

    def connect_timeout_for(self, *, burst: bool) -> int | None:
        """How long, in ms, run() may wait for the server; None: for ever."""
        if self.connect_timeout_ms is not None:
            return self.connect_timeout_ms
        return DEFAULT_BURST_CONNECT_TIMEOUT_MS if burst else None


class ProducerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What Producer and SyncProducer are built with: size cap, trimming and chunking."""

    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    maxlen: int | None = None  # trim the stream to about this many entries on every append; None: never
    approximate_trim: bool = True  # MAXLEN ~ (whole nodes, cheap) rather than exact
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        _check_range("max_event_bytes", self.max_event_bytes, MIN_EVENT_BYTES, MAX_EVENT_BYTES)
        _check_optional_range("maxlen", self.maxlen, 1, MAX_MAXLEN)
        _check_bool("approximate_trim", self.approximate_trim)
        _check_range("chunk_size", self.chunk_size, 1, MAX_CHUNK_SIZE)

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
