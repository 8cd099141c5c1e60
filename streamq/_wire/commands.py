"""Every command and script call streamq sends, by what it is for: producing, reading, claiming,
settling, renewing leases, moving due retries, groups, the registry and counters, reaping, replay, and
the server check. Each sends through transport.py and returns what replies.py made of the reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..errors import ConfigurationError, ServerError
from . import scripts
from .replies import (
    Claimed,
    ConsumerInfo,
    Settled,
    StreamBatch,
    decode_id,
    is_denied,
    parse_autoclaim,
    parse_pending,
    parse_version,
    raise_for_key,
    read_reply,
    settled,
    xadd_ids,
)
from .transport import Arg, Link, Script, pack, roundtrip_sync

SETTLE = Script("settle", scripts.SETTLE)
ACK = Script("ack", scripts.ACK)
RENEW = Script("renew", scripts.RENEW)
MOVE_DUE = Script("move_due", scripts.MOVE_DUE)
REPLAY = Script("replay", scripts.REPLAY)
REAP = Script("reap", scripts.REAP)
RENEW_HELD = Script("renew_held", scripts.RENEW_HELD)
RELEASE = Script("release", scripts.RELEASE)
ENSURE_GROUP_AT = Script("ensure_group_at", scripts.ENSURE_GROUP_AT)
SET_DELIVERIES = Script("set_deliveries", scripts.SET_DELIVERIES)


# ---------------------------------------------------------------------------------------- producing


def pack_xadd_many(
    stream: str,
    payloads: Iterable[bytes],
    maxlen: int | None,
    approximate: bool,
    headers: Sequence[Sequence[bytes]] | None = None,
) -> bytes:
    """XADD per payload, packed into one buffer: the constant head is built once per call.

    `headers`, aligned with the payloads: each entry's fields after `d` (name, value, ...; empty for none)."""
    key = stream.encode()
    if maxlen is None:
        head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nd\r\n" % (len(key), key)
    else:
        limit = str(maxlen).encode()
        trim = b"$1\r\n~\r\n" if approximate else b"$1\r\n=\r\n"
        head = b"*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n%s$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nd\r\n" % (
            len(key), key, trim, len(limit), limit,
        )  # fmt: skip
    if headers is None:
        return b"".join([b"%s$%d\r\n%s\r\n" % (head, len(p), p) for p in payloads])
    base = 5 if maxlen is None else 8  # the XADD's arguments without headers
    rest = head[4:]  # the head after its "*5\r\n" or "*8\r\n"
    parts = []
    for payload, fields in zip(payloads, headers, strict=True):
        if not fields:
            parts.append(b"%s$%d\r\n%s\r\n" % (head, len(payload), payload))
            continue
        parts.append(b"*%d\r\n%s$%d\r\n%s\r\n" % (base + len(fields), rest, len(payload), payload))
        parts += [b"$%d\r\n%s\r\n" % (len(field), field) for field in fields]
    return b"".join(parts)


async def xadd_many(
    link: Link, stream: str, payloads: Sequence[bytes], *, maxlen: int | None, approximate: bool,
    headers: Sequence[Sequence[bytes]] | None = None,
) -> list[str]:  # fmt: skip
    """Append every payload to `stream` in one round trip (with its headers); returns the new entry ids."""
    if not payloads:
        return []
    packed = pack_xadd_many(stream, payloads, maxlen, approximate, headers)
    replies = await link.roundtrip(packed, len(payloads))
    return xadd_ids(stream, replies)


def xadd_many_sync(
    client: redis.Redis, stream: str, payloads: Sequence[bytes], *, maxlen: int | None, approximate: bool,
    headers: Sequence[Sequence[bytes]] | None = None,
) -> list[str]:  # fmt: skip
    """The same as xadd_many, for plain synchronous code (a Django view)."""
    if not payloads:
        return []
    packed = pack_xadd_many(stream, payloads, maxlen, approximate, headers)
    replies = roundtrip_sync(client, packed, len(payloads))
    return xadd_ids(stream, replies)


# ---------------------------------------------------------------------------------------- replica waits

# Beyond a WAIT's own timeout, how long its reply may take to arrive (as read_group gives a BLOCK read).
WAIT_REPLY_MARGIN_S = 10.0


class ReplicaWait(NamedTuple):
    """WAIT (or WAITAOF) sent behind a producer's writes, in their round trip: the call returns once this
    many replicas have what the connection wrote, or the timeout passed."""

    replicas: int
    timeout_ms: int
    aof: bool = False  # WAITAOF 0 replicas timeout: the replicas have also fsynced it to their AOF

    @property
    def command(self) -> str:
        return "WAITAOF" if self.aof else "WAIT"

    def pack(self) -> bytes:
        if self.aof:
            return pack("WAITAOF", 0, self.replicas, self.timeout_ms)
        return pack("WAIT", self.replicas, self.timeout_ms)

    @property
    def reply_timeout_s(self) -> float:
        """How long the replies of writes followed by this wait may take: the wait may use all its time."""
        return self.timeout_ms / 1000 + WAIT_REPLY_MARGIN_S

    def acknowledged(self, stream: str, reply: Any) -> int:
        """The replicas that confirmed, from the wait's reply (WAITAOF: [local fsyncs, replica fsyncs])."""
        if isinstance(reply, ResponseError):
            raise_for_key(stream, reply)
        return int(reply[1]) if self.aof else int(reply)


