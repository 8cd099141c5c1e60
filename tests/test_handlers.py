"""streamq._worker.handlers: what counts as an async handler, what is refused at registration, and how a
HandlerSet routes one stream's events to the handlers of their types. No Redis: batches come from
streamq.testing.make_batch and plain handlers run in a ThreadPoolExecutor, as the worker runs them."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import streamq
from streamq import Batch, ConfigurationError, Message, Reject, Retry
from streamq._worker.handlers import HandlerSet, HandlerSpec
from streamq.testing import make_batch, outcomes


class A(streamq.Event, tag="test-handlers.a"):
    n: int


class B(streamq.Event, tag="test-handlers.b"):
    n: int


class C(streamq.Event, tag="test-handlers.c"):
    n: int


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-handlers")
    yield pool
    pool.shutdown(wait=True)


async def run(
    fn: Callable[..., Any],
    batch: Batch[Any],
    executor: ThreadPoolExecutor,
    events: Sequence[type[streamq.Event]] | None = None,
) -> None:
    """Call `fn` over `batch` as the worker does: one HandlerSet for its (stream, group)."""
    await HandlerSet(HandlerSpec(fn, events)).call(batch, executor)


def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A tracing decorator as such libraries write them: a sync wrapper that returns fn's coroutine."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def undeclared(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator without functools.wraps, whose unannotated wrapper makes a batch handler: nothing says
    what it wraps, only its result can tell."""

    def wrapper(arg):  # type: ignore[no-untyped-def]  # unannotated on purpose: the batch shape
        return fn(arg)

    return wrapper


# ------------------------------------------------------------------------------------------ async handlers


async def test_wrapped_async_batch_handler_runs_its_body(executor: ThreadPoolExecutor) -> None:
    """An async def batch handler behind a functools.wraps sync wrapper is awaited on the loop: its body
    runs (instead of the coroutine being dropped and the batch acknowledged unprocessed)."""
    seen: list[tuple[int, threading.Thread]] = []

    @traced
    async def handle(batch: Batch[A]) -> None:
        seen.extend((event.n, threading.current_thread()) for event in batch.events)

    await run(handle, make_batch([A(1), A(2)]), executor)
    assert seen == [(1, threading.current_thread()), (2, threading.current_thread())]


async def test_wrapped_async_message_handler_runs_its_body(executor: ThreadPoolExecutor) -> None:
    """A decorated async def Message handler runs once per message, and its errors settle that message."""
    seen: list[str] = []

    @traced
    async def handle(message: Message[A]) -> None:
        seen.append(message.id)
        if message.event.n == 2:
            raise ValueError("bad")

    batch = make_batch([A(1), A(2)])
    await run(handle, batch, executor)
    assert seen == ["1-0", "2-0"]
    assert outcomes(batch) == ["ack", "fail"]


async def test_wrapped_async_event_handler_runs_its_body(executor: ThreadPoolExecutor) -> None:
    """A decorated async def event handler is given each event (its annotation is read through the
    wrapper) and awaited."""
    seen: list[A] = []

    @traced
    async def handle(event: A) -> None:
        seen.append(event)

    await run(handle, make_batch([A(1), A(2)]), executor)
    assert seen == [A(1), A(2)]


async def test_object_with_async_call_runs_its_body(executor: ThreadPoolExecutor) -> None:
    """An object whose __call__ is an async def is an async handler: its body runs on the loop, and the
    annotation of __call__ gives its shape."""

    class Handler:
        def __init__(self) -> None:
            self.seen: list[int] = []

        async def __call__(self, event: A) -> None:
            self.seen.append(event.n)

    handler = Handler()
    spec = HandlerSpec(handler)
    assert (spec.kind, spec.event_types) == ("event", [A])
    await HandlerSet(spec).call(make_batch([A(1), A(2)]), executor)
    assert handler.seen == [1, 2]


async def test_partial_of_async_def_gets_its_shape_and_runs(executor: ThreadPoolExecutor) -> None:
    """A functools.partial of an async def event handler gets events (the annotation is read from the
    function it binds) and is awaited."""
    seen: list[A] = []

    async def handle(sink: list[A], event: A) -> None:
        sink.append(event)

    await run(functools.partial(handle, seen), make_batch([A(1), A(2)]), executor)
    assert seen == [A(1), A(2)]


async def test_sync_handler_runs_off_the_event_loop_thread(executor: ThreadPoolExecutor) -> None:
    """A plain def handler runs in the executor's threads, never on the event loop's thread."""
    threads: list[threading.Thread] = []

    def handle(event: A) -> None:
        threads.append(threading.current_thread())

    await run(handle, make_batch([A(1), A(2)]), executor)
    assert len(threads) == 2
    assert all(t is not threading.current_thread() and t.name.startswith("test-handlers") for t in threads)


