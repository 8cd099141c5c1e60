"""Command line of the chaos harness: `python -m chaos [--quick] [--seed N] [--json FILE] ...`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .cluster import main as cluster_main
from .publisher import PUBLISHER_SABOTAGES
from .report import render, write_json
from .run import LONG, POOL_LONG, POOL_QUICK, QUICK, ChaosConfig, run
from .worker import SABOTAGES

ALL_SABOTAGES = (*SABOTAGES, *PUBLISHER_SABOTAGES)

EXIT_OK = 0
EXIT_VIOLATION = 1  # an invariant failed: the report says which
EXIT_USAGE = 2

EPILOG = """
examples:
  python -m chaos --quick --seed 1 --json out.json     CI: ~20k events, 4 workers, ~1 minute
  python -m chaos --seed 7                             100k events, 8 workers, 5.5 min of faults
  python -m chaos --quick --server-binary /usr/bin/redis-server
  python -m chaos --quick --redis-url redis://host:6379/0   no server restarts (not our server)
  python -m chaos --quick --events 3000 --window-s 10 --sabotage drop_retries   must FAIL
  python -m chaos --quick --events 3000 --window-s 10 --sabotage double_move,late_delay   must FAIL
  python -m chaos --quick --pool 3                     workers in a --processes 3 pool, children killed: ~45 s
  python -m chaos --pool 3                             the same for 180 s, 50k events
  python -m chaos --cluster --quick                    a partitioned stream on a local Redis Cluster:
                                                       primaries and workers killed, a worker joins: ~70 s
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Jepsen-style chaos run of streamq: workers, faults, and a checker of invariants.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="the CI-sized run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, help="events to publish (default: 20k quick, 100k long)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--window-s", type=float, help="seconds of faults and publishing")
    parser.add_argument("--redis-url", help="use this server instead of a throwaway one (no restarts)")
    parser.add_argument("--server-binary", help="redis-server or valkey-server to run (default: first found)")
    parser.add_argument("--json", dest="json_path", help="write the full report here")
    parser.add_argument("--workdir", help="ledger and worker logs go here (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory even on success")
    parser.add_argument("--fsync", action="store_true", help="workers fsync their ledger files per batch")
    parser.add_argument(
        "--kill-every",
        type=_seconds_range,
        metavar="MIN,MAX",
        help="seconds between worker kills, drawn uniformly (default 2,5); e.g. 0.5,1.5 for a crash storm",
    )
    parser.add_argument(
        "--pool",
        type=int,
        metavar="N",
        help="the workers are one `streamq worker --processes N` pool whose children are killed (only"
        " healthy ones, every 2-4 s), stopped by SIGTERM with events in flight, then drained by a second"
        " pool; no other fault (chaos/pool.py). Replaces --workers",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run on a throwaway local Redis Cluster (3 primaries, 1 replica each) with a partitioned,"
        " ordered stream: primaries killed (replica promoted), workers and a pool child killed, a worker"
        " joining mid-run (chaos/cluster.py). Takes --quick, --seed, --events, --window-s, --workers (besides"
        " the pool), --pool (its children, 0 for none), --server-binary, --json, --workdir, --keep",
    )
    parser.add_argument(
        "--sabotage",
        type=_sabotages,
        metavar="NAME[,NAME...]",
        help="self-test: break streamq in the workers or the publisher on purpose; the run must then fail."
        f" One or more of: {', '.join(ALL_SABOTAGES)}",
    )
    return parser.parse_args(argv)


def _sabotages(text: str) -> str:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_SABOTAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown sabotage {unknown or text!r}; known: {', '.join(ALL_SABOTAGES)}"
        )
    return ",".join(names)


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in seconds, got {text!r}") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return bounds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cluster:
        return cluster_main(args, list(argv if argv is not None else sys.argv[1:]))
    if args.pool is not None:
        config: ChaosConfig = dataclasses.replace(POOL_QUICK if args.quick else POOL_LONG, pool=args.pool)
    else:
        config = QUICK if args.quick else LONG
    changes = {
        name: value
        for name, value in (
            ("seed", args.seed), ("events", args.events), ("workers", args.workers),
            ("window_s", args.window_s), ("fsync", args.fsync or None), ("sabotage", args.sabotage),
            ("kill_every_s", args.kill_every),
        )
        if value is not None
    }  # fmt: skip
    config = dataclasses.replace(config, **changes)
    if config.events < 1 or config.workers < 1 or config.window_s <= 0 or config.pool < 0:
        print("events, workers, pool and window must be positive", file=sys.stderr)
        return EXIT_USAGE
    temporary = args.workdir is None
    run_dir = Path(args.workdir or tempfile.mkdtemp(prefix="streamq-chaos-"))
    command = shlex.join(["python", "-m", "chaos", *(argv if argv is not None else sys.argv[1:])])
    report = asyncio.run(
        run(
            config,
            run_dir=run_dir,
            redis_url=args.redis_url,
            server_binary=args.server_binary,
            command=command,
            progress=lambda text: print(f"chaos: {text}", file=sys.stderr, flush=True),
        )
    )
    print(render(report), end="")
    if args.json_path:
        write_json(report, args.json_path)
    if temporary and report.ok and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return EXIT_OK if report.ok else EXIT_VIOLATION


if __name__ == "__main__":
    sys.exit(main())
