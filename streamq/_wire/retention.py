"""Retention on the wire: the TRIM and DELETE_GROUP scripts and their calls, asyncio and blocking.

TRIM works out, inside one script, how far every group of a stream has acknowledged, and trims below
that; nothing a group has not acknowledged can be removed by it, whatever the timing, because XREADGROUP,
XACK and the trim cannot interleave with a script. Its hard cap (max_len) and the dead-letter retention
ride in the same call, so a worker sends one script per trim interval.

Per group, its bound is the lowest id it may still need: the oldest entry it has pending, or the entry
after the last it was delivered, whichever is lower (a group moved back with XGROUP SETID gets again what
follows its new position, pending or acknowledged). Everything below the lowest bound of all groups has
been delivered to every group and acknowledged by it. A stream without groups is never trimmed by it:
nobody has said what they have consumed.

Ids are compared and incremented as decimal strings: a sequence number can exceed what a Lua number (a
double) holds exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from .. import keys
from ..errors import ConfigurationError
from .control import LIVE_TTL_MS
from .replies import decode_id, is_denied, raise_for_key
from .transport import Arg, Script

# Dry runs count what they would remove with XRANGE, at most this many entries per range.
COUNT_CAP = 10_000
# Entries one TRIM call removes at most (XTRIM ... LIMIT): about 2 ms of the server's time. Without an
# explicit LIMIT, `XTRIM MINID ~` removes at most 100 nodes' worth (10,000 entries at the default node
# size), so a worker trimming every second fell behind any stream faster than 10,000 events a second and
# the stream grew without end. A call that removes at least half of this is followed by another at once
# (trim() below), so a backlog of any size is trimmed in steps that never block the server for long.
TRIM_LIMIT = 100_000
MAX_TRIM_CALLS = 100  # calls in a row at most (10 million entries), then the next interval goes on
# Expired dedup keys one trim forgets at most: a worker trims every second, so this outpaces any steady
# rate of keyed publishes that stopped, in bounded work per call.
DEDUP_FORGET_PER_TRIM = 1_000

_IDS = """
local function split(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return ms or id, seq or '0'
end
-- Decimal strings without leading zeros: the longer is larger, else the string order is the number order.
local function cmp_digits(a, b)
    if #a ~= #b then return #a < #b and -1 or 1 end
    if a == b then return 0 end
    return a < b and -1 or 1
end
local function id_less(a, b)
    local am, as = split(a)
    local bm, bs = split(b)
    local c = cmp_digits(am, bm)
    if c ~= 0 then return c < 0 end
    return cmp_digits(as, bs) < 0
end
-- The id just after `id`. A sequence too long for exact arithmetic keeps `id` itself: one entry more
-- kept, never one less.
local function successor(id)
    local ms, seq = split(id)
    if #seq < 14 then return ms .. '-' .. string.format('%d', tonumber(seq) + 1) end
    return id
end
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms_id(ms)
    return string.format('%d', math.max(ms, 0)) .. '-0'
end
local function field(info, name)
    for j = 1, #info, 2 do
        if info[j] == name then return info[j + 1] end
    end
    return nil
end
"""

# Trim one stream and its dead-letter stream, and forget expired dedup keys.
# KEYS: stream, totals hash, dead-letter stream, dedup index, dedup expiry.
# ARGV: retention ('1': trim what every group acknowledged), keep_acked_ms, max_len ('' none),
#       dlq_max_age_ms ('' none), dlq_max_len ('' none), dry_run ('1'), count cap (dry runs),
#       dedup keys to forget at most, entries to trim at most (XTRIM's LIMIT).
# Returns {removed, dropped, length after, safe id, holding group, cut id, first id dropped, first id kept
# after the drop, dead letters expired, dead-letter length after, groups, estimated ('1': a dry run's count
# was capped), dedup keys forgotten}; '' where there is no such id or group.
# Publishes with dedup keys forget expired keys too, but only while such publishes go on: the workers'
# trims forget them after a stream's last keyed publish, so the index does not keep them for ever.
# Approximate trims (`~`) remove whole macro nodes below the cut, never an entry at or above it; the
# max_len cap trims exactly, after an exact trim to the cut, so that only entries some group still needs
# are counted as dropped. Counts are XLEN before and after, so they are exact whatever `~` removed.
TRIM_SOURCE = (
    _IDS
    + """
local stream, totals, dlq = KEYS[1], KEYS[2], KEYS[3]
local retention, keep_ms = ARGV[1] == '1', tonumber(ARGV[2])
-- The caps go to XTRIM as the integers given (ARGV), not as Lua numbers: a double above 2^53 is sent back
-- rounded, and 2^63-1, the largest cap allowed, as a value XTRIM refuses.
local max_len, dlq_age, dlq_len = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local dry, cap = ARGV[6] == '1', tonumber(ARGV[7])
local now = nil
local function now_once() now = now or now_ms(); return now end
local function count_below(key, cut)
    return #redis.call('XRANGE', key, '-', '(' .. cut, 'COUNT', cap)
end

local removed, dropped, estimated = 0, 0, 0
local safe, held_by, cut = nil, nil, nil
local drop_first, drop_after = '', ''
local n_groups = 0
local length = redis.call('XLEN', stream)
-- An empty stream may have groups too (all trimmed, or made with MKSTREAM): count them, or `streamq trim`
-- says it has none. EXISTS only then: XINFO fails on a key that is not there.
if length > 0 or redis.call('EXISTS', stream) == 1 then
    local groups = redis.call('XINFO', 'GROUPS', stream)
    n_groups = #groups
    for i = 1, #groups do
        local info = groups[i]
        local name = field(info, 'name')
        local bound = successor(field(info, 'last-delivered-id'))
        if tonumber(field(info, 'pending')) > 0 then
            local oldest = redis.call('XPENDING', stream, name)[2]
            if oldest and id_less(oldest, bound) then bound = oldest end
        end
        if safe == nil or id_less(bound, safe) then safe, held_by = bound, name end
    end
end
if retention and safe then
    cut = safe
    if keep_ms > 0 then
        local window = ms_id(now_once() - keep_ms)
        if id_less(window, cut) then cut = window end
    end
end

local after = length
if cut then
    if dry then
        removed = count_below(stream, cut)
        if removed >= cap then
            -- Too many below the cut to count: count what stays instead, which is often few (a stream
            -- acknowledged to its end), so that what max_len would drop is not taken from a low count.
            local kept = #redis.call('XRANGE', stream, cut, '+', 'COUNT', cap)
            if kept < cap then removed = length - kept else estimated = 1 end
        end
        after = length - removed
    else
        redis.call('XTRIM', stream, 'MINID', '~', cut, 'LIMIT', ARGV[9])
        after = redis.call('XLEN', stream)
        if max_len and after > max_len then
            redis.call('XTRIM', stream, 'MINID', cut)
            after = redis.call('XLEN', stream)
        end
        removed = length - after
    end
end
if max_len and after > max_len then
    dropped = after - max_len
    if dry then
        after = max_len
    else
        drop_first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]
        redis.call('XTRIM', stream, 'MAXLEN', ARGV[3])
        drop_after = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]
        dropped = after - redis.call('XLEN', stream)
        after = after - dropped
    end
