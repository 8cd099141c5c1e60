"""Reaping: consumers that hold nothing leave the group, so names of past processes do not pile up.

Every process has a consumer name of its own, so the names of past processes would pile up in the group
(one application leaked millions, redis#8635). A worker removes itself on exit when it holds nothing, and
now and then removes consumers idle for reap_idle_ms that hold nothing. Each removal is an atomic
check-then-delete script: XGROUP DELCONSUMER would drop a consumer's pending entries for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .. import _wire
from ..errors import describe_error


async def reap_idle(
    client: aioredis.Redis, stream: str, keys: Sequence[str], group: str, me: str, idle_ms: int, log: Any
) -> list[str]:
    """Delete the group's consumers (other than `me`) idle for idle_ms and holding nothing."""
    try:
        found = await _wire.consumers(client, stream, group)
    except ResponseError:
        return []  # the group is being recreated; try next time
    reaped = []
    for info in found:
        candidate = info.name != me and info.pending == 0 and info.idle_ms >= idle_ms
        try:
            if candidate and await _wire.reap(client, keys, group, info.name):
                reaped.append(info.name)
        except ResponseError as exc:  # an ACL without XGROUP DELCONSUMER: keep working, say why
            log.warning("could not remove idle consumers", error=describe_error(exc))
            break
    if reaped:
        log.info("removed idle consumers holding nothing", consumers=reaped[:20], count=len(reaped))
    return reaped


async def reap_self(client: aioredis.Redis, keys: Sequence[str], group: str, me: str, log: Any) -> None:
    """Leave the group if this consumer holds nothing; one that still holds entries stays, so that those
    remain claimable by others."""
    try:
        await _wire.reap(client, keys, group, me)
    except (RedisError, OSError) as exc:
        log.info("could not remove consumer from group", error=describe_error(exc))
