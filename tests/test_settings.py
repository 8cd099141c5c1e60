"""streamq.settings: consumer settings are a validated, frozen value with named defaults (no Redis needed)."""

from __future__ import annotations

from typing import Any

import pytest

import streamq
from streamq import settings as defaults
from streamq.settings import ConsumerSettings


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
    ((config, spec),) = app.specs
    assert (config.stream, config.group, config.lease_ms, config.batch_size) == ("orders", "billing", 700, 7)
    assert spec.event_types == [SettingsEvent]


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
    ],
)
def test_out_of_range_values_are_refused(field: str, value: Any) -> None:
    """Every numeric setting is checked against its range and type; the error names the setting."""
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
