"""OpenTelemetry tracing of publishing and processing, after the messaging semantic conventions.

Install the `otel` extra (opentelemetry-api) and configure a TracerProvider (the SDK's, or a distro's):
streamq then traces through the global provider and propagator. Without the package, or without a
configured provider (the API's default proxy provider, which records nothing), every hook here returns at
once: no span, no header, nothing per event. The check is made per publish call and per batch, so a
provider configured after the producer or worker was built is used from then on.

Producing: one `send {stream}` span (SpanKind.PRODUCER) per publish call, whatever its number of events
(publish, publish_many, their _result forms). Its context is injected with the global propagator (W3C
`traceparent` / `tracestate`, and `baggage`, by default) into the headers of every event of the call, so a
consumer can link to it: at most MAX_TRACE_HEADER_BYTES of it; a propagated value that would go over is
left out (baggage first, as it comes last). A header the caller gave under the same name is replaced.

Processing: one `process {stream}` span (SpanKind.CONSUMER) per handled batch, a root span (the batch's
events come from many traces) with a Link to the producer context found in each message's headers (at
most MAX_LINKS per span, each with the message's id). It is current while an async handler runs, so the
spans the handler starts are its children (a plain `def` handler runs in a thread of the executor, which
does not inherit the context). The outcome of each message is recorded when the batch is settled:
counts per outcome as attributes (`streamq.acked`, `streamq.retried`, `streamq.deferred`,
`streamq.dead_lettered`, `streamq.held_back`), and one `settle` span event for each message that was not
simply acknowledged (at most MAX_OUTCOME_EVENTS), with its id, its outcome (`streamq.outcome`: retry,
defer, dead_letter, held_back) and `error.type` when an error caused it. Acknowledgements get no event
each: they are the common case, and the links already name every message. A handler that raised sets
the span's status to ERROR, with `error.type` (the exception's type) and the exception recorded.

Attributes: `messaging.system` is "redis" (the broker the events travel through: the conventions name
the messaging system, not the client library, and list no value for Redis Streams),
`messaging.destination.name` the stream (a partition's own stream for a partitioned one's consumer),
`messaging.operation.type` / `.name` "send" or "process", `messaging.batch.message_count` when a call or
batch has more than one event, `messaging.consumer.group.name` and `messaging.client.id` (the consumer)
on process spans, and `messaging.message.id` on the send span of a single event.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any

from .settings import MAX_TRACE_HEADER_BYTES

if TYPE_CHECKING:
    from .batch import Message

SYSTEM = "redis"
MAX_LINKS = 128  # links of one process span (the SDK's default span limit)
MAX_OUTCOME_EVENTS = 128  # `settle` events of one process span

_ERROR_TYPE = "error.type"


class _State:
    """What was found of OpenTelemetry: imported on first use, never at import of streamq."""

    api: Any = None  # the opentelemetry modules (a namespace), once imported
    missing = False  # opentelemetry-api is not installed
    provider: Any = None  # the provider the cached tracer comes from
    tracer: Any = None
    env_provider = False  # OTEL_PYTHON_TRACER_PROVIDER names a provider (the API loads it when first asked)


_state = _State()
_UNKNOWN = object()


def _import() -> SimpleNamespace | None:
    try:
        from opentelemetry import context, propagate, trace
        from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    except ImportError:
        _state.missing = True
        return None

    api = SimpleNamespace(
        context=context, propagate=propagate, trace=trace, Link=Link, SpanKind=SpanKind, Status=Status,
        StatusCode=StatusCode, inert=(trace.ProxyTracerProvider, trace.NoOpTracerProvider),
    )  # fmt: skip
    _state.env_provider = OTEL_PYTHON_TRACER_PROVIDER in os.environ
    _state.api = api
    return api


def active() -> Any:
    """The streamq tracer of the configured provider; None when tracing is off (no package, no provider)."""
    if _state.missing:
        return None
    api = _state.api or _import()
    if api is None:
        return None
    # The API's get_tracer_provider() looks at os.environ on every call while no provider is set (a few
    # microseconds, a few % of a one-event publish): the module global it reads is looked at first, and
    # None there without the environment variable means no provider. An API without that global is asked.
    provider: Any = getattr(api.trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _state.env_provider:
        return None
    if provider is None or provider is _UNKNOWN:
        provider = api.trace.get_tracer_provider()
    if provider is _state.provider:
        return _state.tracer
    tracer = None if isinstance(provider, api.inert) else provider.get_tracer("streamq", _version())
    _state.provider, _state.tracer = provider, tracer
    return tracer


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamq")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------- sending


class _NoSend:
    """The send hook when tracing is off: no span, no headers."""

    headers: dict[str, str] | None = None

    def __enter__(self) -> _NoSend:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def published(self, ids: Sequence[str]) -> None:
        return None


NO_SEND = _NoSend()


class Send:
    """The `send {stream}` span of one publish call, current while the call runs."""

    def __init__(self, tracer: Any, stream: str, count: int) -> None:
        api = _state.api
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": stream,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }
        if count > 1:
            attributes["messaging.batch.message_count"] = count
        self._scope = tracer.start_as_current_span(
            f"send {stream}", kind=api.SpanKind.PRODUCER, attributes=attributes
        )
        self._span: Any = None
        self.headers: dict[str, str] | None = None

    def __enter__(self) -> Send:
        self._span = self._scope.__enter__()
        carrier: dict[str, str] = {}
        _state.api.propagate.inject(carrier)
        self.headers = bounded_trace_headers(carrier)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._span.set_attribute(_ERROR_TYPE, type(exc).__qualname__)
        # The SDK's scope records the exception and sets the status to ERROR, then ends the span.
        self._scope.__exit__(exc_type, exc, tb)

    def published(self, ids: Sequence[str]) -> None:
        if len(ids) == 1:
            self._span.set_attribute("messaging.message.id", ids[0])


def sending(stream: str, count: int) -> Send | _NoSend:
    """The hook around one publish call of `count` events: `with sending(...) as send`, then
    `send.headers` (None when tracing is off) go into every event's headers."""
    tracer = active()
    if tracer is None:
        return NO_SEND
    return Send(tracer, stream, count)


