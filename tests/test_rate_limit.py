"""Group-wide rate limits (`rate_limit=` events/s): the reservation script's arithmetic, two workers of one
group held to the group's rate together, rates under one event a second, validation, and an admission
wait ended by the worker's stop.

Timing checks are upper bounds on the rate only (events in a window at most rate x window + one read's
burst, with SLACK_S for the event loop's jitter between an admission and the handler's call): a slow
machine cannot fail them, and a missing or per-worker limit breaks them by far.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
import redis.asyncio
import structlog
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq._wire import control as wire
from streamq._worker.control import Control
from streamq.errors import ConfigurationError
from streamq.settings import MAX_RATE_LIMIT, ConsumerSettings


class Tick(streamq.Event, tag="test.rate.tick"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 2_000, "block_ms": 100}
SLACK_S = 0.25  # jitter allowed between an admission and the handler's call (a busy event loop)


def _worst_excess(calls: list[tuple[float, int]], rate: float, burst: int) -> float:
    """The largest (events handled in a window) - (rate x (window + SLACK_S) + burst) over every window
    that starts and ends at a handler call: <= 0 when the rate was kept."""
    calls = sorted(calls)
    worst = -math.inf
    for i, (start, _) in enumerate(calls):
        events = 0
        for end, count in calls[i:]:
            events += count
            worst = max(worst, events - (rate * (end - start + SLACK_S) + burst))
    return worst


async def _server_ms(client: redis.asyncio.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# ------------------------------------------------------------------------------------------ the script


async def test_back_to_back_reservations_wait_n_over_rate(client: redis.asyncio.Redis, unique: str) -> None:
    """On an idle limiter the first reservation waits nothing; the next one waits for the first's n / rate
    (less only the time that passed between the two calls); the key expires a second after its last
    reservation's end. The same below one event a second."""
    for rate, n in ((10.0, 5), (0.5, 1)):
        key = keys.rate_key(unique, f"g{n}")
        started = time.monotonic()
        first = await wire.reserve(client, key, n, rate)
        second = await wire.reserve(client, key, n, rate)
        elapsed = time.monotonic() - started
        assert first == 0.0
        assert n / rate - elapsed - 0.002 <= second <= n / rate
        ttl_ms = await client.pttl(key)
        assert 0 < ttl_ms <= (2 * n / rate) * 1000 + wire.EXPIRE_MARGIN_MS


async def test_an_idle_limiter_saves_no_credit_and_the_arithmetic_is_exact(
    client: redis.asyncio.Redis, unique: str
) -> None:
    """A TAT in the past (or a value that is no TAT) starts the next reservation now: idle time is not
    saved up into a bigger burst. The TAT moves by exactly n / rate, in whole nanoseconds, even at the
    highest rate allowed, where one event costs 100 ns."""
    key = keys.rate_key(unique, "g")
    for stale in (b"1000.000000", b"not a time"):
        await client.set(key, stale)
        assert await wire.reserve(client, key, 2, 1.0) == 0.0
        assert await wire.reserve(client, key, 1, 1.0) > 1.9  # the first one's 2 s, nothing saved up
    ahead_ms = await _server_ms(client) + 60_000
    await client.set(key, f"{ahead_ms}.000000")
    for _ in range(25):
        await wire.reserve(client, key, 1, MAX_RATE_LIMIT)
    await wire.reserve(client, key, 3, 1000.0)  # 3 ms
    # 25 x 100 ns, then 3 ms; the rate of the last reservation is kept beside the TAT
    assert await client.get(key) == f"{ahead_ms + 3}.002500@1000.0".encode()


# ------------------------------------------------------------------------------------------ workers


async def test_two_workers_of_one_group_share_its_rate(redis_url: str, unique: str) -> None:
    """Two workers (two apps, two connections) on one group with rate_limit=R handle everything, both take
    part, and together never go faster than R: in every window, at most R x window + one read."""
    rate, batch_size, total = 20.0, 5, 60
    await _publish(redis_url, unique, total)
    calls: list[tuple[float, int]] = []
    by_worker: dict[int, int] = {0: 0, 1: 0}
    apps = [streamq.App(redis_url, freeze_gc=False) for _ in range(2)]
    for index, app in enumerate(apps):

        def make(worker: int) -> Any:
            async def handle(batch: streamq.Batch[Tick]) -> None:
                calls.append((time.monotonic(), len(batch.events)))
                by_worker[worker] += len(batch.events)

            return handle

        app.consumer(unique, group="g", batch_size=batch_size, rate_limit=rate, **FAST)(make(index))
    runs = [asyncio.create_task(app.run()) for app in apps]
    try:
        await async_wait_until(
            lambda: sum(count for _, count in calls) >= total, timeout_s=60, message="every event"
        )
    finally:
        for app in apps:
            app.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 30)
    assert sum(count for _, count in calls) == total
    assert all(by_worker.values()), by_worker
    assert max(count for _, count in calls) <= batch_size
    assert _worst_excess(calls, rate, burst=batch_size) <= 0


