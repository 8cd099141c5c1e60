"""The retry record: an event on its way back for another try, with its history.

A retry is durable: the event (its raw payload and its history) is copied into the group's delayed set in
the same atomic step that acknowledges the entry, so neither a crash during the backoff nor trimming of the
stream can lose it. When due, it is appended to the group's retry stream (field `r`), which only that group
reads, and it comes back with its original id, its attempt count, its count of lost deliveries and its
headers. A replayed dead letter takes the same form, with its counts reset.
"""

from __future__ import annotations

import msgspec

RECORD_FIELD = b"r"


class RetryRecord(msgspec.Struct, array_like=True, frozen=True):
    """An event on its way back for another attempt; also the form a replayed dead letter takes."""

    origin_id: str  # id of the event in its stream: its identity across retries and replays
    failures: int  # attempts used so far: the handler raised, timed out or asked to retry
    first_failure_ms: int
    last_failure_ms: int
    error: str  # "ErrorType: message" of the last failure
    payload: bytes
    # Added later, so at the end with defaults (array_like records only grow at the end):
    lost_deliveries: int = 0  # deliveries that never settled (workers died), a budget of their own
    deferred_since_ms: int = 0  # when the event was first deferred; 0 if never
    headers: dict[str, str] = {}  # the event's headers (Message.headers)


_encode_record = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(RetryRecord).decode


def encode_record(record: RetryRecord) -> bytes:
    return _encode_record(record)


def decode_record(data: bytes) -> RetryRecord | None:
    try:
        return _decode_record(data)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # Besides DecodeError, msgspec raises UnicodeDecodeError (a ValueError) for a string that is not
        # UTF-8, and RecursionError for nesting deeper than Python's limit.
        return None
