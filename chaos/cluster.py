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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

import streamq
from streamq import keys
from streamq._pool import HEALTHY_AFTER_MS
from streamq.embedded_cluster import EmbeddedCluster
from streamq.errors import StreamqError
from streamq.partitions import partition_stream

from .cluster_check import CheckReport, Fault, FinalState, Line, Planned, check
from .cluster_workload import CONFIG_ENV, FLAKY, GROUP, LOG_FILE_PREFIX, OK, POISON, KeyedEvent
from .fleet import _die_with_parent
from .pool import _children_of
from .run import pick_binary

T = TypeVar("T")
KILL_WORKER, KILL_POOL_CHILD, KILL_PRIMARY, JOIN = "kill_worker", "kill_pool_child", "kill_primary", "join"
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: a dead primary's replica is promoted ~1-2 s after
BUSY_WAIT_S = 5.0  # how long a kill waits for a victim that holds entries (work in flight)
EFFECT_TIMEOUT_S = 30.0  # a fault's effect (promotion, takeover, share on join) must show within this
STOP_TIMEOUT_S = 30.0  # SIGTERM to exit: the app's grace period plus a blocked read
READY_TIMEOUT_S = 60.0  # every partition owned before publishing: imports on a loaded 2-core box
PUBLISH_GIVE_UP_S = 30.0  # a chunk whose calls all raised for this long stays ambiguous
_PID = re.compile(r"-(\d+)-[0-9a-f]{8}$")  # the pid in a worker's name: <prefix>-<host>-<pid>-<hex>
_UUID = re.compile(rb"E\d{8}x[0-9a-f]{6}")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ClusterChaosConfig:
    seed: int = 1
    events: int = 30_000
    window_s: float = 150.0
    partitions: int = 6
    keys: int = 120
    workers: int = 2  # single-process workers at the start, besides the pool
    pool: int = 2  # children of the one pool worker (0: no pool)
    chunk_size: int = 20
    batch_size: int = 20
    work_ms: int = 20
    lease_ms: int = 2000
    partition_lease_ms: int = 1500
    max_attempts: int = 3
    flaky_rate: float = 0.02
    poison_rate: float = 0.002
    replica_timeout_ms: int = 1000
    drain_timeout_s: float = 120.0
    # (kind, at this share of the window), in order
    schedule: tuple[tuple[str, float], ...] = (
        (KILL_WORKER, 0.15), (KILL_PRIMARY, 0.3), (JOIN, 0.45), (KILL_POOL_CHILD, 0.55),
        (KILL_PRIMARY, 0.7), (KILL_WORKER, 0.85),
    )  # fmt: skip


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


# ---------------------------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """One `streamq worker chaos.cluster_app:app` command (a pool when processes > 1)."""

    name: str
    processes: int
    process: subprocess.Popen[bytes]
    log_path: str
    killed: set[int] = field(default_factory=set)  # pids the nemesis killed (the process or children)

    def pids(self) -> list[int]:
        """The processes that consume: the worker itself, or the pool's live children."""
        if self.process.poll() is not None:
            return []
        if self.processes == 1:
            return [self.process.pid]
        return [pid for pid, _ in _children_of(self.process.pid)]

    def children(self) -> list[tuple[int, float]]:
        return _children_of(self.process.pid) if self.process.poll() is None else []


def start_worker(name: str, processes: int, config: dict[str, Any], log_dir: str) -> Worker:
    env = dict(os.environ)
    roots = dict.fromkeys(str(Path(path).resolve().parents[1]) for path in (__file__, streamq.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*roots, env.get("PYTHONPATH", "")]))
    env[CONFIG_ENV] = json.dumps(config)
    argv = [
        sys.executable,
        "-m",
        "streamq",
        "worker",
        "chaos.cluster_app:app",
        "--log-json",
        "--log-level",
        "info",
    ]
    if processes > 1:
        argv += ["--processes", str(processes)]
    log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
    return Worker(name, processes, process, log_path)


def _pool_deaths(worker: Worker) -> list[int]:
    """Pids of the children the pool's supervisor logged as dead."""
    found = []
    with open(worker.log_path, "rb") as log:
        for line in log:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and str(record.get("event", "")).startswith(
                    "worker process died"
                ):
                    found.append(int(record["pid"]))
    return found


def _tail(path: str, lines: int = 15) -> str:
    with open(path, "rb") as log:
        return b"".join(log.readlines()[-lines:]).decode(errors="replace")


# ---------------------------------------------------------------------------------------------- the run