end

local expired = 0
local dlq_before = redis.call('XLEN', dlq)
local dlq_after = dlq_before
if dlq_before > 0 and (dlq_age or dlq_len) then
    if dry then
        local old = 0
        if dlq_age then
            old = count_below(dlq, ms_id(now_once() - dlq_age))
            if old >= cap then estimated = 1 end
        end
        local left = dlq_before - old
        if dlq_len and left > dlq_len then old = old + left - dlq_len end
        expired = old
        dlq_after = dlq_before - old
    else
        -- Exact: `~` frees whole nodes only, so a dead-letter stream of fewer than about 100 entries (one
        -- node) would keep its letters for ever, whatever their age. Dead letters are few; exact is cheap.
        if dlq_age then redis.call('XTRIM', dlq, 'MINID', ms_id(now_once() - dlq_age)) end
        if dlq_len then redis.call('XTRIM', dlq, 'MAXLEN', '~', ARGV[5]) end
        dlq_after = redis.call('XLEN', dlq)
        expired = dlq_before - dlq_after
    end
end

if not dry then
    if removed > 0 then redis.call('HINCRBY', totals, 'trimmed', removed) end
    if dropped > 0 then redis.call('HINCRBY', totals, 'dropped_over_max_len', dropped) end
    if expired > 0 then redis.call('HINCRBY', totals, 'dead_letters_expired', expired) end