def bounded_trace_headers(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """What the propagator injected, in its order, within MAX_TRACE_HEADER_BYTES; None if nothing."""
    out: dict[str, str] = {}
    size = 0
    for name, value in carrier.items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        size += len(name.encode()) + len(value.encode())
        if size > MAX_TRACE_HEADER_BYTES:
            break
        out[name] = value
    return out or None


# ---------------------------------------------------------------------------------------------- processing


class Process:
    """The `process {stream}` span of one batch: started when the batch is decoded, current while the
    handler runs, given each message's outcome as it is settled, ended once the settlement is planned."""

    __slots__ = ("_events", "_span")

    def __init__(
        self,
        tracer: Any,
        stream: str,
        group: str,
        consumer: str,
        messages: Sequence[Message[Any]],
        count: int,
    ) -> None:
        api = _state.api
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": stream,
            "messaging.consumer.group.name": group,
            "messaging.client.id": consumer,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
        }
        if count > 1:
            attributes["messaging.batch.message_count"] = count
        self._span = tracer.start_span(
            f"process {stream}",
            context=api.context.Context(),  # a root: the batch's events come from many traces
            kind=api.SpanKind.CONSUMER,
            attributes=attributes,
            links=producer_links(messages),
        )
        self._events = 0

    def attach(self) -> object:
        """Make the span current (for the handler); returns the token detach() takes."""
        api = _state.api
        return api.context.attach(api.trace.set_span_in_context(self._span))

    @staticmethod
    def detach(token: object) -> None:
        _state.api.context.detach(token)

    def failed(self, error: BaseException) -> None:
        """The handler raised (or timed out): the span's status is ERROR."""
        api = _state.api
        self._span.set_attribute(_ERROR_TYPE, type(error).__qualname__)
        self._span.record_exception(error)
        self._span.set_status(api.Status(api.StatusCode.ERROR, f"{type(error).__qualname__}: {error}"[:500]))

    def settled(self, message: Message[Any], outcome: str, error_type: str = "") -> None:
        """One message's outcome, other than a plain acknowledgement."""
        if self._events >= MAX_OUTCOME_EVENTS:
            return
        self._events += 1
        attributes = {"messaging.message.id": message.id, "streamq.outcome": outcome}
        if error_type:
            attributes[_ERROR_TYPE] = error_type
        self._span.add_event("settle", attributes)

    def end(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            if value:
                self._span.set_attribute(f"streamq.{_COUNT_NAMES.get(name, name)}", value)
        self._span.end()


_COUNT_NAMES = {"dead": "dead_lettered"}


def processing(
    stream: str, group: str, consumer: str, messages: Sequence[Message[Any]], count: int
) -> Process | None:
    """The process span of a batch of `count` entries (`messages` those that decoded); None when tracing
    is off."""
    tracer = active()
    if tracer is None:
        return None
    return Process(tracer, stream, group, consumer, messages, count)


def producer_links(messages: Sequence[Message[Any]]) -> list[Any]:
    """A Link to the producer context in each message's headers (those that have one), at most MAX_LINKS."""
    api = _state.api
    links: list[Any] = []
    for message in messages:
        headers = message._headers
        if not headers:
            continue
        context = api.trace.get_current_span(api.propagate.extract(headers)).get_span_context()
        if context.is_valid:
            links.append(api.Link(context, {"messaging.message.id": message.id}))
            if len(links) == MAX_LINKS:
                break
    return links
