"""The Lua scripts streamq runs on the server, each one atomic.

Retries and dead letters are fenced by ownership: XACK has no owner check, so a worker that was paused past
its lease (SIGSTOP, a long GC, a partition) would otherwise retry or dead-letter an entry that another
worker has reclaimed and may be processing, and the event would exist twice. SETTLE first asks XPENDING
which of the ids this consumer still holds and acts on those only; the rest come back as "lost" for the
caller to log and count. Acknowledging successes (ACK) needs no fence: see there.

Only streamq._wire runs these (commands.py wraps each in a Script).
"""

from __future__ import annotations

# Shared prelude: owned(stream, group, consumer, ids, min_id, max_id) -> set of ids this consumer holds,
# found with one XPENDING range query over the batch.
_OWNED = """
local function owned(stream, group, consumer, ids, min_id, max_id)
    local mine = {}
    if #ids == 0 then return mine end
    local rows = redis.call('XPENDING', stream, group, min_id, max_id, #ids, consumer)
    for i = 1, #rows do mine[rows[i][1]] = true end
    -- An id the range missed (cut at `count`, or outside bounds the caller got wrong) is checked alone;
    -- ids that are really gone are rare (lost leases), so this costs nothing on the common path.
    for i = 1, #ids do
        local id = ids[i]
        if not mine[id] then
            local one = redis.call('XPENDING', stream, group, id, id, 1, consumer)
            if #one == 1 then mine[id] = true end
        end
    end
    return mine
end

local function chunked(command, key, group, ids)
    local size = 4000
    for i = 1, #ids, size do
        local last = math.min(i + size - 1, #ids)
        if group then
            redis.call(command, key, group, unpack(ids, i, last))
        else
            redis.call(command, key, unpack(ids, i, last))
        end
    end
end

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Settle one batch on one stream key: acknowledge successes, schedule retries, dead-letter the rest.
# KEYS: stream, delayed zset, dead-letter stream, stats hash
# ARGV: group, consumer, delete_after_ack ('1' on the retry stream, read by this group only),
#       min_id, max_id, n_ack, n_retry, n_dead, n_defer,
#       n_ack ids, n_retry x (id, delay_ms, record), n_dead x (id, n_fields, field, value, ...),
#       n_defer x (id, delay_ms, record)
# Deferrals are retries that used no attempt: the same move to the delayed set, counted apart.
# Returns the ids this consumer no longer held (its lease was lost), which were left alone. An id missing
# from its PEL because the entry was trimmed or deleted from the stream is not a lost lease (XAUTOCLAIM by any
# consumer drops deleted entries from every PEL, the holder's included): it is left out, and nobody will
# process it again. On the retry stream a vanished entry was acknowledged and deleted by another consumer
# after taking it over: that is a lost lease.
SETTLE = (
    _OWNED
    + """
