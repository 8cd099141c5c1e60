"""What Redis says about a consumer group, read the same way by every test: counters, pending entries, and
whether anything is left.

Import from any test module as ``from group_state import stats, pending, assert_nothing_left``.
"""

from __future__ import annotations

import redis.asyncio

from streamq import keys


async def stats(client: redis.asyncio.Redis, stream: str, group: str = "g") -> dict[str, int]:
    """The group's counters (acked, retried, deferred, dead, reclaimed, lease_lost, ...) as ints."""
    raw = await client.hgetall(keys.stats_key(stream, group))
    return {k.decode(): int(v) for k, v in raw.items()}


async def pending(client: redis.asyncio.Redis, stream: str, group: str = "g") -> int:
    """Entries pending for the group on the stream and on its retry stream."""
    total = int((await client.xpending(stream, group))["pending"])
    if await client.exists(keys.retry_key(stream, group)):
        total += int((await client.xpending(keys.retry_key(stream, group), group))["pending"])
    return total


async def assert_nothing_left(client: redis.asyncio.Redis, stream: str, group: str = "g") -> None:
    """Nothing pending on the stream or its retry stream, and no retry or deferral waiting."""
    assert await pending(client, stream, group) == 0
    assert await client.zcard(keys.delayed_key(stream, group)) == 0
