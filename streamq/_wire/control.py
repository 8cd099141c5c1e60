"""The commands of flow control: the group-wide rate limiter's reservation script, and the pause state.

Rate limiting is GCRA in its virtual-scheduling form, with reservations. The group's rate key
(keys.rate_key) holds the theoretical arrival time (TAT): the moment, by the server's clock, from which
the next event may be handled. Reserving n events moves the TAT n / rate later and tells the caller how
long to wait: until the old TAT. Reservations are handed out back to back in the order they reach the
server, so the events of every worker of the group, in every process, are spaced as one stream of events:
adding workers adds no capacity. The server's clock is the only one read, so clock skew between hosts
does not matter.

The TAT is kept as whole milliseconds and nanoseconds apart ("<ms>.<6 digits>"): a Lua number (a double)
holding Unix time in ms keeps only about 0.2 us of precision, less than the interval between two events
at the highest rate allowed (0.1 us), so the arithmetic is done on the two integer parts.

The key also records the rate of its last reservation ("<ms>.<6 digits>@<rate>"). When a reservation
comes with a higher rate (the group's rate_limit was raised), the schedule still ahead is shortened in
proportion: the events reserved at the old rate are due by then at the new one. Without that, a TAT set by
a low rate (one event an hour costs an hour) would hold the group back for that long after the rate was
raised and the workers restarted. A lowered rate leaves the schedule as it is: what was reserved at the
old rate goes first, at the old pace, and the new spacing applies from there.
"""

from __future__ import annotations

import math
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from .transport import Script

# The longest one reservation may push the TAT: a year. Far below where the integer parts lose
# precision; a rate so low that one event costs more (under one event in a year) is capped to this.
MAX_RESERVATION_NS = 365 * 86_400 * 10**9
# The key outlives the TAT by this much: an idle group's key goes away, and the key of a group that keeps
# going is never missing for a moment between two reservations.
EXPIRE_MARGIN_MS = 1_000

RESERVE_SOURCE = f"""
-- KEYS[1]: the group's rate key; ARGV: the cost of the reservation (whole ms, and ns beyond them), and
-- the rate it was computed at (events/s, as text).
-- Returns how long to wait before handling the events reserved: {{ms, ns beyond them}}.
local cost_ms, cost_ns, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local clock = redis.call('TIME')
local micros = tonumber(clock[2])
local now_ms = tonumber(clock[1]) * 1000 + math.floor(micros / 1000)
local now_ns = (micros % 1000) * 1000
local tat_ms, tat_ns = now_ms, now_ns
local stored = redis.call('GET', KEYS[1])
if stored then
    local ms, ns, old_rate = string.match(stored, '^(%d+)%.(%d%d%d%d%d%d)@(.+)$')
    if not ms then
        ms, ns = string.match(stored, '^(%d+)%.(%d%d%d%d%d%d)$')
    end
    if ms then
        ms, ns = tonumber(ms), tonumber(ns)
        -- A TAT in the past is an idle limiter: the reservation starts now, no credit is saved up.
        if ms > now_ms or (ms == now_ms and ns > now_ns) then
            tat_ms, tat_ns = ms, ns
            local rate_now = tonumber(rate)
            old_rate = tonumber(old_rate)
            if old_rate and rate_now and old_rate > 0 and rate_now > old_rate then
                -- A raised rate: what is left of the schedule shrinks by old / new (see the module
                -- docstring). Done in ms as a double: precise to a few ns, and only on a rate change.
                local ahead = ((ms - now_ms) + (ns - now_ns) / 1000000) * old_rate / rate_now
                local whole = math.floor(ahead)
                local beyond = math.ceil((ahead - whole) * 1000000)
                tat_ms, tat_ns = now_ms + whole, now_ns + beyond
                tat_ms, tat_ns = tat_ms + math.floor(tat_ns / 1000000), tat_ns % 1000000
            end
        end
    end
end
local wait_ms, wait_ns = tat_ms - now_ms, tat_ns - now_ns
if wait_ns < 0 then
    wait_ms, wait_ns = wait_ms - 1, wait_ns + 1000000
end
local next_ns = tat_ns + cost_ns
local next_ms = tat_ms + cost_ms + math.floor(next_ns / 1000000)
next_ns = next_ns % 1000000
redis.call('SET', KEYS[1], string.format('%.0f.%06d@%s', next_ms, next_ns, rate),
           'PX', string.format('%.0f', next_ms - now_ms + {EXPIRE_MARGIN_MS}))
return {{wait_ms, wait_ns}}
"""

