"""The nemesis: a seeded schedule of faults, and the faults themselves, injected while events flow.

    kill            SIGKILL a random worker (every 2-5 s); its replacement starts with the next failpoint
                    of the cycle armed, so kills at every failpoint follow
    stop            SIGSTOP a worker for 3 leases, then SIGCONT: its entries are reclaimed meanwhile, and
                    its settle must find them gone (lease_lost), never double-acknowledge them
    server_restart  SIGKILL the server (AOF, appendfsync always) and start it again on the same port and
                    directory; workers must reconnect by themselves, and one worker replaced during the
                    outage must wait for the server. Only with a server the harness owns
    client_kill     CLIENT KILL TYPE normal SKIPME yes: every client connection drops at once
    trim_safe       XTRIM MINID below the oldest pending entry and the group's last-delivered id: only
                    acknowledged entries go, so nothing may be missing afterwards
    trim_pending    XTRIM MINID just above some pending entries: an operator deleting data on purpose.
                    Those entries are reported as `trimmed`, not lost; streamq must survive it. It is the
                    only way a pending entry may leave the stream: retention (on in every worker) trims
                    only what the group acknowledged, so streamq's `deleted_pending` counter must stay
                    within the pending entries this fault removed

Before each worker kill the victim is frozen (SIGSTOP) so the entries it holds can be counted from
XINFO CONSUMERS; that count (`inflight`) bounds the duplicates the kill may cause. Server restarts and
client kills record the pending total for the same reason.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamq.embedded import EmbeddedServer

from .fleet import Fleet, Worker
from .ledger import Ledger
from .worker import FAILPOINTS
from .workload import uuid_in

T = TypeVar("T")

BUSY_WAIT_S = 1.0  # how long a kill or stop waits for a worker that holds entries
_PID = re.compile(r"-(\d+)-[0-9a-f]{8}$")  # the pid in a consumer name: <prefix>-<host>-<pid>-<hex>

KILL, STOP, SERVER_RESTART, CLIENT_KILL, TRIM_SAFE, TRIM_PENDING = (
    "kill", "stop", "server_restart", "client_kill", "trim_safe", "trim_pending",
)  # fmt: skip
WORKER_EXIT, RESUME = "worker_exit", "resume"
# Faults after which entries handled but not yet settled may be handled again.
DISRUPTIVE = (KILL, STOP, SERVER_RESTART, CLIENT_KILL)

# Trim up to `want` of the oldest pending entries (and every acknowledged entry below them), never an
# undelivered one: everything up to a pending id has been delivered. MINID keeps ids >= it, so it is set just
# above the last pending id to trim. Returns {trimmed, minid, n, n pending ids, n payloads} ('' for an entry
# already gone), or {0} if none. The payloads name the events (their uuid): a delayed event's entry id is
# known to the ledger only from its handlers, and one trimmed before any handler saw it has none.
_TRIM_PENDING = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[2]))
if #rows == 0 then return {0} end
local last = rows[#rows][1]
local dash = string.find(last, '-', 1, true)
local minid = string.sub(last, 1, dash) .. string.format('%d', tonumber(string.sub(last, dash + 1)) + 1)
local payloads = {}
for i = 1, #rows do
    local found = redis.call('XRANGE', KEYS[1], rows[i][1], rows[i][1])
    local payload = ''
    if #found > 0 then
        local fields = found[1][2]
        for j = 1, #fields, 2 do
            if fields[j] == 'd' then payload = fields[j + 1] end
        end
    end
    payloads[i] = payload
end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid)
local out = {trimmed, minid, #rows}
for i = 1, #rows do out[#out + 1] = rows[i][1] end
for i = 1, #rows do out[#out + 1] = payloads[i] end
return out
"""


@dataclass(frozen=True, slots=True)
class Planned:
    at_s: float  # seconds after the start of the fault window
    kind: str


@dataclass(frozen=True, slots=True)
class Plan:
    """How many faults of each kind to spread over the window (kills come at random 2-5 s intervals)."""

    window_s: float
    kill_every_s: tuple[float, float] = (2.0, 5.0)
    stops: int = 1
    server_restarts: int = 1
    client_kills: int = 1
    safe_trims: int = 1
    pending_trims: int = 1
    start_s: float = 2.0  # let the workers start before the first fault


