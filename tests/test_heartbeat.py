"""The worker's heartbeat: one `heartbeat` info line every heartbeat_interval_ms, with rates over the
interval, work in flight and lag per stream and group (streamq/_worker/observing.py)."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from helpers import async_wait_until

import streamq
from streamq.errors import ConfigurationError


class Tick(streamq.Event, tag="tests.heartbeat.tick"):
    n: int


def _beats(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in logs if line.get("event") == "heartbeat"]


async def test_heartbeat_line_has_rates_in_flight_and_lag(redis_url: str, unique: str) -> None:
    """While a handler holds a batch of 5 out of 12 events, a heartbeat says 5 events (1 batch) in flight and
    a lag of 7 for the stream's group; once they are handled, a later one shows acked events per second."""
    app = streamq.App(redis_url, heartbeat_interval_ms=100)
    gate = asyncio.Event()

    @app.consumer(unique, group="g", batch_size=5, block_ms=100, read_ahead=False)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        await gate.wait()

    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Tick(n=i) for i in range(12)])
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(app.run())
        try:
            held = await async_wait_until(
                lambda: [b for b in _beats(logs) if b["in_flight_events"] == 5], message="a beat while held"
            )
            beat = held[-1]
            assert beat["log_level"] == "info"
            assert beat["in_flight_batches"] == 1
            assert beat["lag"] == {f"{unique}/g": 7}
            assert {"interval_s", "acked_per_s", "retried_per_s", "dead_per_s", "fetched_per_s"} <= set(beat)
            gate.set()
            await async_wait_until(
                lambda: any(
                    isinstance(b["acked_per_s"], float) and b["acked_per_s"] > 0 for b in _beats(logs)
                ),
                message="a beat with acked events per second",
            )
            await async_wait_until(
                lambda: (
                    _beats(logs)[-1]["lag"] == {f"{unique}/g": 0}
                    and _beats(logs)[-1]["in_flight_events"] == 0
                ),
                message="a beat with nothing left",
            )
        finally:
            gate.set()
            app.stop()
            await asyncio.wait_for(task, 30)


async def test_no_heartbeat_when_disabled(redis_url: str, unique: str) -> None:
    """heartbeat_interval_ms=None: a run logs no heartbeat line."""
    app = streamq.App(redis_url, heartbeat_interval_ms=None)
    handled = asyncio.Event()

    @app.consumer(unique, group="g", block_ms=100)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        handled.set()

    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Tick(n=1))
    with structlog.testing.capture_logs() as logs:
        await app.run_until_idle()
    assert handled.is_set()
    assert not _beats(logs)


@pytest.mark.parametrize(
    "options",
    [
        {"heartbeat_interval_ms": 0},
        {"metrics_port": 70_000},
        {"metrics_refresh_ms": 10},
        {"loop_stall_ms": -1},
    ],
)
def test_observability_settings_are_checked(options: dict[str, int]) -> None:
    """Out-of-range observability settings are a ConfigurationError when the App is built."""
    with pytest.raises(ConfigurationError):
        streamq.App(**options)  # type: ignore[arg-type]