class Appended(NamedTuple):
    """Entries appended with a replica wait behind them."""

    ids: list[str]
    replicas: int  # replicas that confirmed them (ReplicaWait.acknowledged)


async def xadd_many_waiting(
    link: Link, stream: str, payloads: Sequence[bytes], wait: ReplicaWait, *, maxlen: int | None = None,
    approximate: bool = True, headers: Sequence[Sequence[bytes]] | None = None,
) -> Appended:  # fmt: skip
    """xadd_many, then `wait`, in the same round trip: one more reply, not one more round trip."""
    replies = await link.roundtrip(
        pack_xadd_many(stream, payloads, maxlen, approximate, headers) + wait.pack(), len(payloads) + 1,
        timeout_s=wait.reply_timeout_s,
    )  # fmt: skip
    ids = xadd_ids(stream, replies[:-1])
    return Appended(ids, wait.acknowledged(stream, replies[-1]))


def xadd_many_waiting_sync(
    client: redis.Redis, stream: str, payloads: Sequence[bytes], wait: ReplicaWait, *,
    maxlen: int | None = None, approximate: bool = True, headers: Sequence[Sequence[bytes]] | None = None,
) -> Appended:  # fmt: skip
    """The same as xadd_many_waiting, for plain synchronous code."""
    payload = pack_xadd_many(stream, payloads, maxlen, approximate, headers) + wait.pack()
    replies = roundtrip_waiting_sync(client, payload, len(payloads) + 1, wait)
    ids = xadd_ids(stream, replies[:-1])
    return Appended(ids, wait.acknowledged(stream, replies[-1]))


def roundtrip_waiting_sync(client: redis.Redis, payload: bytes, replies: int, wait: ReplicaWait) -> list[Any]:
    """roundtrip_sync for commands ending with `wait`, whose reply may take the whole wait. The write and the
    wait must share one connection (WAIT waits for what its own connection wrote): one payload."""
    return roundtrip_sync(client, payload, replies, last_reply_within_s=wait.reply_timeout_s)


def pack_wait_check(wait: ReplicaWait) -> tuple[bytes, int]:
    """A wait that returns at once (0 replicas) and INFO server, packed: what check_wait reads; 2 replies."""
    return wait._replace(replicas=0, timeout_ms=1).pack() + pack("INFO", "server"), 2


def check_wait(wait: ReplicaWait, replies: Sequence[Any]) -> None:
    """Refuse, before anything is written, a server that cannot run `wait`: WAITAOF is Redis >= 7.2 (every
    Valkey has it); an ACL may deny either. The refusal names the server and its version."""
    reply = replies[0]
    if not isinstance(reply, ResponseError):
        return
    server = server_name(replies[1])
    if "unknown command" in str(reply).lower():
        raise ConfigurationError(
            f"replica_aof=True needs the {wait.command} command (Redis >= 7.2, or Valkey), which this"
            f" server ({server}) does not have: use replica_aof=False (WAIT: the replicas have the entries,"
            " not necessarily on disk) or upgrade the server"
        )
    if is_denied(reply):
        raise ConfigurationError(
            f"min_replicas needs {wait.command}, which the Redis user may not run ({server}): {reply}"
        )
    raise ConfigurationError(f"min_replicas: {server} refuses {wait.command}: {reply}")


def server_name(info: Any) -> str:
    """'Redis 7.0.15' or 'Valkey 8.1.8' from a raw INFO server reply; 'a server of unknown version' if the
    reply is an error (an ACL without INFO) or names no version."""
    if isinstance(info, ResponseError) or not isinstance(info, bytes | str):
        return "a server of unknown version"
    text = info.decode(errors="replace") if isinstance(info, bytes) else info
    fields = dict(line.partition(":")[::2] for line in text.splitlines() if ":" in line)
    if "valkey_version" in fields:
        return f"Valkey {fields['valkey_version'].strip()}"
    if "redis_version" in fields:
        return f"Redis {fields['redis_version'].strip()}"
    return "a server of unknown version"


async def check_replica_wait(link: Link, wait: ReplicaWait) -> None:
    """check_wait, on the server `link` talks to (one round trip)."""
    payload, count = pack_wait_check(wait)
    check_wait(wait, await link.roundtrip(payload, count))


def check_replica_wait_sync(client: redis.Redis, wait: ReplicaWait) -> None:
    payload, count = pack_wait_check(wait)
    check_wait(wait, roundtrip_sync(client, payload, count))


