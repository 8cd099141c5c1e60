"""The process pool (``streamq worker APP --processes N``): consume throughput at N = 1, 2 and ``auto``.

Measures events/s of the whole command, all its processes together, for:
  * streamq-pool[light-Np]: a handler that does nothing with its batch (100 events a read), so each worker
    is bound by streamq's own reading, decoding and settling, and the server shares the machine's cores;
  * streamq-pool[cpu-Np]: a handler that spends ~250 us of pure-Python arithmetic per event (6,000 rounds
    of ``burn`` below; the figure measured in the repeat is reported as
    ``work_us_per_event``), holding the GIL throughout: the case the pool exists for, since lanes
    (``concurrency=N``) cannot spread it over cores;
with N = 1 (``--processes 1``: one plain worker, no supervisor), 2 and ``auto`` (one per core: 2 on the
2-core box of RESULTS.md). Each N > 1 is compared to N = 1 of the same handler ("relative").

How one repeat runs: the stream is pre-filled (untimed, server-side) and the group created; the measuring
child pauses the group (``streamq.control.pause``), starts ``python -m streamq worker
benchmarks.pool_app:app --processes N`` with its log in a file, and waits until every worker logged
``paused`` (imported, connected, looking at the pause state every 50 ms). The measured section starts
with the resume and ends when the group has been delivered the stream's last entry and nothing is pending
(XINFO GROUPS, polled every 2 ms); then the pool gets SIGTERM and must exit 0. Process start-up and imports
are thus outside the window, and every worker starts reading within 50 ms of the resume. Events moved are
the group's ``acked`` counter. Client CPU is the CPU time of every process of the command (supervisor
included, read from /proc) over the window, plus the measuring child's polling; peak RSS is the
largest worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from benchmarks.harness import REPO_ROOT, Case, Probe, RunContext
from benchmarks.scenarios_streamq import _core, entry_fields
from benchmarks.streams import prefill

APP_PATH = "benchmarks.pool_app:app"
BATCH_SIZE = 100
CPU_ROUNDS = 6_000  # ~250 us per event of benchmarks.pool_app.burn on the 2026-11 box
AUTO = 0  # options are ints: 0 stands for `--processes auto`
PROCESSES = (1, 2, AUTO)
HANDLERS = {"light": (0, 1_200_000, 2_000), "cpu": (CPU_ROUNDS, 30_000, 200)}  # rounds, count, quick count
READY_TIMEOUT_S = 60.0  # interpreter start and imports of every worker, on a loaded 2-core box
DRAIN_TIMEOUT_S = 120.0  # a repeat that moves nothing for this long has failed
POLL_S = 0.002
STOP_TIMEOUT_S = 30.0


def _label(processes: int) -> str:
    return "auto" if processes == AUTO else f"{processes}p"


def _name(handler: str, processes: int) -> str:
    return f"streamq-pool[{handler}-{_label(processes)}]"


CASES = [
    Case(
        scenario="streamq-pool",
        contender="streamq",
        operation="consume",
        batch_size=BATCH_SIZE,
        count=count,
        quick_count=quick_count,
        setup="benchmarks.scenarios_pool:fill",
        measure="benchmarks.scenarios_pool:consume_pool",
        variant=f"{handler}-{_label(processes)}",
        options={"processes": processes, "rounds": rounds},
        chart=False,
        compare_to=_name(handler, 1) if processes != 1 else "",
        detail=(
            f"streamq worker --processes {'auto' if processes == AUTO else processes},"
            + f" batch_size={BATCH_SIZE},"
            + (f" handler burns {rounds} rounds of Python per event" if rounds else " no-op handler")
        ),
    )
    for handler, (rounds, count, quick_count) in HANDLERS.items()
    for processes in PROCESSES
]


def burn(rounds: int) -> int:
    """CPU-bound work that holds the GIL throughout: ~40 ns a round on the 2026-11 benchmark box."""
    x = 0
    for i in range(rounds):
        x = (x * 31 + i) % 1_000_003
    return x


def fill(ctx: RunContext) -> None:
    """The stream, pre-filled server-side with what streamq's Producer writes, and the group at its start."""
    prefill(ctx.url, ctx.stream, entry_fields(ctx.url, ctx.stream), ctx.count, group=ctx.group)