def build_schedule(rng: random.Random, plan: Plan) -> list[Planned]:
    out = []
    t = plan.start_s + rng.uniform(*plan.kill_every_s)
    while t < plan.window_s:
        out.append(Planned(round(t, 3), KILL))
        t += rng.uniform(*plan.kill_every_s)
    spread = (
        (STOP, plan.stops),
        (SERVER_RESTART, plan.server_restarts),
        (CLIENT_KILL, plan.client_kills),
        (TRIM_SAFE, plan.safe_trims),
        (TRIM_PENDING, plan.pending_trims),
    )
    span = max(plan.window_s - plan.start_s - 1.0, 1.0)
    for kind, count in spread:
        width = span / max(count, 1)
        for i in range(count):
            out.append(Planned(round(plan.start_s + width * (i + rng.uniform(0.15, 0.85)), 3), kind))
    return sorted(out, key=lambda p: (p.at_s, p.kind))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def retrying(step: Callable[[], Awaitable[T]], attempts: int = 20, pause_s: float = 0.25) -> T:
    """Retry an idempotent admin command across dropped connections (a restart, CLIENT KILL)."""
    for attempt in itertools.count(1):
        try:
            return await step()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if attempt >= attempts:
                raise
            await asyncio.sleep(pause_s)
    raise AssertionError("unreachable")


async def pending_by_consumer(
    admin: aioredis.Redis, stream_keys: tuple[str, ...], group: str
) -> dict[str, int]:
    """{consumer name: entries it holds} over the stream and its retry stream."""
    out: dict[str, int] = {}
    for key in stream_keys:
        try:
            rows = await retrying(lambda key=key: admin.xinfo_consumers(key, group))  # type: ignore[misc]
        except ResponseError:
            continue  # no such key or group yet
        for row in rows:
            name = _s(row["name"])
            out[name] = out.get(name, 0) + int(row["pending"])
    return out


def held_by_pid(pending: dict[str, int]) -> dict[int, int]:
    """{worker pid: entries its consumers hold}, from pending_by_consumer()'s consumer names."""
    held: dict[int, int] = {}
    for name, n in pending.items():
        if n and (m := _PID.search(name)):
            held[int(m.group(1))] = held.get(int(m.group(1)), 0) + n
    return held


async def inflight(
    admin: aioredis.Redis, stream_keys: tuple[str, ...], group: str, pids: list[int] | None = None
) -> int | None:
    """Entries pending for the consumers of these worker pids (all consumers if None); None if unknown."""
    try:
        pending = await pending_by_consumer(admin, stream_keys, group)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return None
    if pids is None:
        return sum(pending.values())
    held = held_by_pid(pending)
    return sum(held.get(pid, 0) for pid in set(pids))


