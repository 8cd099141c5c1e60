"""streamq.settings: consumer settings are a validated, frozen value with named defaults (no Redis needed)."""

from __future__ import annotations

from typing import Any

import pytest

import streamq
from streamq import settings as defaults
from streamq.settings import AppSettings, ConsumerSettings, ProducerSettings


class SettingsEvent(streamq.Event, tag="test.settings.event"):
    n: int


async def _handler(batch: streamq.Batch[SettingsEvent]) -> None:
    return None


def test_defaults_are_the_named_constants() -> None:
    """Only stream and group are required; every other setting takes its DEFAULT_* constant."""
    config = ConsumerSettings(stream="orders", group="billing")
    assert config.batch_size == defaults.DEFAULT_BATCH_SIZE
    assert config.max_attempts == defaults.DEFAULT_MAX_ATTEMPTS
    assert config.lease_ms == defaults.DEFAULT_LEASE_MS
    assert config.block_ms == defaults.DEFAULT_BLOCK_MS
    assert config.retry_base_ms == defaults.DEFAULT_RETRY_BASE_MS
    assert config.retry_max_ms == defaults.DEFAULT_RETRY_MAX_MS
    assert config.handler_timeout_ms is None
    assert config.max_deliveries == defaults.DEFAULT_MAX_DELIVERIES == 10
    assert config.max_defer_ms == defaults.DEFAULT_MAX_DEFER_MS == 86_400_000
    assert config.read_ahead is True


def test_settings_are_frozen() -> None:
    """A settings value cannot be changed after it is built (a running consumer relies on it)."""
    config = ConsumerSettings(stream="orders", group="billing")
    with pytest.raises(AttributeError):
        config.lease_ms = 5  # type: ignore[misc]


def test_unknown_setting_is_an_error_not_silently_dropped() -> None:
    """A misspelt setting given to app.consumer fails loudly with ConfigurationError."""
    app = streamq.App("redis://localhost:6379/0")
    with pytest.raises(streamq.ConfigurationError, match="lease_msec"):
        app.consumer("orders", group="billing", lease_msec=500)(_handler)
    assert app.specs == []


def test_app_consumer_passes_settings_through() -> None:
    """Settings given to the decorator end up in the consumer's ConsumerSettings, and nothing connects."""
    app = streamq.App("redis://127.0.0.1:1/0")  # nothing listens there: registering must not connect
    app.consumer("orders", group="billing", lease_ms=700, batch_size=7)(_handler)
    ((config, handlers),) = app.specs
    assert (config.stream, config.group, config.lease_ms, config.batch_size) == ("orders", "billing", 700, 7)
    assert [spec.event_types for spec in handlers.specs] == [[SettingsEvent]]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", defaults.MAX_BATCH_SIZE + 1),
        ("max_attempts", 0),
        ("lease_ms", 99),
        ("block_ms", -1),
        ("retry_poll_ms", 5),
        ("max_event_bytes", 8),
        ("handler_timeout_ms", 0),
        ("lease_ms", True),  # a bool is not a duration
        ("lease_ms", 1.5),
        ("lease_ms", "500"),
        ("max_deliveries", 1),  # one lost delivery is routine (a restart), not a poison event
        ("max_deliveries", 1_001),
        ("max_deliveries", None),
        ("max_defer_ms", 0),
        ("max_defer_ms", 30 * 86_400_000 + 1),
        ("max_defer_ms", 1.0),
        ("reclaim_interval_ms", "100"),
        ("read_ahead", "yes"),  # a truthy string is not a bool
        ("read_ahead", 1),
        ("read_ahead", None),
    ],
)
def test_out_of_range_values_are_refused(field: str, value: Any) -> None:
    """Every numeric setting is checked against its range and type, and booleans must be real bools
    (msgspec does not type-check a Struct built directly); the error names the setting."""
    with pytest.raises(streamq.ConfigurationError, match=field):
        ConsumerSettings(stream="orders", group="billing", **{field: value})


