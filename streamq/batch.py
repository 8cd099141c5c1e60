"""What a handler receives: a Batch of Messages, and the per-event outcomes it may choose.

A handler that returns normally acknowledges every message it did not settle otherwise. One that raises
fails every message it did not settle otherwise: each is retried after a backoff, or dead-lettered once it
has used its attempts (`Retry`, `Defer` and `Reject` raised choose their own outcome instead). Inside the
batch, single messages can be retried, deferred or dead-lettered explicitly.

`resolve_outcome` is the one rule that turns "what the handler did" into an outcome: the worker, the
per-event handler shapes and `streamq.testing.outcomes` all call it, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar

from .errors import Defer, Reject, Retry
from .events import Event

E = TypeVar("E", bound=Event)

OutcomeKind = Literal["ack", "retry", "defer", "fail", "dead"]


class Message(Generic[E]):
    """One event as delivered: `id` is its id in the stream, kept across retries and replays."""

    __slots__ = (
        "_headers", "_index", "attempt", "deferred_since_ms", "entry_id", "event", "first_failure_ms",
        "id", "key", "lost_deliveries", "payload", "previous_error",
    )  # fmt: skip

    def __init__(
        self,
        index: int,
        key: str,
        entry_id: bytes,
        origin_id: str,
        attempt: int,
        payload: bytes | None,
        first_failure_ms: int = 0,
        previous_error: str = "",
        *,
        lost_deliveries: int = 0,
        deferred_since_ms: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._index = index
        self.key = key  # the stream key this delivery came from (the stream, or its group's retry stream)
        self.entry_id = entry_id
        self.id = origin_id
        # 1 on the first attempt; failures (the handler raised, timed out or asked to retry) add one each.
        # Deliveries that never settled (a worker died) do not: they count in `lost_deliveries`.
        self.attempt = attempt
        # Deliveries of this event before this one that never settled: its worker died or lost its lease.
        self.lost_deliveries = lost_deliveries
        self.payload = payload
        self.event: E = None  # type: ignore[assignment]  # set once decoded; never None inside a handler
        self.first_failure_ms = first_failure_ms
        self.previous_error = previous_error
        self.deferred_since_ms = deferred_since_ms  # when it was first deferred; 0 if never
        self._headers = headers  # None: the entry had none (its dict is made when first asked for)

    @property
    def headers(self) -> dict[str, str]:
        """The event's headers: what publish(headers=...) gave it (and the trace context a traced producer
        added), or the fields besides `d` of an entry another tool wrote; kept across retries, dead letters
        and replays. Bytes that are not UTF-8 were decoded with errors="replace". A raw entry's headers over
        the consumer's bounds are cut, and `streamq-truncated` then says how many were left out."""
        if self._headers is None:
            self._headers = {}
        return self._headers

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, attempt={self.attempt}, event={self.event!r})"


class Outcome:
    """What settles a message.

    ack; retry (a failed attempt, after delay_ms or the backoff when None); defer (not yet, after delay_ms,
    no attempt used); fail (a failed attempt with its error, after the backoff); dead (dead-letter now).
    """

    __slots__ = ("delay_ms", "error", "kind", "reason")

    def __init__(
        self,
        kind: OutcomeKind,
        *,
        delay_ms: int | None = None,
        reason: str = "",
        error: BaseException | None = None,
    ) -> None:
        self.kind = kind
        self.delay_ms = delay_ms
        self.reason = reason
        self.error = error

    def __repr__(self) -> str:
        return f"Outcome({self.kind!r}, delay_ms={self.delay_ms!r}, reason={self.reason!r})"


ACK = Outcome("ack")


def outcome_of_error(error: BaseException) -> Outcome:
    """The outcome a handler chose by raising `error`."""
    if isinstance(error, Defer):
        return Outcome("defer", delay_ms=error.delay_ms, reason=error.reason, error=error)
    if isinstance(error, Retry):
        return Outcome("retry", delay_ms=error.delay_ms, reason=error.reason, error=error)
    if isinstance(error, Reject):
        return Outcome("dead", reason=error.reason, error=error)
    return Outcome("fail", reason=str(error), error=error)


def resolve_outcome(chosen: Outcome | None, raised: BaseException | None) -> Outcome:
    """One message's outcome: the one chosen for it inside the batch, else what the handler's end says."""
    if chosen is not None:
        return chosen
    if raised is None:
        return ACK
    return outcome_of_error(raised)


