"""`streamq demo`: publish, crash a worker mid-batch, recover, and account for every event.

The steps, each printed as one line or two:
1. Publish N order events with SyncProducer, a few poison orders (a negative amount: the demo app's
   handler fails them every time) and two payloads no worker can decode, written with a raw XADD.
2. Start worker #1, a real `python -m streamq worker` subprocess whose handler is made slow, wait until
   XPENDING shows it holding a batch, and SIGKILL it: no shutdown, no settle, its entries stay pending.
3. Run worker #2 in burst mode. Once the dead worker's lease runs out it reclaims those entries; it
   processes everything, retries the ~1% that fail their first attempt, dead-letters the poison and the
   undecodable payloads, and exits when nothing is left.
4. Summarise from the group's counters and the dead-letter stream. Success means every published event
   was acknowledged or dead-lettered, the dead letters are exactly the poison and the undecodable ones,
   and nothing is pending.

Workers get the Redis URL through STREAMQ_REDIS_URL rather than --redis-url, so a password in it does not
show in the process list.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import redis

from . import _wire, keys
from ._connection import ENV_URL, for_key_sync, redact, sync_client
from ._demo_app import GROUP, SLOW_ENV, STREAM, STREAM_ENV, OrderPlaced, app
from .cli import format_dead_letters
from .deadletter import DeadLetter, DeadLetters
from .embedded import EmbeddedServer, ServerNotFound, ServerStartError, default_server_binary
from .inspect import StreamStatus, stream_status
from .producer import SyncProducer

APP_PATH = "streamq._demo_app:app"
POISON_ORDERS = 5
UNDECODABLE_PAYLOADS = (
    b"\xc1 is the one byte msgpack never uses",
    msgspec.msgpack.encode({"type": "demo.order_refunded", "order_id": 1}),  # msgpack, but no such event type
)
STUCK_HANDLER_MS = 60_000  # worker #1's handler would take a minute per batch: it is killed long before that
HOLD_TIMEOUT_S = 30.0  # seconds for worker #1 to start up and take a batch
BURST_TIMEOUT_S = 120.0  # seconds for worker #2 to drain everything (it needs a few)
POLL_S = 0.02  # seconds between XPENDING polls while waiting for worker #1
LOG_TAIL_LINES = 20  # lines of a worker's log quoted when it misbehaves
LEASE_MS = app.specs[0][0].lease_ms

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)


def run(url: str | None, *, events: int, producer_only: bool = False, say: Say = _say) -> bool:
    """Run the demo on `url` (None: a throwaway server); True if every event is accounted for."""
    if url is not None:
        return _run_on(url, events, producer_only, say)
    try:
        server = EmbeddedServer(default_server_binary())
        server.start()
    except (ServerNotFound, ServerStartError) as exc:
        say(f"demo: cannot start a throwaway server: {exc}")
        return False
    with server:
        say(f"server: a throwaway {server.binary.label} at {server.url} (stopped when the demo ends)")
        return _run_on(server.url, events, producer_only, say)


def _run_on(url: str, events: int, producer_only: bool, say: Say) -> bool:
    started = time.monotonic()
    whole = sync_client(url)
    client = for_key_sync(whole, STREAM)  # on a cluster, the client of the demo stream's slot
    try:
        if not producer_only:
            # Start from nothing so the accounting at the end is exact; only the demo stream's keys go.
            _wire.delete_sync(
                client,
                STREAM,
                keys.dlq_key(STREAM),
                keys.retry_key(STREAM, GROUP),
                keys.delayed_key(STREAM, GROUP),
                keys.stats_key(STREAM, GROUP),
            )
        published = _publish(client, events, say)
        if producer_only:
            return True
        with tempfile.TemporaryDirectory(prefix="streamq-demo-") as logs:
            if not _crash_a_worker(client, url, Path(logs, "worker1.log"), say):
                return False
            code = _burst_worker(url, Path(logs, "worker2.log"), say)
        return _summary(url, published, events, code, time.monotonic() - started, say)
    finally:
        whole.close()


# ---------------------------------------------------------------------------------------------- steps


def demo_orders(count: int, poison: int = POISON_ORDERS) -> list[OrderPlaced]:
    """`count` good orders with the poison ones spread among them, so the poison meets both workers."""
    orders = [OrderPlaced(order_id=n, cents=100 + n % 9_900) for n in range(1, count + 1)]
    for n in range(poison):
        position = 10 + n * (len(orders) // max(poison, 1))
        orders.insert(min(position, len(orders)), OrderPlaced(order_id=count + n + 1, cents=-100 * (n + 1)))
    return orders


def _publish(client: redis.Redis, events: int, say: Say) -> int:
    began = time.monotonic()
    orders = demo_orders(events)
    SyncProducer(client).publish_many(STREAM, orders)
    for payload in UNDECODABLE_PAYLOADS:
        _wire.xadd_fields_sync(client, STREAM, {"d": payload})  # what a buggy or foreign producer might write
    total = len(orders) + len(UNDECODABLE_PAYLOADS)
    say(
        f"[1/4] published {events} orders + {len(orders) - events} poison orders (negative amount)"
        f" + {len(UNDECODABLE_PAYLOADS)} undecodable payloads (raw XADD)"
    )
    say(f"      to {STREAM} in {time.monotonic() - began:.2f} s")
    return total


def _worker_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "streamq", "--log-level", "info", "worker", APP_PATH, *extra]


def _worker_env(url: str, slow_ms: int = 0) -> dict[str, str]:
    env = {**os.environ, ENV_URL: url, STREAM_ENV: STREAM}
    env.pop(SLOW_ENV, None)
    if slow_ms:
        env[SLOW_ENV] = str(slow_ms)
    return env


def _held_by(client: redis.Redis, pid: int) -> int:
    """Entries of the group pending for the consumer of process `pid` (consumer names carry the pid)."""
    try:
        held = _wire.pending_by_consumer_sync(client, STREAM, GROUP)
    except redis.ResponseError:  # NOGROUP: the worker has not created the group yet
        return 0
    return next((count for name, count in held.items() if f"-{pid}-" in name), 0)


def _crash_a_worker(client: redis.Redis, url: str, log_path: Path, say: Say) -> bool:
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            _worker_command(),
            env=_worker_env(url, STUCK_HANDLER_MS),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + HOLD_TIMEOUT_S
        held = 0
        while not held:
            if worker.poll() is not None:
                say(f"demo: worker #1 exited with status {worker.returncode} before taking a batch")
                _quote_log(log_path, say)
                return False
            if time.monotonic() > deadline:
                say(f"demo: worker #1 took no batch within {HOLD_TIMEOUT_S:g} s")
                _quote_log(log_path, say)
                return False
            held = _held_by(client, worker.pid)
            if not held:
                time.sleep(POLL_S)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    say(f"[2/4] worker #1 (pid {worker.pid}) took a batch of {held} and hung in its slow handler: SIGKILL")
    say(f"      its {held} entries stay pending, held by a dead consumer, until the {LEASE_MS} ms lease ends")
    return True


def _burst_worker(url: str, log_path: Path, say: Say) -> int:
    say("[3/4] worker #2 --burst: reclaims them after the lease, retries failures, dead-letters poison")
    began = time.monotonic()
    with open(log_path, "wb") as log_file:
        try:
            code = subprocess.run(
                _worker_command("--burst"),
                env=_worker_env(url),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=BURST_TIMEOUT_S,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:  # run() has killed it already
            say(f"demo: worker #2 did not drain the stream within {BURST_TIMEOUT_S:g} s")
            code = -1
    seconds = time.monotonic() - began
    say(f"      worker #2 exited with status {code} after {seconds:.1f} s")
    if code != 0:
        _quote_log(log_path, say)
    return code


def _quote_log(path: Path, say: Say) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return
    say(f"      last lines of its log ({path.name}):")
    for line in lines:
        say(f"        {line}")


# ---------------------------------------------------------------------------------------------- summary


async def _outcome(url: str) -> tuple[StreamStatus, list[DeadLetter]]:
    state = await stream_status(url, STREAM)
    letters = DeadLetters(url)
    try:
        return state, await letters.list(STREAM, count=10_000)
    finally:
        await letters.aclose()


def _summary(url: str, published: int, events: int, worker_code: int, seconds: float, say: Say) -> bool:
    state, letters = asyncio.run(_outcome(url))
    group = next((g for g in state.groups if g.name == GROUP), None)
    stats = group.stats if group is not None else {}
    acked, dead = stats.get("acked", 0), stats.get("dead", 0)
    pending = group.pending + group.retries_waiting if group is not None else 0
    reasons = Counter(letter.reason for letter in letters)
    by_reason = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())) or "none"
    undecodable = len(UNDECODABLE_PAYLOADS)
    poison = published - events - undecodable
    say(f"[4/4] summary of {STREAM}, group {GROUP}")
    rows = [
        ("published", published, f"{events} orders, {poison} poison, {undecodable} undecodable"),
        ("acknowledged", acked, ""),
        ("retried", stats.get("retried", 0), "failed attempts rescheduled with backoff"),
        ("reclaimed", stats.get("reclaimed", 0), "taken over from the killed worker"),
        ("dead-lettered", dead, by_reason),
        ("pending left", pending, "delivered and unsettled, or waiting to retry"),
    ]
    for name, value, note in rows:
        say(f"      {name:<14}{value:>8}" + (f"  ({note})" if note else ""))
    say(f"dead letters (streamq dlq list {STREAM}):")
    for line in format_dead_letters(letters).splitlines():
        say(f"  {line}")
    problems = []
    if worker_code != 0:
        problems.append(f"worker #2 exited with status {worker_code}")
    if acked + dead != published:
        problems.append(f"{published} published but {acked} acknowledged + {dead} dead-lettered")
    if pending:
        problems.append(f"{pending} still pending")
    if len(letters) != poison + undecodable:
        problems.append(f"{len(letters)} dead letters, expected {poison + undecodable}")
    if problems:
        say(f"demo FAILED: {'; '.join(problems)} (redis: {redact(url)})")
        return False
    say(
        f"demo OK: {published} published = {acked} acknowledged + {dead} dead-lettered, 0 pending"
        f" ({seconds:.1f} s)"
    )
    return True
