"""The commands of partitioned streams: recording the partition count, and sharing partitions by leases.

A partitioned group's workers share its partitions without a coordinator. Each worker, every third of
`partition_lease_ms`, runs BALANCE, one atomic script on the group's two keys:

- `members` (sorted set): every live worker, scored by when its membership lapses. The script renews the
  caller's and drops the lapsed ones (a worker that died, or was cut off for a whole lease).
- `owners` (hash): partition -> "<worker> <lease expiry in ms>".

The share of a worker is every partition p with p mod M = i, where M is the number of live workers and i
the caller's position among them in name order: shares differ by one partition at most, and every worker
computes the same split from the same membership. For each partition the script then:

- renews the caller's lease on a partition it owns (also one no longer in its share: the caller still
  handles it until it has settled what it holds, then releases it with RELEASE, and reports it in the
  second list, "give these up");
- gives the caller a partition of its share that nobody owns or whose owner's lease has lapsed;
- leaves alone a partition of its share that another live worker still owns: that worker sees it is no
  longer in its own share and releases it, and the caller takes it on a later round.

So a partition has one owner at a time, a worker that joins gets its share within about a lease (as soon
as the old owners have settled their batches), and a dead worker's partitions are taken over once its
lease lapses; the entries it held are then reclaimed by the new owner's XAUTOCLAIM, as for any consumer
whose entry leases stopped being renewed. The server's clock is the only one read.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from .. import keys as key_names
from .transport import Link, Script

BALANCE_SOURCE = """
-- KEYS: members, owners. ARGV: me, lease_ms, partitions. Returns {owned, to_give_up} (partition numbers).
local members, owners = KEYS[1], KEYS[2]
local me, lease, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', members, '-inf', now)
redis.call('ZADD', members, now + lease, me)
-- A group nobody runs any more leaves no keys behind for long.
redis.call('PEXPIRE', members, lease * 10)
local live = redis.call('ZRANGE', members, 0, -1)
table.sort(live)
local position = 0
for index, name in ipairs(live) do
    if name == me then position = index - 1 end
end
local owned, give_up = {}, {}
local until_ms = string.format('%.0f', now + lease)
for p = 0, count - 1 do
    local record = redis.call('HGET', owners, p)
    local owner, expiry = nil, 0
    if record then
        local space = string.find(record, ' ', 1, true)
        owner, expiry = string.sub(record, 1, space - 1), tonumber(string.sub(record, space + 1))
    end
    local in_share = (p % #live) == position
    if owner == me then
        redis.call('HSET', owners, p, me .. ' ' .. until_ms)
        owned[#owned + 1] = p
        if not in_share then give_up[#give_up + 1] = p end
    elseif in_share and (owner == nil or expiry <= now) then
        redis.call('HSET', owners, p, me .. ' ' .. until_ms)
        owned[#owned + 1] = p
    end
end
redis.call('PEXPIRE', owners, lease * 10)
return {owned, give_up}
"""

RELEASE_SOURCE = """
-- KEYS: owners. ARGV: me, partitions... Drops the caller's ownership of each (never another's).
local released = 0
for i = 2, #ARGV do
    local record = redis.call('HGET', KEYS[1], ARGV[i])
    if record and string.sub(record, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
        redis.call('HDEL', KEYS[1], ARGV[i])
        released = released + 1
    end
end
return released
"""

DECLARE_SOURCE = """
-- KEYS: the stream's partitions key. ARGV: the count asked for. Records it if none is; returns the count.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return tonumber(redis.call('GET', KEYS[1]))
"""

ORDERED_GATE_SOURCE = """
-- KEYS: a partition stream, the group's retry stream, its delayed set. ARGV: group, the caller.
-- Returns 1 when the caller may read new entries of an ordered partition: no retry of the group waiting
-- (delayed, or in the retry stream undelivered or pending) and no entry of the partition pending under
-- another consumer (a previous owner's, to be reclaimed first). Else 0.
local stream, retry, delayed = KEYS[1], KEYS[2], KEYS[3]
local group, me = ARGV[1], ARGV[2]
if redis.call('ZCARD', delayed) > 0 then return 0 end
if redis.call('EXISTS', retry) == 1 then
    local last = redis.call('XINFO', 'STREAM', retry)
    local last_generated
    for i = 1, #last, 2 do
        if last[i] == 'last-generated-id' then last_generated = last[i + 1] end
    end
    for _, fields in ipairs(redis.call('XINFO', 'GROUPS', retry)) do
        local info = {}
        for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
        if info['name'] == group then
            if tonumber(info['pending']) > 0 then return 0 end
            local lag = info['lag']
            if lag then
                if tonumber(lag) > 0 then return 0 end
            elseif info['last-delivered-id'] ~= last_generated then
                return 0
            end
        end
    end
end
if redis.call('EXISTS', stream) == 1 then
    local ok, summary = pcall(redis.call, 'XPENDING', stream, group)
    if ok and summary[4] then
        for _, holder in ipairs(summary[4]) do
            if holder[1] ~= me and tonumber(holder[2]) > 0 then return 0 end
        end
    end
end
return 1
"""

BALANCE = Script("partition_balance", BALANCE_SOURCE)
ORDERED_GATE = Script("ordered_gate", ORDERED_GATE_SOURCE)
RELEASE = Script("partition_release", RELEASE_SOURCE)
DECLARE = Script("partition_declare", DECLARE_SOURCE)


async def _script(client: aioredis.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    from redis.exceptions import NoScriptError

    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.source, len(keys), *keys, *args)


async def balance(
    client: aioredis.Redis, members_key: str, owners_key: str, me: str, lease_ms: int, partitions: int
) -> tuple[set[int], set[int]]:
    """(partitions the caller owns now, those of them it should give up)."""
    owned, give_up = await _script(client, BALANCE, [members_key, owners_key], [me, lease_ms, partitions])
    return {int(p) for p in owned}, {int(p) for p in give_up}


async def release(client: aioredis.Redis, owners_key: str, me: str, partitions: set[int]) -> int:
    if not partitions:
        return 0
    return int(await _script(client, RELEASE, [owners_key], [me, *sorted(partitions)]))


async def leave(client: aioredis.Redis, members_key: str, me: str) -> None:
    await client.zrem(members_key, me)


async def declare(client: aioredis.Redis, partitions_key: str, partitions: int) -> int:
    """Record the partition count if none is; returns the recorded one (compare: it may differ)."""
    return int(await _script(client, DECLARE, [partitions_key], [partitions]))


def declare_sync(client: Any, partitions_key: str, partitions: int) -> int:
    from redis.exceptions import NoScriptError

    try:
        reply = client.evalsha(DECLARE.sha, 1, partitions_key, partitions)
    except NoScriptError:
        reply = client.eval(DECLARE.source, 1, partitions_key, partitions)
    return int(reply)


async def may_read_new(link: Link, stream: str, group: str, consumer: str) -> bool:
    """ORDERED_GATE for the consumer of an ordered partition (one round trip)."""
    script_keys = (stream, key_names.retry_key(stream, group), key_names.delayed_key(stream, group))
    (reply,) = await link.scripts([ORDERED_GATE.pack(script_keys, [group, consumer])])
    return bool(int(reply))
