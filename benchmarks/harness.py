"""Timing, repeats and resource sampling shared by every benchmark scenario.

Measures, for each case (a scenario at one batch size) and each repeat:
  * events per second of one process: events moved / wall time of the measured section only;
  * client CPU: ``time.process_time()`` over that section (all threads of the measuring process);
  * server CPU: the delta of ``used_cpu_sys + used_cpu_user`` from ``INFO CPU`` over that section
    (works for a throwaway server and for ``--redis-url`` alike; other clients of a shared server count too);
  * peak RSS of the measuring process (VmHWM: its own high-water mark, whatever the harness holds);
  * machine CPU: all CPU time the machine spent over that section (/proc/stat), so that time spent by
    neither the client nor the server (other people's jobs on a shared box) shows up as "other CPU";
  * optional extra figures (``Probe.extra``: latencies, per-process rates, counts), each summarized by its
    median over the repeats.

A scenario that runs several processes (a producer and a worker, N workers) starts them from its measure
function and reports their CPU and peak RSS to the probe (``Probe.add_cpu``, ``Probe.add_rss``): client CPU
is then the sum over its processes (percent of one core, so it may exceed 100%), peak RSS the largest one.

Every repeat runs the measured code in a fresh ``python -m benchmarks.child`` subprocess, so a figure is "per
process", RSS starts clean and no peer's imports or globals leak into another contender's numbers. Untimed
preparation (pre-filling a stream for a consume case) runs in the harness process before the child starts.
Streams are named per repeat (``bench:<scenario>:<batch>:<token>``) and deleted afterwards, never FLUSHALL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import redis
import redis.asyncio
import structlog

log = structlog.get_logger("benchmarks.harness")

DEFAULT_REPEATS = 3
DEFAULT_CASE_TIMEOUT_MS = 300_000  # one child, one repeat; a hung peer fails its case instead of the run
QUICK_CASE_TIMEOUT_MS = 60_000
# /proc/stat counts in 10 ms ticks: "other CPU" of a shorter window would be mostly rounding.
MIN_WALL_FOR_OTHER_CPU_S = 0.5
BENCH_INSTALL_HINT = "skipped (pip install -r benchmarks/requirements.txt)"
REPO_ROOT = Path(__file__).resolve().parent.parent
STREAMQ_REGISTRY_KEY = "streamq:registry"  # the set of streams that had a worker (README, "Keys")

Operation = Literal["publish", "consume", "e2e"]
Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class Case:
    """One measurable thing: a scenario (a family of cases) at one batch or chunk size."""

    scenario: str  # what --scenarios selects, e.g. "baseline-consume"
    contender: str  # "redis-py", "taskiq", "faststream", "streamq"
    operation: Operation
    batch_size: int  # events per pipeline / per read, as the contender understands it
    count: int  # events per repeat in a full run: sized for a few seconds each
    quick_count: int  # events per repeat under --quick
    measure: str  # "module:function", async (RunContext, Probe) -> events; runs in the child
    setup: str | None = None  # "module:function", (RunContext) -> None, sync or async; runs untimed
    requires: tuple[str, ...] = ()  # importable top-level modules; missing ones skip the case
    detail: str = ""  # how the contender is driven, for the table and RESULTS.md
    variant: str = ""  # what the name's brackets show instead of the batch size ("2-workers", "empty")
    options: Mapping[str, int] = field(default_factory=dict)  # handed to setup and measure (RunContext)
    chart: bool = True  # plot in the PNG (events/s against batch size); False for the system scenarios
    compare_to: str = ""  # a case name: when both ran, the report gives this case's rate relative to it

    @property
    def name(self) -> str:
        return f"{self.scenario}[{self.variant or self.batch_size}]"


class RunContext(msgspec.Struct, frozen=True):
    """What a scenario's setup and measure functions get: where to work and how much."""

    url: str
    stream: str
    group: str
    count: int
    batch_size: int
    options: dict[str, int] = msgspec.field(default_factory=dict)  # the case's own knobs (Case.options)
    quick: bool = False  # under --quick: scenarios with fixed durations shorten them too


