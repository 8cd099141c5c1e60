"""Publishing events: one XADD per event, one round trip per chunk, from async or plain sync code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import redis

from . import _wire
from ._connection import RedisLike, async_client, sync_client
from .events import DEFAULT_MAX_EVENT_BYTES, Encoder, Event
from .keys import validate_name
from .settings import DEFAULT_CHUNK_SIZE, ProducerSettings


class _Options:
    """What Producer and SyncProducer share: their checked settings and the encoder built from them."""

    def __init__(
        self, max_event_bytes: int, maxlen: int | None, approximate_trim: bool, chunk_size: int
    ) -> None:
        # Checked here, so a bad value fails when the producer is built, not at its first publish.
        self.settings = ProducerSettings(
            max_event_bytes=max_event_bytes, maxlen=maxlen, approximate_trim=approximate_trim,
            chunk_size=chunk_size,
        )  # fmt: skip
        self.encoder = Encoder(max_event_bytes)
        self.approximate_trim = approximate_trim

    def plan(
        self, stream: str, events: Iterable[Event], chunk_size: int | None, maxlen: int | None
    ) -> tuple[list[list[bytes]], int | None]:
        """The payloads of one publish call cut into chunks, and its trim length; raises before any write."""
        validate_name("stream", stream)
        size, trim = self.settings.for_call(chunk_size, maxlen)
        # Encode everything first: an event that is too large or of the wrong type fails the call before
        # anything of it is written, instead of leaving half a batch published.
        payloads = self.encoder.encode_many(events)
        return [payloads[start : start + size] for start in range(0, len(payloads), size)], trim


class Producer:
    """Publishes events from async code.

    `maxlen` trims the stream to about that many entries on every append (XADD MAXLEN ~). Trimming ignores
    consumer groups: entries not yet delivered to a lagging group are dropped. Size it well above any lag.
    """

    def __init__(
        self,
        redis: RedisLike = None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        maxlen: int | None = None,
        approximate_trim: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._options = _Options(max_event_bytes, maxlen, approximate_trim, chunk_size)
        self.client, self._owns_client = async_client(redis)

    async def publish(self, stream: str, event: Event, *, maxlen: int | None = None) -> str:
        """Append one event; returns its entry id."""
        (entry_id,) = await self.publish_many(stream, [event], maxlen=maxlen)
        return entry_id

    async def publish_many(
        self,
        stream: str,
        events: Iterable[Event],
        *,
        chunk_size: int | None = None,
        maxlen: int | None = None,
    ) -> list[str]:
        """Append events in order, one round trip per chunk; returns their entry ids.

        If the connection fails midway, earlier chunks are published and the error is raised: publishing
        again may then duplicate those (delivery is at least once).
        """
        options = self._options
        chunks, trim = options.plan(stream, events, chunk_size, maxlen)
        ids: list[str] = []
        link = _wire.Link(self.client)
        try:
            for chunk in chunks:
                ids += await _wire.xadd_many(
                    link, stream, chunk, maxlen=trim, approximate=options.approximate_trim
                )
        finally:
            await link.close()
        return ids

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class SyncProducer:
    """Publishes events from plain synchronous code (a Django view, a script). Thread-safe."""

    def __init__(
        self,
        redis: str | redis.Redis | None = None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        maxlen: int | None = None,
        approximate_trim: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._options = _Options(max_event_bytes, maxlen, approximate_trim, chunk_size)
        self._owns_client = not isinstance(redis, _SyncRedis)
        self.client = sync_client(redis)

    def publish(self, stream: str, event: Event, *, maxlen: int | None = None) -> str:
        (entry_id,) = self.publish_many(stream, [event], maxlen=maxlen)
        return entry_id

    def publish_many(
        self,
        stream: str,
        events: Iterable[Event],
        *,
        chunk_size: int | None = None,
        maxlen: int | None = None,
    ) -> list[str]:
        options = self._options
        chunks, trim = options.plan(stream, events, chunk_size, maxlen)
        ids: list[str] = []
        for chunk in chunks:
            ids += _wire.xadd_many_sync(
                self.client, stream, chunk, maxlen=trim, approximate=options.approximate_trim
            )
        return ids

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_SyncRedis = redis.Redis


def encode_events(events: Sequence[Event], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[bytes]:
    """Payload bytes of events as a producer would write them (for tests and tools)."""
    return Encoder(max_event_bytes).encode_many(events)
