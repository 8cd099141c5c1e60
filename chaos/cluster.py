"""The cluster chaos run (`python -m chaos --cluster`): a partitioned, ordered stream on a local Redis
Cluster while primaries and workers die.

1. start a throwaway cluster (streamq.embedded_cluster: 3 primaries, 1 replica each, cluster-node-timeout
   1000 ms) and the workers: `streamq worker chaos.cluster_app:app` processes, one of them a pool
   (`--processes 2`); each runs one ordered consumer of a stream of `partitions` partitions, which the
   cluster spreads over its primaries
2. publish keyed events (each key's events numbered in publish order; a few flaky, a few poison) paced
   over the fault window, with `min_replicas=1`: a publish returns once a replica has it, so an
   acknowledged publish survives the failover of its primary. A call that raises (the primary is down,
   or its shard has no replica while the killed node comes back) is published again with the same dedup
   keys until it succeeds; only a call that never did leaves its events ambiguous. Meanwhile the nemesis:
     kill_worker      SIGSTOP a worker, count the entries it holds and the partitions it owns, SIGKILL it:
                      the survivors must take its partitions over (rebalance while work is in flight) and
                      reclaim its entries. Not replaced
     kill_primary     SIGKILL the primary serving most partitions; wait until its replica is promoted,
                      then start the killed node again: it rejoins as the new primary's replica
     join             start one more worker: the others must give it its share (rebalance on join)
     kill_pool_child  SIGKILL a child of the pool once it has run long enough to count as healthy: the
                      pool restarts it, and its partitions are taken over meanwhile
3. drain until no partition holds anything pending or undelivered, SIGTERM every worker (each must exit
   0), read every partition's dead letters and the workers' ledger files, and check (cluster_check.py).

The faults' effects are observed, not assumed: a primary kill is done once every partition's slot is
served by another node; a worker kill once every partition it owned (the group's owners hash, read while
the victim was frozen) is owned by another worker; a join once the new worker owns a partition.

This module ties one run together; the worker commands are cluster_fleet.py's, the faults, the publisher
and the reads of Redis cluster_nemesis.py's, the events and the handler cluster_workload.py's (run by
cluster_app.py), the checker cluster_check.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from streamq.embedded_cluster import EmbeddedCluster

from .cluster_check import CheckReport, Fault, FinalState, Line, Planned, check
from .cluster_fleet import start_worker, terminate_all, unexplained_exits
from .cluster_nemesis import JOIN, KILL_POOL_CHILD, KILL_PRIMARY, KILL_WORKER, ClusterChaosConfig, ClusterRun
from .cluster_workload import FLAKY, LOG_FILE_PREFIX, OK, POISON, KeyedEvent
from .run import pick_binary

NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: a dead primary's replica is promoted ~1-2 s after


LONG = ClusterChaosConfig()
QUICK = ClusterChaosConfig(
    events=6_000,
    window_s=30.0,
    keys=60,
    drain_timeout_s=60.0,
    schedule=(
        (KILL_WORKER, 0.15),
        (KILL_PRIMARY, 0.3),
        (JOIN, 0.5),
        (KILL_POOL_CHILD, 0.6),
        (KILL_WORKER, 0.8),
    ),
)


class ClusterRunReport(msgspec.Struct, kw_only=True):
    ok: bool
    config: dict[str, Any]
    command: str
    server: str
    server_version: str
    stream: str
    run_dir: str
    started_at: str
    publish_s: float
    drain_s: float
    total_s: float
    partitions_per_node: dict[str, int]  # at the start: node port -> partitions whose slot it serves
    faults: list[Fault]
    failed_publish_calls: dict[str, int]  # error type -> calls that raised (all published again)
    workers_started: int
    final: FinalState
    check: CheckReport


def plan_events(rng: random.Random, count: int, key_count: int, config: ClusterChaosConfig) -> tuple[
    list[KeyedEvent], list[Planned]
]:  # fmt: skip
    next_seq: dict[str, int] = {}
    events, planned = [], []
    for n in range(count):
        key = f"k{rng.randrange(key_count)}"
        seq = next_seq.get(key, 0)
        next_seq[key] = seq + 1
        draw = rng.random()
        kind = (
            POISON
            if draw < config.poison_rate
            else FLAKY
            if draw < config.poison_rate + config.flaky_rate
            else OK
        )
        uid = f"E{n:08d}x{rng.getrandbits(24):06x}"
        events.append(KeyedEvent(uuid=uid, key=key, seq=seq, kind=kind))
        planned.append(Planned(uid, key, seq, kind))
    return events, planned


def read_lines(ledger_dir: Path) -> list[Line]:
    lines = []
    for path in sorted(ledger_dir.glob(f"{LOG_FILE_PREFIX}*.tsv")):
        for text in path.read_text().splitlines():
            if text.count("\t") == 7:  # a line cut short by a SIGKILL mid-write is not a handling
                lines.append(Line.parse(text))
    return lines


async def run_cluster(
    config: ClusterChaosConfig,
    *,
    run_dir: Path,
    server_binary: str | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> ClusterRunReport:
    say = progress or (lambda text: None)
    for sub in ("ledger", "logs"):
        os.makedirs(run_dir / sub, exist_ok=True)
    started_wall, started = time.time(), time.monotonic()
    rng = random.Random(config.seed)
    run_id = f"cchaos{config.seed}-{rng.getrandbits(24):06x}-{os.getpid()}"
    binary = pick_binary(server_binary)
    cluster = EmbeddedCluster(binary, primaries=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS)
    await asyncio.to_thread(cluster.start)
    chaos = ClusterRun(config, cluster, run_dir, run_id)
    try:
        async with aioredis.Redis(port=cluster.nodes[0].port) as client:
            info = await client.info("server")
        version = str(info.get("valkey_version") or info.get("redis_version"))
        spread: dict[str, int] = {}
        for part in chaos.parts:
            port = str(cluster.primary_for(part).port)
            spread[port] = spread.get(port, 0) + 1
        say(
            f"cluster of {len(cluster.nodes)} nodes ({binary.label}), stream {run_id}:"
            f" partitions per node {spread}"
        )
        events, planned = plan_events(rng, config.events, config.keys, config)
        logs = str(run_dir / "logs")
        for index in range(config.workers):
            chaos.workers.append(start_worker(f"w{index}", 1, chaos.worker_config, logs))
        if config.pool:
            chaos.workers.append(start_worker("pool", config.pool, chaos.worker_config, logs))
        if not await chaos.wait_all_owned():
            say("not every partition is owned after the workers started")
        say(
            f"{len(events)} events over {config.window_s:g} s;"
            f" faults: {[kind for kind, _ in config.schedule]}"
        )
        chaos.window_started = time.monotonic()
        await asyncio.gather(chaos.publish(events), chaos.nemesis())
        publish_s = time.monotonic() - chaos.window_started
        await asyncio.gather(*chaos.effects)
        for fault in chaos.faults:
            say(f"{fault.kind} {fault.target} at {fault.at_s} s: held {fault.held},"
                f" partitions {fault.partitions}; {fault.detail}")  # fmt: skip
        say(f"published {len(chaos.acknowledged)} in {publish_s:.1f} s; draining")
        drained, drain_s = await chaos.drain()
        unexplained = unexplained_exits(chaos.workers)
        exit_codes = terminate_all(chaos.workers)
        say(f"drained={drained} in {drain_s:.1f} s; workers stopped: {exit_codes}")
        final = await chaos.final_state(drained, drain_s, exit_codes, unexplained)
        dead = await chaos.dead_letters()
        report = check(planned, chaos.acknowledged, read_lines(run_dir / "ledger"), dead, chaos.faults, final,
                       batch_size=config.batch_size)  # fmt: skip
        return ClusterRunReport(
            ok=report.ok, config=dataclasses.asdict(config), command=command,
            server=f"{binary.label} ({binary.path}), 3 primaries + 3 replicas", server_version=version,
            stream=run_id, run_dir=str(run_dir),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
            publish_s=round(publish_s, 1), drain_s=round(drain_s, 1),
            total_s=round(time.monotonic() - started, 1),
            partitions_per_node=spread, faults=chaos.faults, failed_publish_calls=chaos.failed_calls,
            workers_started=len(chaos.workers), final=final, check=report,
        )  # fmt: skip
    finally:
        for task in chaos.effects:
            task.cancel()
        terminate_all(chaos.workers)
        await chaos.admin.aclose()
        await asyncio.to_thread(cluster.close)


def render(report: ClusterRunReport) -> str:
    c = report.check
    out = [
        f"cluster chaos run: {'PASS' if report.ok else 'FAIL'}  ({report.command})",
        f"server {report.server} version {report.server_version}; stream {report.stream}"
        f" ({report.config['partitions']} partitions, per node {report.partitions_per_node})",
        f"published {c.published} of {c.planned} planned (ambiguous {c.ambiguous}, recovered {c.recovered});"
        f" kinds {c.kinds}; failed publish calls {report.failed_publish_calls}",
        f"handled {c.handled}, dead-lettered {c.dead_lettered}, invocations {c.invocations},"
        f" duplicated {c.duplicated} (bound {c.duplicate_bound}), lost {c.lost},"
        f" out of order {c.out_of_order} over {c.keys} keys",
        f"publish {report.publish_s} s, drain {report.drain_s} s, total {report.total_s} s;"
        f" workers started {report.workers_started}",
        "faults:",
        *(
            f"  {f.at_s:6.1f} s {f.kind:<16} {f.target:<24} held {f.held:<4} partitions {f.partitions}"
            f"  {f.detail}"
            for f in report.faults
        ),
        "checks:",
        *(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}" for check in c.checks),
    ]
    if c.lost_sample:
        out.append(f"lost (sample): {c.lost_sample}")
    if c.unexpected_sample:
        out.append(f"unexpected (sample): {c.unexpected_sample}")
    return "\n".join(out) + "\n"


def main(args: Any, argv: list[str]) -> int:
    """`python -m chaos --cluster [--quick] [--seed N] [--events N] [--window-s S] [--workers N] ...`."""
    unused = [
        option
        for option, value in (("--redis-url", args.redis_url), ("--sabotage", args.sabotage),
                              ("--kill-every", args.kill_every), ("--fsync", args.fsync or None))
        if value is not None
    ]  # fmt: skip
    if unused:
        print(
            f"--cluster starts its own cluster and faults; it does not take {', '.join(unused)}",
            file=sys.stderr,
        )
        return 2
    config = QUICK if args.quick else LONG
    changes = {
        name: value
        for name, value in (("seed", args.seed), ("events", args.events), ("window_s", args.window_s),
                            ("workers", args.workers), ("pool", args.pool))
        if value is not None
    }  # fmt: skip
    config = dataclasses.replace(config, **changes)
    if config.events < 1 or config.workers < 1 or config.window_s <= 0 or config.pool < 0:
        print("events, workers and window must be positive", file=sys.stderr)
        return 2
    temporary = args.workdir is None
    run_dir = Path(args.workdir or tempfile.mkdtemp(prefix="streamq-cluster-chaos-"))
    report = asyncio.run(
        run_cluster(
            config, run_dir=run_dir, server_binary=args.server_binary,
            command=shlex.join(["python", "-m", "chaos", *argv]),
            progress=lambda text: print(f"chaos: {text}", file=sys.stderr, flush=True),
        )
    )  # fmt: skip
    print(render(report), end="")
    if args.json_path:
        with open(args.json_path, "wb") as out:
            out.write(msgspec.json.format(msgspec.json.encode(report)))
    if temporary and report.ok and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if report.ok else 1
