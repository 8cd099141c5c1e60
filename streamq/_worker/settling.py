"""Settling: turning a batch's outcomes into one settlement plan per stream key.

Acks, retry records (a failed attempt), deferrals (not yet: no attempt used) and dead letters. The plan is
data (`_wire.SettlePlan`); sending it is one round trip (`_wire.settle` / `pack_settle`).
Retries and deferrals carry the event back as a RetryRecord (records.py), headers included; a dead letter
keeps the event's headers in its `headers` field (msgpack of a str -> str map), when it has any.

With tracing on, the batch's process span (tracing.Process, in `trace`) is told each outcome but an ack.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .. import keys
from .._backoff import backoff_ms
from .._wire import Arg, SettlePlan
from ..batch import Message, Outcome
from ..errors import Reject
from ..settings import ConsumerSettings
from .records import RetryRecord, encode_record

if TYPE_CHECKING:
    from ..tracing import Process

MIN_DEFER_MS = 100  # the shortest deferral: Defer(0) waits this long
TRACEBACK_LIMIT = 4_000  # characters of traceback kept in a dead letter (the end, where the error is)
ERROR_LIMIT = 1_000  # characters of an error message kept


def describe(error: BaseException | None) -> tuple[str, str, str]:
    """(type, message, truncated traceback) of an error, for retry records and dead letters."""
    if error is None:
        return "", "", ""
    trace = "".join(tb.format_exception(type(error), error, error.__traceback__))
    return type(error).__name__, str(error)[:ERROR_LIMIT], trace[-TRACEBACK_LIMIT:]


class _KeyPlan:
    __slots__ = ("acks", "dead", "defers", "first", "last", "retries")

    def __init__(self, first: bytes, last: bytes) -> None:
        self.first = first
        self.last = last
        self.acks: list[bytes] = []
        self.retries: list[tuple[bytes, int, bytes]] = []
        self.defers: list[tuple[bytes, int, bytes]] = []
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
        self.counts = {"acked": 0, "retried": 0, "deferred": 0, "dead": 0, "held_back": 0}
        self.trace: Process | None = None  # the batch's process span, when tracing

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
            lost_deliveries=message.lost_deliveries,
            deferred_since_ms=message.deferred_since_ms,
            headers=message._headers or {},
        )
        self._plans[message.key].retries.append((message.entry_id, delay_ms, encode_record(record)))
        self.counts["retried"] += 1
        if self.trace is not None:
            self.trace.settled(message, "retry", error_type)

    def defer(self, message: Message[Any], now_ms: int, delay_ms: int, reason: str) -> None:
        """Not yet: back after delay_ms with no attempt used, or dead-lettered once deferred too long.

        The delay is cut so that the event is back when max_defer_ms is over at the latest (deferred again
        then, it is dead-lettered): a single long deferral (Defer(10**12)) cannot outlive the bound unseen.
        """
        since_ms = message.deferred_since_ms or now_ms
        max_defer_ms = self.settings.max_defer_ms
        if now_ms - since_ms >= max_defer_ms:
            self.dead(
                message,
                now_ms,
                "deferred_too_long",
                f"deferred for {now_ms - since_ms} ms, over max_defer_ms={max_defer_ms}"
                + (f": {reason}" if reason else ""),
                error_type="Defer",
                error_text=reason,
            )
            return
        # At least MIN_DEFER_MS: an event deferred with delay 0 again and again would otherwise keep a
        # worker busy for the whole of max_defer_ms.
        delay_ms = min(max(delay_ms, MIN_DEFER_MS), since_ms + max_defer_ms - now_ms)
        record = RetryRecord(
            origin_id=message.id,
            failures=message.attempt - 1,
            first_failure_ms=message.first_failure_ms,
            last_failure_ms=now_ms,
            error=message.previous_error,
            payload=message.payload or b"",
            lost_deliveries=message.lost_deliveries,
            deferred_since_ms=since_ms,
            headers=message._headers or {},
        )
        self._plans[message.key].defers.append((message.entry_id, delay_ms, encode_record(record)))
        self.counts["deferred"] += 1
        if self.trace is not None:
            self.trace.settled(message, "defer")

    def apply(self, message: Message[Any], outcome: Outcome, now_ms: int) -> None:
        """Settle `message` as `outcome` says (see streamq.batch.resolve_outcome for where it comes from)."""
        kind = outcome.kind
        if kind == "ack":
            self.ack(message)
        elif kind == "retry":
            self.fail(message, now_ms, outcome.error, delay_ms=outcome.delay_ms, reason=outcome.reason)
        elif kind == "fail":
            self.fail(message, now_ms, outcome.error)
        elif kind == "defer":
            self.defer(message, now_ms, outcome.delay_ms or 0, outcome.reason)
        else:
            error = outcome.error
            self.dead(
                message,
                now_ms,
                "rejected",
                outcome.reason,
                error_type=type(error).__name__ if error is not None else "Reject",
                error_text=str(error) if error is not None else outcome.reason,
                trace=describe(error)[2] if error is not None and not isinstance(error, Reject) else "",
            )

    def again_in_place(self, message: Message[Any], outcome: Outcome, now_ms: int) -> int | None:
        """For an ordered partition, which retries a failed event where it is: how long to wait before
        handling `message` again (its attempt counted, or its deferral), or None when it has used its
        attempts (or deferred too long) and was dead-lettered here instead."""
        if outcome.kind == "defer":
            since_ms = message.deferred_since_ms or now_ms
            if now_ms - since_ms >= self.settings.max_defer_ms:
                self.defer(message, now_ms, 0, outcome.reason)  # dead-letters it: deferred too long
                return None
            message.deferred_since_ms = since_ms
            return min(
                max(outcome.delay_ms or 0, MIN_DEFER_MS), since_ms + self.settings.max_defer_ms - now_ms
            )
        if message.attempt >= self.settings.max_attempts:
            self.apply(message, outcome, now_ms)  # dead-letters it: max_attempts
            return None
        error_type, error_text, _ = describe(outcome.error)
        message.previous_error = f"{error_type}: {error_text}" if error_type else outcome.reason
        message.first_failure_ms = message.first_failure_ms or now_ms
        if outcome.delay_ms is not None:
            return outcome.delay_ms
        return backoff_ms(
            message.attempt, base_ms=self.settings.retry_base_ms, max_ms=self.settings.retry_max_ms
        )

    def put_back_in_order(
        self, messages: list[Message[Any]], outcome: Outcome, now_ms: int, delay_ms: int
    ) -> None:
        """Stopping while an ordered partition waits to retry messages[0]: it goes back as a retry (or a
        deferral) due after delay_ms, and the others right behind it, one ms apart, in their order, so the
        partition's next owner handles them first (its reads wait while any retry of the group waits)."""
        head, *behind = messages
        retries = self._plans[head.key].retries
        waiting = len(retries)
        if outcome.kind == "defer":
            self.defer(head, now_ms, delay_ms, outcome.reason)
        else:
            self.fail(head, now_ms, outcome.error, delay_ms=delay_ms, reason=outcome.reason)
        due_ms = retries[-1][1] if len(retries) > waiting else delay_ms
        for message in behind:
            due_ms += 1
            self.hold_back(message, now_ms, due_ms)

    def hold_back(self, message: Message[Any], now_ms: int, delay_ms: int) -> None:
        """Back after delay_ms, behind the failed message before it; no attempt used, and not a deferral
        (max_defer_ms does not run for it)."""
        record = RetryRecord(
            origin_id=message.id,
            failures=message.attempt - 1,
            first_failure_ms=message.first_failure_ms,
            last_failure_ms=message.first_failure_ms or now_ms,
            error=message.previous_error,
            payload=message.payload or b"",
            lost_deliveries=message.lost_deliveries,
            deferred_since_ms=message.deferred_since_ms,
            headers=message._headers or {},
        )
        self._plans[message.key].retries.append((message.entry_id, delay_ms, encode_record(record)))
        self.counts["held_back"] += 1
        if self.trace is not None:
            self.trace.settled(message, "held_back")

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
            b"lost_deliveries", message.lost_deliveries,
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
        if message._headers:
            fields += [b"headers", msgspec.msgpack.encode(message._headers)]
        self._plans[message.key].dead.append((message.entry_id, fields))
        self.counts["dead"] += 1
        if self.trace is not None:
            self.trace.settled(message, "dead_letter", error_type)

    def last_id(self, key: str) -> bytes | None:
        """The last id read on `key` in the fetch this settles (None: nothing from that key)."""
        plan = self._plans.get(key)
        return plan.last if plan is not None else None

    def min_retry_delay_ms(self) -> int:
        """The shortest delay among the retries and deferrals scheduled here (0 if none)."""
        return min(
            (delay for p in self._plans.values() for _, delay, _ in (*p.retries, *p.defers)), default=0
        )

    def plans(self) -> list[SettlePlan]:
        """One plan per stream key with anything to settle; built once, when the outcomes are all in."""
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self) -> list[SettlePlan]:
        stream, group = self.settings.stream, self.settings.group
        out = []
        for key, plan in self._plans.items():
            if not (plan.acks or plan.retries or plan.dead or plan.defers):
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
                    defers=plan.defers,
                )
            )
        return out