def test_settings_that_depend_on_each_other_are_checked_together() -> None:
    """retry_max_ms below retry_base_ms, a reclaim interval above the lease, or reaping sooner than the
    lease are refused."""
    with pytest.raises(streamq.ConfigurationError, match="retry_max_ms"):
        ConsumerSettings(stream="s", group="g", retry_base_ms=1_000, retry_max_ms=999)
    with pytest.raises(streamq.ConfigurationError, match="reclaim_interval_ms"):
        ConsumerSettings(stream="s", group="g", lease_ms=1_000, reclaim_interval_ms=1_001)
    with pytest.raises(streamq.ConfigurationError, match="reap_idle_ms"):
        ConsumerSettings(stream="s", group="g", lease_ms=60_000, reap_idle_ms=59_999)


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "star*", "x" * 201, "new\nline"])
def test_bad_stream_and_group_names_are_refused(name: str) -> None:
    """Names become key names and log words: only a safe character set of bounded length is allowed."""
    with pytest.raises(streamq.ConfigurationError, match="stream name"):
        ConsumerSettings(stream=name, group="g")
    with pytest.raises(streamq.ConfigurationError, match="group name"):
        ConsumerSettings(stream="s", group=name)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("stream", 7, "stream name"),
        ("stream", b"orders", "stream name"),
        ("group", None, "group name"),
        ("consumer_prefix", ["x"], "consumer prefix name"),
        ("stream", "{orders}", "hash tag alone"),  # see tests/test_keys.py for why these are refused
        ("stream", "a}b", "no hash tag"),
        ("stream", "streamq:orders", "streamq:"),
        ("group", "billing:eu", "must not contain ':'"),
    ],
)
def test_names_must_be_strings_that_keys_can_be_built_from(field: str, value: Any, error: str) -> None:
    """A name that is not a string, or that keys.py refuses (it could collide with another's keys or
    leave its stream's cluster slot), is a ConfigurationError when the settings are built."""
    names: dict[str, Any] = {"stream": "orders", "group": "billing", field: value}
    with pytest.raises(streamq.ConfigurationError, match=error):
        ConsumerSettings(**names)


def test_hash_tagged_and_dotted_names_are_allowed() -> None:
    """Cluster hash tags, dots, colons and dashes are valid in names."""
    config = ConsumerSettings(stream="{app}orders.v2:eu-1", group="billing_v2")
    assert config.stream == "{app}orders.v2:eu-1"


def test_derived_intervals_follow_the_lease() -> None:
    """The reclaimer scans every half lease unless told otherwise; leases renew three times per lease."""
    config = ConsumerSettings(stream="s", group="g", lease_ms=900)
    assert config.reclaim_every_ms == 450
    assert config.renew_every_ms == 300
    explicit = ConsumerSettings(stream="s", group="g", lease_ms=900, reclaim_interval_ms=100)
    assert explicit.reclaim_every_ms == 100


# ------------------------------------------------------------------------------------------ the app


def test_app_settings_defaults() -> None:
    """App settings default to the named constants; connect_timeout_ms None means 30 s in burst mode and
    waiting for ever otherwise."""
    config = AppSettings()
    assert config.shutdown_grace_ms == defaults.DEFAULT_SHUTDOWN_GRACE_MS == 30_000
    assert config.executor_workers is None
    assert config.freeze_gc is True
    assert config.connect_timeout_ms is None
    assert config.connect_timeout_for(burst=True) == defaults.DEFAULT_BURST_CONNECT_TIMEOUT_MS == 30_000
    assert config.connect_timeout_for(burst=False) is None
    given = AppSettings(connect_timeout_ms=500)
    assert given.connect_timeout_for(burst=True) == given.connect_timeout_for(burst=False) == 500


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shutdown_grace_ms", -1),
        ("shutdown_grace_ms", 86_400_001),
        ("shutdown_grace_ms", True),
        ("shutdown_grace_ms", None),
        ("executor_workers", 0),  # used to fail later, inside run(), as a raw ThreadPoolExecutor error
        ("executor_workers", 1_025),
        ("executor_workers", "4"),
        ("freeze_gc", 1),
        ("freeze_gc", "no"),  # truthy: would have frozen the heap
        ("freeze_gc", None),
        ("connect_timeout_ms", 0),
        ("connect_timeout_ms", -1),
        ("connect_timeout_ms", 86_400_001),
        ("connect_timeout_ms", 2.5),
    ],
)
def test_bad_app_settings_are_refused(field: str, value: Any) -> None:
    """Every App setting is checked for type and range when built; the error names the setting."""
    with pytest.raises(streamq.ConfigurationError, match=field):
        AppSettings(**{field: value})


