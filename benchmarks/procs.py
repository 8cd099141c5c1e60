"""Helper processes of the system scenarios, and the handle the measuring child drives them with.

Measures nothing by itself: each helper reports its own figures (CPU seconds over its part of the measured
section, time stamps, latency percentiles, peak RSS) over a pipe to the measuring child that started it,
which hands them to its ``Probe``. The helpers:

  * ``e2e_worker``: an ``App`` with one consumer whose batch handler only records, per event, the handler's
    ``time.time_ns()`` minus the event's ``sent_ns``; it runs until told to stop and reports per phase (a
    phase ends when the handler has seen the phase's events and XPENDING of the group is empty again, polled
    every 2 ms).
  * ``e2e_producer``: ``Producer.publish_many`` flat out (chunks of 1000) or paced at a fixed rate (every
    millisecond, whatever the schedule says is due), each chunk stamped with ``time.time_ns()`` when sent.
  * ``burst_worker``: an ``App`` with a no-op batch handler; on "go" runs ``run_until_idle()``.
  * ``greedy_reader``: XREADGROUP of N entries into the group under its own consumer name, then waits to be
    killed (SIGKILL) while holding them.

Processes start through multiprocessing's "spawn" context (a fresh interpreter each, nothing forked from the
measuring child) and run their asyncio code on uvloop when it is installed, as the measuring child does. A
helper whose parent vanished (the harness killed a timed-out child) exits by itself.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import inspect
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from benchmarks.baseline_redispy import _entries
from benchmarks.child import _loop_factory, peak_rss_bytes
from benchmarks.scenarios_streamq import _core, _reading_type, _timed_event, _timed_type
from benchmarks.streams import wait_settled

SPAWN = multiprocessing.get_context("spawn")
START_TIMEOUT_S = 60.0  # spawn + imports on a loaded 2-core box
STOP_TIMEOUT_S = 10.0
STALL_TIMEOUT_S = 30.0  # a phase during which the worker handles nothing for this long has failed
PARENT_CHECK_S = 0.5
FLAT_CHUNK = 1000  # events per publish_many call when the producer runs flat out (publish_many's default)
PACE_TICK_S = 0.001  # the paced producer sends what is due every millisecond
MAX_PACED_CHUNK = 1000  # a paced producer that fell behind catches up in calls of at most this many


class HelperFailed(RuntimeError):
    """A helper process reported an error or exited without replying."""


class Helper:
    """A spawned helper process and the measuring child's end of its pipe."""

    def __init__(self, name: str, target: Callable[..., Any], *args: Any) -> None:
        self.name = name
        self.conn, theirs = SPAWN.Pipe()
        self.process = SPAWN.Process(
            target=_entry, args=(target, theirs, os.getpid(), *args), name=name, daemon=True
        )
        self.process.start()
        theirs.close()

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    async def recv(self, timeout_s: float) -> dict[str, Any]:
        """The helper's next report; HelperFailed if it reported an error or died, TimeoutError if silent."""
        if not await asyncio.to_thread(self.conn.poll, timeout_s):
            raise TimeoutError(f"{self.name}: no reply within {timeout_s:.0f} s")
        try:
            message: dict[str, Any] = self.conn.recv()
        except EOFError:
            self.process.join(STOP_TIMEOUT_S)
            raise HelperFailed(f"{self.name} exited ({self.process.exitcode}) without replying") from None
        if "error" in message:
            raise HelperFailed(f"{self.name}: {message['error']}")
        return message

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.process.kill()
        self.process.join()

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_TIMEOUT_S)
            if self.process.is_alive():
                self.kill()
        self.process.join(STOP_TIMEOUT_S)
        self.conn.close()


def _entry(
    target: Callable[..., Any], conn: multiprocessing.connection.Connection, parent: int, *args: Any
) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), name="bench-parent-watch", daemon=True).start()
    try:
        if inspect.iscoroutinefunction(target):
            loop_factory, _ = _loop_factory()
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(target(conn, *args))
        else:
            target(conn, *args)
    except BaseException as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}{where}"})
        raise


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


