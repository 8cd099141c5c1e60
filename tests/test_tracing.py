"""OpenTelemetry tracing (streamq/tracing.py): a `send {stream}` span per publish call whose context rides in
each event's headers, a `process {stream}` span per batch linked to those contexts, with the batch's
attributes and outcomes; nothing at all without a configured provider or without the package."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import streamq
from streamq import settings, tracing
from streamq.errors import ConfigurationError
from streamq.events import PAYLOAD_FIELD


class Ping(streamq.Event, tag="test.tracing.ping"):
    n: int


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 0, "retention": False}


def _reset_provider() -> None:
    """Forget the global TracerProvider. The API lets a process set it once; a test suite needs it set and
    unset (what opentelemetry-test-utils' reset_trace_globals does)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]  # private, see above
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK provider that keeps every finished span in memory, set globally for this test only."""
    _reset_provider()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_provider()


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def _traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_one_send_span_per_publish_call_and_its_context_in_every_event(
    spans: InMemorySpanExporter, redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """publish_many of three events is one PRODUCER span `send {stream}` with the messaging attributes and
    the batch's count; each entry carries that span's context as `traceparent`, beside the caller's own
    headers."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(1), Ping(2), Ping(3)], headers={"tenant": "a"})
    (span,) = _named(spans, f"send {unique}")
    assert span.kind == SpanKind.PRODUCER
    assert dict(span.attributes or {}) == {
        "messaging.system": "redis",
        "messaging.destination.name": unique,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.batch.message_count": 3,
    }
    entries = await client.xrange(unique)
    assert [fields[b"traceparent"].decode() for _, fields in entries] == [_traceparent(span)] * 3
    assert all(fields[b"tenant"] == b"a" for _, fields in entries)


def test_a_single_publish_names_its_message_and_a_failed_one_its_error(
    spans: InMemorySpanExporter, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """From SyncProducer too: one event's send span has its entry id and no batch count, and a scripted
    (delayed) publish is traced the same way; a publish that raises ends its span with status ERROR and
    `error.type`."""
    with streamq.SyncProducer(redis_url) as producer:
        entry_id = producer.publish(unique, Ping(1))
        producer.publish(unique, Ping(2), delay_ms=3_600_000)
        with pytest.raises(ConfigurationError):
            producer.publish_many(unique, [Ping(3)], headers=[{"d": "x"}])
    ok, delayed, failed = _named(spans, f"send {unique}")
    assert (ok.attributes or {})["messaging.message.id"] == entry_id
    assert "messaging.batch.message_count" not in (ok.attributes or {})
    assert str((delayed.attributes or {})["messaging.message.id"]).startswith("sched-")
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "ConfigurationError"
    assert sync_client.xlen(unique) == 1


async def test_a_batch_is_one_process_span_linked_to_its_producers(
    spans: InMemorySpanExporter, redis_url: str, unique: str
) -> None:
    """A batch handled is one CONSUMER span `process {stream}`, a root, linked to the send span of each
    message (with the message's id), with the group, the count and the outcomes; the spans an async
    handler starts are its children."""
    async with streamq.Producer(redis_url) as producer:
        first = await producer.publish(unique, Ping(1))
        rest = await producer.publish_many(unique, [Ping(2), Ping(3)])
    app = streamq.App(redis_url)
    tracer = trace.get_tracer("test")

    @app.consumer(unique, group="g", batch_size=10, **FAST)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        with tracer.start_as_current_span("inside"):
            pass

    await asyncio.wait_for(app.run_until_idle(), 30)
    send_one, send_two = _named(spans, f"send {unique}")
    (process,) = _named(spans, f"process {unique}")
    (inside,) = _named(spans, "inside")
    assert process.kind == SpanKind.CONSUMER and process.parent is None
    attributes = dict(process.attributes or {})
    assert attributes.pop("messaging.client.id").startswith("streamq-")
    assert attributes == {
        "messaging.system": "redis",
        "messaging.destination.name": unique,
        "messaging.consumer.group.name": "g",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.batch.message_count": 3,
        "streamq.acked": 3,
    }
    linked = [(link.context.span_id, dict(link.attributes or {})) for link in process.links]
    one, two = send_one.get_span_context(), send_two.get_span_context()
    assert one is not None and two is not None
    assert linked == [
        (one.span_id, {"messaging.message.id": first}),
        (two.span_id, {"messaging.message.id": rest[0]}),
        (two.span_id, {"messaging.message.id": rest[1]}),
    ]
    assert inside.parent is not None and inside.parent.span_id == process.context.span_id
    assert process.status.status_code == StatusCode.UNSET


async def test_a_plain_def_handler_runs_inside_the_process_span(
    spans: InMemorySpanExporter, redis_url: str, unique: str
) -> None:
    """A plain `def` handler runs in a thread, in the loop's context: the spans it starts are children of
    the batch's process span, as an async handler's are."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Ping(1))
    app = streamq.App(redis_url)
    tracer = trace.get_tracer("test")

    @app.consumer(unique, group="g", **FAST)
    def handle(batch: streamq.Batch[Ping]) -> None:
        with tracer.start_as_current_span("inside a thread"):
            pass

    await asyncio.wait_for(app.run_until_idle(), 30)
    (process,) = _named(spans, f"process {unique}")
    (inside,) = _named(spans, "inside a thread")
    context = process.get_span_context()
    assert context is not None and inside.parent is not None
    assert inside.parent.span_id == context.span_id


async def test_a_failing_handler_marks_the_span_and_each_outcome_is_an_event(
    spans: InMemorySpanExporter, redis_url: str, unique: str
) -> None:
    """A handler that raises sets the process span's status to ERROR with `error.type`; each message that
    is not acknowledged gets a `settle` event with its outcome: retried on the first attempt, then
    dead-lettered once its attempts are used."""
    async with streamq.Producer(redis_url) as producer:
        (entry_id,) = await producer.publish_many(unique, [Ping(1)])
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=2, **FAST)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        raise KeyError("nope")

    await asyncio.wait_for(app.run_until_idle(), 30)
    first, second = _named(spans, f"process {unique}")
    for span in (first, second):
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "KeyError"
        assert any(event.name == "exception" for event in span.events)
    settles = [[dict(e.attributes or {}) for e in s.events if e.name == "settle"] for s in (first, second)]
    assert settles == [
        [{"messaging.message.id": entry_id, "streamq.outcome": "retry", "error.type": "KeyError"}],
        [{"messaging.message.id": entry_id, "streamq.outcome": "dead_letter", "error.type": "KeyError"}],
    ]
    assert (first.attributes or {})["streamq.retried"] == 1
    assert (second.attributes or {})["streamq.dead_lettered"] == 1
    # The retry came back through the group's retry stream, still linked to its producer.
    assert [len(span.links) for span in (first, second)] == [1, 1]


async def test_links_of_one_span_are_bounded(
    spans: InMemorySpanExporter, redis_url: str, unique: str
) -> None:
    """A batch of more messages than MAX_LINKS, each from its own publish call, links the first MAX_LINKS."""
    count = tracing.MAX_LINKS + 5
    async with streamq.Producer(redis_url) as producer:
        for n in range(count):
            await producer.publish(unique, Ping(n))
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", batch_size=count, **FAST)
    async def handle(batch: streamq.Batch[Ping]) -> None:
        pass

    await asyncio.wait_for(app.run_until_idle(), 30)
    (process,) = _named(spans, f"process {unique}")
    assert (process.attributes or {})["messaging.batch.message_count"] == count
    assert len(process.links) == tracing.MAX_LINKS


async def test_nothing_is_traced_or_added_without_a_configured_provider(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """With opentelemetry-api installed but no provider configured (the API's default proxy), the hooks are
    off: no trace header is written, and a consumer handles without a span."""
    _reset_provider()
    assert tracing.active() is None
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(unique, [Ping(1), Ping(2)])
    assert [list(fields) for _, fields in await client.xrange(unique)] == [[PAYLOAD_FIELD]] * 2
    assert tracing.processing(unique, "g", "c", [], 2) is None
    assert tracing.sending(unique, 2) is tracing.NO_SEND


async def test_without_the_package_every_hook_is_off(
    monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter, redis_url: str, client: redis.asyncio.Redis,
    unique: str,
) -> None:  # fmt: skip
    """If `opentelemetry` cannot be imported, publishing and consuming work untraced, even though a provider
    was configured in this process."""
    monkeypatch.setattr(tracing, "_state", tracing._State())
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None: the import fails
    assert tracing.active() is None
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Ping(1))
    app = streamq.App(redis_url)
    handled: list[int] = []

    @app.consumer(unique, group="g", **FAST)
    async def handle(event: Ping) -> None:
        handled.append(event.n)

    await asyncio.wait_for(app.run_until_idle(), 30)
    assert handled == [1]
    assert [list(fields) for _, fields in await client.xrange(unique)] == [[PAYLOAD_FIELD]]
    assert spans.get_finished_spans() == ()


def test_the_propagated_context_is_bounded() -> None:
    """What the propagator injects goes into the headers in its order up to MAX_TRACE_HEADER_BYTES: a large
    baggage is left out, the traceparent before it kept."""
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    carrier = {"traceparent": parent, "baggage": "k=" + "v" * settings.MAX_TRACE_HEADER_BYTES}
    assert tracing.bounded_trace_headers(carrier) == {"traceparent": parent}
    assert tracing.bounded_trace_headers({}) is None
