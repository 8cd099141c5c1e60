"""App: the registry of consumers, and running them with graceful shutdown.

Nothing happens on import or in __init__: no connection, no event loop, no signal handler. `run()` installs
signal handlers only when asked (the CLI does) and, when it returns, puts back the handlers it found.

Shutdown: the first SIGTERM/SIGINT stops reading; every batch in hand is handled and settled within the
grace period, then run() returns. A second signal stops at once. Either way nothing read is lost: an entry
not settled stays pending and another worker reclaims it once its lease runs out.

Concurrency: a consumer with concurrency=N runs as N lanes (consumer.py), N Consumers of its stream and group,
each its own task with its own consumer name, sharing the app's client, handler thread pool and lease keeper.
Every lane is one of the tasks that stop(), a signal, the grace period and cancellation act on, exactly as a
consumer of one lane: each settles or gives back its own batch. Batches of lanes are handled at the same time,
so there is no order between them; each lane reads ahead on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _wire, keys
from ._cluster import AsyncSlotClients
from ._connection import (
    DEFAULT_MAX_CONNECTIONS,
    AsyncClient,
    RedisLike,
    async_client,
    for_key,
    redact,
    resolve_url,
    sync_client,
)
from ._worker.consumer import MAX_RECONNECT_DELAY_S, TRANSIENT, Consumer, _sleep_or_stop
from ._worker.handlers import HandlerSet, HandlerSpec
from ._worker.leases import LeaseKeeper
from ._worker.observing import Observation
from ._worker.partitioned import PartitionedConsumer
from .errors import ConfigurationError, ServerError, describe_error
from .events import Event
from .exit_codes import ABANDONED, INTERRUPTED, OK
from .partitions import logical_stream
from .settings import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_LOOP_STALL_MS,
    DEFAULT_METRICS_HOST,
    DEFAULT_METRICS_REFRESH_MS,
    DEFAULT_SHUTDOWN_GRACE_MS,
    MAX_EXECUTOR_WORKERS,
    AppSettings,
    ConsumerSettings,
)

F = TypeVar("F", bound=Callable[..., Any])
# What signal.getsignal returns: a callable, SIG_DFL / SIG_IGN, or None for a handler set outside Python.
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
HANDLER_THREAD_PREFIX = "streamq-handler"  # names the threads that run plain `def` handlers

log = structlog.get_logger("streamq.app")


class App:
    """Consumers of one application, run together in one process.

    app = streamq.App("redis://localhost:6379/0")

    @app.consumer("orders", group="billing", batch_size=500)
    async def bill(batch: streamq.Batch[OrderPlaced]) -> None: ...

    Options (see AppSettings, validated here): shutdown_grace_ms, executor_workers, freeze_gc,
    connect_timeout_ms; metrics_port, metrics_host, metrics_refresh_ms, loop_stall_ms and
    heartbeat_interval_ms (see streamq/metrics.py).
    """

    def __init__(
        self,
        redis: RedisLike = None,
        *,
        shutdown_grace_ms: int = DEFAULT_SHUTDOWN_GRACE_MS,
        executor_workers: int | None = None,
        freeze_gc: bool = True,
        connect_timeout_ms: int | None = None,
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_METRICS_HOST,
        metrics_refresh_ms: int = DEFAULT_METRICS_REFRESH_MS,
        loop_stall_ms: int = DEFAULT_LOOP_STALL_MS,
        heartbeat_interval_ms: int | None = DEFAULT_HEARTBEAT_INTERVAL_MS,
    ) -> None:
        self.redis = redis
        # freeze_gc: gc.freeze() once started. What exists by then (modules, the app, the clients) lives as
        # long as the process, and leaving it out of full collections spares the worker their pauses (10-70
        # ms measured with ~36k objects on a 2-core VM), which showed as the worst end-to-end latencies.
        # Process-wide: pass False when the app shares its process with other work that relies on it.
        self.settings = AppSettings(
            shutdown_grace_ms=shutdown_grace_ms,
            executor_workers=executor_workers,
            freeze_gc=freeze_gc,
            connect_timeout_ms=connect_timeout_ms,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_refresh_ms=metrics_refresh_ms,
            loop_stall_ms=loop_stall_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        # The port /metrics is served on while run() runs (with metrics_port=0, the one picked), else None.
        self.served_metrics_port: int | None = None
        self.specs: list[tuple[ConsumerSettings, HandlerSet]] = []
        self.consumers: list[Consumer | PartitionedConsumer] = []
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False  # stop() before run() started: the next run() returns at once
        self._tasks: list[asyncio.Task[None]] = []
        self._signals = 0
        self._abandoned = False  # batches in flight were given up (a second signal, or the grace period)

    @property
    def shutdown_grace_ms(self) -> int:
        return self.settings.shutdown_grace_ms

    # ------------------------------------------------------------------------------------------ registry

    def consumer(
        self, stream: str, *, group: str, events: Sequence[type[Event]] | None = None, **settings: Any
    ) -> Callable[[F], F]:
        """Register the decorated function as a consumer of `stream` in `group` (see ConsumerSettings)."""

        def register(fn: F) -> F:
            self.add_consumer(fn, stream, group=group, events=events, **settings)
            return fn

        return register

    def add_consumer(
        self,
        fn: Callable[..., Any],
        stream: str,
        *,
        group: str,
        events: Sequence[type[Event]] | None = None,
        **settings: Any,
    ) -> ConsumerSettings:
        """Register `fn`; the handler is checked now (ConfigurationError for one that cannot work).

        Several handlers of one stream and group share one consumer, which routes each event to the
        handler of its type: give their settings once (the others repeat them or give none).
        """
        try:
            config = ConsumerSettings(stream=stream, group=group, **settings)
        except TypeError as exc:
            raise ConfigurationError(f"unknown consumer setting: {exc}") from None
        if config.ordered and config.partitions is None:
            raise ConfigurationError(
                "ordered=True needs partitions=N: each partition has one worker at a time, a plain stream"
                " is shared by all of them"
            )
        spec = HandlerSpec(fn, events)
        for index, (known, handlers) in enumerate(self.specs):
            if (known.stream, known.group) != (stream, group):
                continue
            if settings and config != known:
                raise ConfigurationError(
                    f"handlers of stream {stream!r} and group {group!r} share one consumer: give its"
                    f" settings once (handler {spec.name} differs from {handlers.name})"
                )
            handlers.add(spec)
            self.specs[index] = (known, handlers)
            return known
        self.specs.append((config, HandlerSet(spec)))
        return config

    # ------------------------------------------------------------------------------------------ running

    async def run(
        self, *, burst: bool = False, handle_signals: bool = False, connect_timeout_ms: int | None = None
    ) -> None:
        """Run every consumer until stop() (or a signal, with handle_signals); in burst mode until idle.

        Cancelled (asyncio.wait_for, a TaskGroup), it stops reading, settles or gives back what the
        consumers hold, and only then re-raises: nothing of it runs on after run() has ended.
        connect_timeout_ms: how long to wait for an unreachable server (default: the app's setting).
        """
        if not self.specs:
            raise ConfigurationError("the app has no consumers: decorate a handler with @app.consumer(...)")
        if connect_timeout_ms is None:
            connect_timeout_ms = self.settings.connect_timeout_for(burst=burst)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = stopping = asyncio.Event()
        if self._stop_requested:
            stopping.set()
        fatal: asyncio.Future[BaseException] = loop.create_future()

        def on_fatal(error: BaseException) -> None:  # from the lease keeper's thread
            def report() -> None:
                if not fatal.done():
                    fatal.set_result(error)

            loop.call_soon_threadsafe(report)

        replaced: dict[signal.Signals, SignalHandler] = {}
        client, owned = async_client(self.redis)
        self._size_pool(client, owned)
        # The lease keeper's thread needs its own (synchronous) client to the same server or cluster.
        target = self.redis
        keeper = LeaseKeeper(
            lambda: sync_client(client if not isinstance(target, str | None) else resolve_url(target)),
            on_fatal,
        )
        executor = ThreadPoolExecutor(
            max_workers=self._executor_workers(), thread_name_prefix=HANDLER_THREAD_PREFIX
        )
        observation: Observation | None = None
        try:
            observation = Observation(
                self.settings, [cfg for cfg, _ in self.specs], lambda: self.consumers, self.counts, client,
                keeper,
            )  # fmt: skip
            observation.start()
            self.served_metrics_port = observation.port
            # Signals first: a SIGTERM while waiting for the server must stop the wait, not kill the process.
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    found = signal.getsignal(sig)
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    replaced[sig] = found
            # On a cluster, the node of the registry stands for all: they run one version, one config.
            server = await self._check_server(
                for_key(client, keys.REGISTRY_KEY), stopping, connect_timeout_ms
            )
            if server is None:
                return  # stopped while waiting for the server
            shown = redact(resolve_url(target)) if isinstance(target, str | None) else "client given"
            log.info("connected", redis=shown, **server)
            observation.connected()
            if server.get("maxmemory_policy") not in (None, "", "noeviction"):
                log.warning(
                    "maxmemory-policy is not noeviction: the server may evict streams and lose events",
                    maxmemory_policy=server["maxmemory_policy"],
                )
            keeper.start()
            self.consumers = [
                consumer
                for cfg, hs in self.specs
                for consumer in _consumers(
                    cfg, hs, client, keeper, executor, observation.observer_for(cfg.stream, cfg.group)
                )
            ]
            if self.settings.freeze_gc:
                gc.collect()
                gc.freeze()
            self._tasks = [
                asyncio.create_task(c.run(stopping, burst=burst), name=f"streamq-{c.name}")
                for c in self.consumers
            ]
            observation.start_loops()
            await self._supervise(stopping, fatal)
        except asyncio.CancelledError:
            # Cancel means: stop reading, settle or give back what is in hand, then return. The consumers
            # are separate tasks: without this they would run on after run() ended.
            stopping.set()
            await self._cancel_consumers()
            raise
        finally:
            _restore_signal_handlers(loop, replaced)
            if observation is not None:
                await observation.stop()
            self.served_metrics_port = None
            keeper.stop()
            executor.shutdown(wait=False, cancel_futures=True)
            if owned:
                await client.aclose()
            self._stopping = None
            self._loop = None
            self._stop_requested = False

    def _extra_lanes(self) -> int:
        """Lanes beyond the first of every consumer (0 when no consumer asks for concurrency)."""
        return sum(cfg.concurrency - 1 for cfg, _ in self.specs)

    def _executor_workers(self) -> int | None:
        """Threads for plain `def` handlers: as set; else the pool's default, raised to one per lane so that
        lanes of a plain handler do not queue for threads (and time out there, with handler_timeout_ms)."""
        if self.settings.executor_workers is not None or not self._extra_lanes():
            return self.settings.executor_workers
        lanes = sum(cfg.concurrency for cfg, _ in self.specs)
        return min(max(min(32, (os.cpu_count() or 1) + 4), lanes), MAX_EXECUTOR_WORKERS)

    def _size_pool(self, client: AsyncClient, owned: bool) -> None:
        """Every lane keeps a pooled connection for its reads: a pool built here grows by one per extra lane;
        a client given whose pool may be too small is warned about (lanes would wait for connections)."""
        extra = self._extra_lanes()
        if not extra:
            return
        if isinstance(client, AsyncSlotClients):  # one pool per slot, built here
            client.max_connections = max(client.max_connections, DEFAULT_MAX_CONNECTIONS + extra)
            return
        pool = client.connection_pool
        needed = DEFAULT_MAX_CONNECTIONS + extra
        if owned:
            pool.max_connections = max(pool.max_connections, needed)
        elif pool.max_connections < needed:
            log.warning(
                "the client's pool may be too small for the consumers' lanes: they would wait for it",
                max_connections=pool.max_connections,
                suggested=needed,
            )

    async def _check_server(
        self, client: aioredis.Redis, stopping: asyncio.Event, timeout_ms: int | None
    ) -> dict[str, str] | None:
        """Check the server, waiting for it while it is down, as the consumers do: a worker started during
        an outage (a restart, a failover) waits instead of exiting, for timeout_ms at most (None: for ever).
        A connection that fails for another reason (TLS, authentication) fails at once. Returns None when
        stop() came first."""
        delay_s = 0.05
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while not stopping.is_set():
            try:
                return await _wire.check_server(client)
            except (*TRANSIENT, ResponseError) as exc:
                if stopping.is_set():
                    return None
                if not _wire.passes(exc) and (not isinstance(exc, TRANSIENT) or not _server_down(exc)):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise ServerError(
                        f"the server was unreachable for {timeout_ms} ms (connect_timeout_ms):"
                        f" {describe_error(exc)}"
                    ) from exc
                log.warning(
                    "redis unavailable at start, retrying", error=describe_error(exc), retry_in_s=delay_s
                )
                wait_s = delay_s if deadline is None else max(0.0, min(delay_s, deadline - time.monotonic()))
                await _sleep_or_stop(stopping, wait_s)
                delay_s = min(delay_s * 2, MAX_RECONNECT_DELAY_S)
        return None

    async def _supervise(self, stopping: asyncio.Event, fatal: asyncio.Future[BaseException]) -> None:
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        try:
            pending: set[asyncio.Future[Any]] = set(self._tasks)
            while pending:
                done, _ = await asyncio.wait(
                    pending | {stop_wait, fatal}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done & pending:
                    pending.discard(task)
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        # One consumer failing for good (a configuration error, a loop that cannot recover)
                        # stops the app: running half an application quietly would be worse.
                        stopping.set()
                        await self._drain(pending)
                        raise error
                if fatal in done:
                    # A part every consumer relies on (the lease keeper) failed for good.
                    stopping.set()
                    await self._drain(pending)
                    raise fatal.result()
                if stop_wait in done:
                    await self._drain(pending)
                    # A consumer whose background loop gave up sets the shared `stopping` itself
                    # (Consumer.fail), so its error arrives here, after the drain: raise it, or run()
                    # would return as if stopped on purpose and the failure would go unseen.
                    for task in pending:
                        error = None if task.cancelled() else task.exception()
                        if error is not None:
                            raise error
                    return
        finally:
            stop_wait.cancel()

    async def _drain(self, pending: set[asyncio.Future[Any]]) -> None:
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_ms / 1000)
        if late:
            self._abandoned = True
            log.warning(
                "grace period over: abandoning batches in flight (they are given back to be reclaimed)",
                consumers=len(late),
            )
            for task in late:
                task.cancel()
            await asyncio.wait(late)

    async def _cancel_consumers(self) -> None:
        running = [task for task in self._tasks if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)

    async def run_until_idle(self) -> None:
        """Process until every stream is drained, nothing is pending and no retry is waiting."""
        await self.run(burst=True)

    def stop(self) -> None:
        """Stop reading and finish the batches in hand. Idempotent; safe from a signal handler and from
        another thread; called before run() has started, it makes that run() return at once."""
        self._stop_requested = True
        stopping, loop = self._stopping, self._loop
        if stopping is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stopping.set()
        else:
            loop.call_soon_threadsafe(stopping.set)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "stopping: finishing batches in hand (signal again to stop at once)",
                signal=sig.name,
                grace_ms=self.settings.shutdown_grace_ms,
            )
            self.stop()
            return
        log.warning("stopping at once: unsettled entries are given back to be reclaimed", signal=sig.name)
        self._abandoned = True
        for task in self._tasks:
            task.cancel()

    def counts(self) -> dict[str, int]:
        """The consumers' counters added up; `loop_restarts` includes the lease keeper's restarts."""
        total: dict[str, int] = {}
        for consumer in self.consumers:
            for name, value in consumer.counts.items():
                total[name] = total.get(name, 0) + value
        if self.consumers:  # every consumer of a run shares one lease keeper
            keeper_restarts = self.consumers[0].lease_keeper.restarts
            total["loop_restarts"] = total.get("loop_restarts", 0) + keeper_restarts
        return total


def _consumers(
    settings: ConsumerSettings,
    handlers: HandlerSet,
    client: AsyncClient,
    keeper: LeaseKeeper,
    executor: ThreadPoolExecutor,
    observer: Callable[[int, float], None] | None = None,
) -> list[Consumer] | list[PartitionedConsumer]:
    """What runs one registered consumer: its lanes, or for a partitioned stream the part that runs lanes
    on each partition this worker owns. `observer`: what each lane calls once per settled batch (metrics)."""
    if settings.partitions is None:
        return _lanes(settings, handlers, client, keeper, executor, observer)
    make_lanes = functools.partial(
        _lanes, handlers=handlers, client=client, keeper=keeper, executor=executor, observer=observer
    )
    return [PartitionedConsumer(settings, for_key(client, settings.stream), make_lanes, keeper)]


def _lanes(
    settings: ConsumerSettings,
    handlers: HandlerSet,
    client: AsyncClient,
    keeper: LeaseKeeper,
    executor: ThreadPoolExecutor,
    observer: Callable[[int, float], None] | None = None,
) -> list[Consumer]:
    """The lanes of one consumer: a lead, and concurrency - 1 lanes that share its background loops."""
    stream_client = for_key(client, settings.stream)
    registry_client = for_key(client, keys.REGISTRY_KEY)
    parent = logical_stream(settings.stream)  # a partition reads its logical stream's pause hash too
    parent_client = for_key(client, parent[0]) if parent is not None else None
    lead = Consumer(
        settings, handlers, stream_client, keeper, executor,
        registry_client=registry_client, parent_client=parent_client,
    )  # fmt: skip
    lanes = [
        lead,
        *(
            Consumer(
                settings,
                handlers,
                stream_client,
                keeper,
                executor,
                lead=lead,
                lane=lane,
                registry_client=registry_client,
            )
            for lane in range(1, settings.concurrency)
        ),
    ]
    for lane in lanes:
        lane.observer = observer
    return lanes


def _restore_signal_handlers(
    loop: asyncio.AbstractEventLoop, replaced: dict[signal.Signals, SignalHandler]
) -> None:
    """Remove the loop's handlers and put back the ones found before: the program embedding the app may
    have its own, and remove_signal_handler alone resets SIGINT and SIGTERM to Python's defaults.

    A handler found as None was installed outside Python and cannot be put back from it. One that another
    callback registered on this same loop (add_signal_handler) comes back at the signal level, but the loop
    forgot that callback when ours replaced it: no public API can read it.
    """
    for sig, found in replaced.items():
        loop.remove_signal_handler(sig)
        if found is not None:
            signal.signal(sig, found)


def _server_down(error: BaseException) -> bool:
    """True when an error says the server is not there (yet): refused, reset, timed out, or loading."""
    down = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError, RedisTimeoutError)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (*down, BusyLoadingError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def run_app(
    app: App, *, burst: bool = False, use_uvloop: bool = True, connect_timeout_ms: int | None = None
) -> int:
    """Run an app in a fresh event loop (uvloop when available) with signal handling; returns an exit code:
    OK, ABANDONED (the grace period ran out with batches in flight) or INTERRUPTED (a second signal).
    Errors that stop the app for good (a configuration error, a part that failed) are raised."""
    loop_factory = None
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(app.run(burst=burst, handle_signals=True, connect_timeout_ms=connect_timeout_ms))
        except asyncio.CancelledError:
            code = INTERRUPTED
        else:
            code = INTERRUPTED if app._signals > 1 else ABANDONED if app._abandoned else OK
    if app._abandoned:
        _exit_if_handlers_run_on(code)
    return code


def _exit_if_handlers_run_on(code: int) -> None:
    """After batches were abandoned (stopped at once, or the grace period ran out), exit now if sync handlers
    still run in their threads.

    A thread cannot be interrupted, and the interpreter joins executor threads at exit, so returning would
    wait for those handlers after all. Their entries stay pending and another worker reclaims them.
    """
    threads = [t for t in threading.enumerate() if t.name.startswith(HANDLER_THREAD_PREFIX)]
    for thread in threads:
        thread.join(0.2)  # idle executor threads are on their way out already
    busy = sum(thread.is_alive() for thread in threads)
    if busy:
        log.warning("exiting without waiting for handlers still running in threads", threads=busy)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