end
local forgotten = 0
if not dry then
    -- ZRANGE BYSCORE, not ZRANGEBYSCORE: the operator's documented ACL (SECURITY.md) grants ZRANGE.
    local stale = redis.call('ZRANGE', KEYS[5], '-inf', now_once(), 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[8]))
    for i = 1, #stale, 1000 do
        local last = math.min(i + 999, #stale)
        redis.call('HDEL', KEYS[4], unpack(stale, i, last))
        redis.call('ZREM', KEYS[5], unpack(stale, i, last))
    end
    forgotten = #stale
end
return {removed, dropped, after, safe or '', held_by or '', cut or '', drop_first, drop_after, expired,
        dlq_after, n_groups, estimated, forgotten}
"""
)

# Delete a group from a stream and its retry stream with everything streamq keeps for it, unless one of
# its consumers is live: its word in the group's live set has not lapsed (a running worker renews it every
# few seconds, see _wire/control.py), or it was idle less than ARGV[2] ms on either key (a worker reads
# every block_ms and renews its leases every lease/3, both of which reset idle; this also catches workers
# of versions that gave no word). The idle time alone misses a running worker that reads nothing: a
# paused one, or on Redis 7.0 one whose stream is quiet (an empty read does not reset idle there).
# In one script, so no consumer can turn up between the check and the delete. A missing key or group holds
# no consumer and is nothing to destroy.
# KEYS: stream, retry stream, delayed zset, stats hash, rate string, paused hash, live set.
# ARGV: group, live idle ms, force ('1': delete even with live consumers), check ('1': only say which
# consumers are live, delete nothing: a partitioned stream's partitions are all checked before any is
# deleted, so that a refusal leaves the group whole), how long a word holds (ms).
# Returns {0, name, idle ms, name, idle ms, ...} (live consumers, nothing done; always with check; for a
# word, the ms since it was given) or {1, destroyed on the stream (0/1), entries that were pending,
# consumers}.
DELETE_GROUP_SOURCE = """
local group, live_ms, force, check = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4] == '1'
local function tolerant(...)
    local ok, reply = pcall(redis.call, ...)
    if ok then return reply end
    local text = type(reply) == 'table' and reply.err or tostring(reply)
    for _, missing in ipairs({'NOGROUP', 'no such key', 'requires the key to exist'}) do
        if string.find(text, missing, 1, true) then return nil end
    end
    return error(reply)
