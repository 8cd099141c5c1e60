"""Decoding: entries read from Redis become Messages with their events, or rejections.

An entry of the stream carries its event in the `d` field; an entry of the group's retry stream carries a
RetryRecord (the event's payload and its history). The payloads of a whole read are decoded in one msgspec
pass (events.Decoder). What cannot become a message for the handler is a rejection, dead-lettered by the
settlement: no payload, a payload that does not decode or is too large, or an event whose deliveries never
settled too many times (max_deliveries: it keeps killing the workers that take it).

Headers: a stream entry's fields besides `d` are the message's headers (message.headers), whoever wrote
them: publish(headers=...), or another tool's `XADD s * d <payload> trace_id abc`. An entry with only `d`
(the common case) is recognised by its length and costs nothing more. Names and values that are not UTF-8
are decoded with errors="replace". An entry holding more than MAX_READ_HEADERS headers or
MAX_READ_HEADER_BYTES bytes of them (only a foreign writer can do that) keeps those that fit, in order; the
header `streamq-truncated` then holds how many were left out, and a warning is logged. A retry carries its
headers in its RetryRecord.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import structlog

from .. import _wire
from ..batch import Message
from ..events import PAYLOAD_FIELD, DecodeFailure, Decoder
from ..settings import MAX_HEADER_BYTES, MAX_HEADERS, MAX_TRACE_HEADER_BYTES, ConsumerSettings
from .reclaiming import Deliveries
from .records import RECORD_FIELD, decode_record

# What a consumer keeps of an entry's headers: a producer's own bounds plus the trace context it may add.
MAX_READ_HEADERS = MAX_HEADERS + 8
MAX_READ_HEADER_BYTES = MAX_HEADER_BYTES + MAX_TRACE_HEADER_BYTES
TRUNCATED_HEADER = "streamq-truncated"

log = structlog.get_logger("streamq.consumer")


class Rejection(NamedTuple):
    """A message that goes to the dead letters without reaching the handler, and why."""

    message: Message[Any]
    reason: str  # undecodable | oversized | max_deliveries
    detail: str
    error_type: str = ""
    error_text: str = ""
    raw_fields: list[bytes] | None = None  # the entry's fields, when it had no payload to keep


class Decoded(NamedTuple):
    """One read, decoded: messages for the handler, in stream order, and rejections."""

    messages: list[Message[Any]]
    rejected: list[Rejection]
    bounds: dict[str, tuple[bytes, bytes]]  # key -> (first id, last id) of what was read there
    entries: int  # entries read, messages and rejections together
    oversized: int  # payloads over max_event_bytes among them


def decode(
    batches: Sequence[_wire.StreamBatch],
    stream: str,
    decoder: Decoder,
    settings: ConsumerSettings,
    deliveries: Deliveries | None = None,
) -> Decoded:
    """Turn the entries of one read (or one reclaim) into messages and rejections."""
    candidates: list[Message[Any]] = []
    rejected: list[Rejection] = []
    for batch in batches:
        counts = deliveries.get(batch.key, {}) if deliveries else {}
        if batch.key == stream:
            _stream_messages(batch, counts, candidates, rejected)
        else:
            _retry_messages(batch, counts, candidates, rejected)
    decoded = decoder.decode_batch([m.payload for m in candidates])
    max_lost = settings.max_deliveries
    # Fresh entries of the stream have lost no delivery: only reclaimed entries and retries may have.
    may_be_lost = bool(deliveries) or any(b.key != stream for b in batches)
    if not may_be_lost and DecodeFailure not in set(map(type, decoded)):
        for message, event in zip(candidates, decoded, strict=True):  # the hot path: nothing to reject
            message.event = event
        return Decoded(candidates, rejected, _bounds(batches), sum(len(b.ids) for b in batches), 0)
    ready: list[Message[Any]] = []
    oversized = 0
    for message, event in zip(candidates, decoded, strict=True):
        if isinstance(event, DecodeFailure):
            oversized += event.kind == "oversized"
            rejected.append(
                Rejection(message, event.kind, event.message, event.error_type, event.message)
            )
        elif message.lost_deliveries >= max_lost:
            detail = (
                f"delivered {message.lost_deliveries} times without a result (max_deliveries={max_lost}):"
                " the workers that took it died or lost their lease while holding it"
            )
            rejected.append(
                Rejection(message, "max_deliveries", detail, "WorkerLost", message.previous_error)
            )
        else:
            message.event = event
            ready.append(message)
    return Decoded(ready, rejected, _bounds(batches), sum(len(b.ids) for b in batches), oversized)


def _bounds(batches: Sequence[_wire.StreamBatch]) -> dict[str, tuple[bytes, bytes]]:
    return {b.key: (b.ids[0], b.ids[-1]) for b in batches if b.ids}


def _stream_messages(
    batch: _wire.StreamBatch,
    counts: dict[bytes, int],
    out: list[Message[Any]],
    rejected: list[Rejection],
) -> None:
    """Entries of the stream itself: the hot path, one pass with little per event."""
    key = batch.key
    for entry_id, fields in zip(batch.ids, batch.fields, strict=True):
        if fields is not None and len(fields) == 2 and fields[0] == PAYLOAD_FIELD:
            payload: bytes | None = fields[1]  # the one field producers write: no search needed
            message: Message[Any] = Message(0, key, entry_id, entry_id.decode(), 1, payload)
        else:
            payload = _wire.payload_of(fields, PAYLOAD_FIELD)
            message = Message(
                0, key, entry_id, entry_id.decode(), 1, payload, headers=headers_of(fields, key, entry_id)
            )
        if counts:
            # The delivery counter counts this delivery too: those before it never settled.
            message.lost_deliveries = counts.get(entry_id, 1) - 1
        if payload is None:
            rejected.append(
                Rejection(message, "undecodable", "entry has no 'd' payload field", raw_fields=fields or [])
            )
        else:
            out.append(message)


def _retry_messages(
    batch: _wire.StreamBatch,
    counts: dict[bytes, int],
    out: list[Message[Any]],
    rejected: list[Rejection],
) -> None:
    """Entries of the group's retry stream: a RetryRecord each, with the event and its history."""
    for entry_id, fields in zip(batch.ids, batch.fields, strict=True):
        lost_here = counts.get(entry_id, 1) - 1
        raw = _wire.payload_of(fields, RECORD_FIELD)
        record = decode_record(raw) if raw is not None else None
        if record is None:
            message: Message[Any] = Message(
                0, batch.key, entry_id, _wire.decode_id(entry_id), 1, None, lost_deliveries=lost_here
            )
            rejected.append(
                Rejection(
                    message, "undecodable", "retry entry without a valid record", raw_fields=fields or []
                )
            )
            continue
        out.append(
            Message(
                0,
                batch.key,
                entry_id,
                record.origin_id,
                record.failures + 1,
                record.payload,
                record.first_failure_ms,
                record.error,
                lost_deliveries=record.lost_deliveries + lost_here,
                deferred_since_ms=record.deferred_since_ms,
                headers=dict(record.headers) if record.headers else None,
            )
        )


def headers_of(fields: list[bytes] | None, key: str, entry_id: bytes) -> dict[str, str] | None:
    """An entry's fields besides `d`, as text, within MAX_READ_HEADERS and MAX_READ_HEADER_BYTES; None if
    there are none."""
    if not fields or len(fields) <= 2:
        return None
    headers: dict[str, str] = {}
    size = 0
    left_out = 0
    for i in range(0, len(fields) - 1, 2):
        name, value = fields[i], fields[i + 1]
        if name == PAYLOAD_FIELD:
            continue
        size += len(name) + len(value)
        if left_out or len(headers) >= MAX_READ_HEADERS or size > MAX_READ_HEADER_BYTES:
            left_out += 1
            continue
        headers[name.decode(errors="replace")] = value.decode(errors="replace")
    if left_out:
        headers[TRUNCATED_HEADER] = str(left_out)
        log.warning(
            "entry headers over the bounds: the first ones kept",
            key=key, entry_id=_wire.decode_id(entry_id), kept=len(headers) - 1, left_out=left_out,
            max_headers=MAX_READ_HEADERS, max_bytes=MAX_READ_HEADER_BYTES,
        )  # fmt: skip
    return headers or None
