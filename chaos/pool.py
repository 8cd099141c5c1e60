"""The pool run (`python -m chaos --pool N`): the workers are one process pool, and children die under it.

Instead of a fleet of `python -m chaos.worker` processes the harness supervises itself, the workers are
one `streamq worker chaos.pool_app:app --processes N` command: streamq's own supervisor (streamq/_pool.py)
starts the N children and must restart the ones that die. The run, against the usual ledger and checker:

1. start the pool; publish the planned events over the fault window while the nemesis SIGKILLs a random
   child every few seconds (never the supervisor). Before each kill the victim is frozen (SIGSTOP) and the
   entries it holds counted, as chaos/faults.py does: that count bounds the duplicates the kill may cause.
2. at the end of the window, with events still in flight, SIGTERM the supervisor: it forwards SIGTERM to
   every child, each settles what it holds within its grace period, and the pool must exit 0 (every child
   exiting 0). A graceful stop may not cause duplicates: it is recorded (`pool_sigterm`) but adds nothing
   to the duplicate bound.
3. start a second pool (the next deploy), let it drain, SIGTERM it too; then the checker runs as usual.

Victims are children that have run HEALTHY_AFTER_MS (10 s). A child killed younger than that is, to the
pool, a crash at start: CRASH_LOOP_DEATHS of those in a row and the pool rightly gives up (tests/test_pool.py
tests that policy). A kill every few seconds among young children would test the crash-loop rule, not
recovery, so the nemesis waits for a healthy child; with 3 children that allows a kill every ~3.5 s.

The supervisor's log (JSON lines, its children's lines among them) is read as it grows: every death it
logs is checked against the nemesis's kills, and one that is not the nemesis's (or a supervisor that exits
by itself) is an unexplained worker exit, which fails the run. Failpoints are not armed: every child
inherits the supervisor's environment, so one cannot be armed alone (chaos/pool_app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import streamq
from streamq._pool import HEALTHY_AFTER_MS

from .faults import _PID, BUSY_WAIT_S, KILL, WORKER_EXIT, Planned, held_by_pid, inflight, pending_by_consumer
from .fleet import Exit, WorkerSettings, WorkersOutcome, _die_with_parent, _tail
from .ledger import Ledger
from .worker import FAILPOINTS_ENV, WORKER_ARGS_ENV

APP_PATH = "chaos.pool_app:app"
POOL_SIGTERM = "pool_sigterm"  # fault kind: SIGTERM to the supervisor while events are in flight
HEALTHY_MARGIN_S = 1.0  # a victim has run this much past HEALTHY_AFTER_MS by its own start time
WAIT_HEALTHY_S = 6.0  # how long a kill waits for a healthy child before it is skipped
READY_TIMEOUT_S = 30.0  # every child started and consuming: imports on a loaded 2-core box
BUSY_STOP_WAIT_S = 2.0  # how long the SIGTERM waits for a moment when children hold entries
STOP_TIMEOUT_S = 30.0  # SIGTERM to exit: the children's grace period (10 s) plus a blocked read
WATCH_EVERY_S = 0.1
REPO_ROOT = Path(__file__).resolve().parents[1]


def exit_code(described: str) -> int:
    """The returncode behind the pool's `exit 3` / `killed by SIGKILL` / `killed by signal 40`."""
    if described.startswith("exit "):
        return int(described.removeprefix("exit "))
    name = described.removeprefix("killed by ")
    if name.startswith("signal "):
        return -int(name.removeprefix("signal "))
    return -int(signal.Signals[name])


