"""The chaos worker: a subprocess running one streamq App whose handler records every invocation.

    python -m chaos.worker --redis-url URL --stream S --group G --ledger-dir DIR \
        [--batch-size 50] [--lease-ms 1200] [--max-attempts 5] [--retry-base-ms 100] ...

It is a plain streamq deployment (App, run_app, signal handling) with one batch consumer of ChaosEvent.
The handler decides each event's outcome from its kind and attempt (workload.handler_succeeds) and appends
one ledger line per event to the worker's own file (ledger.WorkerLog) before it returns.

Failpoints: STREAMQ_CHAOS_FAILPOINTS="name:probability[,name:probability...]". At each armed point the
worker SIGKILLs itself with that probability, after writing a `kill` line with how many entries it holds:

    after_read     the batch is read and decoded, the handler has not run
    mid_handler    half of the batch's ledger lines are written: a handler that died half way through
    after_handler  the handler returned, nothing is settled yet
    after_settle   the settle script (acks, retries and dead letters, one atomic Lua call) has run

The dead-letter write and the ack are one script in streamq, so there is no point "between" them to stop
at: before the script (after_handler) and after it (after_settle) are the two sides of it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from streamq import App, Batch, Message, _wire, keys
from streamq._wire import publishing
from streamq._wire.retention import TrimReply
from streamq._worker import consumer as consumer_module
from streamq._worker.consumer import Consumer
from streamq._worker.reclaiming import Deliveries
from streamq._worker.settling import Settlement
from streamq._worker.trimming import Trimmer
from streamq.app import run_app

from .ledger import WorkerLog
from .workload import ChaosEvent, handler_succeeds

FAILPOINTS_ENV = "STREAMQ_CHAOS_FAILPOINTS"
WORKER_ARGS_ENV = "STREAMQ_CHAOS_WORKER_ARGS"  # this module's arguments, for a pool's children (pool_app.py)
FAILPOINTS = ("after_read", "mid_handler", "after_handler", "after_settle")
DROP_RETRIES, DOUBLE_MOVE, GREEDY_TRIM = "drop_retries", "double_move", "greedy_trim"
SABOTAGES = (DROP_RETRIES, DOUBLE_MOVE, GREEDY_TRIM)
CONSUMER_PREFIX = "chaos"
LOG_FILE_PREFIX = "worker-"


class ChaosFailure(Exception):
    """What the handler raises for an event it was told to fail."""


class Failpoints:
    """Armed failpoints and their probabilities; hit() SIGKILLs this process when the dice say so."""

    def __init__(self, armed: dict[str, float], rng: random.Random, log: WorkerLog) -> None:
        unknown = set(armed) - set(FAILPOINTS)
        if unknown:
            raise ValueError(f"unknown failpoints {sorted(unknown)}; known: {', '.join(FAILPOINTS)}")
        self.armed = armed
        self.rng = rng
        self.log = log

    @staticmethod
    def parse(spec: str) -> dict[str, float]:
        armed: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, probability = item.partition(":")
            armed[name] = float(probability or "1")
        return armed

    def hit(self, name: str, held: int) -> None:
        probability = self.armed.get(name)
        if probability is None or self.rng.random() >= probability:
            return
        self.log.self_kill(name, held)
        os.kill(os.getpid(), signal.SIGKILL)


def make_handler(log: WorkerLog, failpoints: Failpoints, work_ms: int) -> Callable[[Batch[ChaosEvent]], Any]:
    async def handle(batch: Batch[ChaosEvent]) -> None:
        failpoints.hit("after_read", len(batch))
        if work_ms:
            await asyncio.sleep(work_ms / 1000)  # the batch's "work": keeps entries in flight when faults hit
        rows = []
        for message in batch:
            event = message.event
            ok = handler_succeeds(event, message.attempt)
            if not ok:
                batch.fail(
                    message, ChaosFailure(f"{event.kind} event {event.uuid} attempt {message.attempt}")
                )
            key = "stream" if message.key == batch.stream else "retry"
            rows.append(
                (event.uuid, event.seq, batch.consumer, message.attempt, key,
                 message.entry_id.decode(), message.id, ok)
            )  # fmt: skip
        half = len(rows) // 2
        if half and "mid_handler" in failpoints.armed:
            log.invocations(rows[:half])
            failpoints.hit("mid_handler", len(batch))
            log.invocations(rows[half:])
        else:
            log.invocations(rows)

    return handle


def install_settle_failpoints(failpoints: Failpoints) -> None:
    """Put the after_handler and after_settle failpoints around streamq's settle step.

    streamq has no failpoint API, so this patches two seams of the library in this process only:
    Consumer._work (returns once a batch is decoded and handled, before anything of it is settled) and
    Consumer._settled (entered once a settlement's reply has come back). With read-ahead on, a kill at
    either point also leaves the next batch, already read, pending. Acceptable in a test harness; nothing
    else in streamq is changed.
    """
    work_method = Consumer._work
    settled_method = Consumer._settled

    async def work_with_failpoint(
        self: Consumer, batches: list[_wire.StreamBatch], deliveries: Deliveries | None
    ) -> Settlement:
        settlement = await work_method(self, batches, deliveries)
        failpoints.hit("after_handler", sum(len(b.ids) for b in batches))
        return settlement

    def settled_with_failpoint(self: Consumer, settlement: Settlement, done: _wire.Settled) -> None:
        settled_method(self, settlement, done)
        failpoints.hit("after_settle", 0)

    Consumer._work = work_with_failpoint  # type: ignore[method-assign]  # failpoint seam, see docstring
    Consumer._settled = settled_with_failpoint  # type: ignore[method-assign]


# double_move: append every due delayed event to the stream once, leaving it scheduled, so that the real
# mover, called right after, appends it a second time. Non-atomic on purpose: a copy outside the script.
_COPY_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due do
    local payload = redis.call('HGET', KEYS[3], due[i])
    if payload then redis.call('XADD', KEYS[1], '*', 'd', payload) end
end
return #due
"""

# greedy_trim: trim below the group's last-delivered id, pending entries or not, without counting.
_GREEDY_TRIM = """
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local last = nil
for j = 1, #groups[1], 2 do
    if groups[1][j] == 'last-delivered-id' then last = groups[1][j + 1] end
end
if last == nil or last == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', last)
"""


def _drop_retries() -> None:
    def ack_instead(
        self: Settlement,
        message: Message[Any],
        now_ms: int,
        error: BaseException | None,
        *,
        delay_ms: int | None = None,
        reason: str = "",
    ) -> None:
        self.ack(message)

    Settlement.fail = ack_instead  # type: ignore[method-assign]  # the sabotage itself


def _double_move() -> None:
    move = publishing.move_scheduled

    async def move_twice(link: _wire.Link, stream: str, limit: int) -> tuple[int, int]:
        script_keys = (stream, keys.scheduled_key(stream), keys.scheduled_events_key(stream))
        await link.call("EVAL", _COPY_DUE, len(script_keys), *script_keys, limit)
        return await move(link, stream, limit)

    publishing.move_scheduled = move_twice  # the sabotage: ScheduledMover calls it by this name


def _greedy_trim() -> None:
    async def trim_greedily(self: Trimmer) -> TrimReply:
        removed = int(await self.client.eval(_GREEDY_TRIM, 1, self.settings.stream))
        return TrimReply(removed, 0, 0, None, None, None, None, None, 0, 0, 1, False, 0)

    Trimmer.trim_once = trim_greedily  # type: ignore[method-assign]  # the sabotage itself


_SABOTAGE_INSTALLERS: dict[str, Callable[[], None]] = {
    DROP_RETRIES: _drop_retries,
    DOUBLE_MOVE: _double_move,
    GREEDY_TRIM: _greedy_trim,
}


def install_sabotage(spec: str) -> None:
    """Break streamq on purpose in this process: a self-test proving the checker notices a broken consumer.
    `spec` is a comma-separated list of:

    drop_retries: a failed event is acknowledged instead of retried or dead-lettered (flaky events are
    then lost, and poison events never reach the dead-letter stream).
    double_move: the scheduled mover appends each due delayed event twice (a copy, then the real move), as
    a mover that is not atomic would when two workers race: delayed events enter the stream twice.
    greedy_trim: the trimmer is replaced by one that trims everything the group was delivered, pending or
    not, and counts nothing: pending entries vanish (deleted_pending with no fault to explain it) and the
    stream's `trimmed` counter stays 0.
    """
    for name in filter(None, spec.split(",")):
        if name not in _SABOTAGE_INSTALLERS:
            raise ValueError(f"unknown sabotage {name!r}; known: {', '.join(SABOTAGES)}")
        _SABOTAGE_INSTALLERS[name]()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--ledger-dir", required=True, help="directory for this worker's ledger file")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lease-ms", type=int, default=1500)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--retry-base-ms", type=int, default=100)
    parser.add_argument("--retry-max-ms", type=int, default=1000)
    parser.add_argument("--retry-poll-ms", type=int, default=100)
    parser.add_argument("--block-ms", type=int, default=500)
    parser.add_argument("--max-event-bytes", type=int, default=4096)
    parser.add_argument("--work-ms", type=int, default=20, help="time the handler spends on each batch")
    parser.add_argument("--reap-idle-ms", type=int, default=4500, help="reap consumers idle this long")
    parser.add_argument("--reap-check-s", type=float, default=5.0, help="how often to look for them")
    parser.add_argument("--seed", type=int, default=0, help="seeds the failpoint dice (with the pid)")
    parser.add_argument("--fsync", action="store_true", help="fsync the ledger file after every batch")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--sabotage", default="", help=f"break streamq on purpose: comma-separated of {', '.join(SABOTAGES)}"
    )
    return parser.parse_args(argv)


