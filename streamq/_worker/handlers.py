"""What kind of handler the user wrote, how to call it, and which handler of a group takes which event.

Three shapes, told apart by the annotation of the one argument:
    async def h(batch: Batch[OrderPlaced]) -> None      the whole batch at once
    async def h(message: Message[OrderPlaced]) -> None  one message at a time, with its id and attempt
    async def h(event: OrderPlaced) -> None             one event at a time
An unannotated handler gets the batch. In the one-at-a-time shapes each event gets its own outcome: raising
streamq.Retry, Defer or Reject, or any other error, settles only that event. The event types a handler
takes come from the annotation (a union for several), or from `events=` given to the decorator; a handler
that names none takes every Event subclass defined when the worker starts (a catch-all).

Async handlers run on the event loop; plain `def` handlers run in an executor thread, never on the loop.
A handler counts as async when it, what it wraps (`functools.wraps`), a `functools.partial`'s function or
an object's `__call__` is an `async def`; and whatever a handler returns that is awaitable is awaited on the
loop, so a coroutine is never dropped and its event never acknowledged unprocessed. What cannot work is
refused when the handler is registered, with ConfigurationError: generators (their body would never run),
signatures that cannot take exactly one positional argument, annotations that do not resolve.

Several handlers may share one (stream, group): a HandlerSet routes each event to the handler of its type
(or to the one catch-all), so that one handler's failure settles only its own events.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import structlog

from ..batch import Batch, Message
from ..errors import ConfigurationError, UnknownEventType, describe_error
from ..events import Event, registered_event_types, tag_of

log = structlog.get_logger("streamq.handlers")

_MAX_LAYERS = 100  # wrappers followed before giving up: a __wrapped__ cycle must not hang registration


def _layers(fn: Callable[..., Any]) -> list[Any]:
    """`fn` and everything it delegates to: __wrapped__ chains, a partial's function, a bound method's
    function, an object's __call__. Flags such as "is a coroutine function" may sit on any of them."""
    found: list[Any] = []
    seen: set[int] = set()
    current: Any = fn
    while id(current) not in seen and len(found) < _MAX_LAYERS:
        seen.add(id(current))
        found.append(current)
        if hasattr(current, "__wrapped__"):
            current = current.__wrapped__
        elif isinstance(current, functools.partial):
            current = current.func
        elif inspect.ismethod(current):
            current = current.__func__
        elif inspect.isroutine(current) or isinstance(current, type):
            break
        else:
            current = type(current).__call__
    return found


def _name_of(fn: Any) -> str:
    """A handler's name for errors and logs: its qualified name, a partial's function's, or its class's."""
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str):
        return name
    if isinstance(fn, functools.partial):
        return f"partial({_name_of(fn.func)})"
    return f"{type(fn).__qualname__} instance"


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


def _type_name(event_type: type[Any]) -> str:
    """An event type as logs and dead-letter reasons name it: its tag, else its class name."""
    if issubclass(event_type, Event):
        try:
            return tag_of(event_type)
        except UnknownEventType:
            pass  # untagged or an inherited tag: the class name says which class it is
    return event_type.__qualname__


