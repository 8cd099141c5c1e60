"""Events and the codec that turns them into stream payloads and back.

An event is a msgspec Struct with a stable tag (`class OrderPlaced(Event, tag="order.placed")`). The tag
travels in the payload and names the type on the wire, so classes can be renamed or moved between modules
without breaking events already in a stream (never derive it from the module path). Events evolve by
msgspec's rules: new fields get defaults, and an `array_like` event only grows at the end.

A payload is the event encoded as msgpack, stored in a single stream field (`d`). A whole batch is decoded
in one msgspec call by framing the payloads as one msgpack array; only when that fails is the batch decoded
event by event, so one bad payload costs its neighbours nothing but is still isolated.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Union, cast

import msgspec

from .errors import EventTooLarge, UnknownEventType

PAYLOAD_FIELD = b"d"
DEFAULT_MAX_EVENT_BYTES = (
    1024 * 1024
)  # bytes; larger payloads are refused on publish, dead-lettered on consume


class Event(msgspec.Struct, tag=False):
    """Base class of every event. Subclasses must pass a stable `tag=` of their own."""


@functools.cache
def tag_of(event_type: type[Event]) -> str:
    """The class's own tag; refuses a missing tag and one inherited from a parent class."""
    tag = event_type.__struct_config__.tag
    if not isinstance(tag, str):
        raise UnknownEventType(
            f"{event_type.__qualname__} has no tag: declare it as"
            f" class {event_type.__name__}(streamq.Event, tag='stable.name')"
        )
    for base in event_type.__mro__[1:]:
        if isinstance(base, type) and issubclass(base, Event) and base.__struct_config__.tag == tag:
            # msgspec lets a subclass inherit its parent's tag, which would decode as the parent.
            raise UnknownEventType(
                f"{event_type.__qualname__} inherits the tag {tag!r} of {base.__qualname__}:"
                " give every event class its own tag=..."
            )
    return tag


def registered_event_types() -> list[type[Event]]:
    """Every tagged Event subclass defined so far (intermediate untagged bases left out)."""
    found: list[type[Event]] = []
    pending: list[type[Event]] = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if isinstance(cls.__struct_config__.tag, str):
            found.append(cls)
    return found


class Encoder:
    """Encodes events to payload bytes, enforcing the size cap. Build once, reuse."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._encode = msgspec.msgpack.Encoder().encode

    def encode(self, event: Event) -> bytes:
        if not isinstance(event, Event):
            raise TypeError(f"expected a streamq.Event, got {type(event).__name__}")
        tag_of(type(event))  # cached: refuses untagged classes and inherited tags
        payload = self._encode(event)
        if len(payload) > self.max_event_bytes:
            raise EventTooLarge(len(payload), self.max_event_bytes)
        return payload

    def encode_many(self, events: Iterable[Event]) -> list[bytes]:
        encode = self.encode
        return [encode(event) for event in events]


class DecodeFailure(msgspec.Struct, frozen=True):
    """Why one payload could not become an event; it goes to the dead-letter stream."""

    kind: str  # "undecodable" | "oversized"
    error_type: str
    message: str


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


class Decoder:
    """Decodes payloads into the given event types (a tagged union), a whole batch per call."""

    def __init__(self, event_types: Sequence[type[Event]], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES):
        if not event_types:
            raise UnknownEventType("a consumer needs at least one event type to decode")
        for event_type in event_types:
            tag_of(event_type)
        self.event_types = tuple(event_types)
        self.max_event_bytes = max_event_bytes
        union: Any = self.event_types[0] if len(self.event_types) == 1 else Union[self.event_types]  # noqa: UP007
        self._one = msgspec.msgpack.Decoder(union)
        self._many = msgspec.msgpack.Decoder(list[union])
        # Splits a framed batch into its top-level values without building them (checks the boundaries).
        self._frames = msgspec.msgpack.Decoder(list[msgspec.Raw])

    def decode(self, payload: bytes) -> Event | DecodeFailure:
        if len(payload) > self.max_event_bytes:
            return DecodeFailure(
                "oversized", "EventTooLarge", f"payload is {len(payload)} bytes, over {self.max_event_bytes}"
            )
        try:
            event: Event = self._one.decode(payload)
        except Exception as exc:
            # Whatever the bytes, the answer is an event or a failure, never an exception out of the worker.
            # Besides DecodeError, msgspec raises UnicodeDecodeError for a string that is not UTF-8 (the tag
            # included: a few bytes crash any worker), RecursionError for nesting deeper than the
            # interpreter's limit (a kilobyte of it, even in a field no event declares), and an event's own
            # __post_init__ may raise anything.
            return DecodeFailure("undecodable", type(exc).__name__, str(exc))
        return event

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Event | DecodeFailure]:
        """One msgspec call for the whole batch when every payload is well formed."""
        limit = self.max_event_bytes
        # In C, not a Python generator per payload: this runs for every event on the consume hot path.
        if payloads and None not in payloads and max(map(len, payloads)) <= limit:  # type: ignore[arg-type]
            whole = cast("Sequence[bytes]", payloads)  # no None here
            framed = _array_header(len(whole)) + b"".join(whole)
            try:
                # Framed end to end, a payload that is not exactly one msgpack value (cut short, or with bytes
                # after it) would shift the boundaries after it: two bad payloads could decode as two events,
                # each made of bytes that are not its own. So check that every value ends where its payload
                # does before taking the one-call path.
                if list(map(len, self._frames.decode(framed))) == list(map(len, whole)):
                    events: list[Event | DecodeFailure] = self._many.decode(framed)
                    return events
            except Exception:
                pass  # fall through: decoding each payload alone records why each bad one failed
        return [self._decode_checked(p) for p in payloads]

    def _decode_checked(self, payload: bytes | None) -> Event | DecodeFailure:
        if payload is None:
            return DecodeFailure("undecodable", "MissingPayload", "entry has no 'd' field")
        return self.decode(payload)
