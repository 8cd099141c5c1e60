"""The moving parts of the cluster chaos run (chaos/cluster.py): Redis reads, the faults, the publisher.

Every fault is recorded as a `Fault` with what the victim held and owned, and counted as done only once
its effect is seen: a killed worker's partitions owned by others, a killed primary's slots served by its
promoted replica and the killed node back as a replica in sync, a joining worker owning a partition.
The publisher publishes with `min_replicas=1` and publishes a chunk whose call raised again, with the
same dedup keys, until it succeeds (chaos/cluster.py's docstring says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

import streamq
from streamq import keys
from streamq._pool import HEALTHY_AFTER_MS
from streamq.embedded_cluster import EmbeddedCluster
from streamq.errors import StreamqError
from streamq.partitions import partition_stream

from .cluster_check import Fault, FinalState
from .cluster_fleet import Worker, start_worker
from .cluster_workload import GROUP, KeyedEvent

T = TypeVar("T")
KILL_WORKER, KILL_POOL_CHILD, KILL_PRIMARY, JOIN = "kill_worker", "kill_pool_child", "kill_primary", "join"
BUSY_WAIT_S = 5.0  # how long a kill waits for a victim that holds entries (work in flight)
EFFECT_TIMEOUT_S = 30.0  # a fault's effect (promotion, takeover, share on join) must show within this
READY_TIMEOUT_S = 60.0  # every partition owned before publishing: imports on a loaded 2-core box
PUBLISH_GIVE_UP_S = 30.0  # a chunk whose calls all raised for this long stays ambiguous
_PID = re.compile(r"-(\d+)-[0-9a-f]{8}$")  # the pid in a worker's name: <prefix>-<host>-<pid>-<hex>
_UUID = re.compile(rb"E\d{8}x[0-9a-f]{6}")


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


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key_of(event: streamq.Event) -> str:
    assert isinstance(event, KeyedEvent)
    return event.key


def _uuid_of(event: streamq.Event) -> str:
    assert isinstance(event, KeyedEvent)
    return event.uuid