class ClusterRun:
    def __init__(
        self, config: ClusterChaosConfig, cluster: EmbeddedCluster, run_dir: Path, run_id: str
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.run_dir = run_dir
        self.stream = run_id
        self.parts = [partition_stream(run_id, index) for index in range(config.partitions)]
        self.owners_key = keys.owners_key(run_id, GROUP)
        self.admin: RedisCluster = RedisCluster.from_url(cluster.url.replace("redis+cluster://", "redis://"))
        self.workers: list[Worker] = []
        self.faults: list[Fault] = []
        self.effects: list[asyncio.Task[None]] = []
        self.acknowledged: set[str] = set()
        self.failed_calls: dict[str, int] = {}
        self.window_started = 0.0
        self.worker_config = {
            "url": cluster.url, "stream": run_id, "partitions": config.partitions,
            "partition_lease_ms": config.partition_lease_ms, "lease_ms": config.lease_ms,
            "batch_size": config.batch_size, "max_attempts": config.max_attempts, "work_ms": config.work_ms,
            "ledger_dir": str(run_dir / "ledger"),
        }  # fmt: skip

    # ------------------------------------------------------------------------------------------ Redis reads

    async def _retrying(self, step: Callable[[], Awaitable[T]], timeout_s: float = EFFECT_TIMEOUT_S) -> T:
        """Run a read, again on a cluster error (a failover under way) until it succeeds."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await step()
            except (RedisError, OSError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def owners(self) -> dict[int, int]:
        """Partition -> the pid of the worker that owns it (lapsed leases included)."""
        raw = await self._retrying(partial(self.admin.hgetall, self.owners_key))
        found = {}
        for partition, record in raw.items():
            name = _s(record).split(" ")[0]
            if match := _PID.search(name):
                found[int(partition)] = int(match.group(1))
        return found

    async def held(self) -> dict[int, int]:
        """Process id -> entries pending under its consumers, over every partition."""
        found: dict[int, int] = {}
        for part in self.parts:
            with contextlib.suppress(RedisError, OSError):
                rows: Any = await self._retrying(partial(self.admin.xinfo_consumers, part, GROUP), 5)
                for row in rows:
                    if match := _PID.search(_s(row["name"])):
                        pid = int(match.group(1))
                        found[pid] = found.get(pid, 0) + int(row["pending"])
        return found

    async def backlog(self, part: str) -> tuple[int, int]:
        """(pending, undelivered) of the group on one partition."""
        try:
            groups = await self.admin.xinfo_groups(part)
        except RedisError as exc:
            if "no such key" in str(exc).lower():
                return 0, 0
            raise
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
            if name == GROUP:
                last = info["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else str(last)
                newer: Any = await self.admin.xrange(part, min=f"({last}", max="+", count=1)
                return int(info["pending"]), len(newer)
        return 0, 1 if await self.admin.xlen(part) else 0

    # ------------------------------------------------------------------------------------------ faults

    def at_s(self) -> float:
        return round(time.monotonic() - self.window_started, 1)

    async def kill_worker(self, kind: str) -> None:
        """SIGSTOP, count, SIGKILL a worker (or a healthy pool child); then watch its partitions move."""
        victim: tuple[Worker, int] | None = None
        busy_by = time.monotonic() + BUSY_WAIT_S
        healthy_s = HEALTHY_AFTER_MS / 1000 + 1  # a pool child killed younger counts towards a crash loop
        while time.monotonic() < busy_by + EFFECT_TIMEOUT_S:
            candidates = []
            for worker in self.workers:
                if kind == KILL_POOL_CHILD and worker.processes > 1:
                    candidates += [(worker, pid) for pid, age in worker.children() if age >= healthy_s]
                elif kind == KILL_WORKER and worker.processes == 1:
                    candidates += [(worker, pid) for pid in worker.pids()]
            owners = set((await self.owners()).values())
            owning = sorted(
                (c for c in candidates if c[1] in owners and c[1] not in c[0].killed), key=lambda c: c[1]
            )
            holding = await self.held()
            busy = [c for c in owning if holding.get(c[1], 0) > 0]
            if busy or (owning and time.monotonic() >= busy_by):
                victim = random.Random(self.config.seed + len(self.faults)).choice(busy or owning)
                break
            await asyncio.sleep(0.05)
        if victim is None:
            self.faults.append(
                Fault(kind=kind, target="none", at_s=self.at_s(), detail="no victim owning partitions")
            )
            return
        worker, pid = victim
        os.kill(pid, signal.SIGSTOP)  # frozen: what it owns and holds cannot change while counted
        owned = await self.owners()
        partitions = sorted(p for p, owner in owned.items() if owner == pid)
        held = (await self.held()).get(pid, 0)
        worker.killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        fault = Fault(
            kind=kind, target=f"{worker.name}/pid{pid}", at_s=self.at_s(), held=held, partitions=partitions
        )
        self.faults.append(fault)
        self.effects.append(asyncio.create_task(self._taken_over(fault, pid)))

    async def _taken_over(self, fault: Fault, pid: int) -> None:
        started = time.monotonic()
        while time.monotonic() - started < EFFECT_TIMEOUT_S:
            owned = await self.owners()
            moved = {p: owned.get(p) for p in fault.partitions}
            if all(owner is not None and owner != pid for owner in moved.values()):
                fault.done = True
                pids = sorted({owner for owner in moved.values() if owner is not None})
                fault.detail = f"taken over in {time.monotonic() - started:.1f} s by pids {pids}"
                return
            await asyncio.sleep(0.1)
        fault.detail = f"not taken over within {EFFECT_TIMEOUT_S:g} s: {await self.owners()}"

    async def kill_primary(self) -> None:
        """SIGKILL the primary serving most partitions, wait for its replica's promotion, restart it."""
        by_node: dict[int, list[int]] = {}
        for index, part in enumerate(self.parts):
            node = await asyncio.to_thread(self.cluster.primary_for, part)
            by_node.setdefault(node.port, []).append(index)
        port, partitions = max(by_node.items(), key=lambda item: (len(item[1]), -item[0]))
        (node,) = [n for n in self.cluster.nodes if n.port == port]
        held = 0
        for index in partitions:
            with contextlib.suppress(RedisError, OSError):
                held += (await self.backlog(self.parts[index]))[0]
        fault = Fault(
            kind=KILL_PRIMARY, target=f"node:{port}", at_s=self.at_s(), held=held, partitions=partitions
        )
        self.faults.append(fault)
        killed_at = time.monotonic()
        await asyncio.to_thread(node.kill)
        promoted: set[int] = set()
        while time.monotonic() - killed_at < EFFECT_TIMEOUT_S:
            try:
                serving = [
                    await asyncio.to_thread(self.cluster.primary_for, self.parts[i]) for i in partitions
                ]
            except (RuntimeError, RedisError, OSError):
                await asyncio.sleep(0.1)
                continue
            promoted = {n.port for n in serving}
            if port not in promoted:
                break
            await asyncio.sleep(0.1)
        else:
            fault.detail = f"no replica promoted within {EFFECT_TIMEOUT_S:g} s"
            return
        failover_s = time.monotonic() - killed_at
        fault.detail = f"replica node:{sorted(promoted)} promoted after {failover_s:.1f} s"
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(self.cluster.wait_until_healthy, EFFECT_TIMEOUT_S)
        # Until the old primary is a replica in sync again, its shard has none: publishes there wait for
        # min_replicas=1 in vain (ReplicationTimeout, published again by the publisher).
        while time.monotonic() - killed_at < failover_s + EFFECT_TIMEOUT_S:
            with contextlib.suppress(RedisError, OSError):
                async with aioredis.Redis(port=port) as client:
                    info = await client.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    fault.done = True
                    fault.detail += (
                        f"; node:{port} a replica in sync {time.monotonic() - killed_at:.1f} s after the kill"
                    )
                    return
            await asyncio.sleep(0.1)
        fault.detail += f"; node:{port} not a replica in sync within {EFFECT_TIMEOUT_S:g} s of its restart"

    async def join(self) -> None:
        self.worker_config["url"] = self.cluster.url  # a running node: the first may be the one killed
        worker = start_worker(f"join{len(self.workers)}", 1, self.worker_config, str(self.run_dir / "logs"))
        self.workers.append(worker)
        fault = Fault(kind=JOIN, target=f"{worker.name}/pid{worker.process.pid}", at_s=self.at_s())
        self.faults.append(fault)

        async def given_a_share() -> None:
            started = time.monotonic()
            while time.monotonic() - started < EFFECT_TIMEOUT_S + READY_TIMEOUT_S:
                mine = sorted(p for p, pid in (await self.owners()).items() if pid == worker.process.pid)
                if mine:
                    fault.partitions, fault.done = mine, True
                    fault.detail = f"owned {mine} {time.monotonic() - started:.1f} s after it started"
                    return
                await asyncio.sleep(0.1)
            fault.detail = "never given a partition"

        self.effects.append(asyncio.create_task(given_a_share()))

    async def nemesis(self) -> None:
        for kind, share in self.config.schedule:
            delay = self.window_started + share * self.config.window_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == KILL_PRIMARY:
                await self.kill_primary()
            elif kind == JOIN:
                await self.join()
            elif kind == KILL_POOL_CHILD and not self.config.pool:
                continue
            else:
                await self.kill_worker(kind)

    # ------------------------------------------------------------------------------------------ publishing

    async def publish(self, events: list[KeyedEvent]) -> None:
        chunks = [
            events[i : i + self.config.chunk_size] for i in range(0, len(events), self.config.chunk_size)
        ]
        pace_s = self.config.window_s / max(1, len(chunks))
        async with streamq.Producer(
            self.cluster.url, min_replicas=1, replica_timeout_ms=self.config.replica_timeout_ms,
            partitions={self.stream: self.config.partitions},
        ) as producer:  # fmt: skip
            for number, chunk in enumerate(chunks):
                delay = self.window_started + number * pace_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                giving_up = time.monotonic() + PUBLISH_GIVE_UP_S
                while True:
                    try:
                        await producer.publish_many(
                            self.stream,
                            chunk,
                            key=_key_of,
                            dedup_key=_uuid_of,
                        )
                    except (RedisError, OSError, StreamqError) as exc:
                        name = type(exc).__name__
                        self.failed_calls[name] = self.failed_calls.get(name, 0) + 1
                        if time.monotonic() >= giving_up:
                            break  # ambiguous: some may be in, the checker counts them as recovered
                        await asyncio.sleep(0.1)
                        continue
                    self.acknowledged.update(event.uuid for event in chunk)
                    break

    # ------------------------------------------------------------------------------------------ drain, state

    async def wait_all_owned(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if len(await self.owners()) == self.config.partitions:
                return True
            await asyncio.sleep(0.2)
        return False

    async def drain(self) -> tuple[bool, float]:
        started = time.monotonic()
        quiet = 0
        while time.monotonic() - started < self.config.drain_timeout_s:
            busy = 0
            for part in self.parts:
                pending, undelivered = await self._retrying(partial(self.backlog, part))
                busy += pending + undelivered
            quiet = quiet + 1 if busy == 0 else 0
            if quiet >= 2:
                return True, time.monotonic() - started
            await asyncio.sleep(0.25)
        return False, time.monotonic() - started

    async def dead_letters(self) -> list[str]:
        found: list[str] = []
        for part in self.parts:
            rows: Any = await self._retrying(partial(self.admin.xrange, keys.dlq_key(part), count=100_000))
            for _, fields in rows:
                match = _UUID.search(b"".join(fields.values()))
                found.append(match.group().decode() if match else f"unparsed:{fields!r}"[:80])
        return found

    def unexplained_exits(self) -> list[str]:
        out = []
        for worker in self.workers:
            code = worker.process.poll()
            if code is not None and worker.process.pid not in worker.killed:
                out.append(f"{worker.name} pid {worker.process.pid} exit {code}: {_tail(worker.log_path)}")
            if worker.processes > 1:
                out += [
                    f"{worker.name} child {pid} died"
                    for pid in _pool_deaths(worker)
                    if pid not in worker.killed
                ]
        return out

    async def final_state(self, drained: bool, drain_s: float, exit_codes: dict[str, int | None],
                          unexplained: list[str]) -> FinalState:  # fmt: skip
        per: dict[str, list[int]] = {}
        for index, part in enumerate(self.parts):
            pending, undelivered = await self._retrying(partial(self.backlog, part))
            length = int(await self._retrying(partial(self.admin.xlen, part)))
            dead = int(await self._retrying(partial(self.admin.xlen, keys.dlq_key(part))))
            per[str(index)] = [pending, undelivered, length, dead]
        return FinalState(
            drained=drained, drain_s=round(drain_s, 1), pending=sum(v[0] for v in per.values()),
            undelivered=sum(v[1] for v in per.values()), per_partition=per, exit_codes=exit_codes,
            unexplained_exits=unexplained,
        )  # fmt: skip

    def terminate_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        live = [w for w in self.workers if w.process.poll() is None]
        for worker in live:
            worker.process.send_signal(signal.SIGTERM)
        for worker in live:
            try:
                codes[f"{worker.name}/pid{worker.process.pid}"] = worker.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for pid in [worker.process.pid, *worker.pids()]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                worker.process.wait()
                codes[f"{worker.name}/pid{worker.process.pid}"] = None
        return codes


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key_of(event: streamq.Event) -> str:
    assert isinstance(event, KeyedEvent)
    return event.key


def _uuid_of(event: streamq.Event) -> str:
    assert isinstance(event, KeyedEvent)
    return event.uuid


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
        unexplained = chaos.unexplained_exits()
        exit_codes = chaos.terminate_all()
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
        chaos.terminate_all()
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
