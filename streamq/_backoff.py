"""Jittered exponential backoff: a pure function, so it is tested without Redis."""

from __future__ import annotations

import random


def backoff_ms(attempt: int, *, base_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Delay before the attempt after `attempt` failed ones (attempt >= 1).

    The ceiling doubles per attempt (base, 2*base, 4*base, ... capped at max_ms) and the delay is drawn
    uniformly from the upper half of it ("equal jitter"): retries of events that failed together spread
    out instead of hitting a struggling dependency at the same instant, yet never come back almost at once.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if base_ms <= 0:
        return 0
    # Cap the exponent so a large attempt count cannot build a huge integer.
    ceiling = min(max_ms, base_ms * (1 << min(attempt - 1, 40)))
    draw = (rng or random).random()
    return int(ceiling / 2 + draw * ceiling / 2)