def _freeze(worker: Worker) -> bool:
    """SIGSTOP a worker; False when it has died since it was picked.

    A victim is picked while the fleet runs on: a failpoint can kill it, and the supervisor reap it,
    before the signal is sent. Then the fault is skipped, not the run aborted with ProcessLookupError.
    """
    if worker.process.poll() is not None:
        return False
    try:
        os.kill(worker.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    return True


class Nemesis:
    """Runs a schedule of faults against the fleet, the server and the stream; records each in the ledger."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        server: EmbeddedServer | None,
        admin: aioredis.Redis,
        ledger: Ledger,
        stream: str,
        retry_key: str,
        group: str,
        rng: random.Random,
        lease_ms: int,
        failpoint_probability: float,
        client_name_prefix: str,
        pending_trim_size: int = 20,
        busy_threshold: int = 25,  # entries in flight that make a moment worth striking
        server_down_s: tuple[float, float] = (0.5, 3.0),  # seconds down: shorter or longer than a lease
    ) -> None:
        self.fleet = fleet
        self.server = server
        self.admin = admin
        self.ledger = ledger
        self.stream = stream
        self.retry_key = retry_key
        self.group = group
        self.rng = rng
        self.lease_ms = lease_ms
        self.failpoint_probability = failpoint_probability
        self.client_name_prefix = client_name_prefix
        self.pending_trim_size = pending_trim_size
        self.busy_threshold = busy_threshold
        self.server_down_s = server_down_s
        self._failpoints = itertools.cycle((*FAILPOINTS, ""))
        self._resumes: list[asyncio.TimerHandle] = []
        self.done: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    async def run(self, schedule: list[Planned], started: float) -> None:
        actions: dict[str, Callable[[], Awaitable[bool]]] = {
            KILL: self.kill,
            STOP: self.stop,
            SERVER_RESTART: self.server_restart,
            CLIENT_KILL: self.client_kill,
            TRIM_SAFE: self.trim_safe,
            TRIM_PENDING: self.trim_pending,
        }
        for planned in schedule:
            delay = started + planned.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            did = await actions[planned.kind]()
            tally = self.done if did else self.skipped
            tally[planned.kind] = tally.get(planned.kind, 0) + 1

    def heal(self) -> None:
        """Resume any stopped worker now (the end of the fault window)."""
        for handle in self._resumes:
            handle.cancel()
        self._resumes.clear()
        for worker in list(self.fleet.workers.values()):
            if worker.stopped:
                self._resume(worker)

    # ------------------------------------------------------------------------------------------ measuring

    async def pending_by_consumer(self) -> dict[str, int]:
        return await pending_by_consumer(self.admin, (self.stream, self.retry_key), self.group)

    async def inflight(self, pids: list[int] | None = None) -> int | None:
        """Entries pending for the consumers of these worker pids (all consumers if None)."""
        return await inflight(self.admin, (self.stream, self.retry_key), self.group, pids)

    # ------------------------------------------------------------------------------------------ faults

    def _wants_busy(self) -> bool:
        """Two faults in three wait for a full batch in flight (the worst moment); the rest strike at once."""
        return self.rng.random() < 2 / 3

    async def _victim(self) -> Worker | None:
        """A running worker to strike: usually the first seen holding at least half a batch.

        Polls for up to BUSY_WAIT_S, then settles for the worker holding the most, or any.
        """
        deadline = time.monotonic() + (BUSY_WAIT_S if self._wants_busy() else 0.0)
        while True:
            candidates = sorted((w for w in self.fleet.running() if not w.stopped), key=lambda w: w.slot)
            if not candidates:
                return None
            try:
                pending = await self.pending_by_consumer()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                pending = {}
            held = held_by_pid(pending)
            most = max((held.get(w.pid, 0) for w in candidates), default=0)
            if most >= self.busy_threshold or time.monotonic() >= deadline:
                return self.rng.choice([w for w in candidates if held.get(w.pid, 0) == most])
            await asyncio.sleep(0.01)

    async def kill(self) -> bool:
        victim = await self._victim()
        if victim is None or not _freeze(victim):
            return False
        inflight = await self.inflight([victim.pid])
        self.fleet.kill(victim)
        failpoint = next(self._failpoints)
        armed = f"{failpoint}:{self.failpoint_probability}" if failpoint else ""
        replacement = self.fleet.spawn(victim.slot, armed)
        self.ledger.add_fault(
            KILL, f"slot{victim.slot}/pid{victim.pid}", inflight,
            replacement_pid=replacement.pid, replacement_failpoints=armed,
        )  # fmt: skip
        return True

    async def stop(self) -> bool:
        victim = await self._victim()
        if victim is None or not _freeze(victim):
            return False
        victim.stopped = True
        inflight = await self.inflight([victim.pid])
        stop_s = 3 * self.lease_ms / 1000
        self.ledger.add_fault(
            STOP, f"slot{victim.slot}/pid{victim.pid}", inflight, stop_ms=int(stop_s * 1000)
        )
        self._resumes.append(asyncio.get_running_loop().call_later(stop_s, self._resume, victim))
        return True

    def _resume(self, worker: Worker) -> None:
        if worker.stopped and worker.process.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            self.ledger.add_fault(RESUME, f"slot{worker.slot}/pid{worker.pid}", None)
        worker.stopped = False

    async def _busy_moment(self) -> int | None:
        """Usually wait (up to BUSY_WAIT_S) for a batch in flight; returns how many entries are pending."""
        deadline = time.monotonic() + (BUSY_WAIT_S if self._wants_busy() else 0.0)
        while True:
            inflight = await self.inflight()
            if (inflight or 0) >= self.busy_threshold or time.monotonic() >= deadline:
                return inflight
            await asyncio.sleep(0.01)

    async def server_restart(self) -> bool:
        """Kill -9 the server and start it again; meanwhile one worker is replaced, so a worker also has to
        start while the server is down (it must wait for it, not exit)."""
        if self.server is None:
            return False  # not our server to kill (--redis-url)
        inflight = await self._busy_moment()
        candidates = sorted((w for w in self.fleet.running() if not w.stopped), key=lambda w: w.slot)
        victim = self.rng.choice(candidates) if candidates else None
        victim_inflight = None
        if victim is not None and not _freeze(victim):
            victim = None
        if victim is not None:
            victim_inflight = await self.inflight([victim.pid])
        killed_at = time.time()
        # Sometimes shorter than a lease, sometimes longer: then the entries held by live workers become
        # reclaimable the moment the server is back, racing their holders' settle retries.
        down_s = self.rng.uniform(*self.server_down_s)
        self.server.kill()
        if victim is not None:
            self.fleet.kill(victim)
            replacement = self.fleet.spawn(victim.slot)
            self.ledger.add_fault(
                KILL, f"slot{victim.slot}/pid{victim.pid}", victim_inflight,
                replacement_pid=replacement.pid, replacement_failpoints="", during_outage=True,
            )  # fmt: skip
        await asyncio.sleep(down_s)
        self.server.start()  # same port and directory: the AOF is replayed
        self.ledger.add_fault(
            SERVER_RESTART, "server", inflight,
            killed_at_ms=int(killed_at * 1000), down_ms=int((time.time() - killed_at) * 1000),
        )  # fmt: skip
        return True

    async def client_kill(self) -> bool:
        inflight = await self._busy_moment()
        if self.server is not None:
            killed = await retrying(
                lambda: self.admin.execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
                )
            )
        else:
            # Someone else's server: drop only this run's connections (named by the harness).
            killed = 0
            for client in await retrying(self.admin.client_list):
                if _s(client.get("name", "")).startswith(self.client_name_prefix):
                    killed += int(await self.admin.client_kill_filter(_id=client["id"]))
        self.ledger.add_fault(CLIENT_KILL, "clients", inflight, killed=int(killed))
        return True

    async def trim_safe(self) -> bool:
        async def read() -> list[Any]:
            pipe = self.admin.pipeline(transaction=True)
            pipe.xinfo_groups(self.stream)
            pipe.xpending(self.stream, self.group)
            replies: list[Any] = await pipe.execute()
            return replies

        groups, summary = await retrying(read)
        (info,) = [g for g in groups if _s(g["name"]) == self.group]
        minid = _s(info["last-delivered-id"])
        if int(summary["pending"]) and _id_key(_s(summary["min"])) < _id_key(minid):
            minid = _s(summary["min"])
        if minid == "0-0":
            return False
        trimmed = await retrying(lambda: self.admin.xtrim(self.stream, minid=minid, approximate=False))
        self.ledger.add_fault(TRIM_SAFE, self.stream, None, minid=minid, trimmed=int(trimmed))
        return True

    async def trim_pending(self) -> bool:
        for _ in range(100):  # wait for a moment when entries are pending
            reply = await retrying(
                lambda: self.admin.eval(_TRIM_PENDING, 1, self.stream, self.group, self.pending_trim_size)
            )
            if len(reply) > 1:
                n = int(reply[2])
                ids = [_s(i) for i in reply[3 : 3 + n]]
                uuids = [u for p in reply[3 + n :] if p and (u := uuid_in(bytes(p))) is not None]
                self.ledger.add_fault(
                    TRIM_PENDING,
                    self.stream,
                    len(ids),
                    minid=_s(reply[1]),
                    trimmed=int(reply[0]),
                    pending_ids=ids,
                    pending_uuids=uuids,
                )
                return True
            await asyncio.sleep(0.1)
        return False
