"""Which partition each published event goes to: shared by Producer and SyncProducer.

A producer learns whether a stream is partitioned, and into how many, from the count the stream's first
worker recorded (or that the producer itself records, for the streams it was built with `partitions=`).
A count found is kept for the producer's life: it cannot change. "Not partitioned" is asked again every
NOT_PARTITIONED_RECHECK_S, so a producer started before the stream's first partitioned worker starts
publishing to the partitions within that time (what it published before then went to the plain stream,
which partitioned workers do not read: record the count first, with `partitions=` or by starting a
worker, when you partition a stream).

Routing, per call: an event goes to the partition of its `key`; without one, of its dedup key (so a repeat
meets its first publish); without either, a call's events all go to one partition, the next in turn
(round robin per producer and stream): one round trip, and an even spread over many calls.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from . import keys
from ._publish_plan import DedupKeys, dedup_keys_for, per_event
from ._wire import partitioning
from .errors import ConfigurationError
from .events import Event
from .partitions import (
    MAX_PARTITIONS,
    check_partitioning,
    partition_of,
    partition_stream,
    refuse_other_count,
)

PartitionKeys = Callable[[Event], "str | None"] | Sequence["str | None"] | None
NOT_PARTITIONED_RECHECK_S = 5.0
MAX_KEY_CHARS = 1_024


class Part(NamedTuple):
    """The events of one call that go to one partition: the partition's stream, and their positions."""

    stream: str
    positions: list[int]


class Routing:
    """What a producer knows of partition counts, and the round-robin turn of each stream."""

    def __init__(self, declared: Mapping[str, int] | None) -> None:
        self.declared = dict(declared or {})
        for stream, count in self.declared.items():
            check_partitioning(stream, count)
        self._counts: dict[str, int] = {}
        self._plain_until: dict[str, float] = {}  # stream -> when "not partitioned" is to be asked again
        self._turns: dict[str, Iterator[int]] = {}

    def known(self, stream: str) -> tuple[bool, int | None]:
        """(known, count): count None for a stream known not to be partitioned (for now)."""
        if stream in self._counts:
            return True, self._counts[stream]
        if time.monotonic() < self._plain_until.get(stream, 0.0):
            return True, None
        return False, None

    def learn(self, stream: str, count: int | None) -> None:
        if count is None:
            self._plain_until[stream] = time.monotonic() + NOT_PARTITIONED_RECHECK_S
        else:
            self._counts[stream] = count

    def split(
        self, stream: str, count: int, events: list[Event], given: PartitionKeys, dedup: DedupKeys
    ) -> list[Part]:
        """The call's events grouped by partition, each group in publish order."""
        routing_keys = partition_keys_for(events, given)
        if routing_keys is None:
            routing_keys = dedup_keys_for(events, dedup)
        if routing_keys is None or all(key is None for key in routing_keys):
            turn = self._turns.setdefault(stream, itertools.cycle(range(count)))
            return [Part(partition_stream(stream, next(turn)), list(range(len(events))))]
        by_partition: dict[int, list[int]] = {}
        for position, key in enumerate(routing_keys):
            index = partition_of(key, count) if key is not None else position % count
            by_partition.setdefault(index, []).append(position)
        return [Part(partition_stream(stream, index), positions) for index, positions in by_partition.items()]


def partition_keys_for(events: list[Event], given: PartitionKeys) -> list[str | None] | None:
    if given is None:
        return None
    found = per_event(events, given, "key", "key", "keys")
    for key in found:
        check_partition_key(key)
    return found


def check_partition_key(key: object) -> None:
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_CHARS and _is_text(key)):
        raise ConfigurationError(
            f"a partition key must be None or a string of 1 to {MAX_KEY_CHARS} characters of valid text,"
            f" got {key!r:.80}"
        )


def _is_text(key: str) -> bool:
    """Whether `key` has UTF-8 bytes to hash: a lone surrogate has none (UnicodeEncodeError otherwise)."""
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def recorded(stream: str, declared: int | None, reply: Any) -> int | None:
    """The count a stream has (None: not partitioned), from GET's reply, or DECLARE's for a declared one."""
    if reply is None:
        return None
    count = int(reply)
    if not 1 <= count <= MAX_PARTITIONS:
        raise ConfigurationError(f"{keys.partitions_key(stream)!r} holds {count}, not a partition count")
    if declared is not None:
        refuse_other_count(stream, count, declared)
    return count


async def lookup(client: Any, stream: str, declared: int | None) -> int | None:
    """The stream's partition count; records the declared one first if none is."""
    name = keys.partitions_key(stream)
    if declared is not None:
        return recorded(stream, declared, await partitioning.declare(client, name, declared))
    return recorded(stream, None, await client.get(name))


def lookup_sync(client: Any, stream: str, declared: int | None) -> int | None:
    name = keys.partitions_key(stream)
    if declared is not None:
        return recorded(stream, declared, partitioning.declare_sync(client, name, declared))
    return recorded(stream, None, client.get(name))


def needs_partitions(stream: str) -> ConfigurationError:
    return ConfigurationError(
        f"stream {stream!r} is not partitioned, so a partition key means nothing there: start its workers"
        f" with partitions=N, or build the producer with partitions={{{stream!r}: N}}"
    )


def take(items: Sequence[Any] | None, positions: list[int]) -> list[Any] | None:
    return None if items is None else [items[position] for position in positions]
