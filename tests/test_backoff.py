"""streamq._backoff: the pure, jittered retry delay (no Redis needed)."""

from __future__ import annotations

import random

import pytest

from streamq._backoff import backoff_ms


class _Fixed(random.Random):
    """A random source that always draws the same number, to pin the jitter to one end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_ceiling_doubles_per_attempt_and_is_capped() -> None:
    """With the draw at its top the delay is the ceiling: base, 2*base, 4*base, ... never above max_ms."""
    top = _Fixed(0.999999999)
    delays = [backoff_ms(attempt, base_ms=100, max_ms=1_000, rng=top) for attempt in range(1, 8)]
    assert delays == [99, 199, 399, 799, 999, 999, 999]


def test_delay_never_falls_below_half_the_ceiling() -> None:
    """Equal jitter: the lowest draw still waits half the ceiling, so a retry never comes back at once."""
    bottom = _Fixed(0.0)
    delays = [backoff_ms(a, base_ms=100, max_ms=1_000, rng=bottom) for a in range(1, 6)]
    assert delays == [50, 100, 200, 400, 500]


@pytest.mark.parametrize("attempt", [1, 2, 3, 10, 50])
def test_every_draw_lies_in_the_upper_half_of_the_ceiling(attempt: int) -> None:
    """For any draw the delay is within [ceiling/2, ceiling] for that attempt."""
    rng = random.Random(attempt)
    ceiling = min(60_000, 250 * 2 ** (attempt - 1))
    for _ in range(500):
        delay = backoff_ms(attempt, base_ms=250, max_ms=60_000, rng=rng)
        assert ceiling // 2 <= delay <= ceiling


def test_jitter_spreads_events_that_failed_together() -> None:
    """Many events failing at the same attempt get different delays, not one synchronized retry storm."""
    rng = random.Random(7)
    delays = {backoff_ms(3, base_ms=1_000, max_ms=300_000, rng=rng) for _ in range(100)}
    assert len(delays) > 50


def test_seeded_rng_makes_it_reproducible() -> None:
    """The same seed gives the same sequence of delays (a pure function of attempt, settings and rng)."""
    first = [backoff_ms(a, base_ms=10, max_ms=10_000, rng=random.Random(42)) for a in range(1, 10)]
    second = [backoff_ms(a, base_ms=10, max_ms=10_000, rng=random.Random(42)) for a in range(1, 10)]
    assert first == second


def test_zero_base_means_no_delay() -> None:
    """retry_base_ms=0 retries at once, whatever the attempt."""
    assert {backoff_ms(a, base_ms=0, max_ms=0) for a in (1, 5, 100)} == {0}


def test_huge_attempt_counts_stay_capped() -> None:
    """A very large attempt number neither overflows nor exceeds max_ms."""
    assert backoff_ms(10**9, base_ms=1_000, max_ms=300_000) <= 300_000


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_count_from_one(attempt: int) -> None:
    """An attempt number below 1 is a caller's bug and is refused."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_ms(attempt, base_ms=100, max_ms=1_000)