async def test_sync_batch_handler_returning_a_coroutine_gets_it_awaited_on_the_loop(
    executor: ThreadPoolExecutor,
) -> None:
    """A plain callable that returns a coroutine (a decorator without functools.wraps) is called in the
    executor thread, and the coroutine it returns is awaited on the loop, not dropped."""
    seen: list[tuple[int, threading.Thread]] = []

    @undeclared
    async def handle(batch: Batch[A]) -> None:
        seen.extend((event.n, threading.current_thread()) for event in batch.events)

    await run(handle, make_batch([A(1), A(2)]), executor)
    assert seen == [(1, threading.current_thread()), (2, threading.current_thread())]


async def test_sync_batch_handler_returning_a_failing_coroutine_fails_the_call(
    executor: ThreadPoolExecutor,
) -> None:
    """The error of a coroutine returned by a plain batch handler propagates out of the call, as the
    handler's own error would."""

    @undeclared
    async def handle(batch: Batch[A]) -> None:
        raise ValueError("from the coroutine")

    with pytest.raises(ValueError, match="from the coroutine"):
        await run(handle, make_batch([A(1)]), executor)


async def test_sync_event_handler_returning_coroutines_settles_each_event(
    executor: ThreadPoolExecutor,
) -> None:
    """A plain per-event handler that returns a coroutine for some events: each coroutine is awaited on the
    loop, in stream order with the events handled in the thread, and one that raises fails only its event."""
    seen: list[tuple[str, int]] = []

    async def later(n: int) -> None:
        seen.append(("loop", n))
        if n == 2:
            raise Reject("two")

    def handle(message: Message[A]) -> Coroutine[Any, Any, None] | None:
        if message.event.n % 2 == 0:
            return later(message.event.n)
        seen.append(("thread", message.event.n))
        if message.event.n == 3:
            raise ValueError("three")
        return None

    batch = make_batch([A(1), A(2), A(3), A(4)])
    await run(handle, batch, executor)
    assert seen == [("thread", 1), ("loop", 2), ("thread", 3), ("loop", 4)]
    assert outcomes(batch) == ["ack", "dead", "fail", "ack"]


async def test_coroutine_handed_back_after_a_timeout_is_closed(executor: ThreadPoolExecutor) -> None:
    """When the call is cancelled (the worker's timeout) while a plain handler runs, a coroutine the
    handler returns afterwards is closed, not left to warn as never awaited."""
    release = threading.Event()
    returned: list[Coroutine[Any, Any, None]] = []

    async def later() -> None:
        raise AssertionError("must not run after the call was abandoned")

    def handle(event: A) -> Coroutine[Any, Any, None]:
        release.wait(5)
        returned.append(later())
        return returned[-1]

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await run(handle, make_batch([A(1)]), executor)
    release.set()
    await asyncio.to_thread(executor.shutdown)  # waits for the handler's thread to hand its coroutine back
    assert [inspect.getcoroutinestate(coro) for coro in returned] == [inspect.CORO_CLOSED]


async def test_per_event_errors_choose_each_event_outcome(executor: ThreadPoolExecutor) -> None:
    """In the per-event shapes, Retry, Reject and any other error settle only the event that raised."""

    async def handle(event: A) -> None:
        if event.n == 1:
            raise Retry(delay_ms=5)
        if event.n == 2:
            raise Reject("no")
        if event.n == 3:
            raise ValueError("bad")

    batch = make_batch([A(1), A(2), A(3), A(4)])
    await run(handle, batch, executor)
    assert outcomes(batch) == ["retry", "dead", "fail", "ack"]


# ------------------------------------------------------------------------------------------ refused


def plain_generator(batch: Batch[A]) -> Iterator[None]:
    yield


async def async_generator(batch: Batch[A]) -> AsyncIterator[None]:
    yield


class GeneratorCall:
    def __call__(self, batch: Batch[A]) -> Iterator[None]:
        yield


class AsyncGeneratorCall:
    async def __call__(self, batch: Batch[A]) -> AsyncIterator[None]:
        yield


@pytest.mark.parametrize(
    "fn",
    [
        plain_generator,
        async_generator,
        traced(plain_generator),
        traced(async_generator),
        functools.partial(async_generator),
        GeneratorCall(),
        AsyncGeneratorCall(),
    ],
    ids=["generator", "async-generator", "wrapped", "wrapped-async", "partial", "call", "async-call"],
)
def test_generator_handlers_are_refused_at_registration(fn: Callable[..., Any]) -> None:
    """A generator or async generator function (plain, decorated, partial, or an object's __call__) is
    refused when registered: calling it would not run its body, and its events would be acknowledged."""
    with pytest.raises(ConfigurationError, match="generator"):
        HandlerSpec(fn)


