"""The producer's scripted paths: idempotent and delayed publishing, counted trimming, moving due delayed
events into their stream, cancelling them, and reading the backlog that backpressure waits on.

Plain publishes stay on commands.xadd_many (pipelined XADDs, no script). Anything that must check before it
writes (a dedup key), write somewhere else (a delay) or count what it drops (maxlen) runs here, in one
script per chunk, so the check and the write are one atomic step on the server. A producer with
min_replicas sends its wait (commands.ReplicaWait) behind each chunk's script call, in its round trip.

A delayed event is stored as its payload bytes under its schedule id (keys.scheduled_events_key), scored
by its due time in ms (keys.scheduled_key). Moving it writes the very entry the fast path would have
written (`XADD stream * d payload [header fields]`). A delayed event published with a dedup key also keeps
that key beside its payload, under `<schedule id>#key`, so cancelling it frees the key; one with headers
keeps them under `<schedule id>#h` (the flat name, value, ... list as msgpack, packed and unpacked by the
scripts with the server's cmsgpack); one published with maxlen keeps it under `<schedule id>#m`, applied
when it is moved (its append). Listing goes by the sorted set and never sees those fields.

Headers ride in every PUBLISH call as a count and the fields, per event: an event without any costs one
argument ('0').

Every script here reads the time from the server (TIME), never from the caller: the due time of a delay,
the expiry of a dedup key and "is it due yet" are all on one clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import redis
from redis.exceptions import NoScriptError, ResponseError

from .. import keys
from ..settings import MAX_HEADERS, MAX_TRACE_HEADER_BYTES
from .commands import ReplicaWait, roundtrip_waiting_sync
from .replies import decode_id, raise_for_key
from .transport import Arg, Link, Script, pack, roundtrip_sync

# Shared prelude: the server's clock, and a refusal before any write when the stream key holds another
# type. A script is not rolled back when a command fails halfway: an XADD failing on a WRONGTYPE key after
# earlier writes would leave half a chunk published, or a delayed event moved but still scheduled.
_PRELUDE = """
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function stream_type(key)
    local t = redis.call('TYPE', key)
    return type(t) == 'table' and t['ok'] or t
end
local function check_stream(key)
    local t = stream_type(key)
    if t ~= 'stream' and t ~= 'none' then
        return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a stream')
    end
    return nil
end
"""

# How many expired dedup keys one publish forgets: PURGE_PER_CALL, or as many as the call has events if
# more. Bounded work per call, proportional to its size, and never fewer than the call can add: a flat 100
# let each publish_many of 1000 keyed events add 1000 keys and forget 100, so expired keys piled up
# without end under steady batches.
PURGE_PER_CALL = 100

# Publish one chunk: dedup check, then XADD (with MAXLEN when given) or scheduling, per event, atomically.
# KEYS: stream, dedup index, dedup expiry, scheduled, scheduled events, totals
# ARGV: ttl_ms, maxlen ('' for none), approximate ('1'/'0'), due mode ('' now, 'd' delay ms, 'a' at ms),
#       due value, purge limit, n, then n x (dedup key or '', schedule id or '', payload, h, h header fields)
# Returns {dropped_by_maxlen, id_1, duplicate_1, ..., id_n, duplicate_n}; duplicate is 1 when the event's
# key was known and the first publish's id is returned instead of a new one.
PUBLISH_SOURCE = (
    _PRELUDE
    + """
