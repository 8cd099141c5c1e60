"""Holding: the entries a consumer holds while their batch is on its way through it, and giving them back.

A read is held from the moment it is asked for (a read-ahead before its ids are known), and the lease
keeper (leases.py) renews every hold. A hold is dropped once its entries' settlement is on its way, or
released when they leave unhandled. Released while the consumer is being cancelled, a hold is kept to be
given back: its entries are marked idle past any lease, so that any worker reclaims them at once instead of
after a whole lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .. import _wire
from ..errors import describe_error
from .leases import HELD_RENEW_LIMIT, Hold, LeaseKeeper

GIVE_BACK_TIMEOUT_S = 2.0  # how long a cancelled consumer spends settling and giving back what it holds
# Entries given back are marked idle this long: past any lease, so the next reclaim scan takes them.
GIVE_BACK_IDLE_MS = 2**40


class Holdings:
    """The holds of one consumer: taken, dropped, released, and given back when it is cancelled."""

    def __init__(
        self,
        keeper: LeaseKeeper,
        client: aioredis.Redis,
        group: str,
        consumer: str,
        *,
        renew_every_ms: int,
        log: Any,
    ) -> None:
        self.keeper = keeper
        self.client = client
        self.group = group
        self.consumer = consumer
        self.renew_every_ms = renew_every_ms
        self.log = log
        self._to_give_back: list[Hold] = []

    def read(self, batches: Sequence[_wire.StreamBatch]) -> list[Hold]:
        """Hold the entries of a read."""
        return [self.entries(b.key, b.ids) for b in batches]

    def entries(self, key: str, ids: Sequence[bytes]) -> Hold:
        return self.keeper.hold(key, self.group, self.consumer, ids, self.renew_every_ms)

    def unread(self, keys: Sequence[str], position: Mapping[str, bytes]) -> list[Hold]:
        """Hold a read sent ahead, whose ids are not known until its reply is parsed: what this consumer
        holds after the last id it has read on each key (a read gives out only entries after those)."""
        return [
            self.keeper.hold(key, self.group, self.consumer, None, self.renew_every_ms, position.get(key))
            for key in keys
        ]

    def drop(self, holds: Sequence[Hold]) -> None:
        """Stop renewing: these entries are settled, or their settlement is on its way."""
        for held in holds:
            self.keeper.release(held)

    def release(self, holds: Sequence[Hold]) -> None:
        """Stop renewing entries that leave unhandled; while being cancelled, keep them to give back."""
        task = asyncio.current_task()
        cancelling = task is not None and task.cancelling() > 0
        for held in holds:
            self.keeper.release(held)
            if cancelling:
                self._to_give_back.append(held)

    async def give_back(self) -> int:
        """Cancelled: make what was released unhandled reclaimable at once; returns how many entries."""
        holds, self._to_give_back = self._to_give_back, []
        given = 0
        try:
            async with asyncio.timeout(GIVE_BACK_TIMEOUT_S):
                for held in holds:
                    if held.ids is None:  # a read-ahead whose reply was never parsed
                        given += await _wire.release_held(
                            self.client, held.key, self.group, self.consumer, HELD_RENEW_LIMIT, held.after,
                            GIVE_BACK_IDLE_MS,
                        )  # fmt: skip
                    elif held.ids:
                        given += await _wire.release(
                            self.client, held.key, self.group, self.consumer, held.ids, GIVE_BACK_IDLE_MS
                        )
        except (RedisError, OSError, TimeoutError) as exc:
            # They stay pending and are reclaimed once their lease runs out.
            self.log.info("could not give back held entries", error=describe_error(exc))
        if holds:
            self.log.info("cancelled: gave back entries held unhandled", count=given)
        return given
