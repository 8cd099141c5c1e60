"""Entry point of the fresh process that runs one repeat of one benchmark case.

Measures what the case's measure function brackets with ``Probe.measure()``, plus this process's peak RSS (or
the largest of the helper processes it started, as reported to the probe), and writes a ``ChildOutcome`` as
JSON to the path it is given. Run by the harness, not by hand:

    python -m benchmarks.child MODULE:FUNCTION RUN_CONTEXT_JSON OUTCOME_PATH

A measure function that raises NotImplementedError (streamq before its core lands) or ImportError (a peer
that is not installed) yields a "skipped" outcome; any other exception a "failed" one carrying the error.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.harness import BENCH_INSTALL_HINT, ChildOutcome, Probe, RunContext, Sample, load

EXIT_OK = 0
EXIT_USAGE = 2


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return EXIT_USAGE
    ref, ctx_json, out_path = argv
    ctx = msgspec.json.decode(ctx_json, type=RunContext)
    loop_factory, loop_name = _loop_factory()
    outcome = _measure(ref, ctx, loop_factory)
    outcome = msgspec.structs.replace(outcome, event_loop=loop_name)
    Path(out_path).write_bytes(msgspec.json.encode(outcome))
    return EXIT_OK


def _measure(
    ref: str, ctx: RunContext, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> ChildOutcome:
    probe = Probe(ctx.url)
    try:
        fn: Callable[[RunContext, Probe], Coroutine[Any, Any, int]] = load(ref)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            events = runner.run(fn(ctx, probe))
    except NotImplementedError as exc:
        return ChildOutcome(status="skipped", note=f"skipped: {exc}")
    except ImportError as exc:
        return ChildOutcome(status="skipped", note=f"{BENCH_INSTALL_HINT}: {exc}")
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return ChildOutcome(status="failed", note=f"{type(exc).__name__}: {exc} (at {where})")
    if probe.wall_s is None:
        return ChildOutcome(status="failed", note=f"{ref} never entered Probe.measure()")
    sample = Sample(
        events=events,
        wall_s=probe.wall_s,
        # Helper processes (a multi-process scenario's producer and workers) count as client CPU too.
        client_cpu_s=probe.client_cpu_s + probe.helper_cpu_s,
        server_cpu_s=probe.server_cpu_s,
        machine_cpu_s=probe.machine_cpu_s,
        peak_rss_bytes=max(peak_rss_bytes(), probe.helper_peak_rss_bytes),
        extra=dict(probe.extra),
    )
    return ChildOutcome(status="ok", sample=sample)


def peak_rss_bytes() -> int:
    """This process's own peak RSS.

    Linux's VmHWM belongs to the address space exec() created, whereas ``ru_maxrss`` survives fork and exec:
    a child of a 300 MiB harness would report 300 MiB. ``ru_maxrss`` (KiB on Linux, bytes on macOS) is the
    fallback where /proc is absent.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
