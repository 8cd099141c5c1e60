"""Pause and resume consumer groups: from code (here) or from the command line (`streamq pause`).

    await streamq.control.pause(url, "orders", group="billing", reason="migrating the ledger")
    await streamq.control.resume(url, "orders", group="billing")
    streamq.control.pause_sync(url, "orders")            # every group of the stream (`*`)

A pause is durable: it is a field of the stream's pause hash (keys.paused_key), `*` for every group of
the stream or a group's name, holding who paused it and why (PauseInfo, as JSON). It lasts until resumed,
whatever workers start or stop meanwhile. Workers look for it every `control_every_ms` (at most a second,
within `block_ms`); once they see it they read nothing new and reclaim nothing, retries wait in their
delayed set, and what they already hold is still handled, renewed and settled. A worker started while
paused reads nothing until resumed. Resuming removes one field only: a group resumed while its stream is
paused (`*`) stays paused, and so does a group paused by name when the stream is resumed. Pausing a
partitioned stream pauses each of its partitions too (their workers read their partition's own hash, and
the stream's: a pause set before the stream had partitions is in the stream's hash only).

pause, resume and pauses take a redis.asyncio.Redis or a URL (None: $STREAMQ_REDIS_URL, else
localhost); pause_sync, resume_sync and pauses_sync the same for blocking code, with a redis.Redis.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from typing import Annotated, Any

import msgspec
import redis

from . import keys
from ._connection import RedisLike
from ._wire import Steps, T, checked, run_steps_on, run_steps_on_sync
from .errors import ConfigurationError
from .partitions import partition_streams, recorded_partitions

__all__ = [
    "EVERY_GROUP",
    "MAX_REASON_CHARS",
    "PauseInfo",
    "decode_pause",
    "pause",
    "pause_steps",
    "pause_sync",
    "pauses",
    "pauses_sync",
    "resume",
    "resume_sync",
]

EVERY_GROUP = "*"  # the pause hash's field for a pause of every group of the stream
MAX_REASON_CHARS = 1_000  # a reason is a note for people, shown in logs and tables: keep it short
# Control characters (C0, DEL, C1) and the Unicode line breaks: a record is printed on terminals (`streamq
# status`, `resume`) and in one-line log entries, where these would break the line or be run as terminal
# escape sequences by whoever looks at it.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# The latest time a record may hold: the end of year 9999, the last a datetime can show. A record written
# by hand with a time beyond it is read as unreadable (shown as text), not a crash of whoever prints it.
MAX_SINCE_MS = 253_402_300_799_999


class PauseInfo(msgspec.Struct, kw_only=True, frozen=True):
    """Who paused a group (or a stream), when and why."""

    # When it was paused, by the server's clock (Unix ms); 0 when the record is unreadable.
    since_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_SINCE_MS)]
    reason: str = ""
    host: str = ""  # the machine that paused it
    pid: int = 0  # the process that paused it
    user: str = ""  # the OS user of that process, when known


def _shown(text: str) -> str:
    """`text` with its control characters escaped (ESC as \\x1b, a newline as \\n): safe to print."""
    return _UNSAFE.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def decode_pause(raw: bytes) -> PauseInfo:
    """A field of the pause hash as PauseInfo. A field that is not a record streamq wrote (set by hand)
    still means paused: it is shown as the reason, never dropped. Control characters in a record written by
    hand come back escaped (see _UNSAFE); streamq's own pause refuses them."""
    try:
        info = msgspec.json.decode(raw, type=PauseInfo)
    except msgspec.DecodeError:
        return PauseInfo(since_ms=0, reason=_shown(raw[:200].decode(errors="replace")))
    if any(_UNSAFE.search(text) for text in (info.reason, info.host, info.user)):
        info = msgspec.structs.replace(
            info, reason=_shown(info.reason), host=_shown(info.host), user=_shown(info.user)
        )
    return info


def _scope(group: str | None) -> str:
    if group is None or group == EVERY_GROUP:
        return EVERY_GROUP
    return keys.validate_name("group", group)


def _who() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:  # no login name and no password entry (a container's arbitrary uid): leave it out
        user = ""
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user}


