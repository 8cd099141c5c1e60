"""``python -m benchmarks``: run the benchmark scenarios and report events/s, CPU and RSS per process.

Measures every selected case (a scenario at one batch size, or one variant of it) ``--repeats`` times, each
repeat in a fresh subprocess, against a throwaway server (or ``--redis-url``), then prints a table (and the
extra figures of the system scenarios: latencies, per-process rates, counts) and optionally writes JSON,
Markdown and a PNG chart. See benchmarks/RESULTS.md for figures and how they were made.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import structlog

from benchmarks.harness import DEFAULT_REPEATS, Case, add_ratios, run_case
from benchmarks.report import describe_run, format_markdown, format_table, write_json, write_png
from benchmarks.server import ServerUnavailable, throwaway_server

EXIT_OK = 0
EXIT_CASE_FAILED = 1  # at least one case failed (skipped ones do not count)
EXIT_USAGE = 2
EXIT_NO_SERVER = 3

# Baselines first, then streamq, then the peers, then streamq's system scenarios (end to end, scaling,
# recovery, failure paths, growth): the table and the chart follow this order.
SCENARIO_MODULES = (
    "benchmarks.baseline_redispy",
    "benchmarks.scenarios_streamq",
    "benchmarks.peer_taskiq",
    "benchmarks.peer_faststream",
    "benchmarks.scenarios_system",
    "benchmarks.scenarios_flow",
    "benchmarks.scenarios_concurrency",
    "benchmarks.scenarios_pool",
    "benchmarks.scenarios_cluster",
    "benchmarks.scenarios_metrics",
    "benchmarks.scenarios_retention",
)

EPILOG = """\
examples:
  python -m benchmarks                                   every scenario, 3 repeats, throwaway server
  python -m benchmarks --quick                           a few seconds: proves the harness works
  python -m benchmarks --scenarios baseline-consume,faststream-consume --json out/run.json --png out/run.png
  python -m benchmarks --scenarios 'baseline-consume[500]' --repeats 5
  python -m benchmarks --scenarios streamq-e2e,streamq-scaling,streamq-growth --markdown out/system.md
  python -m benchmarks --scenarios 'streamq-scaling[2-workers]' --repeats 1
  python -m benchmarks --scenarios streamq-pool --repeats 3   the process pool: --processes 1, 2, auto
  python -m benchmarks --scenarios 'streamq-metrics[off-on]'   consume with metrics on against off
  python -m benchmarks --scenarios streamq-cluster   partitions 1, 3, 6 on a local 3-primary cluster
  python -m benchmarks --redis-url redis://127.0.0.1:6400/0 --list
"""

log = structlog.get_logger("benchmarks")


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for module in SCENARIO_MODULES:
        cases.extend(importlib.import_module(module).CASES)
    return cases


def select(cases: list[Case], spec: str | None) -> list[Case]:
    """The cases named by a comma list of scenario names ("baseline-consume") or case names ("...[500]")."""
    if not spec:
        return cases
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    known = {c.scenario for c in cases} | {c.name for c in cases}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [c for c in cases if c.scenario in wanted or c.name in wanted]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Throughput of streamq against hand-written redis-py loops and peer libraries, and "
        "streamq's end-to-end latency, scaling, recovery, failure-path and growth figures.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenarios", help="comma list of scenarios or cases (default: all); see --list")
    parser.add_argument(
        "--repeats", type=int, help=f"repeats per case (default {DEFAULT_REPEATS}; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts and one repeat: a smoke test")
    parser.add_argument("--redis-url", help="measure against this server instead of a throwaway one")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--png", type=Path, metavar="FILE", help="write a chart (needs matplotlib)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the figures as a Markdown table")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        cases = select(all_cases(), args.scenarios)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else DEFAULT_REPEATS)
    if repeats < 1:
        print("error: --repeats must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.list:
        width = max((len(case.name) for case in cases), default=0)
        for case in cases:
            print(f"{case.name:{width}}  {case.contender:11} {case.operation:8} {case.detail}")
        return EXIT_OK

    try:
        with _server(args.redis_url) as (url, source):
            meta = describe_run(
                ["python", "-m", "benchmarks", *argv],
                quick=args.quick,
                repeats=repeats,
                server_url=url,
                server_source=source,
            )
            results = [run_case(case, url, repeats=repeats, quick=args.quick) for case in cases]
            add_ratios(results)
    except ServerUnavailable as exc:
        print(f"error: no server to measure against: {exc} (or pass --redis-url)", file=sys.stderr)
        return EXIT_NO_SERVER

    print(format_table(meta, results))
    if args.json is not None:
        write_json(args.json, meta, results)
        log.info("json written", path=str(args.json))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_markdown(results))
        log.info("markdown written", path=str(args.markdown))
    if args.png is not None:
        if write_png(args.png, meta, results):
            log.info("chart written", path=str(args.png))
        else:
            log.warning(
                "chart not written: matplotlib is not installed",
                hint="pip install -r benchmarks/requirements.txt",
            )
    return EXIT_CASE_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


@contextlib.contextmanager
def _server(redis_url: str | None) -> Iterator[tuple[str, str]]:
    if redis_url is not None:
        yield redis_url, "--redis-url"
        return
    with throwaway_server() as server:
        yield server.url, server.source


def _configure_logging() -> None:
    # Console lines for a person at a terminal, JSON lines otherwise (CI logs, pipes).
    tail: list[structlog.typing.Processor] = (
        [structlog.dev.ConsoleRenderer(colors=False)]
        if sys.stderr.isatty()
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            *tail,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


if __name__ == "__main__":
    sys.exit(main())