async def test_generator_returned_through_an_undeclared_wrapper_fails_the_call(
    executor: ThreadPoolExecutor,
) -> None:
    """A generator that registration could not see (a decorator without functools.wraps) fails the call
    when it is returned, instead of acknowledging events whose handler body never ran."""
    with pytest.raises(ConfigurationError, match="returned a generator"):
        await run(undeclared(async_generator), make_batch([A(1)]), executor)

    def per_event(event: A) -> Iterator[None]:
        yield

    def wrapper(event: A) -> Any:
        return per_event(event)

    batch = make_batch([A(1)])
    await run(wrapper, batch, executor)
    assert outcomes(batch) == ["fail"]


def two_arguments(a: Batch[A], b: int) -> None: ...


def keyword_only(*, batch: Batch[A]) -> None: ...


def no_arguments() -> None: ...


@pytest.mark.parametrize(
    "fn", [two_arguments, keyword_only, no_arguments], ids=["two", "keyword-only", "none"]
)
def test_signatures_that_cannot_take_one_positional_argument_are_refused(fn: Callable[..., Any]) -> None:
    """A handler that cannot be called with exactly one positional argument is refused at registration,
    naming the handler, instead of failing every batch it is given."""
    with pytest.raises(ConfigurationError, match=fn.__name__):
        HandlerSpec(fn)


def test_signatures_that_take_one_positional_argument_are_accepted() -> None:
    """Extra parameters with defaults and *args still take one positional argument: accepted."""

    def with_default(batch: Batch[A], extra: int = 1) -> None: ...

    def star_args(*args: Message[A]) -> None: ...

    assert (HandlerSpec(with_default).kind, HandlerSpec(with_default).event_types) == ("batch", [A])
    assert (HandlerSpec(star_args).kind, HandlerSpec(star_args).event_types) == ("message", [A])


def test_non_callables_are_refused() -> None:
    """An object that cannot be called is refused with ConfigurationError at registration."""
    with pytest.raises(ConfigurationError, match="not callable"):
        HandlerSpec(42)  # type: ignore[arg-type]  # the mistake under test


def test_unresolvable_annotations_are_refused() -> None:
    """An annotation that names something undefined is refused, naming the handler and the name, instead
    of the handler silently becoming a batch handler of every event type."""

    # The undefined name is the mistake under test.
    async def handle(batch: Batch[NoSuchEvent]) -> None: ...  # noqa: F821

    with pytest.raises(ConfigurationError, match=r"handle.*NoSuchEvent"):
        HandlerSpec(handle)


# ------------------------------------------------------------------------------------------ routing


async def test_handler_set_routes_each_type_to_its_handler_and_outcomes_land_on_the_batch(
    executor: ThreadPoolExecutor,
) -> None:
    """Two typed handlers of one (stream, group) each get only their own types, in the order their first
    events appear in the stream; what they choose is the outcome of the batch the worker settles."""
    calls: list[tuple[str, list[str]]] = []

    def handle_b(batch: Batch[B]) -> None:
        calls.append(("b", [m.id for m in batch]))
        batch.retry(batch[0], delay_ms=5)

    async def handle_a(event: A) -> None:
        calls.append(("a", [f"A({event.n})"]))
        if event.n == 2:
            raise Reject("two")

    handlers = HandlerSet(HandlerSpec(handle_a))
    handlers.add(HandlerSpec(handle_b))
    batch = make_batch([B(1), A(1), B(2), A(2)])
    await handlers.call(batch, executor)
    assert calls == [("b", ["1-0", "3-0"]), ("a", ["A(1)"]), ("a", ["A(2)"])]
    assert outcomes(batch) == ["retry", "ack", "ack", "dead"]


async def test_one_handler_raising_fails_only_its_own_messages(executor: ThreadPoolExecutor) -> None:
    """With several handlers, a batch handler's error fails the messages of its own types that have no
    outcome yet; another handler's messages keep theirs, and the call itself does not raise."""

    async def handle_a(batch: Batch[A]) -> None:
        batch.ack(batch[0])
        raise ValueError("a broke")

    async def handle_b(batch: Batch[B]) -> None:
        batch.retry(batch[0])

    handlers = HandlerSet(HandlerSpec(handle_a))
    handlers.add(HandlerSpec(handle_b))
    batch = make_batch([A(1), B(1), A(2), B(2)])
    await handlers.call(batch, executor)
    assert outcomes(batch) == ["ack", "retry", "fail", "ack"]
    failed = batch.outcome(batch[2])
    assert failed is not None and isinstance(failed.error, ValueError)


