"""What a handler receives: a Batch of Messages, and the per-event outcomes it may choose.

A handler that returns normally acknowledges every message it did not settle otherwise. One that raises
fails every message it did not settle otherwise: each is retried after a backoff, or dead-lettered once it
has used its attempts. Inside the batch, single messages can be retried or dead-lettered explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from .events import Event

E = TypeVar("E", bound=Event)


class Message(Generic[E]):
    """One event as delivered: `id` is its id in the stream, kept across retries and replays."""

    __slots__ = (
        "_index", "attempt", "entry_id", "event", "first_failure_ms",
        "id", "key", "payload", "previous_error",
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
    ) -> None:
        self._index = index
        self.key = key  # the stream key this delivery came from (the stream, or its group's retry stream)
        self.entry_id = entry_id
        self.id = origin_id
        self.attempt = attempt  # 1 on the first delivery; counts failed and crashed attempts before it
        self.payload = payload
        self.event: E = None  # type: ignore[assignment]  # set once decoded; never None inside a handler
        self.first_failure_ms = first_failure_ms
        self.previous_error = previous_error

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, attempt={self.attempt}, event={self.event!r})"


class Outcome:
    """What settles a message. Kinds: ack, retry (delay_ms may be None: backoff), fail, dead."""

    __slots__ = ("delay_ms", "error", "kind", "reason")

    def __init__(
        self, kind: str, *, delay_ms: int | None = None, reason: str = "", error: BaseException | None = None
    ) -> None:
        self.kind = kind
        self.delay_ms = delay_ms
        self.reason = reason
        self.error = error


ACK = Outcome("ack")


class Batch(Generic[E]):
    """The messages of one read, in stream order, and the outcomes chosen for them."""

    __slots__ = ("_chosen", "_outcomes", "_sealed", "consumer", "group", "messages", "stream")

    def __init__(self, stream: str, group: str, consumer: str, messages: list[Message[E]]) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.messages = messages
        for index, message in enumerate(messages):
            message._index = index
        self._outcomes: list[Outcome | None] = [None] * len(messages)
        self._sealed = False
        self._chosen = False  # an outcome was set for some message

    def __iter__(self) -> Iterator[Message[E]]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index: int) -> Message[E]:
        return self.messages[index]

    @property
    def events(self) -> list[E]:
        return [message.event for message in self.messages]

    def _set(self, message: Message[Any], outcome: Outcome) -> None:
        if self._sealed:
            return  # the batch was settled already (the handler timed out and kept running)
        index = message._index
        if index >= len(self.messages) or self.messages[index] is not message:
            raise ValueError(f"{message!r} is not part of this batch")
        self._outcomes[index] = outcome
        self._chosen = True

    def ack(self, message: Message[E]) -> None:
        """Acknowledge this message even if the handler raises afterwards."""
        self._set(message, ACK)

    def retry(
        self, message: Message[E], delay_ms: int | None = None, reason: str = "retry requested"
    ) -> None:
        """Process this message again after `delay_ms` (None: the consumer's backoff). Uses an attempt."""
        if delay_ms is not None and delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self._set(message, Outcome("retry", delay_ms=delay_ms, reason=reason))

    def fail(self, message: Message[E], error: BaseException) -> None:
        """Record a failed attempt: retried with backoff, or dead-lettered when attempts are used up."""
        self._set(message, Outcome("fail", error=error, reason=str(error)))

    def dead_letter(self, message: Message[E], reason: str, error: BaseException | None = None) -> None:
        """Move this message to the dead-letter stream now."""
        self._set(message, Outcome("dead", reason=reason, error=error))

    def outcome(self, message: Message[E]) -> Outcome | None:
        return self._outcomes[message._index]
