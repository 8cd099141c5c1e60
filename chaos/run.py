"""One chaos run, start to finish: server, workers, producer and nemesis; drain; final state; check.

1. start a throwaway server (AOF, appendfsync always), unless a --redis-url is given
2. start the worker fleet, then publish the planned events paced over the fault window while the
   nemesis injects its seeded schedule of faults and the supervisor replaces dead workers
3. heal (resume stopped workers), let the workers drain until nothing is pending, undelivered or
   waiting for a retry, then stop them with SIGTERM
   (with `pool` set, steps 2 and 3 are chaos/pool.py's: one `streamq worker --processes N` whose
   children are killed, stopped by SIGTERM with events in flight, and a second pool that drains)
4. read the final state and the dead-letter stream, merge the workers' ledger files, and check
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamq import keys
from streamq._connection import redact
from streamq.deadletter import parse_entry
from streamq.embedded import EmbeddedServer, ServerBinary, default_server_binary, find_server_binaries

from .checker import CheckReport, FinalState, check
from .faults import WORKER_EXIT, Nemesis, Plan, Planned, build_schedule, retrying
from .fleet import Exit, Fleet, WorkerSettings, WorkersOutcome
from .ledger import DeadLetterRow, Ledger
from .pool import run_pool
from .publisher import PUBLISHER_SABOTAGES, Publisher
from .worker import SABOTAGES
from .workload import MALFORMED_KINDS, malformed, plan_events

GROUP = "chaos"


@dataclass(frozen=True)
class ChaosConfig:
    """Everything a run depends on; with the seed, two runs get the same events and fault schedule."""

    seed: int = 1
    events: int = 100_000
    workers: int = 8
    window_s: float = 330.0  # faults (and publishing) last this long
    chunk_size: int = 100  # events per publish_many call
    poison_rate: float = 0.01
    flaky_rate: float = 0.05
    malformed_per_kind: int = 10
    batch_size: int = 50
    lease_ms: int = 1500
    max_attempts: int = 5
    retry_base_ms: int = 100
    retry_max_ms: int = 1000
    max_event_bytes: int = 4096
    work_ms: int = 20  # the handler's time per batch
    failpoint_probability: float = 0.05  # per check, in a worker started with a failpoint armed
    kill_every_s: tuple[float, float] = (2.0, 5.0)
    stops: int = 6
    server_restarts: int = 4
    client_kills: int = 6
    safe_trims: int = 4
    pending_trims: int = 2
    pending_trim_size: int = 20
    drain_timeout_s: float = 120.0
    fsync: bool = False
    # Scheduling and dedup keys (see publisher.py): the share of chunks published with delay_ms (drawn from
    # 0..max_delay_ms), the share published with dedup keys, and the share of those published again on
    # purpose once they succeeded.
    delayed_rate: float = 0.2
    max_delay_ms: int = 3000
    dedup_rate: float = 0.5
    republish_rate: float = 0.25
    # Break streamq on purpose, comma-separated (worker.SABOTAGES, publisher.PUBLISHER_SABOTAGES): the run
    # must then FAIL.
    sabotage: str = ""
    # Above 0: the workers are one `streamq worker --processes N` pool of this many children (chaos/pool.py)
    # instead of `workers` separate processes, and the only faults are kills of its children.
    pool: int = 0


LONG = ChaosConfig()
QUICK = ChaosConfig(
    events=20_000,
    workers=4,
    window_s=45.0,
    malformed_per_kind=4,
    stops=1,
    server_restarts=1,
    client_kills=1,
    safe_trims=1,
    pending_trims=1,
    drain_timeout_s=60.0,
)
# The pool run (`--pool N`): children killed (only healthy ones: chaos/pool.py), no other fault. Batches
# take 100 ms of work, so that kills find them in flight.
POOL_QUICK = dataclasses.replace(
    QUICK, events=20_000, window_s=30.0, work_ms=100, kill_every_s=(2.0, 4.0), pool=3,
    stops=0, server_restarts=0, client_kills=0, safe_trims=0, pending_trims=0,
)  # fmt: skip
POOL_LONG = dataclasses.replace(POOL_QUICK, events=50_000, window_s=180.0, drain_timeout_s=120.0)


class RunReport(msgspec.Struct, kw_only=True):
    ok: bool
    config: dict[str, Any]
    command: str
    server: str  # e.g. "redis-7.0.15 (/usr/bin/redis-server)" or the redacted URL
    server_version: str
    stream: str
    run_dir: str
    started_at: str
    publish_s: float
    drain_s: float
    total_s: float
    schedule: dict[str, int]  # planned faults per kind
    faults_done: dict[str, int]
    faults_skipped: dict[str, int]
    workers_spawned: int
    failed_publish_calls: int
    pool: dict[str, int] = {}  # a pool run's figures: children killed, restarts, ... (chaos/pool.py)
    publishing: dict[str, int]  # what the publisher did with delays and dedup keys (Publisher.stats)
    check: CheckReport


def pick_binary(path: str | None) -> ServerBinary:
    if path is None:
        return default_server_binary()
    wanted = os.path.abspath(path)
    for binary in find_server_binaries():
        if binary.path == wanted or os.path.realpath(binary.path) == os.path.realpath(wanted):
            return binary
    raise SystemExit(f"no usable server binary at {path}; found: {[b.path for b in find_server_binaries()]}")


def _only(spec: str, known: tuple[str, ...]) -> str:
    """The sabotages of `spec` (comma-separated) that are among `known`: the workers' or the publisher's."""
    return ",".join(name for name in spec.split(",") if name in known)


def _named(url: str, name: str) -> str:
    """The URL with a client name, so this run's connections can be told apart in CLIENT LIST."""
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