local stream, delayed, dlq, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, delete_after = ARGV[1], ARGV[2], ARGV[3] == '1'
local n_ack, n_retry, n_dead = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local n_defer = tonumber(ARGV[9])
local pos = 10
local all = {}
local acks = {}
for i = 1, n_ack do acks[i] = ARGV[pos]; all[#all + 1] = ARGV[pos]; pos = pos + 1 end
local retries = {}
for i = 1, n_retry do
    retries[i] = pos; all[#all + 1] = ARGV[pos]; pos = pos + 3
end
local deads = {}
for i = 1, n_dead do
    deads[i] = pos; all[#all + 1] = ARGV[pos]; pos = pos + 2 + tonumber(ARGV[pos + 1])
end
local defers = {}
for i = 1, n_defer do
    defers[i] = pos; all[#all + 1] = ARGV[pos]; pos = pos + 3
end

local mine = owned(stream, group, consumer, all, ARGV[4], ARGV[5])
local settled, lost = {}, {}
local function not_held(id)
    if delete_after or #redis.call('XRANGE', stream, id, id) > 0 then lost[#lost + 1] = id end
end
local n_acked, n_retried, n_dead_done = 0, 0, 0
for i = 1, #acks do
    if mine[acks[i]] then settled[#settled + 1] = acks[i]; n_acked = n_acked + 1
    else not_held(acks[i]) end
end
local now = nil
local function schedule(positions)
    local done = 0
    for i = 1, #positions do
        local p = positions[i]
        local id = ARGV[p]
        if mine[id] then
            now = now or now_ms()
            redis.call('ZADD', delayed, now + tonumber(ARGV[p + 1]), ARGV[p + 2])
            settled[#settled + 1] = id; done = done + 1
        else not_held(id) end
    end
    return done
end
n_retried = schedule(retries)
local n_deferred = schedule(defers)
for i = 1, #deads do
    local p = deads[i]
    local id = ARGV[p]
    if mine[id] then
        local n = tonumber(ARGV[p + 1])
        redis.call('XADD', dlq, '*', unpack(ARGV, p + 2, p + 1 + n))
        settled[#settled + 1] = id; n_dead_done = n_dead_done + 1
    else not_held(id) end
end
if #settled > 0 then
    chunked('XACK', stream, group, settled)
    if delete_after then chunked('XDEL', stream, nil, settled) end
end
if n_acked > 0 then redis.call('HINCRBY', stats, 'acked', n_acked) end
if n_retried > 0 then redis.call('HINCRBY', stats, 'retried', n_retried) end
if n_dead_done > 0 then redis.call('HINCRBY', stats, 'dead', n_dead_done) end
if n_deferred > 0 then redis.call('HINCRBY', stats, 'deferred', n_deferred) end
if #lost > 0 then redis.call('HINCRBY', stats, 'lease_lost', #lost) end
return lost
"""
)

# Acknowledge entries whose handling succeeded: the fast path of settling, whatever else the batch holds
# (its retries and dead letters go through SETTLE). Unlike SETTLE it asks nobody's permission: success is
# final, so acknowledging it is right even if the lease was lost meanwhile and another worker has taken the
# entry over (that worker's own settle then finds the entry gone and counts the duplicate as lease_lost).
# Only retries and dead letters, which create new entries, need the ownership fence. Skipping the XPENDING
# range query roughly halves the server's work per acknowledged event.
# KEYS: stream, stats hash. ARGV: group, count_shortfall ('1'; '0' when re-sent after a lost reply, when
# the first attempt may have acked them), delete ('1' on a retry stream: its entries go once handled), ids...
# Returns how many ids were no longer pending: entries another consumer reclaimed and settled first. On the
# main stream, pending ids whose entry was trimmed, and that XAUTOCLAIM has already dropped from the PEL,
# are not counted: nobody holds them and nobody will process them again.
ACK = """
local stream, stats, group = KEYS[1], KEYS[2], ARGV[1]
local delete = ARGV[3] == '1'
local n = #ARGV - 3
local acked = 0
for i = 4, #ARGV, 4000 do
    local last = math.min(i + 3999, #ARGV)
    acked = acked + redis.call('XACK', stream, group, unpack(ARGV, i, last))
    if delete then redis.call('XDEL', stream, unpack(ARGV, i, last)) end
end
if acked > 0 then redis.call('HINCRBY', stats, 'acked', acked) end
if acked == n or ARGV[2] ~= '1' then return 0 end
local gone = 0
if not delete then
    for i = 4, #ARGV do
        if #redis.call('XRANGE', stream, ARGV[i], ARGV[i]) == 0 then gone = gone + 1 end
    end
end
local lost = math.max(0, n - acked - gone)
if lost > 0 then redis.call('HINCRBY', stats, 'lease_lost', lost) end
return lost
"""

# Renew the lease on in-flight entries: reset their idle time so XAUTOCLAIM elsewhere leaves them alone.
# XCLAIM with JUSTID does not count a delivery. Only entries this consumer still holds are touched.
# KEYS: stream. ARGV: group, consumer, min_id, max_id, ids... Returns the ids another consumer now holds
# (or, on a retry stream, took over and settled).
RENEW = (
    _OWNED
    + """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local ids = {}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
local mine = owned(stream, group, consumer, ids, ARGV[3], ARGV[4])
local keep, lost = {}, {}
for i = 1, #ids do
    if mine[ids[i]] then keep[#keep + 1] = ids[i]
    -- An entry trimmed or deleted while held is nobody's (XAUTOCLAIM drops it from every PEL): not lost.
    elseif #redis.call('XRANGE', stream, ids[i], ids[i]) > 0 then lost[#lost + 1] = ids[i] end
end
local size = 4000
for i = 1, #keep, size do
    -- JUSTID follows the ids, so build the argument list (unpack() must be the last argument).
    local args = {stream, group, consumer, 0}
    for j = i, math.min(i + size - 1, #keep) do args[#args + 1] = keep[j] end
    args[#args + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(args))
end
return lost
"""
)

# Move retries whose backoff has passed from the delayed zset to the group's retry stream.
# KEYS: delayed zset, retry stream. ARGV: limit. Returns {moved, ms until the next one is due or -1}.
MOVE_DUE = (
    _OWNED
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due do redis.call('XADD', KEYS[2], '*', 'r', due[i]) end
if #due > 0 then chunked('ZREM', KEYS[1], nil, due) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(nxt[2]) - now)}
"""
)

# Replay one dead letter into the group's retry stream, removing it from the dead-letter stream, atomically:
# a replay racing another replay or a purge moves the entry once or not at all.
# KEYS: dead-letter stream, retry stream. ARGV: dead-letter id, retry record. Returns the new id or false.
REPLAY = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', 'r', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""

# Delete a consumer only if it holds nothing on either stream key: DELCONSUMER drops a consumer's pending
# entries for good, so the check and the delete must be one step.
# KEYS: stream, retry stream. ARGV: group, consumer. Returns 1 if deleted.
# A key or group that does not exist (the retry stream of a group that never retried) holds nothing; any
# other error (an ACL denial) is returned, never read as "holds nothing".
REAP = """
local function call(...)
    local ok, reply = pcall(redis.call, ...)
    if ok then return reply end
    local text = type(reply) == 'table' and reply.err or tostring(reply)
    for _, missing in ipairs({'NOGROUP', 'no such key', 'requires the key to exist'}) do
        if string.find(text, missing, 1, true) then return {} end
    end
    error(reply)
end
for i = 1, #KEYS do
    if #call('XPENDING', KEYS[i], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
end
for i = 1, #KEYS do call('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], ARGV[2]) end
return 1
"""

# Renew the entries this consumer holds on one stream key after ARGV[4] (a start for XPENDING: '-', or
# '(' and the last id the worker had read there), at most ARGV[3] of them: the lease of a read whose reply has
# not been parsed yet (a read-ahead waiting behind a batch being handled), whose ids the worker does not know.
# What it has read already has leases of its own. The keeper thread runs it, so entries are leased from the
# moment the server hands them out, whatever the handler does meanwhile. XCLAIM goes in chunks: one unpack()
# of a whole read-ahead of large batches would exceed Lua's stack ("too many results to unpack").
# With ARGV[5] (idle ms) it gives those entries back instead: marked idle that long, any reclaimer takes
# them at once (a worker cancelled with a read-ahead whose reply it never parsed).
# KEYS: stream. ARGV: group, consumer, limit, start[, idle_ms]. Returns how many entries were renewed.
RENEW_HELD = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], '+', tonumber(ARGV[3]), ARGV[2])
for i = 1, #rows, 4000 do
    local args = {KEYS[1], ARGV[1], ARGV[2], 0}
    for j = i, math.min(i + 3999, #rows) do args[#args + 1] = rows[j][1] end
    if ARGV[5] then args[#args + 1] = 'IDLE'; args[#args + 1] = ARGV[5] end
    args[#args + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(args))
end
return #rows
"""

# Give entries back: mark those this consumer still holds as idle for ARGV[3] ms, so any reclaimer takes
# them at once instead of after a whole lease (a worker cancelled with a batch in hand). JUSTID: no
# delivery counted here; the next delivery counts. KEYS: stream. ARGV: group, consumer, idle_ms, min_id,
# max_id, ids... Returns how many were released.
RELEASE = (
    _OWNED
    + """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local ids = {}
for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
local mine = owned(stream, group, consumer, ids, ARGV[4], ARGV[5])
local held = {}
for i = 1, #ids do
    if mine[ids[i]] then held[#held + 1] = ids[i] end
end
-- In chunks: a batch of 10000 ids in one unpack() would exceed Lua's stack.
for i = 1, #held, 4000 do
    local args = {stream, group, consumer, 0}
    for j = i, math.min(i + 3999, #held) do args[#args + 1] = held[j] end
    args[#args + 1] = 'IDLE'
    args[#args + 1] = ARGV[3]
    args[#args + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(args))
end
return #held
"""
)

# Create a group at ARGV[2], or move an existing one back to it, never forward: a group deleted under
# running workers (XGROUP DESTROY) is recreated where their settled work ends, so nothing they settled is
# handled again; workers racing to recreate it leave it at the earliest such position any of them had,
# so that what one of them had read but not settled is delivered again rather than lost (duplicates over
# loss). KEYS: stream. ARGV: group, id. Returns 1 if created, 2 if moved back, 0 if left alone.
# A stream that no longer exists (a server restarted without persistence) starts again at 0: its entries
# are all new.
ENSURE_GROUP_AT = """
local at = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then at = '0' end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], at, 'MKSTREAM')
if ok then return 1 end
local text = type(err) == 'table' and err.err or tostring(err)
if not string.find(text, 'BUSYGROUP', 1, true) then return redis.error_reply(text) end
local function parts(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms or id) or 0, tonumber(seq or 0) or 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
for i = 1, #groups do
    local info = groups[i]
    local name, last = nil, nil
    for j = 1, #info, 2 do
        if info[j] == 'name' then name = info[j + 1] end
        if info[j] == 'last-delivered-id' then last = info[j + 1] end
    end
    if name == ARGV[1] and last then
        local ms1, seq1 = parts(last)
        local ms2, seq2 = parts(at)
        if ms2 < ms1 or (ms2 == ms1 and seq2 < seq1) then
            redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], at)
            return 2
        end
    end
end
return 0
"""

# Set the delivery counter of entries this consumer still holds (never of another's: XCLAIM with min-idle 0
# would take them over). Reclaimed repeat suspects are handled one at a time; this keeps the counter of
# those still queued from charging them a delivery that never reached a handler.
# KEYS: stream. ARGV: group, consumer, then (id, count) pairs. Returns how many were set.
SET_DELIVERIES = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 2 do
    local id = ARGV[i]
    if #redis.call('XPENDING', stream, group, id, id, 1, consumer) == 1 then
        redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
        n = n + 1
    end
end
return n
"""
