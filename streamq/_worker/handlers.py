"""What kind of handler the user wrote, and how to call it.

Three shapes, told apart by the first parameter's annotation:
    async def h(batch: Batch[OrderPlaced]) -> None      the whole batch at once
    async def h(message: Message[OrderPlaced]) -> None  one message at a time, with its id and attempt
    async def h(event: OrderPlaced) -> None             one event at a time
Plain `def` handlers run in an executor thread, never on the event loop. In the one-at-a-time shapes each
event gets its own outcome: raising streamq.Retry or streamq.Reject, or any other error, settles only that
event. The event types to decode come from the annotation (a union for several types per stream), or from
`events=` given to the decorator, or else every Event subclass defined when the worker starts.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from ..batch import Batch, Message
from ..errors import ConfigurationError, Reject, Retry
from ..events import Event, registered_event_types, tag_of


def _event_types_of(annotation: Any) -> list[type[Event]] | None:
    """Event classes named by an annotation; None when it names none specifically (Any, Event, missing)."""
    if (
        annotation is None
        or annotation is Any
        or annotation is Event
        or annotation is inspect.Parameter.empty
    ):
        return None
    if isinstance(annotation, type) and issubclass(annotation, Event):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found: list[type[Event]] = []
        for arg in typing.get_args(annotation):
            inner = _event_types_of(arg)
            if inner is None:
                return None
            found.extend(inner)
        return found
    raise ConfigurationError(f"cannot decode events of type {annotation!r}: use streamq.Event subclasses")


class HandlerSpec:
    """A user's handler, its shape, and the event types it accepts."""

    def __init__(self, fn: Callable[..., Any], events: Sequence[type[Event]] | None = None) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.is_async = inspect.iscoroutinefunction(fn)
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise ConfigurationError(
                f"handler {self.name} must take one argument (a Batch, Message or event)"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        annotation = hints.get(params[0].name, inspect.Parameter.empty)
        origin = typing.get_origin(annotation) or annotation
        if origin is Batch:
            self.kind = "batch"
            inner = typing.get_args(annotation)
        elif origin is Message:
            self.kind = "message"
            inner = typing.get_args(annotation)
        elif annotation is inspect.Parameter.empty:
            self.kind = "batch"  # an unannotated handler gets the batch: the library's primary shape
            inner = ()
        else:
            self.kind = "event"
            inner = (annotation,)
        declared = _event_types_of(inner[0]) if inner else None
        self.event_types: list[type[Event]] | None = list(events) if events else declared
        for event_type in self.event_types or ():
            tag_of(event_type)  # refuse untagged classes when the app is defined, not when events arrive

    def resolve_event_types(self) -> list[type[Event]]:
        if self.event_types:
            return self.event_types
        found = []
        for event_type in registered_event_types():
            try:
                tag_of(event_type)
            except Exception:
                continue
            found.append(event_type)
        if not found:
            raise ConfigurationError(f"handler {self.name}: no streamq.Event subclasses are defined")
        return found

    async def invoke(self, batch: Batch[Any]) -> None:
        if self.kind == "batch":
            await self.fn(batch)
            return
        takes_message = self.kind == "message"
        for message in batch:
            try:
                await self.fn(message if takes_message else message.event)
            except Exception as exc:
                _settle_one(batch, message, exc)

    def invoke_sync(self, batch: Batch[Any]) -> None:
        if self.kind == "batch":
            self.fn(batch)
            return
        takes_message = self.kind == "message"
        for message in batch:
            try:
                self.fn(message if takes_message else message.event)
            except Exception as exc:
                _settle_one(batch, message, exc)


def _settle_one(batch: Batch[Any], message: Message[Any], exc: Exception) -> None:
    if isinstance(exc, Retry):
        batch.retry(message, exc.delay_ms, exc.reason)
    elif isinstance(exc, Reject):
        batch.dead_letter(message, exc.reason, exc)
    else:
        batch.fail(message, exc)