async def test_a_rate_under_one_event_a_second_reads_one_event_at_a_time(redis_url: str, unique: str) -> None:
    """rate_limit=0.8: each read takes one event (whatever batch_size), and handler calls are 1.25 s apart."""
    rate = 0.8
    await _publish(redis_url, unique, 3)
    calls: list[tuple[float, int]] = []
    app = streamq.App(redis_url, freeze_gc=False)

    @app.consumer(unique, group="g", batch_size=100, rate_limit=rate, **FAST)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        calls.append((time.monotonic(), len(batch.events)))

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert [count for _, count in calls] == [1, 1, 1]
    assert _worst_excess(calls, rate, burst=1) <= 0
    assert app.consumers[0].control.read_count(100) == 1


@pytest.mark.parametrize("value", [0, -1, 0.0, True, "5", math.inf, math.nan, MAX_RATE_LIMIT * 2])
def test_a_bad_rate_limit_is_refused(value: Any) -> None:
    app = streamq.App("redis://localhost:1/0")
    with pytest.raises(ConfigurationError, match="rate_limit"):

        @app.consumer("orders", group="g", rate_limit=value)
        async def handle(batch: streamq.Batch[Tick]) -> None: ...


def test_good_rate_limits_are_taken() -> None:
    for value in (0.001, 1, 20.5, MAX_RATE_LIMIT, None):
        assert ConsumerSettings(stream="s", group="g", rate_limit=value).rate_limit == value


# ------------------------------------------------------------------------------------------ stopping


@pytest.mark.parametrize("how", ["stopping", "stop"])
async def test_stopping_ends_an_admission_wait(client: redis.asyncio.Redis, unique: str, how: str) -> None:
    """A worker waiting for its turn (20 s away at 0.05 events/s) stops waiting as soon as it is told to
    stop (the consumer's `stopping` event, or Control.stop): the waiting task ends cancelled, the path on
    which the consumer gives back what it holds. The reservation stays spent."""
    settings = ConsumerSettings(stream=unique, group="g", rate_limit=0.05)
    control = Control(client, settings, log=structlog.get_logger("test"), counts={})
    control.stopping = asyncio.Event()
    await asyncio.wait_for(control.admit(1), 5)  # idle limiter: at once
    first = await client.get(keys.rate_key(unique, "g"))
    waiting = asyncio.create_task(control.admit(1))
    await async_wait_until(
        lambda: _moved(client, unique, first),
        message="the second reservation",
    )
    assert not waiting.done()
    if how == "stopping":
        control.stopping.set()
    else:
        control.stop()
    done, _ = await asyncio.wait([waiting], timeout=5)
    assert done and waiting.cancelled()


async def _moved(client: redis.asyncio.Redis, unique: str, before: bytes | None) -> bool:
    return await client.get(keys.rate_key(unique, "g")) != before


async def test_an_app_stopped_during_an_admission_wait_stops_promptly(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """app.stop() while a worker waits 20 s for its turn ends the run at once, not after the wait (nor the
    30 s grace period); the event waiting is not handled, and is left for the group (pending, given
    back)."""
    await _publish(redis_url, unique, 2)
    handled: list[int] = []
    app = streamq.App(redis_url, freeze_gc=False)

    @app.consumer(unique, group="g", batch_size=1, rate_limit=0.05, **FAST)
    async def handle(batch: streamq.Batch[Tick]) -> None:
        handled.extend(e.n for e in batch.events)

    run = asyncio.create_task(app.run())
    try:
        await async_wait_until(lambda: handled == [0], message="the first event")

        async def second_held() -> bool:
            return int((await client.xpending(unique, "g"))["pending"]) == 1

        await async_wait_until(second_held, message="the second event read and waiting")
        app.stop()
        await asyncio.wait_for(asyncio.shield(run), 5)
    finally:
        app.stop()
        if not run.done():
            run.cancel()
        await asyncio.wait([run])
    assert handled == [0]


async def _publish(url: str, stream: str, count: int) -> None:
    async with streamq.Producer(url) as producer:
        await producer.publish_many(stream, [Tick(n) for n in range(count)])
