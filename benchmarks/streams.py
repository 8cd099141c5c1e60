"""Untimed stream chores shared by scenarios: pre-filling a stream, creating a group, waiting until settled.

Measures nothing. Pre-filling uses a server-side Lua loop that XADDs one fixed set of fields N times, so a
consume case with hundreds of thousands of entries is ready in about a second instead of being bound by the
very client speed being measured elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import redis
import redis.asyncio

PREFILL_CHUNK = 10_000  # entries per EVAL: keeps each server-side loop short (~20 ms)
DEFAULT_SETTLE_TIMEOUT_MS = 10_000  # how long acks may trail the last handled event
SETTLE_POLL_MS = 2
DEFAULT_STALL_TIMEOUT_MS = 10_000  # a consumer that handles nothing for this long has failed

_XADD_LOOP = """
local n = tonumber(ARGV[1])
for _ = 1, n do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
end
return n
"""


def prefill(url: str, stream: str, fields: dict[bytes, bytes], count: int, *, group: str | None) -> None:
    """Append `count` identical entries to `stream`, then create `group` at the start of it."""
    flat = [item for pair in fields.items() for item in pair]
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        script = client.register_script(_XADD_LOOP)
        remaining = count
        while remaining > 0:
            n = min(remaining, PREFILL_CHUNK)
            script(keys=[stream], args=[n, *flat])
            remaining -= n
        if group is not None:
            create_group(client, stream, group)


def create_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create `group` reading from the first entry (so pre-filled entries are delivered)."""
    client.xgroup_create(stream, group, id="0", mkstream=True)


async def pending_count(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    summary = await client.xpending(stream, group)
    return int(summary["pending"])


async def wait_settled(
    client: redis.asyncio.Redis, stream: str, group: str, timeout_ms: int = DEFAULT_SETTLE_TIMEOUT_MS
) -> None:
    """Return once `group` has nothing pending: the last acks have reached the server."""
    deadline = time.monotonic() + timeout_ms / 1000
    while (pending := await pending_count(client, stream, group)) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} entries still pending after {timeout_ms} ms")
        await asyncio.sleep(SETTLE_POLL_MS / 1000)


async def wait_for_events(
    done: asyncio.Event, progress: Callable[[], int], stall_ms: int = DEFAULT_STALL_TIMEOUT_MS
) -> None:
    """Wait for `done`, failing if the handled-event count `progress()` stops moving for about `stall_ms`."""
    last = -1
    while True:
        try:
            await asyncio.wait_for(done.wait(), stall_ms / 1000)
            return
        except TimeoutError:
            now = progress()
            if now == last:
                raise TimeoutError(f"no progress for {stall_ms} ms after {now} events") from None
            last = now
