"""Handling: the user's handler(s) run over decoded messages, and each message gets its outcome.

The handler set (handlers.py) runs async handlers on the loop and plain `def` ones in the executor. This
step adds the time limit and turns how the call ended into one outcome per message with
streamq.batch.resolve_outcome, the rule that the per-event handler shapes and streamq.testing share.

With tracing on, the batch's process span (`trace`) is current while the handler runs (an async one: a
plain `def` handler's thread does not inherit the event loop's context), and a handler that raises or times
out marks it failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, NamedTuple

from ..batch import Batch, Message, Outcome, resolve_outcome
from ..errors import HandlerTimeout
from .handlers import HandlerSet

if TYPE_CHECKING:
    from ..tracing import Process

# When a message no handler call began on before handler_timeout_ms comes back (deferred, no attempt used).
NOT_BEGUN_DELAY_MS = 1_000


class Handled(NamedTuple):
    """How one handler call ended: `outcomes` per message in order, or None when every one is acked."""

    outcomes: list[Outcome] | None
    error: BaseException | None  # what the handler raised, if it did


async def handle(
    handlers: HandlerSet,
    messages: Sequence[Message[Any]],
    *,
    stream: str,
    group: str,
    consumer: str,
    executor: Executor | None,
    timeout_ms: int | None,
    trace: Process | None = None,
) -> Handled:
    """Call the handler(s) on `messages` as one batch, within timeout_ms; never raises an Exception."""
    batch: Batch[Any] = Batch(stream, group, consumer, list(messages))
    error: BaseException | None = None
    token = trace.attach() if trace is not None else None
    try:
        if timeout_ms is None:
            await handlers.call(batch, executor)
        else:
            deadline = asyncio.timeout(timeout_ms / 1000)
            try:
                async with deadline:
                    await handlers.call(batch, executor)
            except TimeoutError:
                # Only our own deadline makes a HandlerTimeout: a TimeoutError the handler raised itself
                # is its failure as it is.
                if not deadline.expired():
                    raise
                error = HandlerTimeout(f"handler did not finish within {timeout_ms} ms")
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this worker is being cancelled: the consumer gives back what it holds
        # The handler's own CancelledError (it awaited a task or future that something else cancelled),
        # not a cancel of the worker: a failure of this call like any other error. Let through, it ended
        # the consumer quietly, and run() returned as if stopped, with the batch left pending.
        error = exc
    except Exception as exc:
        error = exc
    finally:
        batch._seal()  # a timed-out handler that keeps running can no longer change outcomes
        if trace is not None:
            trace.detach(token)
            if error is not None:
                trace.failed(error)
    if error is None and not batch._chosen:
        return Handled(None, None)  # the common case, without a step per message
    if isinstance(error, HandlerTimeout):
        # A message no handler call began on did not fail: every handler thread was busy (a stuck plain
        # `def` handler), or an earlier event of a one-at-a-time handler took the whole time limit. It is
        # put back without using an attempt, so a stuck pool cannot dead-letter events that never ran.
        return Handled([_timed_out(batch, m, error) for m in batch.messages], error)
    return Handled([resolve_outcome(batch.outcome(m), error) for m in batch.messages], error)


def _timed_out(batch: Batch[Any], message: Message[Any], error: HandlerTimeout) -> Outcome:
    chosen = batch.outcome(message)
    if chosen is None and not batch._begun(message):
        return Outcome("defer", delay_ms=NOT_BEGUN_DELAY_MS, reason="no handler call began on it in time")
    return resolve_outcome(chosen, error)

