"""The only module that sends stream commands: packing, reply parsing, scripts, server differences.

redis-py stays the client (connections, TLS, auth, reconnects, errors). On the hot path this module packs
commands itself and reads raw hiredis replies without redis-py's response callbacks, because per-command
packing and reply conversion in Python cost more than the server's own work (see benchmarks/RESULTS.md).
Everything that leaves this module is typed: stream ids as bytes, payloads as bytes, counts as ints.

Server differences handled here: XAUTOCLAIM replies with two elements before Redis 7.0 (deleted entries
then come back with nil fields) and three from 7.0 (deleted ids listed apart); pending entries whose
payload was trimmed come back as (id, nil) from XREADGROUP.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, NoScriptError, OutOfMemoryError, ResponseError

from . import _scripts
from .errors import ConfigurationError, ServerError

Arg = bytes | str | int | float


def _b(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def pack(*args: Arg) -> bytes:
    """One command in RESP, as the server reads it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _b(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


_BULK = b"$%d\r\n%s\r\n"


def pack_with_ids(args: Sequence[Arg], ids: Sequence[bytes]) -> bytes:
    """pack(*args, *ids) for a long tail of entry ids, a few times faster than the general loop."""
    head = pack(*args)
    tail = b"".join(map(_BULK.__mod__, zip(map(len, ids), ids, strict=True)))  # no Python frame per id
    return b"*%d%s%s" % (len(args) + len(ids), head[head.index(b"\r\n") :], tail)


class Script:
    """A Lua script run by EVALSHA, loaded on first use and again after the server forgets it."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def pack(self, keys: Sequence[Arg], args: Sequence[Arg], ids: Sequence[bytes] = ()) -> bytes:
        """EVALSHA of this script; `ids` (entry ids) follow `args`, packed in one pass."""
        return pack_with_ids(("EVALSHA", self.sha, len(keys), *keys, *args), ids)


SETTLE = Script("settle", _scripts.SETTLE)
ACK = Script("ack", _scripts.ACK)
RENEW = Script("renew", _scripts.RENEW)
MOVE_DUE = Script("move_due", _scripts.MOVE_DUE)
REPLAY = Script("replay", _scripts.REPLAY)
REAP = Script("reap", _scripts.REAP)
RENEW_HELD = Script("renew_held", _scripts.RENEW_HELD)
RELEASE = Script("release", _scripts.RELEASE)
ENSURE_GROUP_AT = Script("ensure_group_at", _scripts.ENSURE_GROUP_AT)
ALL_SCRIPTS = (SETTLE, ACK, RENEW, MOVE_DUE, REPLAY, REAP, RENEW_HELD, RELEASE, ENSURE_GROUP_AT)


def _is_noscript(reply: object) -> bool:
    # redis-py maps the NOSCRIPT code to NoScriptError and strips it from the message.
    return isinstance(reply, NoScriptError)


# ---------------------------------------------------------------------------------------------- replies


class StreamBatch(NamedTuple):
    """Entries read from one stream key, column by column (cheap to build, cheap to walk)."""

    key: str
    ids: list[bytes]
    fields: list[list[bytes] | None]  # None: the entry was deleted or trimmed while pending


class Claimed(NamedTuple):
    """One XAUTOCLAIM step: entries now held by the caller, and pending ids whose entry no longer exists."""

    cursor: bytes
    batch: StreamBatch
    deleted: list[bytes]
    deliveries: dict[bytes, int]  # id -> times delivered, counting this claim


def parse_read(reply: Any) -> list[StreamBatch]:
    """XREADGROUP reply -> one StreamBatch per stream key that had entries."""
    if not reply:
        return []
    out = []
    # RESP3 (redis-py 8's default) replies with a map of key -> entries; RESP2 with [[key, entries], ...].
    for key, entries in reply.items() if isinstance(reply, dict) else reply:
        if entries:
            out.append(
                StreamBatch(
                    key.decode() if isinstance(key, bytes) else key,
                    [entry[0] for entry in entries],
                    [entry[1] for entry in entries],
                )
            )
    return out


def parse_autoclaim(key: str, reply: Any) -> tuple[bytes, StreamBatch, list[bytes]]:
    """XAUTOCLAIM reply on any server: [cursor, entries] before 7.0, [cursor, entries, deleted] from 7.0.

    Before 7.0 an entry deleted while pending comes back with nil fields (or as a bare nil); from 7.0 the
    server drops it from the PEL and lists its id apart. Both end up in `deleted`.
    """
    cursor = reply[0]
    ids: list[bytes] = []
    fields: list[list[bytes] | None] = []
    deleted: list[bytes] = list(reply[2]) if len(reply) > 2 and reply[2] else []
    for entry in reply[1] or ():
        if entry is None:
            continue  # a deleted entry with not even its id left: nothing to acknowledge by id
        if entry[1] is None:
            deleted.append(entry[0])
        else:
            ids.append(entry[0])
            fields.append(entry[1])
    return cursor, StreamBatch(key, ids, fields), deleted


def parse_pending(reply: Any) -> dict[bytes, int]:
    """Extended XPENDING reply -> {id: delivery count}."""
    return {row[0]: int(row[3]) for row in reply or ()}


def payload_of(fields: list[bytes] | None, name: bytes) -> bytes | None:
    """The value of field `name` in a flat [field, value, ...] list."""
    if fields is None:
        return None
    if len(fields) == 2 and fields[0] == name:
        return fields[1]
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


def decode_id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _raise_for_key(stream: str, error: ResponseError) -> None:
    text = str(error)
    if text.startswith("WRONGTYPE"):
        raise ConfigurationError(f"key {stream!r} exists and is not a stream: {text}") from error
    if isinstance(error, OutOfMemoryError):
        raise ServerError(f"the server is out of memory and refuses writes (maxmemory): {text}") from error
    if isinstance(error, NoPermissionError):
        raise ConfigurationError(f"the Redis user may not run this command on {stream!r}: {text}") from error
    raise error


# ---------------------------------------------------------------------------------------- connection

try:  # redis-py's own marker for "the reader needs more bytes"; absent if its parser layout changes
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - then every read takes redis-py's regular path
    _NOT_ENOUGH_DATA = None


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """Read `count` replies. With redis-py's hiredis parser, straight from its hiredis reader.

    redis-py's read_response costs a coroutine, a timeout context and several checks per reply, which
    for a pipeline of 1000 XADDs is most of the client's time. Pulling replies from the same hiredis
    reader is equivalent for plain replies; error replies come back as ResponseError values either way.
    Anything unusual (RESP3 push messages, another parser) takes redis-py's own path.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    fill = getattr(parser, "read_from_socket", None)
    out: list[Any] = []
    if _NOT_ENOUGH_DATA is None or reader is None or fill is None or conn.encoder.decode_responses:
        for _ in range(count):
            try:
                out.append(await conn.read_response(disable_decoding=True, timeout=math.inf))
            except ResponseError as exc:
                out.append(exc)
        return out
    gets = reader.gets
    while len(out) < count:
        reply = gets(False)
        if reply is _NOT_ENOUGH_DATA:
            await fill()
            continue
        if isinstance(reply, ConnectionError | redis.exceptions.ConnectionError):
            raise reply
        if type(reply).__name__ == "PushNotification":
            continue  # out-of-band RESP3 push (client tracking); not a reply to our commands
        out.append(reply)
    return out


class Link:
    """One connection borrowed from a redis-py pool and kept by one loop for its whole life.

    Holding the connection spares the pool's per-command bookkeeping on the hot path and lets a blocking
    read own its socket (a BLOCK read would otherwise hold a pooled connection anyway). Commands can be
    sent ahead of their replies (`send`, then `receive` in order), which lets a consumer keep the server
    busy while it handles a batch. On any transport error or timeout the connection is disconnected and
    every owed reply forgotten; the next call reconnects through redis-py.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._conn: Any = None
        self._owed = 0

    @property
    def owed(self) -> int:
        """Replies to commands already sent that nobody has read yet."""
        return self._owed

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._owed:
                await self._drop(conn)
            await self._client.connection_pool.release(conn)

    async def abandon(self) -> None:
        """Forget the owed replies by dropping the connection; the next call reconnects."""
        if self._conn is not None:
            await self._drop(self._conn)
        self._owed = 0

    async def _drop(self, conn: Any) -> None:
        # The replies in flight are unknown now: reusing the connection would pair replies with the wrong
        # commands.
        self._owed = 0
        await conn.disconnect(nowait=True)

    async def send(self, payload: bytes, replies: int) -> None:
        """Write packed commands without waiting; their `replies` replies are owed to `receive`."""
        conn = await self._connection()
        try:
            async with asyncio.timeout(conn.socket_timeout):
                await conn.send_packed_command(payload, check_health=False)
        except BaseException:
            await self._drop(conn)
            raise
        self._owed += replies

    async def receive(self, replies: int, *, timeout_s: float | None = None) -> list[Any]:
        """Read the next `replies` owed replies; error replies come back as values.

        `timeout_s` bounds the wait (a blocking read's own BLOCK plus a margin); without it the client's
        socket_timeout does.
        """
        if replies > self._owed:
            raise RuntimeError(f"{replies} replies asked for, {self._owed} owed")
        conn = self._conn
        limit = timeout_s if timeout_s is not None else conn.socket_timeout
        try:
            async with asyncio.timeout(limit):
                out = await _read_replies(conn, replies)
        except BaseException:
            await self._drop(conn)
            raise
        self._owed -= replies
        return out

    async def roundtrip(self, payload: bytes, replies: int, *, timeout_s: float | None = None) -> list[Any]:
        """Send packed commands at once and read their `replies` replies (errors come back as values)."""
        if self._owed:
            raise RuntimeError(f"{self._owed} replies to earlier commands are still owed")
        await self.send(payload, replies)
        return await self.receive(replies, timeout_s=timeout_s)

    async def call(self, *args: Arg, timeout_s: float | None = None) -> Any:
        (reply,) = await self.roundtrip(pack(*args), 1, timeout_s=timeout_s)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def scripts(self, calls: Sequence[bytes]) -> list[Any]:
        """Run packed script calls in one round trip; load the scripts if the server has forgotten them
        (restart, FLUSH) and run the calls again."""
        replies = await self.roundtrip(b"".join(calls), len(calls))
        if any(_is_noscript(r) for r in replies):
            await self.load_scripts()
            replies = await self.roundtrip(b"".join(calls), len(calls))
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def load_scripts(self) -> None:
        await self.roundtrip(
            b"".join(pack("SCRIPT", "LOAD", s.source) for s in ALL_SCRIPTS), len(ALL_SCRIPTS)
        )


# ---------------------------------------------------------------------------------------- producing


def pack_xadd_many(stream: str, payloads: Iterable[bytes], maxlen: int | None, approximate: bool) -> bytes:
    """XADD per payload, packed into one buffer: the constant head is built once per call."""
    key = stream.encode()
    if maxlen is None:
        head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nd\r\n" % (len(key), key)
    else:
        limit = str(maxlen).encode()
        trim = b"$1\r\n~\r\n" if approximate else b"$1\r\n=\r\n"
        head = b"*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n%s$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nd\r\n" % (
            len(key), key, trim, len(limit), limit,
        )  # fmt: skip
    return b"".join([b"%s$%d\r\n%s\r\n" % (head, len(p), p) for p in payloads])


def xadd_ids(stream: str, replies: list[Any]) -> list[str]:
    ids = []
    for reply in replies:
        if isinstance(reply, ResponseError):
            _raise_for_key(stream, reply)
        ids.append(reply.decode())
    return ids


async def xadd_many(
    link: Link, stream: str, payloads: Sequence[bytes], *, maxlen: int | None, approximate: bool
) -> list[str]:
    """Append every payload to `stream` in one round trip; returns the new entry ids."""
    if not payloads:
        return []
    replies = await link.roundtrip(pack_xadd_many(stream, payloads, maxlen, approximate), len(payloads))
    return xadd_ids(stream, replies)


def xadd_many_sync(
    client: redis.Redis, stream: str, payloads: Sequence[bytes], *, maxlen: int | None, approximate: bool
) -> list[str]:
    """The same as xadd_many, for plain synchronous code (a Django view)."""
    if not payloads:
        return []
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        # A list: the sync connection iterates what it is given, and iterating bytes yields ints.
        conn.send_packed_command([pack_xadd_many(stream, payloads, maxlen, approximate)], check_health=False)
        replies: list[Any] = []
        for _ in range(len(payloads)):
            try:
                replies.append(conn.read_response(disable_decoding=True))
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return xadd_ids(stream, replies)


# ---------------------------------------------------------------------------------------- consuming


def pack_read(group: str, consumer: str, keys: Sequence[str], *, count: int, block_ms: int) -> bytes:
    """XREADGROUP of new entries on every key; BLOCK only when block_ms > 0."""
    args: list[Arg] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms > 0:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *keys, *([">"] * len(keys))]
    return pack(*args)


def read_reply(reply: Any) -> list[StreamBatch]:
    """An XREADGROUP reply -> its batches; an error reply is raised."""
    if isinstance(reply, ResponseError):
        raise reply
    return parse_read(reply)


async def read_group(
    link: Link, group: str, consumer: str, keys: Sequence[str], *, count: int, block_ms: int
) -> list[StreamBatch]:
    """XREADGROUP of new entries on every key; waits up to block_ms when there are none."""
    # The read may legitimately wait block_ms; give the socket that long plus a margin, never less
    # (a socket timeout shorter than BLOCK turns every quiet period into an error, redis-py#3138).
    (reply,) = await link.roundtrip(
        pack_read(group, consumer, keys, count=count, block_ms=block_ms), 1, timeout_s=block_ms / 1000 + 10.0
    )
    return read_reply(reply)


async def autoclaim(
    link: Link, key: str, group: str, consumer: str, *, min_idle_ms: int, cursor: bytes, count: int
) -> Claimed:
    """One XAUTOCLAIM step plus the delivery counts of what it claimed, in one round trip.

    XAUTOCLAIM claims only entries idle for min_idle_ms, atomically, so two reclaimers never both take
    one entry and a worker renewing its lease never loses one. Its reply lacks delivery counts, which
    streamq needs to count attempts lost to crashes, so XPENDING for this consumer rides along.
    """
    replies = await link.roundtrip(
        pack("XAUTOCLAIM", key, group, consumer, min_idle_ms, cursor, "COUNT", count)
        + pack("XPENDING", key, group, "-", "+", count * 4 + 1000, consumer),
        2,
    )
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    next_cursor, batch, deleted = parse_autoclaim(key, replies[0])
    return Claimed(next_cursor, batch, deleted, parse_pending(replies[1]))


class SettlePlan(NamedTuple):
    """What to do with one batch's entries on one stream key."""

    key: str
    delayed_key: str
    dlq_key: str
    stats_key: str
    delete_after_ack: bool
    min_id: bytes
    max_id: bytes
    acks: list[bytes]
    retries: list[tuple[bytes, int, bytes]]  # (entry id, delay_ms, retry record)
    dead: list[tuple[bytes, list[Arg]]]  # (entry id, flat dead-letter fields)
    defers: Sequence[tuple[bytes, int, bytes]] = ()  # (entry id, delay_ms, retry record): no attempt used


class Settled(NamedTuple):
    """What settling found: entries this consumer no longer held (its lease was lost), left untouched."""

    lost: int
    lost_ids: list[bytes]  # those the fenced script named; the ack fast path only counts them


def _plan_calls(group: str, consumer: str, plan: SettlePlan, *, resent: bool) -> list[bytes]:
    """The packed script calls for one plan: ACK for the successes, SETTLE (fenced) for retries and dead
    letters."""
    calls = []
    if plan.acks:
        flags = (group, b"0" if resent else b"1", b"1" if plan.delete_after_ack else b"0")
        calls.append(ACK.pack([plan.key, plan.stats_key], flags, plan.acks))
    if plan.retries or plan.dead or plan.defers:
        args: list[Arg] = [
            group, consumer, b"1" if plan.delete_after_ack else b"0", plan.min_id, plan.max_id,
            0, len(plan.retries), len(plan.dead), len(plan.defers),
        ]  # fmt: skip
        for entry_id, delay_ms, record in plan.retries:
            args += [entry_id, delay_ms, record]
        for entry_id, fields in plan.dead:
            args += [entry_id, len(fields), *fields]
        for entry_id, delay_ms, record in plan.defers:
            args += [entry_id, delay_ms, record]
        calls.append(SETTLE.pack([plan.key, plan.delayed_key, plan.dlq_key, plan.stats_key], args))
    return calls


def pack_settle(
    group: str, consumer: str, plans: Sequence[SettlePlan], *, resent: bool = False
) -> tuple[bytes, int]:
    """The script calls that settle `plans`, packed for `Link.send`, and how many replies they owe."""
    calls = _settle_calls(group, consumer, plans, resent=resent)
    return b"".join(calls), len(calls)


def _settle_calls(group: str, consumer: str, plans: Sequence[SettlePlan], *, resent: bool) -> list[bytes]:
    return [call for plan in plans for call in _plan_calls(group, consumer, plan, resent=resent)]


def settled(replies: Sequence[Any]) -> Settled:
    """The replies of settle calls -> what was lost. Error replies are raised (NoScriptError included)."""
    lost = 0
    lost_ids: list[bytes] = []
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
        if isinstance(reply, int):
            lost += reply
        else:
            lost += len(reply)
            lost_ids.extend(reply)
    return Settled(lost, lost_ids)


async def settle(
    link: Link, group: str, consumer: str, plans: Sequence[SettlePlan], *, resent: bool = False
) -> Settled:
    """Settle every plan in one round trip. `resent`: these plans were sent before and the reply was lost."""
    if not plans:
        return Settled(0, [])
    return settled(await link.scripts(_settle_calls(group, consumer, plans, resent=resent)))


def renew_sync(client: redis.Redis, key: str, group: str, consumer: str, ids: Sequence[bytes]) -> list[bytes]:
    """Reset the idle time of the entries this consumer still holds; returns those it no longer holds.

    Synchronous on purpose: the lease keeper runs in its own thread, so a handler that blocks the event
    loop (CPU-bound code in an async def) cannot starve renewals and get its entries taken while alive.
    """
    if not ids:
        return []
    ordered = sorted(ids, key=_id_key)
    args: list[Any] = [group, consumer, ordered[0], ordered[-1], *ordered]
    try:
        reply = client.evalsha(RENEW.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = client.eval(RENEW.source, 1, key, *args)
    return list(reply)


def renew_held_sync(client: redis.Redis, key: str, group: str, consumer: str, limit: int) -> int:
    """Reset the idle time of every entry this consumer holds on `key` (at most `limit`); returns how many.

    For entries whose ids the worker does not know yet: a read-ahead whose reply waits behind a batch.
    """
    args: list[Any] = [group, consumer, limit]
    try:
        reply = client.evalsha(RENEW_HELD.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = client.eval(RENEW_HELD.source, 1, key, *args)
    return int(reply)


async def release(
    client: aioredis.Redis, key: str, group: str, consumer: str, ids: Sequence[bytes], idle_ms: int
) -> int:
    """Make entries this consumer still holds reclaimable at once (idle for idle_ms); returns how many."""
    if not ids:
        return 0
    ordered = sorted(ids, key=_id_key)
    args: list[Any] = [group, consumer, idle_ms, ordered[0], ordered[-1], *ordered]
    try:
        reply = await client.evalsha(RELEASE.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(RELEASE.source, 1, key, *args)
    return int(reply)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def move_due(link: Link, delayed_key: str, retry_key: str, limit: int) -> tuple[int, int]:
    """Move due retries to the retry stream; returns (moved, ms until the next is due, or -1)."""
    try:
        (reply,) = await link.scripts([MOVE_DUE.pack([delayed_key, retry_key], [limit])])
    except ResponseError as exc:
        if is_denied(exc):
            raise ConfigurationError(
                "the Redis user may not run the commands that move due retries (ZRANGEBYSCORE, ZRANGE,"
                f" ZREM, XADD, TIME on {delayed_key!r} and {retry_key!r}): {exc}"
            ) from exc
        _raise_for_key(delayed_key, exc)
    return int(reply[0]), int(reply[1])


def is_denied(error: ResponseError) -> bool:
    """An ACL denial, of a command sent or of one a script called (which does not name the command)."""
    text = str(error)
    # Redis 7.0: "The user executing the script can't run this command..."; Valkey 8: "ACL failure in
    # script: User ... has no permissions to run the 'zrangebyscore' command".
    return isinstance(error, NoPermissionError) or any(
        words in text for words in ("can't run this command", "no permissions")
    )


# ---------------------------------------------------------------------------------------- setup, admin


async def ensure_group(client: aioredis.Redis, key: str, group: str) -> bool:
    """Create the group at the stream's start (never `$`: that would skip what is already there).

    Returns True if it was created now. MKSTREAM lets workers start before any producer.
    """
    try:
        await client.execute_command("XGROUP", "CREATE", key, group, "0", "MKSTREAM")  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        _raise_for_key(key, exc)
    return True


async def ensure_group_at(client: aioredis.Redis, key: str, group: str, entry_id: str) -> int:
    """Create the group at `entry_id`, or move it forward to there, never back (see ENSURE_GROUP_AT).

    Returns 1 if created, 2 if moved forward, 0 if it was already at or past `entry_id`.
    """
    try:
        try:
            reply = await client.evalsha(ENSURE_GROUP_AT.sha, 1, key, group, entry_id)
        except redis.exceptions.NoScriptError:
            reply = await client.eval(ENSURE_GROUP_AT.source, 1, key, group, entry_id)
    except ResponseError as exc:
        _raise_for_key(key, exc)
    return int(reply)


async def register_stream(client: aioredis.Redis, registry_key: str, stream: str) -> None:
    """Note the stream in the registry that `streamq status` lists."""
    await client.sadd(registry_key, stream)


async def count(client: aioredis.Redis, stats_key: str, field: str, amount: int) -> None:
    """Add `amount` to one of a group's counters."""
    await client.hincrby(stats_key, field, amount)


class ConsumerInfo(NamedTuple):
    name: str
    pending: int
    idle_ms: int  # since its last read attempt from Redis 7.2 on, since its last successful one before


async def consumers(client: aioredis.Redis, stream: str, group: str) -> list[ConsumerInfo]:
    """The group's consumers (XINFO CONSUMERS); a missing group raises ResponseError (NOGROUP)."""
    rows = await client.xinfo_consumers(stream, group)
    return [ConsumerInfo(decode_id(r["name"]), int(r["pending"]), int(r["idle"])) for r in rows]


async def group_backlog(client: aioredis.Redis, keys: Sequence[str], group: str, delayed_key: str) -> int:
    """Entries the group still owes work on: pending on any key, plus retries waiting for their time.

    Undelivered entries are not counted here: a consumer that just read nothing knows there are none.
    """
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xpending(key, group)
    pipe.zcard(delayed_key)
    replies = await pipe.execute(raise_on_error=False)
    total = 0
    for reply in replies[:-1]:
        if isinstance(reply, ResponseError):
            continue
        total += int(reply["pending"])
    total += int(replies[-1]) if not isinstance(replies[-1], ResponseError) else 0
    return total


async def replay(
    client: aioredis.Redis, dlq_key: str, retry_key: str, dlq_id: str, record: bytes
) -> str | None:
    try:
        reply = await client.evalsha(REPLAY.sha, 2, dlq_key, retry_key, dlq_id, record)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(REPLAY.source, 2, dlq_key, retry_key, dlq_id, record)
    return decode_id(reply) if reply else None


async def reap(client: aioredis.Redis, keys: Sequence[str], group: str, consumer: str) -> bool:
    args: list[Any] = [*keys, group, consumer]
    try:
        reply = await client.evalsha(REAP.sha, len(keys), *args)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(REAP.source, len(keys), *args)
    return bool(reply)


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


MIN_SERVER_VERSION = (6, 2, 0)  # XAUTOCLAIM, XPENDING IDLE, exclusive ranges
SAFE_SERVER_VERSION = (7, 0, 5)  # CVE-2022-31144 and CVE-2022-35951 (XAUTOCLAIM) fixed


async def check_server(client: aioredis.Redis) -> dict[str, str]:
    """Refuse servers without XAUTOCLAIM; report the version and the memory policy for a warning."""
    info = await client.info("server")
    version = str(info.get("redis_version", "0"))
    if parse_version(version) < MIN_SERVER_VERSION:
        raise ServerError(
            f"Redis {version} is too old: streamq needs XAUTOCLAIM (Redis >= 6.2; >= 7.0.5 recommended)"
        )
    found = {"version": version, "server": "valkey" if "valkey_version" in info else "redis"}
    if "valkey_version" in info:
        found["valkey_version"] = str(info["valkey_version"])
    try:
        memory = await client.info("memory")
        found["maxmemory_policy"] = str(memory.get("maxmemory_policy", ""))
    except ResponseError:
        pass  # an ACL user without INFO memory: skip the check rather than refuse to run
    return found