async def run(
    config: ChaosConfig,
    *,
    run_dir: Path,
    redis_url: str | None = None,
    server_binary: str | None = None,
    command: str = "",
    progress: Any = None,
) -> RunReport:
    say = progress or (lambda text: None)
    for sub in ("ledger", "logs"):
        os.makedirs(run_dir / sub, exist_ok=True)
    started_wall = time.time()
    started = time.monotonic()
    rng = random.Random(config.seed)
    run_id = f"chaos{config.seed}-{uuid.uuid4().hex[:6]}"
    stream = f"{run_id}"
    retry_key = keys.retry_key(stream, GROUP)

    server: EmbeddedServer | None = None
    if redis_url is None:
        binary = pick_binary(server_binary)
        server = EmbeddedServer(binary, appendonly=True, appendfsync="always")
        server.start()
        url, server_label = server.url, f"{binary.label} ({binary.path})"
    else:
        url, server_label = redis_url, redact(redis_url)
    ledger = Ledger(run_dir / "ledger.sqlite")
    admin = aioredis.Redis.from_url(_named(url, f"{run_id}-admin"))
    try:
        info = await admin.info("server")
        version = str(info.get("valkey_version") or info.get("redis_version"))
        say(f"server {server_label} version {version}, stream {stream}, run dir {run_dir}")

        events = plan_events(rng, config.events, poison_rate=config.poison_rate, flaky_rate=config.flaky_rate)
        bad = [
            malformed(rng, kind, config.events + i * len(MALFORMED_KINDS) + k, config.max_event_bytes)
            for i in range(config.malformed_per_kind)
            for k, kind in enumerate(MALFORMED_KINDS)
        ]
        plan = Plan(
            window_s=config.window_s,
            kill_every_s=config.kill_every_s,
            stops=config.stops,
            server_restarts=config.server_restarts if server is not None else 0,
            client_kills=config.client_kills,
            safe_trims=config.safe_trims,
            pending_trims=config.pending_trims,
        )
        schedule = build_schedule(rng, plan)
        ledger.set_meta("config", asdict(config))
        ledger.set_meta("schedule", [asdict(p) for p in schedule])

        settings = WorkerSettings(
            redis_url=_named(url, f"{run_id}-worker"), stream=stream, group=GROUP,
            ledger_dir=str(run_dir / "ledger"), log_dir=str(run_dir / "logs"),
            batch_size=config.batch_size, lease_ms=config.lease_ms, max_attempts=config.max_attempts,
            retry_base_ms=config.retry_base_ms, retry_max_ms=config.retry_max_ms,
            max_event_bytes=config.max_event_bytes, work_ms=config.work_ms, seed=config.seed,
            fsync=config.fsync, sabotage=_only(config.sabotage, SABOTAGES),
        )  # fmt: skip
        nemesis_rng = random.Random(rng.random())  # drawn before the publisher draws its chunk plans
        publisher = Publisher(
            url=_named(url, f"{run_id}-producer"), stream=stream, ledger=ledger, events=events,
            malformed=bad, chunk_size=config.chunk_size, duration_s=config.window_s, rng=rng,
            delayed_rate=config.delayed_rate, max_delay_ms=config.max_delay_ms, dedup_rate=config.dedup_rate,
            republish_rate=config.republish_rate, sabotage=_only(config.sabotage, PUBLISHER_SABOTAGES),
        )  # fmt: skip

        async def drained() -> tuple[bool, float]:
            return await drain(admin, stream, retry_key, config.drain_timeout_s, config.max_delay_ms)

        say(
            f"{len(events)} events + {len(bad)} malformed over {config.window_s:g} s,"
            + (f" a pool of {config.pool}" if config.pool else f" {config.workers} workers")
            + f", {len(schedule)} faults planned"
        )
        if config.pool:
            outcome = await run_pool(
                processes=config.pool, settings=settings, admin=admin, ledger=ledger,
                stream_keys=(stream, retry_key), group=GROUP, rng=nemesis_rng,
                busy_threshold=max(1, config.batch_size // 2), schedule=schedule, window_s=config.window_s,
                publish=publisher.run,
                drain=drained, say=say,
            )  # fmt: skip
        else:
            outcome = await _run_fleet(config, settings, server, admin, ledger, run_id, stream, retry_key,
                                       nemesis_rng, schedule, publisher, drained, say)  # fmt: skip

        final = await final_state(
            admin, stream, retry_key, outcome.drained, outcome.drain_s, outcome.exit_codes
        )
        ledger.set_dead_letters(await dead_letters(admin, stream))
        invocations, kills = ledger.merge_worker_logs(run_dir / "ledger")
        ledger.set_meta("final", msgspec.to_builtins(final))
        say(f"{invocations} handler invocations and {kills} failpoint kills merged; checking")
        report = check(ledger, final, max_attempts=config.max_attempts, batch_size=config.batch_size)
        planned: dict[str, int] = {}
        for item in schedule:
            planned[item.kind] = planned.get(item.kind, 0) + 1
        return RunReport(
            ok=report.ok,
            config=asdict(config),
            command=command,
            server=server_label,
            server_version=version,
            stream=stream,
            run_dir=str(run_dir),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
            publish_s=round(outcome.publish_s, 1),
            drain_s=round(outcome.drain_s, 1),
            total_s=round(time.monotonic() - started, 1),
            schedule=dict(sorted(planned.items())),
            faults_done=outcome.faults_done,
            faults_skipped=outcome.faults_skipped,
            workers_spawned=outcome.spawned,
            failed_publish_calls=publisher.failed_calls,
            pool=outcome.pool,
            publishing=publisher.stats,
            check=report,
        )
    finally:
        await admin.aclose()
        ledger.close()
        if server is not None:
            server.close()


async def _run_fleet(
    config: ChaosConfig,
    settings: WorkerSettings,
    server: EmbeddedServer | None,
    admin: aioredis.Redis,
    ledger: Ledger,
    run_id: str,
    stream: str,
    retry_key: str,
    rng: random.Random,
    schedule: list[Planned],
    publisher: Publisher,
    drained: Callable[[], Awaitable[tuple[bool, float]]],
    say: Callable[[str], None],
) -> WorkersOutcome:
    """Step 2 and 3 of the module docstring with a fleet of `python -m chaos.worker` processes."""
    fleet = Fleet(settings, size=config.workers)
    nemesis = Nemesis(
        fleet=fleet, server=server, admin=admin, ledger=ledger, stream=stream, retry_key=retry_key,
        group=GROUP, rng=rng, lease_ms=config.lease_ms,
        failpoint_probability=config.failpoint_probability, client_name_prefix=run_id,
        pending_trim_size=config.pending_trim_size, busy_threshold=max(1, config.batch_size // 2),
    )  # fmt: skip

    def on_exit(gone: Exit) -> None:
        ledger.add_fault(
            WORKER_EXIT, f"slot{gone.slot}/pid{gone.pid}", None,
            pid=gone.pid, returncode=gone.returncode, failpoints=gone.failpoints, log_tail=gone.log_tail,
        )  # fmt: skip

    supervising = asyncio.Event()

    async def supervise() -> None:
        while not supervising.is_set():
            fleet.supervise(on_exit)
            await asyncio.sleep(0.1)

    fleet.start()
    supervisor = asyncio.create_task(supervise())
    window_started = time.monotonic()
    try:
        await asyncio.gather(publisher.run(), nemesis.run(schedule, window_started))
        nemesis.heal()
        publish_s = time.monotonic() - window_started
        say(f"faults over after {publish_s:.1f} s: {nemesis.done}; draining")
        is_drained, drain_s = await drained()
        say(f"drained={is_drained} in {drain_s:.1f} s; stopping workers")
    finally:
        supervising.set()
        await supervisor
        nemesis.heal()
        exit_codes = fleet.terminate_all()
    return WorkersOutcome(
        publish_s=publish_s,
        drained=is_drained,
        drain_s=drain_s,
        exit_codes=exit_codes,
        faults_done=dict(sorted(nemesis.done.items())),
        faults_skipped=dict(sorted(nemesis.skipped.items())),
        spawned=fleet.spawned,
    )


# ---------------------------------------------------------------------------------------------- state


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Backlog(msgspec.Struct):
    pending: int
    undelivered: int
    lag: int | None


async def backlog(admin: aioredis.Redis, key: str) -> Backlog:
    """Pending and undelivered entries of the group on one stream key."""
    try:
        groups = await admin.xinfo_groups(key)
    except ResponseError:
        return Backlog(0, 0, 0)  # the key does not exist (no retry yet)
    found = [g for g in groups if _s(g["name"]) == GROUP]
    if not found:
        return Backlog(0, 0, 0)
    info = found[0]
    last_delivered = _s(info["last-delivered-id"])
    # Count what lies beyond the last delivered id ourselves: `lag` may be unknown after a trim.
    newer: Any = await admin.xrange(key, min=f"({last_delivered}", max="+", count=1000)
    lag = info.get("lag")
    return Backlog(int(info["pending"]), len(newer), int(lag) if lag is not None else None)


async def scheduled_soon(admin: aioredis.Redis, stream: str, within_ms: int) -> int:
    """Delayed events in the stream's scheduled set due within `within_ms` of the server's now.

    The drain waits for those (every delay the publisher draws is at most max_delay_ms, and the window is
    over), not for one scheduled far later: that one is the checker's to report (scheduled_drained), not
    a reason to wait out the drain timeout.
    """
    seconds, micros = await admin.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return int(await admin.zcount(keys.scheduled_key(stream), "-inf", now_ms + within_ms))


async def drain(
    admin: aioredis.Redis, stream: str, retry_key: str, timeout_s: float, max_delay_ms: int = 0
) -> tuple[bool, float]:
    """Wait until nothing is pending, undelivered, waiting for a retry or due to be moved in (twice in a
    row)."""
    started = time.monotonic()
    delayed_key = keys.delayed_key(stream, GROUP)
    quiet = 0
    while time.monotonic() - started < timeout_s:
        main = await retrying(lambda: backlog(admin, stream))
        retry = await retrying(lambda: backlog(admin, retry_key))
        delayed = int(await retrying(lambda: admin.zcard(delayed_key)))
        scheduled = await retrying(lambda: scheduled_soon(admin, stream, max_delay_ms))
        busy = main.pending + main.undelivered + retry.pending + retry.undelivered + delayed + scheduled
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= 2:
            return True, time.monotonic() - started
        await asyncio.sleep(0.25)
    return False, time.monotonic() - started


async def final_state(
    admin: aioredis.Redis,
    stream: str,
    retry_key: str,
    drained: bool,
    drain_s: float,
    exit_codes: dict[int, int | None],
) -> FinalState:
    main = await retrying(lambda: backlog(admin, stream))
    retry = await retrying(lambda: backlog(admin, retry_key))
    holding: dict[str, int] = {}
    pending_ids: list[str] = []
    names: set[str] = set()
    for key in (stream, retry_key):
        try:
            for row in await admin.xinfo_consumers(key, GROUP):
                names.add(_s(row["name"]))
                if int(row["pending"]):
                    name = _s(row["name"])
                    holding[name] = holding.get(name, 0) + int(row["pending"])
        except ResponseError:
            continue
    if main.pending:
        rows = await admin.xpending_range(stream, GROUP, min="-", max="+", count=1000)
        pending_ids = [_s(row["message_id"]) for row in rows]
    stats = {_s(k): int(v) for k, v in (await admin.hgetall(keys.stats_key(stream, GROUP))).items()}
    totals = {_s(k): int(v) for k, v in (await admin.hgetall(keys.totals_key(stream))).items()}
    return FinalState(
        drained=drained,
        drain_s=round(drain_s, 2),
        stream_pending=main.pending,
        retry_pending=retry.pending,
        stream_undelivered=main.undelivered,
        retry_undelivered=retry.undelivered,
        stream_lag=main.lag,
        retry_lag=retry.lag,
        delayed=int(await admin.zcard(keys.delayed_key(stream, GROUP))),
        scheduled=int(await admin.zcard(keys.scheduled_key(stream))),
        scheduled_events=int(await admin.hlen(keys.scheduled_events_key(stream))),
        totals=dict(sorted(totals.items())),
        stream_length=int(await admin.xlen(stream)),
        retry_length=int(await admin.xlen(retry_key)) if await admin.exists(retry_key) else 0,
        dlq_length=int(await admin.xlen(keys.dlq_key(stream))),
        stats=dict(sorted(stats.items())),
        consumers=len(names),
        consumers_holding=holding,
        pending_ids=pending_ids,
        worker_exit_codes={str(pid): code for pid, code in exit_codes.items()},
    )


async def dead_letters(admin: aioredis.Redis, stream: str) -> list[DeadLetterRow]:
    out: list[DeadLetterRow] = []
    cursor = "-"
    while True:
        rows: Any = await admin.xrange(keys.dlq_key(stream), min=cursor, max="+", count=1000)
        if not rows:
            return out
        for entry_id, fields in rows:
            letter = parse_entry(entry_id, fields)
            signature = letter.payload if letter.payload is not None else (letter.raw_fields or b"")
            out.append(
                DeadLetterRow(
                    letter.dlq_id, letter.id, letter.reason, letter.attempts, letter.error_type,
                    signature, letter.payload is not None,
                )
            )  # fmt: skip
        cursor = "(" + _s(rows[-1][0])