async def test_one_batch_handler_error_propagates(executor: ThreadPoolExecutor) -> None:
    """With one handler, a batch handler's error leaves the call (the worker settles the messages it did
    not settle by it) and nothing is recorded on their behalf."""

    async def handle(batch: Batch[A]) -> None:
        raise Retry(delay_ms=5)

    batch = make_batch([A(1), A(2)])
    with pytest.raises(Retry):
        await run(handle, batch, executor)
    assert [batch.outcome(m) for m in batch] == [None, None]


def test_overlapping_event_types_are_refused() -> None:
    """Two handlers of one (stream, group) that take the same event type are refused, naming both and the
    type: each event type goes to one handler."""

    async def first(batch: Batch[A | B]) -> None: ...

    async def second(event: B) -> None: ...

    handlers = HandlerSet(HandlerSpec(first))
    with pytest.raises(ConfigurationError, match=r"first.*second.*test-handlers\.b"):
        handlers.add(HandlerSpec(second))


def test_a_second_catch_all_is_refused() -> None:
    """Two handlers without declared event types in one (stream, group) are refused."""

    async def first(batch: Batch[Any]) -> None: ...

    def second(batch: Any) -> None: ...

    handlers = HandlerSet(HandlerSpec(first))
    with pytest.raises(ConfigurationError, match="every event type"):
        handlers.add(HandlerSpec(second))


async def test_catch_all_gets_what_no_typed_handler_takes(executor: ThreadPoolExecutor) -> None:
    """A catch-all handler beside typed ones gets every other event, and the decoder is told every event
    type."""
    got: dict[str, list[streamq.Event]] = {"typed": [], "rest": []}

    async def typed(event: A) -> None:
        got["typed"].append(event)

    async def rest(batch: Batch[Any]) -> None:
        got["rest"].extend(batch.events)

    handlers = HandlerSet(HandlerSpec(rest))
    handlers.add(HandlerSpec(typed))
    assert {A, B, C} <= set(handlers.resolve_event_types())
    await handlers.call(make_batch([B(1), A(1), C(1), A(2)]), executor)
    assert got == {"typed": [A(1), A(2)], "rest": [B(1), C(1)]}


async def test_typed_handlers_decode_their_union_and_dead_letter_strays(executor: ThreadPoolExecutor) -> None:
    """Without a catch-all the decoder is told exactly the handlers' types; an event of another type (a
    decoder out of step) is dead-lettered, naming its tag, and no handler sees it."""
    seen: list[streamq.Event] = []

    async def handle_a(event: A) -> None:
        seen.append(event)

    async def handle_b(batch: Batch[Any]) -> None:
        seen.extend(batch.events)

    handlers = HandlerSet(HandlerSpec(handle_a))
    handlers.add(HandlerSpec(handle_b, events=[B]))
    assert handlers.resolve_event_types() == [A, B]
    assert [name.rsplit(".", 1)[-1] for name in handlers.name.split(", ")] == ["handle_a", "handle_b"]
    batch = make_batch([A(1), C(1), B(1)])
    await handlers.call(batch, executor)
    assert seen == [A(1), B(1)]
    assert outcomes(batch) == ["ack", "dead", "ack"]
    stray = batch.outcome(batch[1])
    assert stray is not None and stray.reason == "no handler for event type test-handlers.c"


async def test_wrapped_handlers_awaited_inside_a_handler_set(executor: ThreadPoolExecutor) -> None:
    """Routing keeps the async detection: a decorated async handler in a set of two is awaited on its
    subset, not dropped."""
    seen: list[streamq.Event] = []

    @traced
    async def handle_a(batch: Batch[A]) -> None:
        seen.extend(batch.events)

    @traced
    async def handle_b(message: Message[B]) -> None:
        seen.append(message.event)

    handlers = HandlerSet(HandlerSpec(handle_a))
    handlers.add(HandlerSpec(handle_b))
    await handlers.call(make_batch([A(1), B(1)]), executor)
    assert seen == [A(1), B(1)]


async def test_a_single_typed_handler_gets_only_its_types(executor: ThreadPoolExecutor) -> None:
    """A consumer's only handler, typed, is not given an event of another type: that event is
    dead-lettered, and the handler gets the rest."""
    seen: list[streamq.Event] = []

    async def handle(batch: Batch[A]) -> None:
        seen.extend(batch.events)

    batch = make_batch([A(1), C(1), A(2)])
    await run(handle, batch, executor)
    assert seen == [A(1), A(2)]
    assert outcomes(batch) == ["ack", "dead", "ack"]