def configure_logging(level_name: str) -> None:
    level = logging.getLevelNamesMapping().get(level_name.upper(), logging.WARNING)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    log = WorkerLog(os.path.join(args.ledger_dir, f"{LOG_FILE_PREFIX}{os.getpid()}.tsv"), fsync=args.fsync)
    failpoints = Failpoints(
        Failpoints.parse(os.environ.get(FAILPOINTS_ENV, "")),
        random.Random(args.seed * 100_003 + os.getpid()),
        log,
    )
    app = build_app(args, log, failpoints)
    try:
        return run_app(app)
    finally:
        log.close()


def build_app(args: argparse.Namespace, log: WorkerLog, failpoints: Failpoints) -> App:
    """The worker's App, with the failpoint seams and any sabotage installed in this process.

    Also what `chaos.pool_app` builds in each child of a pool (`python -m chaos --pool N`)."""
    install_settle_failpoints(failpoints)
    install_sabotage(args.sabotage)
    # Look for idle consumers to reap every few seconds instead of every minute, so that reaping (an atomic
    # check-then-delete) runs while workers die and entries are pending. A module constant patched in this
    # process only, like the failpoint seams.
    consumer_module.REAP_CHECK_EVERY_S = args.reap_check_s
    app = App(args.redis_url, shutdown_grace_ms=10_000)
    app.add_consumer(
        make_handler(log, failpoints, args.work_ms),
        args.stream,
        group=args.group,
        events=[ChaosEvent],
        batch_size=args.batch_size,
        lease_ms=args.lease_ms,
        max_attempts=args.max_attempts,
        retry_base_ms=args.retry_base_ms,
        retry_max_ms=args.retry_max_ms,
        retry_poll_ms=args.retry_poll_ms,
        block_ms=args.block_ms,
        max_event_bytes=args.max_event_bytes,
        reap_idle_ms=args.reap_idle_ms,
        consumer_prefix=CONSUMER_PREFIX,
    )
    return app


if __name__ == "__main__":
    sys.exit(main())
