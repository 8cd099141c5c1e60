"""Turning a batch's outcomes into one settlement per stream key: acks, retry records, dead letters.

A retry is durable: the event (its raw payload and its history) is copied into the group's delayed set in
the same atomic step that acknowledges the entry, so neither a crash during the backoff nor trimming of the
stream can lose it. When due, it is appended to the group's retry stream, which only that group reads, and
it comes back with its original id and its attempt count.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Sequence
from typing import Any

import msgspec

from . import keys
from ._wire import Arg, SettlePlan
from .backoff import backoff_ms
from .batch import Message
from .settings import ConsumerSettings

RECORD_FIELD = b"r"
TRACEBACK_LIMIT = 4_000  # characters of traceback kept in a dead letter (the end, where the error is)
ERROR_LIMIT = 1_000  # characters of an error message kept


class RetryRecord(msgspec.Struct, array_like=True, frozen=True):
    """An event on its way back for another attempt; also the form a replayed dead letter takes."""

    origin_id: str  # id of the event in its stream: its identity across retries and replays
    failures: int  # attempts used so far
    first_failure_ms: int
    last_failure_ms: int
    error: str  # "ErrorType: message" of the last failure
    payload: bytes


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


def describe(error: BaseException | None) -> tuple[str, str, str]:
    """(type, message, truncated traceback) of an error, for retry records and dead letters."""
    if error is None:
        return "", "", ""
    trace = "".join(tb.format_exception(type(error), error, error.__traceback__))
    return type(error).__name__, str(error)[:ERROR_LIMIT], trace[-TRACEBACK_LIMIT:]


class _KeyPlan:
    __slots__ = ("acks", "dead", "first", "last", "retries")

    def __init__(self, first: bytes, last: bytes) -> None:
        self.first = first
        self.last = last
        self.acks: list[bytes] = []
        self.retries: list[tuple[bytes, int, bytes]] = []
        self.dead: list[tuple[bytes, list[Arg]]] = []


class Settlement:
    """Collects what to do with each entry of one fetch, then yields one SettlePlan per stream key."""

    def __init__(
        self, settings: ConsumerSettings, consumer: str, bounds: dict[str, tuple[bytes, bytes]]
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self._plans = {key: _KeyPlan(first, last) for key, (first, last) in bounds.items()}
        self._built: list[SettlePlan] | None = None
        self.counts = {"acked": 0, "retried": 0, "dead": 0}

    def ack(self, message: Message[Any]) -> None:
        self._plans[message.key].acks.append(message.entry_id)
        self.counts["acked"] += 1

    def ack_all(self, messages: Sequence[Message[Any]]) -> None:
        """ack() for every message, in one step per stream key."""
        if len(self._plans) == 1:
            (plan,) = self._plans.values()
            plan.acks.extend([m.entry_id for m in messages])
        else:
            for message in messages:
                self._plans[message.key].acks.append(message.entry_id)
        self.counts["acked"] += len(messages)

    def fail(
        self,
        message: Message[Any],
        now_ms: int,
        error: BaseException | None,
        *,
        delay_ms: int | None = None,
        reason: str = "",
    ) -> None:
        """A failed attempt: retry after a backoff, or dead-letter once max_attempts is used."""
        error_type, error_text, trace = describe(error)
        if message.attempt >= self.settings.max_attempts:
            why = f"failed {message.attempt} of {self.settings.max_attempts} attempts"
            self.dead(
                message,
                now_ms,
                "max_attempts",
                why if not reason else f"{why}: {reason}",
                error_type=error_type,
                error_text=error_text,
                trace=trace,
            )
            return
        if delay_ms is None:
            delay_ms = backoff_ms(
                message.attempt, base_ms=self.settings.retry_base_ms, max_ms=self.settings.retry_max_ms
            )
        record = RetryRecord(
            origin_id=message.id,
            failures=message.attempt,
            first_failure_ms=message.first_failure_ms or now_ms,
            last_failure_ms=now_ms,
            error=f"{error_type}: {error_text}" if error_type else reason,
            payload=message.payload or b"",
        )
        self._plans[message.key].retries.append((message.entry_id, delay_ms, encode_record(record)))
        self.counts["retried"] += 1

    def dead(
        self,
        message: Message[Any],
        now_ms: int,
        reason: str,
        detail: str,
        *,
        error_type: str = "",
        error_text: str = "",
        trace: str = "",
        raw_fields: list[bytes] | None = None,
    ) -> None:
        fields: list[Arg] = [
            b"stream", self.settings.stream,
            b"id", message.id,
            b"group", self.settings.group,
            b"consumer", self.consumer,
            b"attempts", message.attempt,
            b"reason", reason,
            b"detail", detail[:ERROR_LIMIT],
            b"error_type", error_type,
            b"error", error_text,
            b"traceback", trace,
            b"first_failure_ms", message.first_failure_ms or now_ms,
            b"last_failure_ms", now_ms,
        ]  # fmt: skip
        if message.payload is not None:
            fields += [b"d", message.payload]
        elif raw_fields is not None:
            # No payload field at all: keep whatever the entry held, so nothing of it is lost.
            fields += [b"raw", msgspec.msgpack.encode(raw_fields)]
        self._plans[message.key].dead.append((message.entry_id, fields))
        self.counts["dead"] += 1

    def min_retry_delay_ms(self) -> int:
        """The shortest backoff among the retries scheduled here (0 if none)."""
        return min((delay for p in self._plans.values() for _, delay, _ in p.retries), default=0)

    def plans(self) -> list[SettlePlan]:
        """One plan per stream key with anything to settle; built once, when the outcomes are all in."""
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self) -> list[SettlePlan]:
        stream, group = self.settings.stream, self.settings.group
        out = []
        for key, plan in self._plans.items():
            if not (plan.acks or plan.retries or plan.dead):
                continue
            out.append(
                SettlePlan(
                    key=key,
                    delayed_key=keys.delayed_key(stream, group),
                    dlq_key=keys.dlq_key(stream),
                    stats_key=keys.stats_key(stream, group),
                    delete_after_ack=key != stream,
                    min_id=plan.first,
                    max_id=plan.last,
                    acks=plan.acks,
                    retries=plan.retries,
                    dead=plan.dead,
                )
            )
        return out
