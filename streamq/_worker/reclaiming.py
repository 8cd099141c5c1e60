"""Reclaiming: taking over entries whose worker died, without ever taking them from a live one.

Each consumer periodically runs XAUTOCLAIM with min-idle = lease_ms on its stream and its retry stream,
following the cursor to 0-0 across ticks, a bounded number of entries per tick. A live worker's entries are
renewed (leases.py), so only entries nobody renews for a whole lease are taken. There is no external lock:
XAUTOCLAIM's idle check is atomic, so a crash can leave nothing held.

What a scan claimed becomes work of three kinds (`sort_claimed`): ids whose entry was deleted or trimmed
while pending (acknowledged, nothing to process), entries delivered once before (handled together, as a
batch of suspects: most were bystanders of a crash), and entries delivered twice or more without a result
(handled one per handler call, so an event that kills its worker cannot take batch-mates with it again).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from .. import _wire

# Times each reclaimed entry was delivered, per stream key (ids are unique within one stream only).
Deliveries = dict[str, dict[bytes, int]]

# Deliveries (this one included) from which a reclaimed entry is handled alone: it was delivered at least
# twice before and never settled, so it may be what killed its workers.
ISOLATE_FROM_DELIVERY = 3


class Reclaimer:
    """XAUTOCLAIM state of one consumer: cursor per stream key, and when the next scan is due."""

    def __init__(
        self, keys: Sequence[str], group: str, consumer: str, *, lease_ms: int, every_ms: int, count: int
    ) -> None:
        self.keys = list(keys)
        self.group = group
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.every_s = every_ms / 1000
        self.count = count
        self._cursors: dict[str, bytes] = {key: b"0-0" for key in self.keys}
        self._scanning: set[str] = set()
        self.next_due = 0.0  # scan at once on start: a restarted worker's dead predecessor may hold entries

    def due(self) -> bool:
        return bool(self._scanning) or time.monotonic() >= self.next_due

    def ms_until_due(self) -> int:
        if self._scanning:
            return 0
        return max(0, int((self.next_due - time.monotonic()) * 1000))

    async def step(self, link: _wire.Link) -> list[_wire.Claimed]:
        """Claim at most `count` entries per key; the scan resumes where it stopped on the next call."""
        if not self._scanning:
            self._scanning = set(self.keys)
        out: list[_wire.Claimed] = []
        for key in list(self._scanning):
            claimed = await _wire.autoclaim(
                link, key, self.group, self.consumer,
                min_idle_ms=self.lease_ms, cursor=self._cursors[key], count=self.count,
            )  # fmt: skip
            if claimed.cursor in (b"0-0", b"0"):
                self._cursors[key] = b"0-0"
                self._scanning.discard(key)
            else:
                self._cursors[key] = claimed.cursor
            if claimed.batch.ids or claimed.deleted:
                out.append(claimed)
        if not self._scanning:
            self.next_due = time.monotonic() + self.every_s
        return out

    @property
    def scanning(self) -> bool:
        return bool(self._scanning)


class ClaimedWork(NamedTuple):
    """What one reclaim step hands on: ids to acknowledge, and batches to handle, each a handler call."""

    deleted: dict[str, list[bytes]]  # key -> pending ids whose entry no longer exists
    batches: list[list[_wire.StreamBatch]]  # each item: one handler call's entries (one batch per key)
    deliveries: Deliveries
    claimed: int
    # The last `alone` items of `batches` are repeat suspects, one entry each, handled one at a time.
    alone: int = 0


def sort_claimed(claimed: Sequence[_wire.Claimed]) -> ClaimedWork:
    """Split reclaimed entries into suspects handled together and repeat suspects handled alone."""
    deleted: dict[str, list[bytes]] = {}
    together: list[_wire.StreamBatch] = []
    alone: list[list[_wire.StreamBatch]] = []
    deliveries: Deliveries = {}
    total = 0
    for step in claimed:
        key = step.batch.key
        if step.deleted:
            deleted.setdefault(key, []).extend(step.deleted)
        if not step.batch.ids:
            continue
        total += len(step.batch.ids)
        deliveries.setdefault(key, {}).update(step.deliveries)
        ids: list[bytes] = []
        fields: list[list[bytes] | None] = []
        for entry_id, entry_fields in zip(step.batch.ids, step.batch.fields, strict=True):
            if step.deliveries.get(entry_id, 2) >= ISOLATE_FROM_DELIVERY:
                alone.append([_wire.StreamBatch(key, [entry_id], [entry_fields])])
            else:
                ids.append(entry_id)
                fields.append(entry_fields)
        if ids:
            together.append(_wire.StreamBatch(key, ids, fields))
    batches = ([together] if together else []) + alone
    return ClaimedWork(deleted, batches, deliveries, total, len(alone))