RESERVE = Script("rate_reserve", RESERVE_SOURCE)


def reservation_cost(n: int, rate: float) -> tuple[int, int]:
    """What n events cost at `rate` events per second: (whole ms, ns beyond them), rounded up so that
    rounding never lets an event through early. Capped before rounding: at the lowest rates (1e-300 is
    above 0) the cost in ns is more than a float holds, inf, which no int can take."""
    cost = n * 1e9 / rate
    cost_ns = MAX_RESERVATION_NS if cost >= MAX_RESERVATION_NS else math.ceil(cost)
    whole_ms, beyond_ns = divmod(cost_ns, 1_000_000)
    return whole_ms, beyond_ns


def _rate_text(rate: float) -> str:
    """The rate as the script compares and stores it: a float's shortest exact text."""
    return repr(float(rate))


def _wait_s(reply: Any) -> float:
    wait_ms, wait_ns = (int(part) for part in reply)
    return max(0.0, wait_ms / 1000 + wait_ns / 1e9)


async def reserve(client: aioredis.Redis, rate_key: str, n: int, rate: float) -> float:
    """Reserve n events of the group's rate; returns how long to wait (s) before handling them.

    Redis errors are raised as they come (ResponseError on ACL denial, a key of another type).
    """
    args = (*reservation_cost(n, rate), _rate_text(rate))
    try:
        reply = await client.evalsha(RESERVE.sha, 1, rate_key, *args)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(RESERVE.source, 1, rate_key, *args)
    return _wait_s(reply)


def reserve_sync(client: redis.Redis, rate_key: str, n: int, rate: float) -> float:
    """reserve() for blocking code."""
    args = (*reservation_cost(n, rate), _rate_text(rate))
    try:
        reply = client.evalsha(RESERVE.sha, 1, rate_key, *args)
    except redis.exceptions.NoScriptError:
        reply = client.eval(RESERVE.source, 1, rate_key, *args)
    return _wait_s(reply)


# Presence: a running worker puts its consumer name in the group's live set (keys.live_key), scored by the
# server time its word lapses, every LIVE_EVERY_MS. `streamq group delete` refuses while anyone's word is
# good: a consumer's idle time in XINFO CONSUMERS does not show a worker that reads nothing (paused, or on
# Redis 7.0 one whose stream is quiet: an empty read does not reset idle there).
LIVE_TTL_MS = 15_000
LIVE_EVERY_MS = 5_000

# KEYS[1]: the group's live set. ARGV: the consumer's name, how long its word holds (ms; 0: it leaves).
# Drops the lapsed words of others; the set expires with the last word in it.
ANNOUNCE_SOURCE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ttl > 0 then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ttl)
else
    redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""

ANNOUNCE = Script("announce", ANNOUNCE_SOURCE)


async def announce(client: aioredis.Redis, live_key: str, consumer: str, ttl_ms: int) -> None:
    """Say that `consumer` runs for ttl_ms more (0: that it has stopped)."""
    try:
        await client.evalsha(ANNOUNCE.sha, 1, live_key, consumer, ttl_ms)
    except redis.exceptions.NoScriptError:
        await client.eval(ANNOUNCE.source, 1, live_key, consumer, ttl_ms)


async def pause_fields(
    client: aioredis.Redis, paused_key: str, fields: tuple[str, ...]
) -> list[bytes | None]:
    """HMGET of the pause hash: the record of each field (`*`, a group), None where it is not paused."""
    # NEVER_DECODE: raw bytes even on a client built with decode_responses=True (see steps.py).
    command = client.execute_command("HMGET", paused_key, *fields, **{NEVER_DECODE: []})  # type: ignore[no-untyped-call]
    reply = await command
    return [value if value is None or isinstance(value, bytes) else str(value).encode() for value in reply]
