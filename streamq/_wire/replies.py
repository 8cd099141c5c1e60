"""Replies turned into typed values: stream ids as bytes, payloads as bytes, counts as ints; errors mapped.

Server differences handled here: XAUTOCLAIM replies with two elements before Redis 7.0 (deleted entries
then come back with nil fields) and three from 7.0 (deleted ids listed apart); pending entries whose
payload was trimmed come back as (id, nil) from XREADGROUP; RESP3 replies with maps where RESP2 has lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._cluster import REDIRECTIONS
from ..errors import ConfigurationError, ServerError

# Errors that pass: the server is unreachable or slow for now, or (on a cluster) the slot is moving to
# another node (REDIRECTIONS: the command was not run). Whoever sees one waits and tries again.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError, *REDIRECTIONS)


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


def raise_for_key(stream: str, error: ResponseError) -> None:
    text = str(error)
    if text.startswith("WRONGTYPE"):
        raise ConfigurationError(f"key {stream!r} exists and is not a stream: {text}") from error
    if isinstance(error, OutOfMemoryError):
        raise ServerError(f"the server is out of memory and refuses writes (maxmemory): {text}") from error
    if isinstance(error, NoPermissionError):
        raise ConfigurationError(f"the Redis user may not run this command on {stream!r}: {text}") from error
    raise error


def passes(error: BaseException) -> bool:
    """An error reply that says the server cannot serve now but will: BUSY (another client's script has
    run past its time limit; it ends, or SCRIPT KILL ends it), READONLY (the server was made a replica, as
    in a failover under way), MASTERDOWN (a replica that lost its primary). Like TRANSIENT, whoever sees
    one waits and tries again, instead of a worker stopping for another client's script. (-LOADING is
    redis-py's BusyLoadingError, a ConnectionError, already in TRANSIENT.)"""
    if not isinstance(error, ResponseError):
        return False
    text = str(error)
    return text.startswith(("BUSY ", "READONLY", "MASTERDOWN")) or isinstance(error, ReadOnlyError)


def waits_out(error: BaseException) -> bool:
    """Whether whoever meets `error` waits and tries again: TRANSIENT, or a reply that passes()."""
    return isinstance(error, TRANSIENT) or passes(error)


def is_denied(error: ResponseError) -> bool:
    """An ACL denial, of a command sent or of one a script called (which does not name the command)."""
    text = str(error)
    # Redis 7.0: "The user executing the script can't run this command..."; Valkey 8: "ACL failure in
    # script: User ... has no permissions to run the 'zrangebyscore' command".
    return isinstance(error, NoPermissionError) or any(
        words in text for words in ("can't run this command", "no permissions")
    )


def xadd_ids(stream: str, replies: list[Any]) -> list[str]:
    """XADD replies -> the new entry ids; the first error reply is raised, mapped."""
    ids = []
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise_for_key(stream, reply)
        ids.append(reply.decode())
    return ids


def read_reply(reply: Any) -> list[StreamBatch]:
    """An XREADGROUP reply -> its batches; an error reply is raised."""
    if isinstance(reply, ResponseError):
        raise reply
    return parse_read(reply)


class Settled(NamedTuple):
    """What settling found: entries this consumer no longer held (its lease was lost), left untouched."""

    lost: int
    lost_ids: list[bytes]  # those the fenced script named; the ack fast path only counts them


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


class ConsumerInfo(NamedTuple):
    name: str
    pending: int
    idle_ms: int  # since its last read attempt from Redis 7.2 on, since its last successful one before


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())
