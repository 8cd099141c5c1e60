"""The dead-letter stream: what it records, and listing, showing, replaying and purging it.

Each stream has one dead-letter stream (keys.dlq_key), shared by its groups; every entry names its group.
Replay sends an entry back to that group only (through the group's retry stream, with its attempts reset)
and removes it from the dead-letter stream in the same atomic step.

DeadLetters takes whatever client the application already has, including one built with
decode_responses=True. Dead letters are read undecoded through it anyway: their payloads are arbitrary bytes
(a client that decodes would fail on them, or replace them and lose the byte-for-byte copy), and the field
names are then bytes whichever client was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from . import _wire, keys
from ._worker.records import RetryRecord, encode_record
from .errors import DeadLetterNotFound


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-lettered event, as an operator sees it."""

    dlq_id: str  # id of the entry in the dead-letter stream
    stream: str
    id: str  # the event's id in its stream
    group: str
    consumer: str
    attempts: int
    reason: str  # max_attempts | rejected | undecodable | oversized
    detail: str
    error_type: str
    error: str
    traceback: str
    first_failure_ms: int
    last_failure_ms: int
    payload: bytes | None  # the raw payload, byte for byte
    raw_fields: bytes | None = None  # msgpack of the entry's fields, when it had no payload field at all

    def to_dict(self, *, with_payload: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.structs.asdict(self)
        data["payload"] = self.payload.hex() if self.payload is not None and with_payload else None
        data["payload_size"] = len(self.payload) if self.payload is not None else 0
        data["raw_fields"] = self.raw_fields.hex() if self.raw_fields is not None else None
        data["event"] = self.event_preview()
        return data

    def event_preview(self) -> Any:
        """The payload decoded as plain msgpack (no event types needed), or None if it is not msgpack."""
        if self.payload is None:
            return None
        try:
            return msgspec.to_builtins(msgspec.msgpack.decode(self.payload), enc_hook=repr)
        except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
            # ValueError: msgspec's UnicodeDecodeError for a string that is not UTF-8; RecursionError:
            # nesting deeper than Python's limit.
            return None


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    value = fields.get(name)
    return value.decode(errors="replace") if value is not None else ""


def _int(fields: dict[bytes, bytes], name: bytes) -> int:
    try:
        return int(fields.get(name, b"0"))
    except ValueError:
        return 0


def parse_entry(entry_id: bytes | str, flat: Sequence[bytes] | dict[bytes, bytes]) -> DeadLetter:
    """One dead-letter entry as read undecoded (field names and values as bytes)."""
    fields = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
    return DeadLetter(
        dlq_id=_wire.decode_id(entry_id),
        stream=_text(fields, b"stream"),
        id=_text(fields, b"id"),
        group=_text(fields, b"group"),
        consumer=_text(fields, b"consumer"),
        attempts=_int(fields, b"attempts"),
        reason=_text(fields, b"reason"),
        detail=_text(fields, b"detail"),
        error_type=_text(fields, b"error_type"),
        error=_text(fields, b"error"),
        traceback=_text(fields, b"traceback"),
        first_failure_ms=_int(fields, b"first_failure_ms"),
        last_failure_ms=_int(fields, b"last_failure_ms"),
        payload=fields.get(b"d"),
        raw_fields=fields.get(b"raw"),
    )


class DeadLetters:
    """Operator's API over the dead-letter streams (the CLI's `streamq dlq` uses it)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def _xrange(self, key: str, start: str, end: str, count: int | None = None) -> Any:
        """XRANGE with the reply left as bytes, whether or not the client decodes responses."""
        args: list[str | int] = [key, start, end]
        if count is not None:
            args += ["COUNT", count]
        # NEVER_DECODE is redis-py's per-command switch to skip decoding (its own DUMP uses it).
        return await self.client.execute_command("XRANGE", *args, **{NEVER_DECODE: []})  # type: ignore[no-untyped-call]

    async def count(self, stream: str) -> int:
        return int(await self.client.xlen(keys.dlq_key(keys.validate_name("stream", stream))))

    async def list(
        self, stream: str, *, group: str | None = None, start: str = "-", count: int = 100
    ) -> list[DeadLetter]:
        """Oldest first, from `start` (an id, inclusive), at most `count`, optionally one group's only."""
        key = keys.dlq_key(keys.validate_name("stream", stream))
        found: list[DeadLetter] = []
        cursor = start
        while len(found) < count:
            rows = await self._xrange(key, cursor, "+", count=max(count, 100))
            if not rows:
                break
            for entry_id, fields in rows:
                letter = parse_entry(entry_id, fields)
                if group is None or letter.group == group:
                    found.append(letter)
            cursor = "(" + _wire.decode_id(rows[-1][0])
        return found[:count]

    async def show(self, stream: str, dlq_id: str) -> DeadLetter:
        rows = await self._xrange(keys.dlq_key(keys.validate_name("stream", stream)), dlq_id, dlq_id)
        if not rows:
            raise DeadLetterNotFound(f"no dead letter {dlq_id} for stream {stream!r}")
        return parse_entry(rows[0][0], rows[0][1])

    async def replay(self, stream: str, ids: Sequence[str] | None = None, *, group: str | None = None) -> int:
        """Send dead letters back to their group for a fresh set of attempts; returns how many moved.

        ids=None replays every dead letter of the stream (of `group` only, if given). Entries without a
        payload field (raw entries streamq could not read at all) cannot be replayed and stay.
        """
        letters = (
            [await self.show(stream, i) for i in ids]
            if ids is not None
            else await self.list(stream, group=group, count=10**9)
        )
        moved = 0
        dlq = keys.dlq_key(stream)
        ensured: set[str] = set()
        for letter in letters:
            if letter.payload is None or (group is not None and letter.group != group):
                continue
            retry = keys.retry_key(stream, letter.group)
            if letter.group not in ensured:
                await _wire.ensure_group(self.client, retry, letter.group)
                ensured.add(letter.group)
            record = RetryRecord(
                origin_id=letter.id,
                failures=0,
                first_failure_ms=0,
                last_failure_ms=0,
                error="",
                payload=letter.payload,
            )
            if await _wire.replay(self.client, dlq, retry, letter.dlq_id, encode_record(record)) is not None:
                moved += 1
        return moved

    async def purge(self, stream: str, ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters, or all of the stream's; returns how many were deleted."""
        key = keys.dlq_key(keys.validate_name("stream", stream))
        if ids is None:
            size = int(await self.client.xlen(key))
            await self.client.delete(key)
            return size
        return int(await self.client.xdel(key, *ids)) if ids else 0
