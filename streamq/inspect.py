"""Read-only state of streams and groups: lag, pending, consumers, retries waiting, dead letters."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import keys


class GroupStatus(msgspec.Struct, kw_only=True):
    name: str
    consumers: int
    pending: int  # delivered, not yet settled (stream + retry stream)
    lag: int | None  # entries not yet delivered to the group (None when the server cannot tell)
    last_delivered_id: str
    retries_waiting: int  # in backoff, in the delayed set
    stats: dict[str, int]  # counters kept by the settle scripts: acked, retried, dead, reclaimed, lease_lost


class StreamStatus(msgspec.Struct, kw_only=True):
    stream: str
    exists: bool
    length: int
    dead_letters: int
    groups: list[GroupStatus]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def stream_status(client: aioredis.Redis, stream: str) -> StreamStatus:
    keys.validate_name("stream", stream)
    dead = int(await client.xlen(keys.dlq_key(stream)))
    try:
        length = int(await client.xlen(stream))
        groups_raw = await client.xinfo_groups(stream) if await client.exists(stream) else []
    except ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            return StreamStatus(stream=stream, exists=False, length=0, dead_letters=dead, groups=[])
        raise
    groups = []
    for info in groups_raw:
        name = _s(info["name"])
        retry = keys.retry_key(stream, name)
        retry_pending = 0
        with contextlib.suppress(ResponseError):  # no retry stream for this group yet
            retry_pending = int((await client.xpending(retry, name))["pending"])
        stats_raw = await client.hgetall(keys.stats_key(stream, name))
        lag = info.get("lag")
        groups.append(
            GroupStatus(
                name=name,
                consumers=int(info["consumers"]),
                pending=int(info["pending"]) + retry_pending,
                lag=int(lag) if lag is not None else None,
                last_delivered_id=_s(info["last-delivered-id"]),
                retries_waiting=int(await client.zcard(keys.delayed_key(stream, name))),
                stats={_s(k): int(v) for k, v in stats_raw.items()},
            )
        )
    return StreamStatus(
        stream=stream, exists=length > 0 or bool(groups_raw), length=length, dead_letters=dead, groups=groups
    )


async def known_streams(client: aioredis.Redis) -> list[str]:
    """Streams that have had a streamq worker (kept in keys.REGISTRY_KEY)."""
    return sorted(_s(s) for s in await client.smembers(keys.REGISTRY_KEY))


async def status(client: aioredis.Redis, streams: Sequence[str] | None = None) -> list[StreamStatus]:
    names = list(streams) if streams else await known_streams(client)
    return [await stream_status(client, name) for name in names]