class Sample(msgspec.Struct, frozen=True):
    """One repeat of one case, as measured inside its child process."""

    events: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    peak_rss_bytes: int
    machine_cpu_s: float | None = None  # busy CPU seconds of the whole machine; None off Linux
    extra: dict[str, float] = msgspec.field(default_factory=dict)  # scenario-specific figures (Probe.extra)

    @property
    def rate(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


class CaseResult(msgspec.Struct):
    """Every figure for one case: the raw samples and their summary."""

    name: str
    scenario: str
    contender: str
    operation: str
    batch_size: int
    count: int
    detail: str
    status: Status
    note: str = ""
    event_loop: str = ""
    samples: list[Sample] = msgspec.field(default_factory=list)
    rate_median: float | None = None  # events/s
    rate_min: float | None = None
    rate_max: float | None = None
    spread_pct: float | None = None  # (max - min) / median * 100
    client_cpu_pct: float | None = None  # median of client CPU seconds / wall seconds * 100
    server_cpu_pct: float | None = None
    other_cpu_pct: float | None = None  # machine CPU that was neither client nor server: noise if large
    peak_rss_mib: float | None = None  # the largest peak over the repeats
    # Scenario-specific figures, each the median over the repeats that reported it. A key "group.figure"
    # (e.g. "30k/s.p99_ms") is shown in a table per case: one row per group, one column per figure.
    extra: dict[str, float] = msgspec.field(default_factory=dict)
    chart: bool = True
    compare_to: str = ""  # the case `rate_ratio` divides by
    rate_ratio: float | None = None  # rate_median / compare_to's rate_median, when both were measured


class ChildOutcome(msgspec.Struct, frozen=True):
    """What a child writes back: a sample, or why there is none."""

    status: Status
    note: str = ""
    event_loop: str = ""
    sample: Sample | None = None


class Probe:
    """Brackets the measured section of a scenario; one use per child.

    Besides ``measure()``, a scenario may fill ``extra`` with figures of its own, and a scenario whose work
    runs in processes it started reports their CPU over the measured section (``add_cpu``) and their peak
    RSS (``add_rss``).
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.wall_s: float | None = None
        self.client_cpu_s = 0.0
        self.server_cpu_s: float | None = None
        self.machine_cpu_s: float | None = None
        self.extra: dict[str, float] = {}
        self.helper_cpu_s = 0.0
        self.helper_peak_rss_bytes = 0

    def add_cpu(self, seconds: float) -> None:
        """CPU seconds a helper process spent in the measured section: counted as client CPU."""
        self.helper_cpu_s += seconds

    def add_rss(self, peak_bytes: int) -> None:
        """A helper process's peak RSS: the sample's peak RSS is the largest over every process."""
        self.helper_peak_rss_bytes = max(self.helper_peak_rss_bytes, peak_bytes)

    def narrow_wall(self, seconds: float) -> None:
        """Replace the measured wall time by a narrower one the scenario timed itself (e.g. first publish to
        last ack, as stamped by its helper processes), after ``measure()`` has ended."""
        if self.wall_s is None:
            raise RuntimeError("narrow_wall() before measure()")
        if not 0 < seconds <= self.wall_s:
            raise ValueError(f"narrowed wall {seconds:.6f} s is outside the measured {self.wall_s:.6f} s")
        self.wall_s = seconds

    @contextlib.asynccontextmanager
    async def measure(self) -> AsyncIterator[None]:
        client = redis.asyncio.Redis.from_url(self._url)
        try:
            server_before = await server_cpu_s(client)
            machine_before = machine_busy_cpu_s()
            cpu_before = time.process_time()
            wall_before = time.perf_counter()
            yield
            wall_after = time.perf_counter()
            cpu_after = time.process_time()
            machine_after = machine_busy_cpu_s()
            server_after = await server_cpu_s(client)
        finally:
            await client.aclose()
        self.wall_s = wall_after - wall_before
        self.client_cpu_s = cpu_after - cpu_before
        if server_before is not None and server_after is not None:
            self.server_cpu_s = server_after - server_before
        if machine_before is not None and machine_after is not None:
            self.machine_cpu_s = machine_after - machine_before


async def server_cpu_s(client: redis.asyncio.Redis) -> float | None:
    """The server's user + system CPU seconds so far, or None if INFO CPU does not say."""
    info = await client.info("cpu")
    try:
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except (KeyError, TypeError, ValueError):
        return None


def machine_busy_cpu_s() -> float | None:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait), from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice; guest time is inside user.
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def load(ref: str) -> Callable[..., Any]:
    """Resolve a "module:function" reference."""
    module_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def summarize(result: CaseResult) -> CaseResult:
    """Fill the summary fields from the samples."""
    if not result.samples:
        return result
    rates = [s.rate for s in result.samples]
    median = statistics.median(rates)
    result.rate_median = median
    result.rate_min = min(rates)
    result.rate_max = max(rates)
    result.spread_pct = (max(rates) - min(rates)) / median * 100 if median else None
    result.client_cpu_pct = statistics.median(100 * s.client_cpu_s / s.wall_s for s in result.samples)
    server = [100 * s.server_cpu_s / s.wall_s for s in result.samples if s.server_cpu_s is not None]
    result.server_cpu_pct = statistics.median(server) if server else None
    other = [
        100 * (s.machine_cpu_s - s.client_cpu_s - (s.server_cpu_s or 0.0)) / s.wall_s
        for s in result.samples
        if s.machine_cpu_s is not None and s.wall_s >= MIN_WALL_FOR_OTHER_CPU_S
    ]
    result.other_cpu_pct = max(0.0, statistics.median(other)) if other else None
    result.peak_rss_mib = max(s.peak_rss_bytes for s in result.samples) / 2**20
    keys = dict.fromkeys(key for s in result.samples for key in s.extra)  # first-seen order
    result.extra = {
        key: statistics.median(s.extra[key] for s in result.samples if key in s.extra) for key in keys
    }
    return result


