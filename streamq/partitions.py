"""Partitioned streams: one logical stream spread over N streams of its own, each in its own cluster slot.

A stream is partitioned once its partition count is recorded (`streamq:{orders}:partitions`), by the
first worker started with `partitions=N` or by a producer built with `partitions={"orders": N}`. From then
on the count is fixed: a worker or a producer asking for another count is refused with ConfigurationError,
because moving keys between partitions would break the order of each key's events. To change it, start a
new stream and move producers to it once the old one has drained.

Partition `i` of `orders` is the stream ``orders:{orders:i}``. Its hash tag (``orders:i``) differs for
every partition, so on Redis Cluster the partitions spread over the slots, hence over the nodes, while
each partition keeps its own retry, delayed and dead-letter keys in its own slot (keys.py), so every
script stays single-slot. A stream name that already has a hash tag cannot be partitioned (every
partition would land in that tag's slot); the same goes for names too long to leave room for the suffix.

Which partition an event goes to (stable, so that producers in other languages agree):

    partition = CRC-32(key as UTF-8) mod N

CRC-32 is the IEEE 802.3 checksum of zlib, Java's java.util.zip.CRC32, Go's hash/crc32.ChecksumIEEE and
PostgreSQL's crc32(), taken as an unsigned 32-bit number. Events with the same key go to the same
partition, in publish order. Events without a key go to the partitions in turn (round robin per
producer), or by their dedup key when they have one, so that a repeated dedup key meets its first
publish in the same partition.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoPermissionError

from . import keys
from .errors import ConfigurationError

T = TypeVar("T")
# A steps generator (streamq/_wire/steps.py): yields a round trip's commands, is sent their replies.
_Steps = Generator[list[Any], list[Any], T]

MAX_PARTITIONS = 1024
_SUFFIX_ROOM = len(":{:1023}")


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition of `key` among `partitions`: CRC-32 (IEEE) of its UTF-8 bytes, modulo the count."""
    data = key.encode() if isinstance(key, str) else key
    return zlib.crc32(data) % partitions


def partition_stream(stream: str, index: int) -> str:
    """The name of partition `index` of `stream`: ``orders:{orders:3}``."""
    return f"{stream}:{{{stream}:{index}}}"


def partition_streams(stream: str, partitions: int) -> list[str]:
    return [partition_stream(stream, index) for index in range(partitions)]


def streams_holding(stream: str, partitions: int | None) -> list[str]:
    """The streams that hold `stream`'s events: its partitions when it is partitioned, else itself."""
    return partition_streams(stream, partitions) if partitions else [stream]


def check_partitioning(stream: str, partitions: int) -> None:
    """Raise ConfigurationError unless `stream` can be spread over `partitions` partitions."""
    keys.validate_name("stream", stream)
    if (
        not isinstance(partitions, int)
        or isinstance(partitions, bool)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        raise ConfigurationError(
            f"partitions must be an integer from 1 to {MAX_PARTITIONS}, got {partitions!r}"
        )
    if keys.hash_tag(stream) is not None:
        raise ConfigurationError(
            f"stream {stream!r} has a hash tag, which would put every partition in one cluster slot: "
            "partition a stream named without braces"
        )
    if 2 * len(stream) + _SUFFIX_ROOM > 200:
        raise ConfigurationError(
            f"stream name {stream!r} is too long to be partitioned (at most 94 characters)"
        )


def refuse_other_count(stream: str, recorded: int, asked: int) -> None:
    if recorded != asked:
        raise ConfigurationError(
            f"stream {stream!r} has {recorded} partitions, not {asked}: the count of a partitioned stream "
            "cannot change (keys would move between partitions and lose their order); start a new stream"
        )


# ------------------------------------------------------------------------- reading partitioned streams

_PARTITION_NAME = re.compile(r"(.+):\{\1:(0|[1-9][0-9]{0,3})\}")


def logical_stream(name: str) -> tuple[str, int] | None:
    """(logical stream, partition index) when `name` is named as a partition is (``orders:{orders:3}``
    gives ``("orders", 3)``); None for any other name. The name alone says it: whether `orders` is
    partitioned, and into how many, only its recorded count does (recorded_partitions)."""
    found = _PARTITION_NAME.fullmatch(name)
    if found is None or int(found.group(2)) >= MAX_PARTITIONS:
        return None
    return found.group(1), int(found.group(2))


def recorded_partitions(streams: Sequence[str]) -> _Steps[list[int | None]]:
    """The recorded partition count of each stream, None for one that is not partitioned.

    One round trip asks which count keys exist (EXISTS, which a read-only operator user may run: SECURITY.md),
    a second reads those that do; for plain streams only, that is all the first. A user who may not GET the
    count of a partitioned stream gets NoPermissionError saying which permission is missing.
    """
    names = [keys.partitions_key(stream) for stream in streams]
    found = yield [("EXISTS", name) for name in names]
    there = [n for n, reply in enumerate(found) if _checked(reply)]
    counts: list[int | None] = [None] * len(names)
    if not there:
        return counts
    replies = yield [("GET", names[n]) for n in there]
    for n, reply in zip(there, replies, strict=True):
        if isinstance(reply, NoPermissionError):
            raise NoPermissionError(
                f"{streams[n]!r} is partitioned, and this Redis user may not read its partition count:"
                f" grant it GET on {names[n]!r} ({reply})"
            )
        if _checked(reply) is None:
            continue  # deleted since: the stream is no longer partitioned
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        if not text.isdigit() or not 1 <= int(text) <= MAX_PARTITIONS:
            raise ConfigurationError(f"key {names[n]!r} holds {text!r}, not a partition count")
        counts[n] = int(text)
    return counts


def _checked(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def side_by_side(steps: Sequence[_Steps[T]]) -> _Steps[list[T]]:
    """Run several steps generators at once: each round trip carries the commands of every one that has
    more, so reading N partitions takes as many round trips as reading one. Returns their results in order.

    Its natural home is streamq/_wire/steps.py, beside run_steps; it is kept here with the partition
    helpers that need it.
    """
    results: list[Any] = [None] * len(steps)
    waiting: list[tuple[int, list[Any]]] = []
    for index, generator in enumerate(steps):
        try:
            waiting.append((index, next(generator)))
        except StopIteration as done:
            results[index] = done.value
    while waiting:
        replies = yield [command for _, commands in waiting for command in commands]
        at, going = 0, waiting
        waiting = []
        for index, commands in going:
            part, at = replies[at : at + len(commands)], at + len(commands)
            try:
                waiting.append((index, steps[index].send(part)))
            except StopIteration as done:
                results[index] = done.value
    return results
