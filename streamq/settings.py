"""Consumer and producer settings: validated, frozen values with named defaults (all durations in ms)."""

from __future__ import annotations

import msgspec

from .errors import ConfigurationError
from .events import DEFAULT_MAX_EVENT_BYTES
from .keys import validate_name

DEFAULT_BATCH_SIZE = 100  # entries per XREADGROUP, and per handler call
DEFAULT_MAX_ATTEMPTS = 5  # handler attempts before an event is dead-lettered
DEFAULT_LEASE_MS = 30_000  # an entry unrenewed this long may be reclaimed by another worker
DEFAULT_BLOCK_MS = 1_000  # how long one XREADGROUP waits for new entries; also bounds shutdown latency
DEFAULT_RETRY_BASE_MS = 1_000  # first retry's backoff ceiling; doubles per attempt
DEFAULT_RETRY_MAX_MS = 300_000  # backoff ceiling
DEFAULT_RETRY_POLL_MS = 500  # how often due retries are looked for when none is known to be due sooner
DEFAULT_REAP_IDLE_MS = 3_600_000  # consumers idle this long with nothing pending are deleted from the group
MAX_BATCH_SIZE = 10_000


class ConsumerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How one consumer reads, retries and recovers. Unknown keys are an error, never silently dropped."""

    stream: str
    group: str
    batch_size: int = DEFAULT_BATCH_SIZE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
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
        _check_range("lease_ms", self.lease_ms, 100, 86_400_000)
        # Not 0: a read that never waits would spin on an empty stream (and BLOCK 0 means forever to Redis).
        _check_range("block_ms", self.block_ms, 1, 600_000)
        _check_range("retry_base_ms", self.retry_base_ms, 0, 86_400_000)
        _check_range("retry_max_ms", self.retry_max_ms, self.retry_base_ms, 86_400_000 * 30)
        _check_range("retry_poll_ms", self.retry_poll_ms, 10, 60_000)
        _check_range("max_event_bytes", self.max_event_bytes, 16, 512 * 1024 * 1024)
        _check_range("reap_idle_ms", self.reap_idle_ms, self.lease_ms, 86_400_000 * 365)
        if self.handler_timeout_ms is not None:
            _check_range("handler_timeout_ms", self.handler_timeout_ms, 1, 86_400_000)
        if self.reclaim_interval_ms is not None:
            _check_range("reclaim_interval_ms", self.reclaim_interval_ms, 10, self.lease_ms)

    @property
    def reclaim_every_ms(self) -> int:
        return (
            self.reclaim_interval_ms if self.reclaim_interval_ms is not None else max(self.lease_ms // 2, 10)
        )

    @property
    def renew_every_ms(self) -> int:
        # Three renewals per lease: one late or failed renewal still leaves the lease intact.
        return max(self.lease_ms // 3, 10)


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}, got {value!r}")