local stream, index, expiry, sched, events, totals = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ttl, maxlen, approximate = tonumber(ARGV[1]), ARGV[2], ARGV[3] == '1'
local mode, when, purge, n = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local refused = check_stream(stream)
if refused then return refused end
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, purge)
for i = 1, #expired, 1000 do
    -- In slices: unpack fails past a few thousand values, and a chunk may have up to a million events.
    local last = math.min(i + 999, #expired)
    redis.call('HDEL', index, unpack(expired, i, last))
    redis.call('ZREM', expiry, unpack(expired, i, last))
end
local due = now
if mode == 'd' then due = now + when elseif mode == 'a' then due = when end
local before = 0
if maxlen ~= '' then before = redis.call('XLEN', stream) end
local out = {0}
local added, duplicates, scheduled = 0, 0, 0
local pos = 8
for i = 1, n do
    local key, sid, payload, nh = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], tonumber(ARGV[pos + 3])
    local extra = {}
    for j = 1, nh do extra[j] = ARGV[pos + 3 + j] end
    pos = pos + 4 + nh
    local seen = false
    if key ~= '' then
        seen = redis.call('HGET', index, key)
        if seen then
            -- Expired but not purged yet (more than `purge` expired at once): as good as forgotten.
            local until_ms = redis.call('ZSCORE', expiry, key)
            if not until_ms or tonumber(until_ms) <= now then seen = false end
        end
    end
    if seen then
        out[#out + 1] = seen; out[#out + 1] = 1
        duplicates = duplicates + 1
    else
        local id
        if sid ~= '' then
            redis.call('ZADD', sched, due, sid)
            redis.call('HSET', events, sid, payload)
            if key ~= '' then redis.call('HSET', events, sid .. '#key', key) end
            if nh > 0 then redis.call('HSET', events, sid .. '#h', cmsgpack.pack(extra)) end
            -- maxlen caps each append, and a delayed event's append is its move: the cap goes with it.
            if maxlen ~= '' then
                redis.call('HSET', events, sid .. '#m', (approximate and '~' or '=') .. maxlen)
            end
            scheduled = scheduled + 1
            id = sid
        elseif maxlen ~= '' then
            id = redis.call(
                'XADD', stream, 'MAXLEN', approximate and '~' or '=', maxlen, '*', 'd', payload, unpack(extra)
            )
            added = added + 1
        else
            id = redis.call('XADD', stream, '*', 'd', payload, unpack(extra))
            added = added + 1
        end
        if key ~= '' then
            redis.call('HSET', index, key, id)
            redis.call('ZADD', expiry, now + ttl, key)
        end
        out[#out + 1] = id; out[#out + 1] = 0
    end
end
if maxlen ~= '' and added > 0 then
    local dropped = before + added - redis.call('XLEN', stream)
    if dropped > 0 then
        out[1] = dropped
        redis.call('HINCRBY', totals, 'dropped_by_maxlen', dropped)
    end
end
if duplicates > 0 then redis.call('HINCRBY', totals, 'deduplicated', duplicates) end
if scheduled > 0 then redis.call('HINCRBY', totals, 'scheduled', scheduled) end
return out
"""
)

# Move due delayed events into their stream, each exactly once: the read of what is due, the XADDs and the
# removals are one atomic step, so movers racing over the same events (every worker of every group runs
# one) never both move one, and a mover killed at any point has moved a whole step or nothing.
# A call stops after `limit` events or once it has moved `max bytes` of payloads (at least one event):
# the server runs nothing else meanwhile, and a count alone let 1000 events of 1 MiB hold it for over a
# second. What is left is due now, which the reply says (0 ms), so the mover calls again at once.
# KEYS: stream, scheduled, scheduled events, totals. ARGV: limit, max bytes.
# Returns {moved, ms until the next is due or -1}.
MOVE_SCHEDULED_SOURCE = (
    _PRELUDE
    + """
-- The header fields as the publish script packed them: a flat list of strings, names and values. Anything
-- else (a hand-edited field, another tool's) is left out rather than raised: an error here would fail every
-- move of the stream from then on, and stop its workers, for want of headers beside an intact payload. The
-- most a publish writes: MAX_HEADERS, and the trace context's, at least 2 bytes each; unpack() takes that.
local function header_fields(packed)
    if not packed then return {} end
    local ok, extra = pcall(cmsgpack.unpack, packed)
    if not ok or type(extra) ~= 'table' or #extra % 2 ~= 0 or #extra > """
    + str(2 * (MAX_HEADERS + MAX_TRACE_HEADER_BYTES // 2))
    + """ then return {} end
    for j = 1, #extra do
        if type(extra[j]) ~= 'string' then return {} end
    end
    return extra
end
local stream, sched, events, totals = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local refused = check_stream(stream)
if refused then return refused end
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local budget = tonumber(ARGV[2])
local moved, bytes, dropped = 0, 0, 0
for i = 1, #due do
    if bytes >= budget then break end
    local sid = due[i]
    local payload = redis.call('HGET', events, sid)
    -- No payload: only a hand-edited hash gets here; the schedule is dropped rather than retried for ever.
    if payload then
        local extra = header_fields(redis.call('HGET', events, sid .. '#h'))
        -- The maxlen given at publish ('~N' or '=N'), counted as the publish script counts it; an
        -- unreadable one (a hand edit) is no cap, like unreadable headers. N stays the digits given: as a
        -- Lua number, one past 1e14 would reach XADD as a float it refuses.
        local cap = redis.call('HGET', events, sid .. '#m')
        local op, n = cap and cap:sub(1, 1), cap and cap:sub(2):match('^%d+$')
        if n and (op == '~' or op == '=') then
            local before = redis.call('XLEN', stream)
            redis.call('XADD', stream, 'MAXLEN', op, n, '*', 'd', payload, unpack(extra))
            dropped = dropped + before + 1 - redis.call('XLEN', stream)
        else
            redis.call('XADD', stream, '*', 'd', payload, unpack(extra))
        end
        moved = moved + 1
        bytes = bytes + #payload
    end
    redis.call('HDEL', events, sid, sid .. '#key', sid .. '#h', sid .. '#m')
    redis.call('ZREM', sched, sid)
end
if moved > 0 then redis.call('HINCRBY', totals, 'scheduled_moved', moved) end
if dropped > 0 then redis.call('HINCRBY', totals, 'dropped_by_maxlen', dropped) end
local nxt = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
if #nxt == 0 then return {moved, -1} end
return {moved, math.max(0, tonumber(nxt[2]) - now)}
"""
)

# Cancel delayed events not moved yet; a cancelled event's dedup key is forgotten, if it still names it.
# KEYS: scheduled, scheduled events, dedup index, dedup expiry, totals. ARGV: schedule ids.
# Returns one flag per id: 1 cancelled, 0 unknown (never scheduled, already moved or cancelled).
CANCEL_SOURCE = """
local sched, events, index, expiry, totals = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local out, cancelled = {}, 0
for i = 1, #ARGV do
    local sid = ARGV[i]
    if redis.call('ZREM', sched, sid) == 1 then
        local key = redis.call('HGET', events, sid .. '#key')
        redis.call('HDEL', events, sid, sid .. '#key', sid .. '#h', sid .. '#m')
        if key and redis.call('HGET', index, key) == sid then
            redis.call('HDEL', index, key)
            redis.call('ZREM', expiry, key)
        end
        cancelled = cancelled + 1
        out[i] = 1
    else
        out[i] = 0
    end
end
if cancelled > 0 then redis.call('HINCRBY', totals, 'cancelled', cancelled) end
return out
"""

# The largest backlog over the stream's groups: entries not delivered yet (lag) plus delivered and not
# settled (pending). XINFO GROUPS gives lag from Redis 7.0 on, but not always (nil after deletions inside
# the group's range, after a group is created or moved to an id of the stream's middle, and absent before
# 7.0). Then the entries after the group's last-delivered id are counted, in pages of BACKLOG_PAGE, up to
# the lower of ARGV[1] (the count cap: all a "more than max_backlog?" question needs) and BACKLOG_SCAN
# entries or BACKLOG_SCAN_BYTES of them. Counting them all up to a large max_backlog would copy every
# entry into the script: at 100 000 entries of 1 KB, about a second with the server blocked and hundreds
# of MB, at every check. Past that the lag is taken as an upper bound that never under-counts: the
# stream's length, or entries-added minus the group's entries-read when the server still has that count
# (it over-counts only by the entries deleted inside the group's range). A lag above the stream's length
# (a server's miscount after trimming) is taken as the length.
# KEYS: stream. ARGV: count cap. Returns {group, backlog, lag, pending}; {'', 0, 0, 0} without groups.
BACKLOG_SCAN = 1_000
BACKLOG_SCAN_BYTES = 4 * 1024 * 1024
BACKLOG_PAGE = 20  # entries held at once: at most 20 MiB of the largest events
BACKLOG_SOURCE = (
    _PRELUDE
    + f"""
local SCAN, SCAN_BYTES, PAGE = {BACKLOG_SCAN}, {BACKLOG_SCAN_BYTES}, {BACKLOG_PAGE}
"""
    + """
local stream, cap = KEYS[1], tonumber(ARGV[1])
if stream_type(stream) ~= 'stream' then return {'', 0, 0, 0} end
local worst = {'', 0, 0, 0}
local length = redis.call('XLEN', stream)
local added = nil
local function entries_added()
    if added == nil then
        added = false
        -- pcall: the producer's documented ACL (SECURITY.md) grants XINFO GROUPS and XRANGE only; without
        -- XINFO STREAM the bound is the stream's length.
        local s = redis.pcall('XINFO', 'STREAM', stream)
        if type(s) == 'table' and not s['err'] then
            for j = 1, #s, 2 do
                if s[j] == 'entries-added' then added = tonumber(s[j + 1]) or false end
            end
        end
    end
    return added
end
-- Entries after `last`, counted up to `limit` entries or SCAN_BYTES of them, a page at a time (one page
-- held at once); true when that counted them all.
local function count_after(last, limit)
    local n, bytes, from = 0, 0, '(' .. last
    while n < limit and bytes < SCAN_BYTES do
        local want = math.min(PAGE, limit - n)
        local page = redis.call('XRANGE', stream, from, '+', 'COUNT', want)
        n = n + #page
        if #page < want then return n, true end
        for k = 1, #page do
            local fields = page[k][2]
            for f = 1, #fields do bytes = bytes + #fields[f] end
        end
        from = '(' .. page[#page][1]
    end
    return n, false
end
local groups = redis.call('XINFO', 'GROUPS', stream)
for i = 1, #groups do
    local info = {}
    local g = groups[i]
    for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
    local lag = info['lag']
    if type(lag) ~= 'number' then
        local counted, complete = count_after(info['last-delivered-id'], math.min(cap, SCAN))
        lag = counted
        if not complete and counted < cap then
            local bound = length
            local read = info['entries-read']
            local total = entries_added()
            if type(read) == 'number' and total and total - read < bound then bound = total - read end
            lag = math.max(counted, bound)
        end
    end
    if lag > length then
        -- The server's lag overstates once entries past the group's position were trimmed (its read
        -- counter is not corrected; valkey-io/valkey#1952): no more can be undelivered than are there.
        lag = length
    end
    local pending = tonumber(info['pending']) or 0
    if lag + pending > worst[2] or worst[1] == '' then
        worst = {info['name'], lag + pending, lag, pending}
    end
end
return worst
"""
)

PUBLISH = Script("publish", PUBLISH_SOURCE)
MOVE_SCHEDULED = Script("move_scheduled", MOVE_SCHEDULED_SOURCE)
CANCEL = Script("cancel_scheduled", CANCEL_SOURCE)
BACKLOG = Script("backlog", BACKLOG_SOURCE)

SCHEDULE_ID_PREFIX = "sched-"
KEY_SUFFIX = "#key"  # the field beside a delayed event's payload that holds its dedup key
HEADERS_SUFFIX = "#h"  # the field beside a delayed event's payload that holds its headers
MAXLEN_SUFFIX = "#m"  # the field beside a delayed event's payload that holds its maxlen ('~N' or '=N')
MOVE_BYTES = 4 * 1024 * 1024  # payload bytes one move call takes at most (past its first event)


class Planned(NamedTuple):
    """One event of a scripted publish: its dedup key and schedule id ('' for none), its payload and its
    headers (name, value, ...)."""

    dedup_key: str
    schedule_id: str
    payload: bytes
    headers: Sequence[bytes] = ()


class Published(NamedTuple):
    """What the publish script did with one event."""

    id: str  # the entry id, or the schedule id of a delayed event
    duplicate: bool  # its dedup key was known: this is the first publish's id, nothing was written


class PublishReply(NamedTuple):
    published: list[Published]
    dropped_by_maxlen: int
    replicas: int | None = None  # replicas that confirmed the chunk, when a ReplicaWait followed it


class Backlog(NamedTuple):
    """The worst group of a stream: its name ('' without groups) and what it owes."""

    group: str
    backlog: int
    lag: int
    pending: int


def pack_publish(
    stream: str,
    planned: Sequence[Planned],
    *,
    ttl_ms: int,
    maxlen: int | None,
    approximate: bool,
    due_mode: str,
    due_value: int,
) -> bytes:
    """The PUBLISH call of one chunk. due_mode: '' now, 'd' delay_ms from the server's now, 'a' epoch ms."""
    script_keys = (
        stream, keys.dedup_index_key(stream), keys.dedup_expiry_key(stream), keys.scheduled_key(stream),
        keys.scheduled_events_key(stream), keys.totals_key(stream),
    )  # fmt: skip
    args: list[Arg] = [
        ttl_ms, "" if maxlen is None else maxlen, b"1" if approximate else b"0", due_mode, due_value,
        max(PURGE_PER_CALL, len(planned)), len(planned),
    ]  # fmt: skip
    for event in planned:
        args += [event.dedup_key, event.schedule_id, event.payload, len(event.headers), *event.headers]
    return PUBLISH.pack(script_keys, args)


def parse_publish(reply: Any) -> PublishReply:
    dropped = int(reply[0])
    flat = reply[1:]
    published = [Published(decode_id(flat[i]), int(flat[i + 1]) == 1) for i in range(0, len(flat), 2)]
    return PublishReply(published, dropped)


async def publish(link: Link, stream: str, call: bytes, wait: ReplicaWait | None = None) -> PublishReply:
    """Run one packed PUBLISH call, then `wait` in the same round trip; a WRONGTYPE, out-of-memory or ACL
    error is mapped (raise_for_key)."""
    if wait is None:
        try:
            (reply,) = await link.scripts([call])
        except ResponseError as exc:
            raise_for_key(stream, exc)
        return parse_publish(reply)
    # Not link.scripts: the wait's reply may take longer than the socket timeout that bounds its read.
    payload = call + wait.pack()
    replies = await link.roundtrip(payload, 2, timeout_s=wait.reply_timeout_s)
    if isinstance(replies[0], NoScriptError):  # nothing written: load the scripts, send both again
        await link.load_scripts()
        replies = await link.roundtrip(payload, 2, timeout_s=wait.reply_timeout_s)
    return _waited(stream, wait, replies)


def publish_sync(
    client: redis.Redis, stream: str, call: bytes, wait: ReplicaWait | None = None
) -> PublishReply:
    if wait is None:
        try:
            (reply,) = scripts_sync(client, [call])
        except ResponseError as exc:
            raise_for_key(stream, exc)
        return parse_publish(reply)
    payload = call + wait.pack()
    replies = roundtrip_waiting_sync(client, payload, 2, wait)
    if isinstance(replies[0], NoScriptError):
        _load_scripts_sync(client)
        replies = roundtrip_waiting_sync(client, payload, 2, wait)
    return _waited(stream, wait, replies)


def _waited(stream: str, wait: ReplicaWait, replies: Sequence[Any]) -> PublishReply:
    """The replies of a PUBLISH call and its wait -> the chunk's reply; the call's error first, mapped."""
    if isinstance(replies[0], ResponseError):
        raise_for_key(stream, replies[0])
    return parse_publish(replies[0])._replace(replicas=wait.acknowledged(stream, replies[1]))


def pack_move_scheduled(stream: str, limit: int) -> bytes:
    script_keys = (
        stream, keys.scheduled_key(stream), keys.scheduled_events_key(stream), keys.totals_key(stream),
    )  # fmt: skip
    return MOVE_SCHEDULED.pack(script_keys, [limit, MOVE_BYTES])


async def move_scheduled(link: Link, stream: str, limit: int) -> tuple[int, int]:
    """Move up to `limit` due delayed events, and about MOVE_BYTES of payloads (at least one event), into
    `stream`; returns (moved, ms to the next due: 0 when more are due now, -1 when none waits)."""
    try:
        (reply,) = await link.scripts([pack_move_scheduled(stream, limit)])
    except ResponseError as exc:
        raise_for_key(stream, exc)
    return int(reply[0]), int(reply[1])


def move_scheduled_sync(client: redis.Redis, stream: str, limit: int) -> tuple[int, int]:
    try:
        (reply,) = scripts_sync(client, [pack_move_scheduled(stream, limit)])
    except ResponseError as exc:
        raise_for_key(stream, exc)
    return int(reply[0]), int(reply[1])


def cancel_command(stream: str, schedule_ids: Sequence[str]) -> tuple[Arg, ...]:
    """CANCEL as one EVAL command, for steps (steps.py): EVAL needs no loaded script; cancelling is rare."""
    script_keys = (
        keys.scheduled_key(stream), keys.scheduled_events_key(stream), keys.dedup_index_key(stream),
        keys.dedup_expiry_key(stream), keys.totals_key(stream),
    )  # fmt: skip
    return ("EVAL", CANCEL.source, len(script_keys), *script_keys, *schedule_ids)


def pack_backlog(stream: str, cap: int) -> bytes:
    return BACKLOG.pack([stream], [cap])


def parse_backlog(reply: Any) -> Backlog:
    return Backlog(decode_id(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]))


async def backlog(link: Link, stream: str, cap: int) -> Backlog:
    """The stream's worst group and its backlog (lag counted up to `cap` where the server does not say)."""
    (reply,) = await link.scripts([pack_backlog(stream, cap)])
    return parse_backlog(reply)


def backlog_sync(client: redis.Redis, stream: str, cap: int) -> Backlog:
    (reply,) = scripts_sync(client, [pack_backlog(stream, cap)])
    return parse_backlog(reply)


def scripts_sync(client: redis.Redis, calls: Sequence[bytes]) -> list[Any]:
    """Link.scripts for a blocking client: packed EVALSHA calls in one round trip, the scripts loaded and
    the calls run again when the server has forgotten them (restart, SCRIPT FLUSH)."""
    payload = b"".join(calls)
    replies = roundtrip_sync(client, payload, len(calls))
    if any(isinstance(r, NoScriptError) for r in replies):
        _load_scripts_sync(client)
        replies = roundtrip_sync(client, payload, len(calls))
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _load_scripts_sync(client: redis.Redis) -> None:
    scripts = (PUBLISH, MOVE_SCHEDULED, CANCEL, BACKLOG)
    roundtrip_sync(client, b"".join(pack("SCRIPT", "LOAD", s.source) for s in scripts), len(scripts))