async def consume_pool(ctx: RunContext, probe: Probe) -> int:
    _core()
    from streamq import control, keys

    processes = ctx.options["processes"]
    rounds = ctx.options["rounds"]
    workers = processes if processes != AUTO else (os.cpu_count() or 1)
    client = redis.asyncio.Redis.from_url(ctx.url)
    last_id = (await client.xinfo_stream(ctx.stream))["last-generated-id"]
    await control.pause(client, ctx.stream, ctx.group, reason="benchmark: waiting for the pool")
    env = {
        **os.environ,
        "STREAMQ_BENCH_POOL_STREAM": ctx.stream,
        "STREAMQ_BENCH_POOL_GROUP": ctx.group,
        "STREAMQ_BENCH_POOL_BATCH": str(ctx.batch_size),
        "STREAMQ_BENCH_POOL_ROUNDS": str(rounds),
    }
    argv = [
        sys.executable, "-m", "streamq", "worker", APP_PATH,
        "--processes", "auto" if processes == AUTO else str(processes),
        "--redis-url", ctx.url, "--log-json", "--log-level", "info",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="streamq-bench-pool-") as workdir:
        log_path = Path(workdir) / "pool.log"
        pool = _start(argv, env, log_path)
        try:
            await _until_paused(pool, log_path, workers)
            tree = [pool.pid, *_children_of(pool.pid)]
            cpu_before = _cpu_s(tree)
            async with probe.measure():
                await control.resume(client, ctx.stream, ctx.group)
                await _until_drained(client, ctx.stream, ctx.group, last_id, pool, log_path)
            probe.add_cpu(_cpu_s(tree) - cpu_before)
            for pid in tree:
                probe.add_rss(_peak_rss_bytes(pid))
            code = _stop(pool)
            if code != 0:
                raise RuntimeError(f"the pool exited {code} on SIGTERM: {_tail(log_path)}")
        finally:
            if pool.poll() is None:
                pool.kill()
                pool.wait()
    stats = await client.hgetall(keys.stats_key(ctx.stream, ctx.group))
    await client.aclose()
    moved = int(stats.get(b"acked", 0))
    work_started = time.perf_counter()
    for _ in range(200 if rounds else 0):
        burn(rounds)
    probe.extra["processes"] = workers
    probe.extra["per_process_events_s"] = moved / probe.wall_s / workers if probe.wall_s else 0.0
    probe.extra["work_us_per_event"] = (time.perf_counter() - work_started) / 200 * 1e6 if rounds else 0.0
    return moved


def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The pool (or the single worker), its log and its workers' in one file."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip


def _log_events(log_path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines (the supervisor's and its workers') whose event is `event`."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


def _tail(log_path: Path) -> str:
    return " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])


async def _until_paused(pool: subprocess.Popen[bytes], log_path: Path, workers: int) -> None:
    """Every worker has logged `paused`: it runs, and reads as soon as it sees the resume."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(_log_events(log_path, "paused")) < workers:
        if pool.poll() is not None:
            raise RuntimeError(f"the pool exited {pool.returncode} before it read: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers not paused in {READY_TIMEOUT_S:g} s: {_tail(log_path)}")
        await asyncio.sleep(0.05)


async def _until_drained(
    client: redis.asyncio.Redis, stream: str, group: str, last_id: Any, pool: subprocess.Popen[bytes],
    log_path: Path,
) -> None:  # fmt: skip
    """The group was delivered the stream's last entry and holds nothing pending."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        (info,) = [g for g in await client.xinfo_groups(stream) if g["name"] in (group, group.encode())]
        if info["last-delivered-id"] == last_id and int(info["pending"]) == 0:
            return
        if pool.poll() is not None:
            raise RuntimeError(f"the pool exited {pool.returncode} while consuming: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not drained after {DRAIN_TIMEOUT_S:g} s: {info}")
        await asyncio.sleep(POLL_S)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, ..., utime (11), stime (12)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()


def _children_of(parent: int) -> list[int]:
    """The pids of `parent`'s children (the pool's workers; none for a single worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(_stat(int(entry))[1]) == parent:
                    found.append(int(entry))
    return found


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the processes still alive among `pids`."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process gone meanwhile counts no more
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _peak_rss_bytes(pid: int) -> int:
    """VmHWM of another process of ours (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _stop(pool: subprocess.Popen[bytes]) -> int:
    pool.send_signal(signal.SIGTERM)
    try:
        return pool.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pool.kill()
        pool.wait()
        return -signal.SIGKILL