# ---------------------------------------------------------------------------------------- consuming


def pack_read(group: str, consumer: str, keys: Sequence[str], *, count: int, block_ms: int) -> bytes:
    """XREADGROUP of new entries on every key; BLOCK only when block_ms > 0."""
    args: list[Arg] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms > 0:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *keys, *([">"] * len(keys))]
    return pack(*args)


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
    ordered = sorted(ids, key=id_key)
    args: list[Any] = [group, consumer, ordered[0], ordered[-1], *ordered]
    try:
        reply = client.evalsha(RENEW.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = client.eval(RENEW.source, 1, key, *args)
    return list(reply)


def renew_held_sync(
    client: redis.Redis, key: str, group: str, consumer: str, limit: int, after: bytes | None
) -> int:
    """Reset the idle time of the entries this consumer holds on `key` after id `after` (None: all), at
    most `limit`; returns how many.

    For entries whose ids the worker does not know yet: a read-ahead whose reply waits behind a batch.
    """
    args: list[Any] = [group, consumer, limit, b"(" + after if after is not None else b"-"]
    try:
        reply = client.evalsha(RENEW_HELD.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = client.eval(RENEW_HELD.source, 1, key, *args)
    return int(reply)


async def release_held(
    client: aioredis.Redis, key: str, group: str, consumer: str, limit: int, after: bytes | None, idle_ms: int
) -> int:
    """Give back (mark idle for idle_ms) what this consumer holds on `key` after id `after`: entries of a
    read whose reply was never parsed. Returns how many."""
    args: list[Any] = [group, consumer, limit, b"(" + after if after is not None else b"-", idle_ms]
    try:
        reply = await client.evalsha(RENEW_HELD.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(RENEW_HELD.source, 1, key, *args)
    return int(reply)


async def set_deliveries(
    link: Link, group: str, consumer: str, counts: Mapping[str, Sequence[tuple[bytes, int]]]
) -> None:
    """Set the delivery counters of entries this consumer still holds, per key: {key: [(id, count)]}."""
    calls = [
        SET_DELIVERIES.pack([key], [group, consumer, *(a for pair in pairs for a in pair)])
        for key, pairs in counts.items()
        if pairs
    ]
    if calls:
        await link.scripts(calls)


async def release(
    client: aioredis.Redis, key: str, group: str, consumer: str, ids: Sequence[bytes], idle_ms: int
) -> int:
    """Make entries this consumer still holds reclaimable at once (idle for idle_ms); returns how many."""
    if not ids:
        return 0
    ordered = sorted(ids, key=id_key)
    args: list[Any] = [group, consumer, idle_ms, ordered[0], ordered[-1], *ordered]
    try:
        reply = await client.evalsha(RELEASE.sha, 1, key, *args)
    except redis.exceptions.NoScriptError:
        reply = await client.eval(RELEASE.source, 1, key, *args)
    return int(reply)


def id_key(entry_id: bytes) -> tuple[int, int]:
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
        raise_for_key(delayed_key, exc)
    return int(reply[0]), int(reply[1])


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
        raise_for_key(key, exc)
    return True


async def ensure_group_at(client: aioredis.Redis, key: str, group: str, entry_id: str) -> int:
    """Create the group at `entry_id`, or move it back to there, never forward (see ENSURE_GROUP_AT).

    Returns 1 if created, 2 if moved back, 0 if it was already at or before `entry_id`.
    """
    try:
        try:
            reply = await client.evalsha(ENSURE_GROUP_AT.sha, 1, key, group, entry_id)
        except redis.exceptions.NoScriptError:
            reply = await client.eval(ENSURE_GROUP_AT.source, 1, key, group, entry_id)
    except ResponseError as exc:
        raise_for_key(key, exc)
    return int(reply)


async def register_stream(client: aioredis.Redis, registry_key: str, stream: str) -> None:
    """Note the stream in the registry that `streamq status` lists."""
    await client.sadd(registry_key, stream)


async def count(client: aioredis.Redis, stats_key: str, field: str, amount: int) -> None:
    """Add `amount` to one of a group's counters."""
    await client.hincrby(stats_key, field, amount)


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


# ---------------------------------------------------------------------------------------- the demo's


def delete_sync(client: redis.Redis, *keys: str) -> int:
    """Delete the keys; returns how many existed."""
    return int(client.delete(*keys))


def xadd_fields_sync(client: redis.Redis, stream: str, fields: Mapping[str | bytes, bytes]) -> str:
    """Append one entry with exactly these fields (a raw entry, as a foreign producer might write)."""
    return decode_id(client.xadd(stream, dict(fields)))  # type: ignore[arg-type]  # redis-py's field types are invariant


def pending_by_consumer_sync(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    """{consumer: entries it holds} from the XPENDING summary; a missing group raises ResponseError."""
    summary = client.xpending(stream, group)
    return {decode_id(row["name"]): int(row["pending"]) for row in summary.get("consumers") or ()}