def add_ratios(results: list[CaseResult]) -> None:
    """Fill `rate_ratio` of every result whose `compare_to` case was measured in the same run."""
    rates = {r.name: r.rate_median for r in results if r.status == "ok"}
    for result in results:
        reference = rates.get(result.compare_to) if result.compare_to else None
        if result.rate_median is not None and reference:
            result.rate_ratio = result.rate_median / reference


def run_case(case: Case, url: str, *, repeats: int, quick: bool) -> CaseResult:
    """Run one case `repeats` times, each repeat in a fresh child process, and summarize."""
    count = case.quick_count if quick else case.count
    result = CaseResult(
        name=case.name,
        scenario=case.scenario,
        contender=case.contender,
        operation=case.operation,
        batch_size=case.batch_size,
        count=count,
        detail=case.detail,
        status="ok",
        chart=case.chart,
        compare_to=case.compare_to,
    )
    missing = [module for module in case.requires if importlib.util.find_spec(module) is None]
    if missing:
        result.status = "skipped"
        result.note = f"{BENCH_INSTALL_HINT}: {', '.join(missing)} not installed"
        return result
    timeout_ms = QUICK_CASE_TIMEOUT_MS if quick else DEFAULT_CASE_TIMEOUT_MS
    for repeat in range(1, repeats + 1):
        token = secrets.token_hex(4)
        ctx = RunContext(
            url=url,
            stream=f"bench:{case.scenario}:{case.batch_size}:{token}",
            group="bench",
            count=count,
            batch_size=case.batch_size,
            options=dict(case.options),
            quick=quick,
        )
        try:
            outcome = _run_repeat(case, ctx, timeout_ms)
        finally:
            _delete_keys(url, token)
        result.event_loop = outcome.event_loop
        if outcome.status != "ok" or outcome.sample is None:
            result.status = outcome.status
            result.note = outcome.note
            log.info("case stopped", case=case.name, repeat=repeat, status=outcome.status, note=outcome.note)
            break
        sample = outcome.sample
        if sample.events != count:
            result.status = "failed"
            result.note = f"moved {sample.events} of {count} events"
            break
        result.samples.append(sample)
        log.info(
            "case repeat done",
            case=case.name,
            repeat=f"{repeat}/{repeats}",
            events_per_s=round(sample.rate),
            wall_s=round(sample.wall_s, 3),
        )
    return summarize(result)


def _run_repeat(case: Case, ctx: RunContext, timeout_ms: int) -> ChildOutcome:
    if case.setup is not None:
        started = time.perf_counter()
        try:
            _call_setup(case.setup, ctx)
        except NotImplementedError as exc:
            return ChildOutcome(status="skipped", note=f"skipped: {exc}")
        except Exception as exc:
            log.exception("case setup failed", case=case.name)
            return ChildOutcome(status="failed", note=f"setup failed: {exc!r}")
        log.info(
            "case setup done",
            case=case.name,
            events=ctx.count,
            setup_s=round(time.perf_counter() - started, 3),
        )
    return _run_child(case, ctx, timeout_ms)


def _call_setup(ref: str, ctx: RunContext) -> None:
    fn = load(ref)
    if inspect.iscoroutinefunction(fn):
        asyncio.run(fn(ctx))
    else:
        fn(ctx)


def _run_child(case: Case, ctx: RunContext, timeout_ms: int) -> ChildOutcome:
    with tempfile.TemporaryDirectory(prefix="streamq-bench-") as workdir:
        out_path = Path(workdir) / "outcome.json"
        argv = [
            sys.executable,
            "-m",
            "benchmarks.child",
            case.measure,
            msgspec.json.encode(ctx).decode(),
            str(out_path),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_ms / 1000,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ChildOutcome(status="failed", note=f"timed out after {timeout_ms} ms")
        if out_path.exists():
            return msgspec.json.decode(out_path.read_bytes(), type=ChildOutcome)
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        return ChildOutcome(status="failed", note=f"child exited {proc.returncode}: {' | '.join(tail)}")


def _delete_keys(url: str, token: str) -> None:
    """Delete every key a repeat created: all carry its token (peers add lock keys beside the stream).

    streamq also lists every stream that had a worker in its registry set (README, "Keys"): drop ours.
    """
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        keys = list(client.scan_iter(match=f"*{token}*", count=1000))
        if keys:
            client.delete(*keys)
        listed = [m for m in client.sscan_iter(STREAMQ_REGISTRY_KEY, match=f"*{token}*") if m]
        if listed:
            client.srem(STREAMQ_REGISTRY_KEY, *listed)