end
local live, n_consumers, pending = {}, 0, 0
for k = 1, 2 do
    local rows = tolerant('XINFO', 'CONSUMERS', KEYS[k], group) or {}
    for i = 1, #rows do
        local name, idle = nil, nil
        for j = 1, #rows[i], 2 do
            if rows[i][j] == 'name' then name = rows[i][j + 1] end
            if rows[i][j] == 'idle' then idle = tonumber(rows[i][j + 1]) end
        end
        n_consumers = n_consumers + 1
        if idle and idle < live_ms then live[#live + 1] = name; live[#live + 1] = idle end
    end
    local summary = tolerant('XPENDING', KEYS[k], group)
    if summary then pending = pending + tonumber(summary[1]) end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local words = redis.call('ZRANGE', KEYS[7], now, '+inf', 'BYSCORE', 'WITHSCORES')
for i = 1, #words, 2 do
    local known = false
    for j = 1, #live, 2 do
        if live[j] == words[i] then known = true end
    end
    if not known then
        live[#live + 1] = words[i]
        live[#live + 1] = math.max(0, tonumber(ARGV[5]) - (tonumber(words[i + 1]) - now))
    end
end
if check or (#live > 0 and not force) then
    table.insert(live, 1, 0)
    return live
end
local destroyed = tolerant('XGROUP', 'DESTROY', KEYS[1], group) or 0
tolerant('XGROUP', 'DESTROY', KEYS[2], group)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7])
redis.call('HDEL', KEYS[6], group)
return {1, destroyed, pending, n_consumers}
"""

TRIM = Script("trim", TRIM_SOURCE)
DELETE_GROUP = Script("delete_group", DELETE_GROUP_SOURCE)


class TrimReply(NamedTuple):
    """What one TRIM call did (or, in a dry run, would do); None where there is no such id or group."""

    removed: int  # acknowledged by every group and trimmed (dry run: entries below the cut, up to the cap)
    dropped: int  # over max_len, some group's unacknowledged entries among them
    length_after: int
    safe_id: str | None  # every group has acknowledged everything below this id
    held_by: str | None  # the group whose bound is safe_id: the one holding trimming back
    cut_id: str | None  # the MINID used: safe_id, or lower for the keep window
    dropped_first: str | None  # the first id dropped over max_len
    dropped_until: str | None  # the first id kept after them
    dead_letters_expired: int
    dead_letters_after: int
    groups: int
    estimated: bool  # a dry run's count reached the cap: at least that many
    dedup_keys_forgotten: int  # expired dedup keys removed from the index (none in a dry run)


class GroupDeleteReply(NamedTuple):
    deleted: bool
    existed: bool  # the group was on the stream (False: only leftovers were cleaned)
    pending: int  # entries the group had pending, dropped with it
    consumers: int
    live: list[tuple[str, int]]  # (consumer, idle ms) of live consumers when not deleted


def _text(value: Any) -> str | None:
    text = decode_id(value) if isinstance(value, bytes | str) else str(value)
    return text or None


def _parse_trim(reply: Sequence[Any]) -> TrimReply:
    return TrimReply(
        removed=int(reply[0]),
        dropped=int(reply[1]),
        length_after=int(reply[2]),
        safe_id=_text(reply[3]),
        held_by=_text(reply[4]),
        cut_id=_text(reply[5]),
        dropped_first=_text(reply[6]),
        dropped_until=_text(reply[7]),
        dead_letters_expired=int(reply[8]),
        dead_letters_after=int(reply[9]),
        groups=int(reply[10]),
        estimated=int(reply[11]) == 1,
        dedup_keys_forgotten=int(reply[12]),
    )


def _parse_delete(reply: Sequence[Any]) -> GroupDeleteReply:
    if int(reply[0]) == 0:
        live = [(decode_id(reply[i]), int(reply[i + 1])) for i in range(1, len(reply) - 1, 2)]
        return GroupDeleteReply(deleted=False, existed=True, pending=0, consumers=len(live), live=live)
    return GroupDeleteReply(
        deleted=True, existed=int(reply[1]) == 1, pending=int(reply[2]), consumers=int(reply[3]), live=[]
    )


def _optional(value: int | None) -> Arg:
    return b"" if value is None else value


def trim_call(
    stream: str,
    *,
    retention: bool,
    keep_acked_ms: int,
    max_len: int | None,
    dlq_max_age_ms: int | None,
    dlq_max_len: int | None,
    dry_run: bool,
) -> tuple[list[str], list[Arg]]:
    """TRIM's keys and arguments."""
    script_keys = [
        stream, keys.totals_key(stream), keys.dlq_key(stream), keys.dedup_index_key(stream),
        keys.dedup_expiry_key(stream),
    ]  # fmt: skip
    args: list[Arg] = [
        b"1" if retention else b"0", keep_acked_ms, _optional(max_len), _optional(dlq_max_age_ms),
        _optional(dlq_max_len), b"1" if dry_run else b"0", COUNT_CAP, DEDUP_FORGET_PER_TRIM, TRIM_LIMIT,
    ]  # fmt: skip
    return script_keys, args


def delete_group_call(
    stream: str, group: str, *, live_idle_ms: int, force: bool, check: bool = False
) -> tuple[list[str], list[Arg]]:
    """DELETE_GROUP's keys and arguments."""
    script_keys = [
        stream, keys.retry_key(stream, group), keys.delayed_key(stream, group), keys.stats_key(stream, group),
        keys.rate_key(stream, group), keys.paused_key(stream), keys.live_key(stream, group),
    ]  # fmt: skip
    flags = [b"1" if force else b"0", b"1" if check else b"0"]
    return script_keys, [group, live_idle_ms, *flags, LIVE_TTL_MS]


def _raise_mapped(stream: str, exc: ResponseError, what: str, wrong: tuple[str, str] | None = None) -> None:
    """`wrong`: (key, what it should be) of the first key of the call found of another type, if any."""
    if is_denied(exc):
        raise ConfigurationError(
            f"the Redis user may not run the commands that {what} {stream!r}: {exc}"
        ) from exc
    if wrong is not None:
        key, kind = wrong
        raise ConfigurationError(f"key {key!r} exists and is not {kind}: {exc}") from exc
    if "WRONGTYPE" in str(exc):
        # A script's error can come prefixed with where it was raised ("user_script:10: WRONGTYPE ..."),
        # which raise_for_key does not recognise.
        raise ConfigurationError(f"a key of {stream!r} is of another type than streamq's: {exc}") from exc
    raise_for_key(stream, exc)


# Which keys of a script's call can raise WRONGTYPE, what TYPE each must be (or none) and what to call it:
# to say which key is of another type, which the error's text does not. Looked up only after such an error.
_KeyKinds = Sequence[tuple[int, str, str]]  # (index in the script's keys, TYPE, name)
_TRIM_KINDS: _KeyKinds = (
    (0, "stream", "a stream"), (2, "stream", "a stream"), (1, "hash", "a hash"), (3, "hash", "a hash"),
    (4, "zset", "a sorted set"),
)  # fmt: skip
_DELETE_KINDS: _KeyKinds = ((0, "stream", "a stream"), (1, "stream", "a stream"), (5, "hash", "a hash"))


def _first_wrong(script_keys: list[str], kinds: _KeyKinds, types: list[Any]) -> tuple[str, str] | None:
    for (index, kind, name), found in zip(kinds, types, strict=True):
        if isinstance(found, Exception):
            return None  # TYPE refused (an ACL without it): say what is known, not a guess
        text = decode_id(found) if isinstance(found, bytes | str) else str(found)
        if text not in (kind, "none"):
            return script_keys[index], name
    return None


async def _wrong_type(
    client: aioredis.Redis, exc: ResponseError, script_keys: list[str], kinds: _KeyKinds
) -> tuple[str, str] | None:
    if "WRONGTYPE" not in str(exc):
        return None
    pipe = client.pipeline(transaction=False)
    for index, _, _ in kinds:
        pipe.type(script_keys[index])
    return _first_wrong(script_keys, kinds, await pipe.execute(raise_on_error=False))


def _wrong_type_sync(
    client: redis.Redis, exc: ResponseError, script_keys: list[str], kinds: _KeyKinds
) -> tuple[str, str] | None:
    if "WRONGTYPE" not in str(exc):
        return None
    pipe = client.pipeline(transaction=False)
    for index, _, _ in kinds:
        pipe.type(script_keys[index])
    return _first_wrong(script_keys, kinds, pipe.execute(raise_on_error=False))


async def _run(client: aioredis.Redis, script: Script, script_keys: list[str], args: list[Arg]) -> Any:
    try:
        return await client.evalsha(script.sha, len(script_keys), *script_keys, *args)
    except NoScriptError:
        return await client.eval(script.source, len(script_keys), *script_keys, *args)


def _run_sync(client: redis.Redis, script: Script, script_keys: list[str], args: list[Arg]) -> Any:
    try:
        return client.evalsha(script.sha, len(script_keys), *script_keys, *args)
    except NoScriptError:
        return client.eval(script.source, len(script_keys), *script_keys, *args)


async def trim(
    client: aioredis.Redis,
    stream: str,
    *,
    retention: bool = True,
    keep_acked_ms: int = 0,
    max_len: int | None = None,
    dlq_max_age_ms: int | None = None,
    dlq_max_len: int | None = None,
    dry_run: bool = False,
) -> TrimReply:
    """Run TRIM on `stream` (see TRIM_SOURCE). An ACL denial or a key of another type: ConfigurationError."""
    script_keys, args = trim_call(
        stream, retention=retention, keep_acked_ms=keep_acked_ms, max_len=max_len,
        dlq_max_age_ms=dlq_max_age_ms, dlq_max_len=dlq_max_len, dry_run=dry_run,
    )  # fmt: skip
    replies: list[TrimReply] = []
    while _more_to_trim(replies, dry_run):
        try:
            replies.append(_parse_trim(await _run(client, TRIM, script_keys, args)))
        except ResponseError as exc:
            _raise_mapped(stream, exc, "trim", await _wrong_type(client, exc, script_keys, _TRIM_KINDS))
            raise
    return _joined_trims(replies)


def trim_sync(
    client: redis.Redis,
    stream: str,
    *,
    retention: bool = True,
    keep_acked_ms: int = 0,
    max_len: int | None = None,
    dlq_max_age_ms: int | None = None,
    dlq_max_len: int | None = None,
    dry_run: bool = False,
) -> TrimReply:
    """trim() for blocking code."""
    script_keys, args = trim_call(
        stream, retention=retention, keep_acked_ms=keep_acked_ms, max_len=max_len,
        dlq_max_age_ms=dlq_max_age_ms, dlq_max_len=dlq_max_len, dry_run=dry_run,
    )  # fmt: skip
    replies: list[TrimReply] = []
    while _more_to_trim(replies, dry_run):
        try:
            replies.append(_parse_trim(_run_sync(client, TRIM, script_keys, args)))
        except ResponseError as exc:
            _raise_mapped(stream, exc, "trim", _wrong_type_sync(client, exc, script_keys, _TRIM_KINDS))
            raise
    return _joined_trims(replies)


def _more_to_trim(replies: list[TrimReply], dry_run: bool) -> bool:
    """Whether to call TRIM (again): first, and after a call that took half of TRIM_LIMIT or more (there
    may be more below the cut), up to MAX_TRIM_CALLS. A dry run changes nothing: one call says it all."""
    if not replies:
        return True
    return not dry_run and len(replies) < MAX_TRIM_CALLS and replies[-1].removed >= TRIM_LIMIT // 2


def _joined_trims(replies: list[TrimReply]) -> TrimReply:
    """Calls in a row as one: what they removed added up, the state as the last one left it."""
    last = replies[-1]
    return last._replace(
        removed=sum(r.removed for r in replies),
        dropped=sum(r.dropped for r in replies),
        dropped_first=next((r.dropped_first for r in replies if r.dropped_first), None),
        dead_letters_expired=sum(r.dead_letters_expired for r in replies),
        dedup_keys_forgotten=sum(r.dedup_keys_forgotten for r in replies),
    )


async def delete_group(
    client: aioredis.Redis, stream: str, group: str, *, live_idle_ms: int, force: bool, check: bool = False
) -> GroupDeleteReply:
    """Run DELETE_GROUP (see DELETE_GROUP_SOURCE); with check, only find its live consumers."""
    script_keys, args = delete_group_call(stream, group, live_idle_ms=live_idle_ms, force=force, check=check)
    try:
        return _parse_delete(await _run(client, DELETE_GROUP, script_keys, args))
    except ResponseError as exc:
        wrong = await _wrong_type(client, exc, script_keys, _DELETE_KINDS)
        _raise_mapped(stream, exc, "delete a group of", wrong)
        raise


def delete_group_sync(
    client: redis.Redis, stream: str, group: str, *, live_idle_ms: int, force: bool, check: bool = False
) -> GroupDeleteReply:
    """delete_group() for blocking code."""
    script_keys, args = delete_group_call(stream, group, live_idle_ms=live_idle_ms, force=force, check=check)
    try:
        return _parse_delete(_run_sync(client, DELETE_GROUP, script_keys, args))
    except ResponseError as exc:
        wrong = _wrong_type_sync(client, exc, script_keys, _DELETE_KINDS)
        _raise_mapped(stream, exc, "delete a group of", wrong)
        raise