def _discard(awaitable: Awaitable[Any] | None) -> None:
    """Close a coroutine nobody will await (its call was abandoned), so it does not warn as never awaited."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


class HandlerSpec:
    """A user's handler: its shape ("batch", "message" or "event"), the event types it takes (None: any),
    and how to call it. Refuses, with ConfigurationError, a handler that could never work."""

    def __init__(self, fn: Callable[..., Any], events: Sequence[type[Event]] | None = None) -> None:
        if not callable(fn):
            raise ConfigurationError(f"handler {fn!r} is not callable")
        self.fn = fn
        self.name = _name_of(fn)
        layers = _layers(fn)
        if any(inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in layers):
            raise ConfigurationError(
                f"handler {self.name} is a generator function: its body would not run when called;"
                " write a plain def or async def that returns None"
            )
        self.is_async = any(inspect.iscoroutinefunction(f) for f in layers)
        parameter = self._argument()
        annotation = self._hints(layers[-1]).get(parameter, inspect.Parameter.empty)
        origin = typing.get_origin(annotation) or annotation
        self.kind: str
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
        chosen = list(events) if events else declared
        for event_type in chosen or ():
            if not (isinstance(event_type, type) and issubclass(event_type, Event)):
                raise ConfigurationError(
                    f"handler {self.name}: {event_type!r} is not a streamq.Event subclass"
                )
            tag_of(event_type)  # refuse untagged classes when the app is defined, not when events arrive
        self.event_types: list[type[Event]] | None = list(dict.fromkeys(chosen)) if chosen else None

    def _argument(self) -> str:
        """The name of the parameter that receives the batch, message or event."""
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"handler {self.name}: cannot read its signature ({exc})") from None
        try:
            bound = signature.bind(object())
        except TypeError:
            raise ConfigurationError(
                f"handler {self.name} must take exactly one positional argument (a Batch, Message or"
                f" event); its signature is {signature}"
            ) from None
        return next(iter(bound.arguments))

    def _hints(self, innermost: Any) -> dict[str, Any]:
        """The resolved annotations of the function that finally runs (the one a decorator wraps)."""
        if isinstance(innermost, type):
            return {}  # a class: calling it builds an instance; its annotations describe its fields
        try:
            return typing.get_type_hints(innermost)
        except Exception as exc:
            raise ConfigurationError(
                f"handler {self.name}: cannot resolve its annotations ({describe_error(exc)});"
                " define the event classes it names before registering it"
            ) from exc

    def resolve_event_types(self) -> list[type[Event]]:
        """The event types to decode for this handler: its own, or every tagged Event subclass."""
        if self.event_types:
            return self.event_types
        found = []
        for event_type in registered_event_types():
            try:
                tag_of(event_type)
            except UnknownEventType:
                continue  # a class that inherits its parent's tag: not decodable on its own
            found.append(event_type)
        if not found:
            raise ConfigurationError(f"handler {self.name}: no streamq.Event subclasses are defined")
        return found

    # ------------------------------------------------------------------------------------------ calling

    async def call(self, batch: Batch[Any], executor: Executor | None) -> None:
        """Run the handler over `batch`: async handlers on the loop, plain ones in `executor`.

        A batch-shaped handler's error propagates; the one-at-a-time shapes record each event's error on
        the batch with `batch.fail` and carry on with the next event.
        """
        if self.is_async:
            await self._call_on_loop(batch)
        else:
            await self._call_in_thread(batch, executor)

    async def _call_on_loop(self, batch: Batch[Any]) -> None:
        if self.kind == "batch":
            batch._begin_all()
            result = self.fn(batch)
            if inspect.isawaitable(result):
                await result
            else:
                self._refuse_generator(result)
            return
        takes_message = self.kind == "message"
        for message in batch.messages:
            try:
                batch._begin(message)
                result = self.fn(message if takes_message else message.event)
                if inspect.isawaitable(result):
                    await result
                else:
                    self._refuse_generator(result)
            except Exception as exc:
                batch.fail(message, exc)

    async def _call_in_thread(self, batch: Batch[Any], executor: Executor | None) -> None:
        """Run a plain handler in `executor`. An awaitable it returns comes back to the loop to be awaited
        there (the loop is free meanwhile), then the thread goes on with the next event. No thread ever
        blocks on the loop, and cancelling the call (a timeout) cancels the awaitable too."""
        if self.kind == "batch":
            _, pending = await _in_thread(executor, functools.partial(self._run_sync, batch, 0))
            if pending is not None:
                await pending
            return
        start = 0
        while start < len(batch.messages):
            stop, pending = await _in_thread(executor, functools.partial(self._run_sync, batch, start))
            if pending is None:
                return
            message = batch.messages[stop]
            try:
                await pending
            except Exception as exc:
                batch.fail(message, exc)
            start = stop + 1

    def _run_sync(
        self, batch: Batch[Any], start: int, abandoned: threading.Event
    ) -> tuple[int, Awaitable[Any] | None]:
        """In the executor thread: call the handler from message `start` on; stop at the first awaitable
        it returns and hand that back with the index of its message. Stop too once the caller has given
        up on this call (`abandoned`: the run was cancelled or the call timed out): a thread cannot be
        interrupted, but it must start no handler call for the events left, which are given back or settled
        already."""
        if self.kind == "batch":
            if abandoned.is_set():
                return 0, None  # given up before a thread was free: the handler never ran
            batch._begin_all()
            result = self.fn(batch)
            if inspect.isawaitable(result):
                return 0, result
            self._refuse_generator(result)
            return 0, None
        takes_message = self.kind == "message"
        messages = batch.messages
        for index in range(start, len(messages)):
            if abandoned.is_set():
                return index, None
            message = messages[index]
            try:
                batch._begin(message)
                result = self.fn(message if takes_message else message.event)
                if inspect.isawaitable(result):
                    return index, result
                self._refuse_generator(result)
            except Exception as exc:
                batch.fail(message, exc)
        return len(messages), None

    def _refuse_generator(self, result: Any) -> None:
        """A generator returned by a handler that registration could not see through (a decorator without
        functools.wraps): its body never ran, so the call fails rather than acknowledging the events."""
        if inspect.isgenerator(result):
            result.close()
        elif not inspect.isasyncgen(result):
            return
        raise ConfigurationError(
            f"handler {self.name} returned a generator: its body did not run;"
            " a handler must be a plain def or async def that returns None"
        )


async def _in_thread(
    executor: Executor | None, work: Callable[[threading.Event], tuple[int, Awaitable[Any] | None]]
) -> tuple[int, Awaitable[Any] | None]:
    """Run `work(abandoned)` in `executor`. If the caller is cancelled while it runs, `abandoned` is set
    (work checks it between handler calls) and an awaitable it hands back afterwards is closed instead of
    being dropped unawaited."""
    lock = threading.Lock()
    abandoned = threading.Event()
    handed: list[tuple[int, Awaitable[Any] | None]] = []

    def run() -> None:
        result = work(abandoned)
        with lock:
            if abandoned.is_set():
                _discard(result[1])
            else:
                handed.append(result)

    # In the caller's context (as asyncio.to_thread does), so what the loop set is seen in the thread:
    # the batch's trace span, structlog's bound context vars.
    context = contextvars.copy_context()
    try:
        await asyncio.get_running_loop().run_in_executor(executor, context.run, run)
    except BaseException:
        with lock:
            abandoned.set()
            for _, pending in handed:
                _discard(pending)
        raise
    return handed[0]


class HandlerSet:
    """The handlers of one (stream, group), routed by event type inside one consumer.

    Each event type belongs to one handler; at most one handler declares no types (a catch-all) and takes
    every event no typed handler takes. With several handlers, one handler's error settles only its own
    events.
    """

    def __init__(self, first: HandlerSpec) -> None:
        self.specs: list[HandlerSpec] = []
        self._routes: dict[type[Event], HandlerSpec] = {}
        self._catch_all: HandlerSpec | None = None
        self.add(first)

    def add(self, spec: HandlerSpec) -> None:
        """Take `spec` in too; refuses an event type another handler takes, and a second catch-all."""
        if spec.event_types is None:
            if self._catch_all is not None:
                raise ConfigurationError(
                    f"handlers {self._catch_all.name} and {spec.name} both take every event type:"
                    " in one stream and group, give all but one of them their event types"
                )
            self._catch_all = spec
        else:
            for event_type in spec.event_types:
                other = self._routes.get(event_type)
                if other is not None:
                    raise ConfigurationError(
                        f"handlers {other.name} and {spec.name} both take {_type_name(event_type)}:"
                        " in one stream and group, each event type goes to one handler"
                    )
            for event_type in spec.event_types:
                self._routes[event_type] = spec
        self.specs.append(spec)

    @property
    def name(self) -> str:
        return ", ".join(spec.name for spec in self.specs)

    def resolve_event_types(self) -> list[type[Event]]:
        """The event types the decoder must know: every handler's, and every Event subclass if there is a
        catch-all."""
        typed = list(self._routes)
        if self._catch_all is None:
            return typed
        known = set(typed)
        return typed + [t for t in self._catch_all.resolve_event_types() if t not in known]

    async def call(self, batch: Batch[Any], executor: Executor | None) -> None:
        """Run the handlers over `batch`: each on the events it takes, one after the other, in the order
        their first events appear in the stream.

        With one handler, a batch-shaped handler's error propagates (the worker settles the rest by it);
        with several, it fails only the events of that handler that have no outcome yet.
        """
        if len(self.specs) == 1:
            await self._call_one(batch, executor)
            return
        routed: dict[HandlerSpec, list[Message[Any]]] = {}
        for message in batch.messages:
            spec = self._routes.get(type(message.event), self._catch_all)
            if spec is None:
                self._refuse(batch, message)
            else:
                routed.setdefault(spec, []).append(message)
        for spec, messages in routed.items():
            subset = batch.subset(messages)
            try:
                await spec.call(subset, executor)
            except Exception as exc:
                log.warning(
                    "handler failed",
                    handler=spec.name,
                    stream=batch.stream,
                    group=batch.group,
                    consumer=batch.consumer,
                    error=describe_error(exc),
                    count=len(messages),
                    first_id=messages[0].id,
                    last_id=messages[-1].id,
                )
                for message in messages:
                    if subset.outcome(message) is None:
                        subset.fail(message, exc)

    async def _call_one(self, batch: Batch[Any], executor: Executor | None) -> None:
        """The common case, one handler: it gets the batch itself, and its error leaves the call."""
        spec = self.specs[0]
        if spec is not self._catch_all:
            routes = self._routes
            if any(type(message.event) not in routes for message in batch.messages):
                for message in batch.messages:
                    if type(message.event) not in routes:
                        self._refuse(batch, message)
                batch = batch.subset([m for m in batch.messages if type(m.event) in routes])
                if not batch.messages:
                    return
        await spec.call(batch, executor)

    @staticmethod
    def _refuse(batch: Batch[Any], message: Message[Any]) -> None:
        """An event no handler takes (the decoder knew a type the handlers do not): dead-letter it, never
        acknowledge it unhandled."""
        batch.dead_letter(message, f"no handler for event type {_type_name(type(message.event))}")