def test_app_settings_accept_their_range_ends() -> None:
    """The ends of each range are valid: no grace at all, one thread, a one-millisecond connect timeout."""
    config = AppSettings(shutdown_grace_ms=0, executor_workers=1, freeze_gc=False, connect_timeout_ms=1)
    assert (config.shutdown_grace_ms, config.executor_workers, config.connect_timeout_ms) == (0, 1, 1)
    assert AppSettings(executor_workers=defaults.MAX_EXECUTOR_WORKERS).executor_workers == 1_024


def test_build_turns_unknown_and_missing_settings_into_configuration_errors() -> None:
    """settings.build names a misspelt or missing setting in a ConfigurationError (msgspec raises
    TypeError), for any of the settings types, and is frozen like the others."""
    with pytest.raises(streamq.ConfigurationError, match="shutdown_grace"):
        defaults.build(AppSettings, shutdown_grace=5)
    with pytest.raises(streamq.ConfigurationError, match="group"):
        defaults.build(ConsumerSettings, stream="orders")
    assert defaults.build(AppSettings, freeze_gc=False) == AppSettings(freeze_gc=False)
    with pytest.raises(AttributeError):
        AppSettings().freeze_gc = False  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ producers


def test_producer_settings_defaults() -> None:
    """Producers default to no trimming, approximate trimming when asked, and chunks of 1000 events."""
    config = ProducerSettings()
    assert (config.maxlen, config.approximate_trim) == (None, True)
    assert config.chunk_size == defaults.DEFAULT_CHUNK_SIZE == 1_000
    assert config.max_event_bytes == streamq.events.DEFAULT_MAX_EVENT_BYTES
    assert config.for_call(None, None) == (1_000, None)
    assert ProducerSettings(maxlen=50).for_call(7, None) == (7, 50)
    assert ProducerSettings(maxlen=50).for_call(None, 3) == (1_000, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("maxlen", 0),
        ("maxlen", -10),
        ("maxlen", True),
        ("maxlen", "100"),
        ("approximate_trim", "yes"),
        ("approximate_trim", 0),
        ("approximate_trim", None),
        ("chunk_size", 0),
        ("chunk_size", defaults.MAX_CHUNK_SIZE + 1),
        ("chunk_size", 10.0),
        ("max_event_bytes", 8),
        ("max_event_bytes", defaults.MAX_EVENT_BYTES + 1),
        ("max_event_bytes", "1MiB"),
    ],
)
def test_bad_producer_settings_are_refused(field: str, value: Any) -> None:
    """Each producer option is checked for type and range; the error names it."""
    with pytest.raises(streamq.ConfigurationError, match=field):
        ProducerSettings(**{field: value})


@pytest.mark.parametrize(
    ("chunk_size", "maxlen", "field"),
    [(0, None, "chunk_size"), (-1, None, "chunk_size"), (None, 0, "maxlen"), (None, False, "maxlen")],
)
def test_per_call_overrides_are_checked_too(chunk_size: Any, maxlen: Any, field: str) -> None:
    """A publish call's own chunk_size or maxlen goes through the same checks: 0 is an error, not the
    default (chunk_size) nor a trim to nothing (maxlen)."""
    with pytest.raises(streamq.ConfigurationError, match=field):
        ProducerSettings().for_call(chunk_size, maxlen)
