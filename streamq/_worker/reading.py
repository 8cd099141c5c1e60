"""Reading: XREADGROUP of new entries on the stream and the group's retry stream.

The reader knows how many entries to ask for and where it has read up to. The count shrinks to one entry
after a read that held a payload over max_event_bytes and doubles back to batch_size with each read that
held none: a stream of 20 MB entries written around the producer then costs the worker one of them at a
time, not batch_size of them. The position (the last id read from the stream) is where a group deleted
under the worker is recreated, so nothing it has read is delivered again.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _wire


class Reader:
    """Reads for one consumer; `count` adapts to oversized entries, `position` follows what was read."""

    def __init__(self, group: str, consumer: str, keys: Sequence[str], *, batch_size: int) -> None:
        self.group = group
        self.consumer = consumer
        self.keys = list(keys)
        self.batch_size = batch_size
        self.count = batch_size
        self.position: dict[str, bytes] = {}  # key -> last id read from it
        self._read_ahead = self._pack(block_ms=0)

    def _pack(self, *, block_ms: int) -> bytes:
        return _wire.pack_read(self.group, self.consumer, self.keys, count=self.count, block_ms=block_ms)

    def read_ahead(self) -> bytes:
        """The packed read sent ahead of its reply (never blocks: a read-ahead that finds nothing ends)."""
        return self._read_ahead

    async def read(self, link: _wire.Link, *, block_ms: int) -> list[_wire.StreamBatch]:
        batches = await _wire.read_group(
            link, self.group, self.consumer, self.keys, count=self.count, block_ms=block_ms
        )
        self.received(batches)
        return batches

    def parse_read_ahead(self, reply: object) -> list[_wire.StreamBatch]:
        batches = _wire.read_reply(reply)
        self.received(batches)
        return batches

    def received(self, batches: Sequence[_wire.StreamBatch]) -> None:
        for batch in batches:
            if batch.ids:
                self.position[batch.key] = batch.ids[-1]

    def saw_oversized(self, oversized: int) -> None:
        """After a decode: shrink the count to 1 if payloads were too large, else grow it back."""
        count = 1 if oversized else min(self.batch_size, self.count * 2)
        if count != self.count:
            self.count = count
            self._read_ahead = self._pack(block_ms=0)