class _Choices:
    """Outcomes of a batch's messages, shared with the subsets of that batch."""

    __slots__ = ("any", "begun", "begun_all", "messages", "outcomes", "sealed")

    def __init__(self, messages: list[Message[Any]]) -> None:
        self.messages = messages  # the whole batch's, indexed by Message._index
        self.outcomes: list[Outcome | None] = [None] * len(messages)
        self.sealed = False  # settled already: later choices (a timed-out handler still running) are ignored
        self.any = False  # an outcome was chosen for some message
        # Which messages a handler call has begun on (a handler that never got to a message, because a
        # thread was not free or an earlier event took the whole time limit, did not fail on it).
        self.begun_all = False
        self.begun: set[int] = set()


class Batch(Generic[E]):
    """The messages of one read, in stream order, and the outcomes chosen for them."""

    __slots__ = ("_choices", "consumer", "group", "messages", "stream")

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str,
        messages: list[Message[E]],
        *,
        _choices: _Choices | None = None,
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.messages = messages
        if _choices is None:
            for index, message in enumerate(messages):
                message._index = index
            _choices = _Choices(messages)
        self._choices = _choices

    def __iter__(self) -> Iterator[Message[E]]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index: int) -> Message[E]:
        return self.messages[index]

    def __repr__(self) -> str:
        return f"Batch(stream={self.stream!r}, group={self.group!r}, messages={len(self.messages)})"

    @property
    def events(self) -> list[E]:
        return [message.event for message in self.messages]

    def subset(self, messages: Sequence[Message[Any]]) -> Batch[Any]:
        """A batch of some of these messages whose outcomes are this batch's (for routing by event type)."""
        for message in messages:
            self._check(message)
        return Batch(self.stream, self.group, self.consumer, list(messages), _choices=self._choices)

    def _check(self, message: Message[Any]) -> None:
        index = message._index
        whole = self._choices.messages
        if not (0 <= index < len(whole) and whole[index] is message):
            raise ValueError(f"{message!r} is not part of this batch")

    def _set(self, message: Message[Any], outcome: Outcome) -> None:
        if self._choices.sealed:
            return  # the batch was settled already (the handler timed out and kept running)
        self._check(message)
        self._choices.outcomes[message._index] = outcome
        self._choices.any = True

    def ack(self, message: Message[E]) -> None:
        """Acknowledge this message even if the handler raises afterwards."""
        self._set(message, ACK)

    def retry(
        self, message: Message[E], delay_ms: int | None = None, reason: str = "retry requested"
    ) -> None:
        """A failed attempt: process this message again after `delay_ms` (None: the consumer's backoff).

        Uses an attempt: after max_attempts it is dead-lettered. For "not yet", use defer().
        """
        if delay_ms is not None and delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self._set(message, Outcome("retry", delay_ms=delay_ms, reason=reason))

    def defer(self, message: Message[E], delay_ms: int, reason: str = "deferred") -> None:
        """Not yet: process this message again after `delay_ms` without using an attempt.

        Bounded by the consumer's max_defer_ms: an event deferred for longer than that since its first
        deferral is dead-lettered (reason `deferred_too_long`).
        """
        self._set(message, outcome_of_error(Defer(delay_ms, reason)))

    def fail(self, message: Message[E], error: BaseException) -> None:
        """Record `error` as this message's outcome: a failed attempt (retried with backoff, or dead-lettered
        when attempts are used up); a streamq.Retry, Defer or Reject chooses its own outcome."""
        self._set(message, outcome_of_error(error))

    def dead_letter(self, message: Message[E], reason: str, error: BaseException | None = None) -> None:
        """Move this message to the dead-letter stream now."""
        self._set(message, Outcome("dead", reason=reason, error=error))

    def outcome(self, message: Message[E]) -> Outcome | None:
        """The outcome chosen for this message so far (None: it follows how the handler ends)."""
        return self._choices.outcomes[message._index]

    def _seal(self) -> None:
        self._choices.sealed = True

    def _begin_all(self) -> None:
        """A handler call on the whole batch has begun."""
        self._choices.begun_all = True

    def _begin(self, message: Message[Any]) -> None:
        """A handler call on this one message has begun."""
        self._choices.begun.add(message._index)

    def _begun(self, message: Message[Any]) -> bool:
        return self._choices.begun_all or message._index in self._choices.begun

    @property
    def _chosen(self) -> bool:
        return self._choices.any