async def _recv(conn: multiprocessing.connection.Connection) -> tuple[Any, ...]:
    message: tuple[Any, ...] = await asyncio.to_thread(conn.recv)
    return message


# ------------------------------------------------------------------------------------------- end to end


class _Phase:
    """What the worker's handler records for the current phase."""

    def __init__(self) -> None:
        self.number = -1
        self.expected = 0
        self.latencies = array.array("q")  # ns, handler time minus send time, in arrival order
        self.foreign = 0  # events of another phase seen during this one (there should be none)
        self.seen = asyncio.Event()

    def start(self, number: int, expected: int) -> None:
        self.number = number
        self.expected = expected
        self.latencies = array.array("q")
        self.foreign = 0
        self.seen.clear()

    def record(self, now_ns: int, events: list[Any]) -> None:
        self.latencies.extend([now_ns - event.sent_ns for event in events])
        if events[0].phase != self.number or events[-1].phase != self.number:
            self.foreign += sum(event.phase != self.number for event in events)
        if len(self.latencies) >= self.expected:
            self.seen.set()


def latency_summary(latencies_ns: array.array[int]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) and max, in milliseconds."""
    ordered = sorted(latencies_ns)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1e6

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99), "max_ms": ordered[-1] / 1e6}


async def e2e_worker(
    conn: multiprocessing.connection.Connection, url: str, stream: str, group: str, batch_size: int
) -> None:
    streamq = _core()
    app = streamq.App(url)
    phase = _Phase()

    @app.consumer(stream, group=group, events=[_timed_type()], batch_size=batch_size)
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        phase.record(time.time_ns(), batch.events)

    client = redis.asyncio.Redis.from_url(url)
    running = asyncio.create_task(app.run(), name="bench-e2e-app")
    try:
        await _until_reading(url, client, stream, group, phase, running)
        conn.send({"ready": True})
        while (command := await _recv(conn))[0] != "stop":
            _, number, expected = command
            phase.start(number, expected)
            cpu_before = time.process_time()
            conn.send({"armed": True})
            await _until(phase.seen, running, lambda: len(phase.latencies))
            await wait_settled(client, stream, group)
            acked_ns = time.time_ns()
            report = {
                "events": len(phase.latencies),
                "foreign": phase.foreign,
                "acked_ns": acked_ns,
                "cpu_s": time.process_time() - cpu_before,
                **latency_summary(phase.latencies),
            }
            conn.send(report)
        app.stop()
        await running
        conn.send({"peak_rss_bytes": peak_rss_bytes(), "counts": app.counts()})
    finally:
        app.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, STOP_TIMEOUT_S)
        await client.aclose()


async def _until_reading(
    url: str, client: redis.asyncio.Redis, stream: str, group: str, phase: _Phase, running: asyncio.Task[None]
) -> None:
    """Publish one warm-up event (phase -1) and wait until the app has handled and acknowledged it: from
    then on it is reading (a consumer blocked in its first XREADGROUP need not show in XINFO CONSUMERS)."""
    streamq = _core()
    phase.start(-1, 1)
    async with streamq.Producer(url) as producer:
        await producer.publish(stream, _timed_event(time.time_ns(), -1))
    await _until(phase.seen, running, lambda: len(phase.latencies))
    await wait_settled(client, stream, group)


async def _until(done: asyncio.Event, running: asyncio.Task[None], progress: Callable[[], int]) -> None:
    """Wait for `done`; fail if the app stops, or if `progress()` stands still for STALL_TIMEOUT_S."""
    last = -1
    while not done.is_set():
        waiter = asyncio.create_task(done.wait())
        finished, _ = await asyncio.wait(
            {waiter, running}, timeout=STALL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if running in finished:
            running.result()
            raise HelperFailed("the app stopped in the middle of a phase")
        if not finished:
            now = progress()
            if now == last:
                raise TimeoutError(f"no progress for {STALL_TIMEOUT_S:.0f} s after {now} events")
            last = now


async def e2e_producer(conn: multiprocessing.connection.Connection, url: str, stream: str) -> None:
    streamq = _core()
    async with streamq.Producer(url) as producer:
        # Connect now, on a key of its own (it carries the repeat's token: cleaned up).
        await producer.publish(f"{stream}:warmup", _timed_event(time.time_ns(), -1))
        conn.send({"ready": True})
        while (command := await _recv(conn))[0] != "stop":
            kind, number, count, rate = command
            cpu_before = time.process_time()
            first_ns = time.time_ns()
            if kind == "flat":
                calls, behind = await _flat_out(producer, stream, number, count), 0
            else:
                calls, behind = await _paced(producer, stream, number, count, rate)
            conn.send(
                {
                    "first_ns": first_ns,
                    "last_ns": time.time_ns(),
                    "cpu_s": time.process_time() - cpu_before,
                    "calls": calls,
                    "max_behind": behind,
                }
            )
    conn.send({"peak_rss_bytes": peak_rss_bytes()})


async def _flat_out(producer: Any, stream: str, phase: int, count: int) -> int:
    sent = calls = 0
    while sent < count:
        n = min(FLAT_CHUNK, count - sent)
        await producer.publish_many(stream, [_timed_event(time.time_ns(), phase)] * n, chunk_size=n)
        sent += n
        calls += 1
    return calls


async def _paced(producer: Any, stream: str, phase: int, count: int, rate: float) -> tuple[int, int]:
    """Publish `count` events at `rate`: every tick, one publish_many of all that the schedule says is due
    (event i is due at i / rate seconds). Returns the calls made and the most events ever left overdue."""
    sent = calls = max_behind = 0
    start = time.perf_counter()
    while sent < count:
        due = min(count, int(rate * (time.perf_counter() - start)) + 1)
        if due > sent:
            n = min(due - sent, MAX_PACED_CHUNK)
            await producer.publish_many(stream, [_timed_event(time.time_ns(), phase)] * n, chunk_size=n)
            sent += n
            calls += 1
            max_behind = max(max_behind, due - sent)
            if due > sent:
                continue  # behind schedule: send the rest now
        if sent < count:
            await asyncio.sleep(PACE_TICK_S)
    return calls, max_behind


# ------------------------------------------------------------------------------------------- scaling


async def burst_worker(
    conn: multiprocessing.connection.Connection, url: str, stream: str, group: str, batch_size: int
) -> None:
    streamq = _core()
    app = streamq.App(url)
    handled = 0

    @app.consumer(stream, group=group, events=[_reading_type()], batch_size=batch_size)
    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        nonlocal handled
        handled += len(batch)

    conn.send({"ready": True})
    conn.recv()  # "go": nothing else runs on this loop yet, so blocking here is fine
    cpu_before = time.process_time()
    start_ns = time.time_ns()
    await app.run_until_idle()
    conn.send(
        {
            "events": handled,
            "cpu_s": time.process_time() - cpu_before,
            "start_ns": start_ns,
            "end_ns": time.time_ns(),
            "peak_rss_bytes": peak_rss_bytes(),
            "counts": app.counts(),
        }
    )


# ------------------------------------------------------------------------------------------- recovery


def greedy_reader(
    conn: multiprocessing.connection.Connection, url: str, stream: str, group: str, consumer: str, count: int
) -> None:
    """Read `count` entries into the group as `consumer`, report, then hold them until killed."""
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        entries = _entries(client.xreadgroup(group, consumer, {stream: ">"}, count=count))
    last_id = entries[-1][0].decode() if entries else ""
    conn.send({"read": len(entries), "last_id": last_id})
    while True:
        time.sleep(3600)
