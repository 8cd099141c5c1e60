"""The dead-letter browser's reads: pages filtered by group and reason, and a payload made readable.

A page filtered by reason reads the dead-letter stream a page at a time (DeadLetters.page, which filters
by group in the same pass) and keeps the letters of that reason, up to SCAN_BUDGET entries per request:
past that it stops and offers the next page from where it stopped, so a rare reason in a long
dead-letter stream costs bounded work per click.

A payload is shown decoded as its event class when that class is importable here (defined in a module
this process has imported: the user's service, or `streamq dashboard --import MODULE`), else as plain
msgpack, else as raw bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..deadletter import DeadLetter, DeadLetters
from ..events import Event, registered_event_types

PAGE_SIZE = 50  # dead letters per page of the browser
SCAN_BUDGET = 2_000  # entries read at most per request when filtering by reason
REASONS = ("max_attempts", "rejected", "undecodable", "oversized", "deferred_too_long")


class LetterPage(msgspec.Struct, kw_only=True):
    letters: list[DeadLetter]
    total: int  # dead letters of the stream, every group and reason
    scanned: int
    next_after: str | None


async def letter_page(
    target: Any, stream: str, *, group: str | None, reason: str | None, after: str | None
) -> LetterPage:
    dead = DeadLetters(target)
    try:
        if reason is None:
            page = await dead.page(stream, group=group, after=after, limit=PAGE_SIZE)
            return LetterPage(
                letters=page.letters, total=page.total, scanned=page.scanned, next_after=page.next_after
            )
        found: list[DeadLetter] = []
        scanned, total, cursor = 0, 0, after
        while True:
            page = await dead.page(stream, group=group, after=cursor, limit=200)
            total, scanned = page.total, scanned + page.scanned
            for letter in page.letters:
                if letter.reason != reason:
                    continue
                if len(found) == PAGE_SIZE:
                    return LetterPage(
                        letters=found, total=total, scanned=scanned, next_after=found[-1].dlq_id
                    )
                found.append(letter)
            if page.next_after is None:
                return LetterPage(letters=found, total=total, scanned=scanned, next_after=None)
            cursor = page.next_after
            if scanned >= SCAN_BUDGET:
                return LetterPage(letters=found, total=total, scanned=scanned, next_after=cursor)
    finally:
        await dead.aclose()


async def show_letter(target: Any, stream: str, ref: str) -> DeadLetter:
    dead = DeadLetters(target)
    try:
        return await dead.show(stream, ref)
    finally:
        await dead.aclose()


class Decoded(msgspec.Struct, kw_only=True):
    kind: str  # "event": decoded as `event_type`; "msgpack": plain msgpack; "raw": bytes only; "none"
    event_type: str = ""  # module.QualName of the class it decoded as
    value: Any = None  # builtins (dicts, lists, str, numbers) to show


def _tag_of(cls: type[Event]) -> tuple[str | None, Any]:
    config = cls.__struct_config__
    return config.tag_field, config.tag


def decode_payload(payload: bytes | None, event_types: Sequence[type[Event]] | None = None) -> Decoded:
    """The payload as its event class (a tagged Event subclass whose tag it carries), else as plain
    msgpack, else raw."""
    if payload is None:
        return Decoded(kind="none")
    try:
        plain = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return Decoded(kind="raw")
    candidates = list(event_types) if event_types is not None else registered_event_types()
    for cls in candidates:
        field_name, tag = _tag_of(cls)
        if isinstance(plain, dict):
            carried = plain.get(field_name)
        elif isinstance(plain, list) and plain:
            carried = plain[0]
        else:
            continue
        if carried != tag:
            continue
        try:
            event = msgspec.msgpack.decode(payload, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError, RecursionError):
            continue
        value = msgspec.to_builtins(event, enc_hook=repr, builtin_types=None)
        return Decoded(kind="event", event_type=f"{cls.__module__}.{cls.__qualname__}", value=value)
    try:
        return Decoded(kind="msgpack", value=msgspec.to_builtins(plain, enc_hook=repr))
    except (TypeError, ValueError, RecursionError):
        return Decoded(kind="raw")