def _s(value: Any) -> str:
    # A field written by hand may be any bytes: shown, never a crash of `streamq status`.
    return _shown(value.decode(errors="replace") if isinstance(value, bytes) else str(value))


def _checked_hashes(replies: list[Any], names: list[str]) -> list[Any]:
    """checked(), with a key of another type in the way of a pause hash named (a bare WRONGTYPE does not
    say which key, and the operator has to find and remove it)."""
    for name, reply in zip(names, replies, strict=True):
        if isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE"):
            raise ConfigurationError(
                f"key {name!r} exists and is not streamq's pause hash: {reply}"
            ) from reply
    return checked(replies)


def pause_steps(stream: str) -> Steps[dict[str, PauseInfo]]:
    """The pauses of `stream`: {`*` or group name: PauseInfo}, empty when nothing is paused."""
    name = keys.paused_key(stream)
    (raw,) = _checked_hashes((yield [("HGETALL", name)]), [name])
    return {_s(field): decode_pause(value if isinstance(value, bytes) else _s(value).encode())
            for field, value in raw.items()}  # fmt: skip


def _paused_keys(stream: str) -> Steps[list[str]]:
    """The pause hashes a pause of `stream` goes to: its own, and each partition's when it is partitioned
    (the workers of a partition poll the partition's own hash, in the partition's slot)."""
    (count,) = yield from recorded_partitions([stream])
    return [keys.paused_key(name) for name in [stream, *partition_streams(stream, count or 0)]]


def _pause(stream: str, group: str | None, reason: str) -> Steps[PauseInfo]:
    scope = _scope(group)
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or _UNSAFE.search(reason):
        raise ConfigurationError(
            f"reason must be one line of text, at most {MAX_REASON_CHARS} characters, without control"
            f" characters; got {reason!r:.80}"
        )
    names = yield from _paused_keys(stream)
    (clock,) = checked((yield [("TIME",)]))
    info = PauseInfo(since_ms=int(clock[0]) * 1000 + int(clock[1]) // 1000, reason=reason, **_who())
    record = msgspec.json.encode(info)
    _checked_hashes((yield [("HSET", key, scope, record) for key in names]), names)
    return info


def _resume(stream: str, group: str | None) -> Steps[bool]:
    names = yield from _paused_keys(stream)
    removed = _checked_hashes((yield [("HDEL", key, _scope(group)) for key in names]), names)
    return bool(removed[0])


async def _run(client: RedisLike, steps: Steps[T], user: str) -> T:
    return await run_steps_on(client, steps, user, __name__)


def _run_sync(client: str | redis.Redis | None, steps: Steps[T], user: str) -> T:
    return run_steps_on_sync(client, steps, user, __name__)


async def pause(client: RedisLike, stream: str, group: str | None = None, reason: str = "") -> PauseInfo:
    """Pause one group of `stream` (None or `*`: every group of it) until resumed; returns the record
    stored. Pausing what is paused already replaces its record (the new reason, time and author)."""
    return await _run(client, _pause(stream, group, reason), "pause")


async def resume(client: RedisLike, stream: str, group: str | None = None) -> bool:
    """Remove the pause of one group (None or `*`: the stream-wide one); returns whether there was one.
    Other pauses stay: see `pauses` for what is still paused."""
    return await _run(client, _resume(stream, group), "resume")


async def pauses(client: RedisLike, stream: str) -> dict[str, PauseInfo]:
    """The pauses of `stream`: {`*` or group name: PauseInfo}."""
    return await _run(client, pause_steps(stream), "pauses")


def pause_sync(
    client: str | redis.Redis | None, stream: str, group: str | None = None, reason: str = ""
) -> PauseInfo:
    return _run_sync(client, _pause(stream, group, reason), "pause")


def resume_sync(client: str | redis.Redis | None, stream: str, group: str | None = None) -> bool:
    return _run_sync(client, _resume(stream, group), "resume")


def pauses_sync(client: str | redis.Redis | None, stream: str) -> dict[str, PauseInfo]:
    return _run_sync(client, pause_steps(stream), "pauses")