def _children_of(parent: int) -> list[tuple[int, float]]:
    """(pid, seconds since it started) of each live process whose parent is `parent` (Linux /proc)."""
    with open("/proc/uptime") as uptime:
        now_s = float(uptime.read().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command: state, ppid, ..., starttime (the 20th field after it), in clock ticks.
        if fields[0] != "Z" and int(fields[1]) == parent:
            found.append((int(entry), now_s - int(fields[19]) / ticks))
    return found


@dataclass(frozen=True)
class Child:
    pid: int
    slot: int
    age_s: float  # since the process was created (a little before the pool counts from)


class WorkerPool:
    """One `streamq worker chaos.pool_app:app --processes N` at a time, and everything its log says."""

    def __init__(self, settings: WorkerSettings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = ""
        self.killed: set[int] = set()  # children the nemesis killed
        self.records: list[dict[str, Any]] = []  # every JSON line of every generation's log, in order
        self.stopping = False
        self._offset = 0
        self._slots: dict[int, int] = {}  # child pid -> slot

    def start(self) -> None:
        self.generation += 1
        self.stopping = False
        self._offset = 0
        env = dict(os.environ)
        # The children import this very harness and this very streamq, installed or not.
        roots = dict.fromkeys(str(Path(path).resolve().parents[1]) for path in (__file__, streamq.__file__))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*roots, env.get("PYTHONPATH", "")]))
        env[WORKER_ARGS_ENV] = shlex.join(self.settings.argv()[3:])  # what `python -m chaos.worker` takes
        env.pop(FAILPOINTS_ENV, None)
        argv = [
            sys.executable, "-m", "streamq", "worker", APP_PATH, "--processes", str(self.processes),
            "--log-json", "--log-level", "info",
        ]  # fmt: skip
        self.log_path = os.path.join(self.settings.log_dir, f"pool-gen{self.generation}.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def read_log(self) -> list[dict[str, Any]]:
        """The current log's JSON lines written since the last call (a line still being written waits)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = []
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    record["generation"] = self.generation
                    new.append(record)
                    if record.get("event") == "worker process started":
                        self._slots[int(record["pid"])] = int(record["slot"])
        self.records += new
        return new

    def lines(self, event: str, generation: int | None = None) -> list[dict[str, Any]]:
        """Records whose event starts with `event` (of one generation, or all)."""
        return [
            r for r in self.records
            if str(r.get("event", "")).startswith(event) and generation in (None, r["generation"])
        ]  # fmt: skip

    def children(self) -> list[Child]:
        """The supervisor's running children (zombies not counted), from /proc."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [Child(pid, self._slots.get(pid, -1), age_s) for pid, age_s in _children_of(self.process.pid)]

    def consuming(self) -> set[int]:
        """Children of the current supervisor that run and have started their consumer."""
        started = {
            int(m.group(1))
            for r in self.lines("consumer started", self.generation)
            if (m := _PID.search(str(r.get("consumer", ""))))
        }
        return started & {child.pid for child in self.children()}

    async def until_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Wait until the supervisor has logged the death of every child killed so far and all its slots
        run a consuming child again: a SIGTERM then reaches N workers, and no death is still unseen (the
        supervisor, taking a signal before reaping, would count a death it had not seen yet as a child
        failing while stopping, and exit 1)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read_log()
            gone = self.lines("worker process died") + self.lines("worker process exited")
            logged = {int(r["pid"]) for r in gone}
            if self.killed <= logged and len(self.consuming()) == self.processes:
                return True
            await asyncio.sleep(0.05)
        return False

    def kill(self, pid: int) -> None:
        self.killed.add(pid)  # before the signal: the supervisor may log the death at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[int, int | None]:
        """SIGTERM the supervisor (it forwards it to every child) and wait; SIGKILL its process group and
        the children if it overstays. Returns {pid: exit code} of the supervisor and of each child that
        stopped (as the supervisor logged it); None for one that had to be killed."""
        assert self.process is not None
        self.stopping = True
        kids = [child.pid for child in self.children()]
        self.process.send_signal(signal.SIGTERM)
        codes: dict[int, int | None] = {}
        try:
            codes[self.process.pid] = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            for pid in [self.process.pid, *kids]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()
            codes[self.process.pid] = None
        self.read_log()
        for record in self.lines("worker process exited", self.generation):
            codes[int(record["pid"])] = exit_code(str(record["exit"]))
        for pid in kids:
            codes.setdefault(pid, None)  # never logged as exited: the supervisor did not see it stop
        return codes

    def summary(self) -> dict[str, int]:
        """The pool's own figures for the report: what was killed, and what the supervisor made of it."""
        died = self.lines("worker process died")
        killed_died = [r for r in died if int(r["pid"]) in self.killed and r["exit"] == "killed by SIGKILL"]
        return {
            "processes": self.processes,
            "supervisors": self.generation,
            "children_started": len(self.lines("worker process started")),
            "children_killed": len(self.killed),
            "kills_logged_as_deaths": len(killed_died),
            "restarts": sum(1 for r in self.lines("worker process started") if int(r["restarts"]) > 0),
            "max_deaths_in_a_row": max((int(r.get("deaths_in_a_row", 0)) for r in died), default=0),
            "crash_loops": len(self.lines("crash loop")),
            "children_exited_on_sigterm": len(self.lines("worker process exited")),
        }


class PoolNemesis:
    """SIGKILLs a random healthy child of the pool at each KILL of the schedule; records each kill."""

    def __init__(
        self,
        *,
        pool: WorkerPool,
        admin: aioredis.Redis,
        ledger: Ledger,
        stream_keys: tuple[str, str],
        group: str,
        rng: random.Random,
        busy_threshold: int,
    ) -> None:
        self.pool = pool
        self.admin = admin
        self.ledger = ledger
        self.stream_keys = stream_keys
        self.group = group
        self.rng = rng
        self.busy_threshold = busy_threshold
        self.healthy_after_s = HEALTHY_AFTER_MS / 1000 + HEALTHY_MARGIN_S
        self.done: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.ends_at = float("inf")  # no kill waits for a victim past the end of the window

    async def run(self, schedule: list[Planned], started: float, window_s: float) -> None:
        self.ends_at = started + window_s
        for planned in schedule:
            delay = started + planned.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            did = planned.kind == KILL and await self.kill()
            tally = self.done if did else self.skipped
            tally[planned.kind] = tally.get(planned.kind, 0) + 1

    async def _held(self) -> dict[int, int]:
        try:
            return held_by_pid(await pending_by_consumer(self.admin, self.stream_keys, self.group))
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return {}

    async def _victim(self) -> Child | None:
        """A healthy child, usually (two kills in three) the first seen holding half a batch or more."""
        now = time.monotonic()
        healthy_by = min(now + WAIT_HEALTHY_S, self.ends_at)
        busy_by = now + (BUSY_WAIT_S if self.rng.random() < 2 / 3 else 0.0)
        while True:
            now = time.monotonic()
            # A child killed a moment ago may not have died yet: a kill that waited for a healthy child
            # can be followed at once by the next one, which must not pick the same victim.
            candidates = sorted(
                (
                    c
                    for c in self.pool.children()
                    if c.age_s >= self.healthy_after_s and c.pid not in self.pool.killed
                ),
                key=lambda c: c.pid,
            )
            if not candidates:
                if now >= healthy_by:
                    return None
                await asyncio.sleep(0.05)
                continue
            held = await self._held()
            most = max(held.get(c.pid, 0) for c in candidates)
            if most >= self.busy_threshold or now >= busy_by:
                return self.rng.choice([c for c in candidates if held.get(c.pid, 0) == most])
            await asyncio.sleep(0.01)

    async def kill(self) -> bool:
        victim = await self._victim()
        if victim is None:
            return False
        try:
            os.kill(victim.pid, signal.SIGSTOP)  # frozen while what it holds is counted
        except ProcessLookupError:
            return False
        held = await inflight(self.admin, self.stream_keys, self.group, [victim.pid])
        self.pool.kill(victim.pid)
        self.ledger.add_fault(
            KILL, f"pool{self.pool.generation}/slot{victim.slot}/pid{victim.pid}", held,
            pid=victim.pid, pool_child=True, ran_s=round(victim.age_s, 1),
        )  # fmt: skip
        return True


async def _busy_moment(admin: aioredis.Redis, stream_keys: tuple[str, str], group: str) -> int | None:
    """Wait (up to BUSY_STOP_WAIT_S) until some child holds entries; returns how many are held."""
    deadline = time.monotonic() + BUSY_STOP_WAIT_S
    while True:
        held = await inflight(admin, stream_keys, group)
        if held or time.monotonic() >= deadline:
            return held
        await asyncio.sleep(0.005)


async def run_pool(
    *,
    processes: int,
    settings: WorkerSettings,
    admin: aioredis.Redis,
    ledger: Ledger,
    stream_keys: tuple[str, str],
    group: str,
    rng: random.Random,
    busy_threshold: int,
    schedule: list[Planned],
    window_s: float,
    publish: Callable[[], Awaitable[None]],
    drain: Callable[[], Awaitable[tuple[bool, float]]],
    say: Callable[[str], None],
) -> WorkersOutcome:
    """Steps 1-3 of the module docstring; the caller checks what they left behind."""
    pool = WorkerPool(settings, processes)
    nemesis = PoolNemesis(
        pool=pool, admin=admin, ledger=ledger, stream_keys=stream_keys, group=group, rng=rng,
        busy_threshold=busy_threshold,
    )  # fmt: skip
    watching = asyncio.Event()

    def explain(records: list[dict[str, Any]]) -> None:
        """A death the nemesis did not cause, or a supervisor that ended by itself: unexplained exits."""
        for record in records:
            event = str(record.get("event", ""))
            if event.startswith(("worker process died", "worker process failed", "crash loop")):
                pid = int(record["pid"])
                if pid not in pool.killed:
                    code = exit_code(str(record["exit"]))
                    gone = Exit(int(record["slot"]), pid, code, "", time.monotonic(), json.dumps(record))
                    ledger.add_fault(
                        WORKER_EXIT, f"pool{pool.generation}/slot{gone.slot}/pid{pid}", None,
                        pid=pid, returncode=code, failpoints="", log_tail=gone.log_tail,
                    )  # fmt: skip
        if pool.process is not None and not pool.stopping and (ended := pool.process.poll()) is not None:
            pool.stopping = True  # reported once
            ledger.add_fault(WORKER_EXIT, f"pool{pool.generation}/supervisor", None, pid=pool.pid,
                             returncode=ended, failpoints="", log_tail=_tail(pool.log_path))  # fmt: skip

    async def watch() -> None:
        while not watching.is_set():
            explain(pool.read_log())
            await asyncio.sleep(WATCH_EVERY_S)

    pool.start()
    watcher = asyncio.create_task(watch())
    exit_codes: dict[int, int | None] = {}
    try:
        window_started = time.monotonic()
        await asyncio.gather(publish(), nemesis.run(schedule, window_started, window_s))
        publish_s = time.monotonic() - window_started
        if not await pool.until_ready():
            say("the pool is not back to strength after the kills")  # the checker will say what it cost
        in_flight = await _busy_moment(admin, stream_keys, group)
        say(f"faults over after {publish_s:.1f} s: {nemesis.done}; SIGTERM to the pool, {in_flight} held")
        first_pid = pool.pid
        stopped = pool.terminate()
        exit_codes.update(stopped)
        ledger.add_fault(POOL_SIGTERM, f"pool1/supervisor/pid{first_pid}", in_flight, pid=first_pid,
                         exit_codes={str(pid): code for pid, code in stopped.items()})  # fmt: skip
        say(f"pool stopped: {stopped}; a second pool drains")
        pool.start()
        if not await pool.until_ready():
            say("the second pool did not start every child")
        drained, drain_s = await drain()
        say(f"drained={drained} in {drain_s:.1f} s; stopping the pool")
    finally:
        watching.set()
        await watcher
        if pool.process is not None and pool.process.poll() is None:
            exit_codes.update(pool.terminate())
        elif pool.process is not None:
            exit_codes.setdefault(pool.pid, pool.process.returncode)
    return WorkersOutcome(
        publish_s=publish_s,
        drained=drained,
        drain_s=drain_s,
        exit_codes=exit_codes,
        faults_done=dict(sorted(nemesis.done.items())),
        faults_skipped=dict(sorted(nemesis.skipped.items())),
        spawned=len(pool.lines("worker process started")),
        pool=pool.summary(),
    )
