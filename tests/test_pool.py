"""`streamq worker APP --processes N`: a supervisor that runs N plain workers, restarts the ones that die,
gives up on a crash loop, forwards signals and leaves no orphans.

Everything runs for real: the pool is `python -m streamq worker ... --processes N` in a subprocess, its
children are real workers of an app module this test writes into its own directory, against the fixtures'
servers. The app's handler writes what it does into Redis hashes (a ledger outside the processes): which
pid started each event, how many times each event was done, how many events each pid finished. The pool
logs JSON lines, read back to find its children's pids and what it decided.

The tests that need no server (crash loops, failures at start, orphans) run once, not once per server:
their children die or fail while loading the app, or wait for ever for a server that is not there, which
to the pool is a child running like any other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
import redis
from cli_app import Ping
from helpers import wait_until

from streamq import SyncProducer
from streamq._pool import CRASH_LOOP_DEATHS
from streamq.cli import FAILURE, INTERRUPTED, OK, USAGE, build_parser, main

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
UNREACHABLE_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: the worker waits for it

APP_SOURCE = """\
import asyncio
import os

import redis.asyncio

import streamq
from cli_app import Ping

URL, STREAM, GROUP, LEDGER = {url!r}, {stream!r}, {group!r}, {ledger!r}
app = streamq.App(URL, shutdown_grace_ms=10_000)
ledger = redis.asyncio.Redis.from_url(URL)


@app.consumer(STREAM, group=GROUP, batch_size=5, lease_ms=1_000, block_ms=100)
async def handle(batch: streamq.Batch[Ping]) -> None:
    pid = str(os.getpid())
    await ledger.hset(LEDGER + ":started", mapping={{str(event.n): pid for event in batch.events}})
    await asyncio.sleep({sleep_ms} / 1000)
    pipe = ledger.pipeline(transaction=False)
    for event in batch.events:
        pipe.hincrby(LEDGER + ":done", str(event.n), 1)
    pipe.hincrby(LEDGER + ":by_pid", pid, len(batch.events))
    await pipe.execute()
"""


class Pool:
    """One `streamq worker --processes N` subprocess; its log (the children's too) goes to a file."""

    def __init__(self, app_dir: Path, app_path: str, processes: int, *extra: str) -> None:
        self.log_path = app_dir / "pool.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        paths = [str(app_dir), str(TESTS_DIR), str(REPO_ROOT)]  # the app module, cli_app, streamq
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "streamq", "worker", app_path, "--processes", str(processes),
                   "--log-json", *extra]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=app_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip
        self._seen_children: set[int] = set()

    def lines(self, event: str) -> list[dict[str, Any]]:
        """The pool's JSON log lines whose event starts with `event` (tracebacks and the like skipped)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and str(record.get("event", "")).startswith(event):
                found.append(record)
        return found

    def consumers(self) -> list[str]:
        """Names of the consumers the children have started (they log it once they read)."""
        return [line["consumer"] for line in self.lines("consumer started")]

    def children(self) -> set[int]:
        """Pids of the pool's running children (zombies not counted)."""
        try:
            kids = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return set()
        pids = {kid.pid for kid in kids if running(kid.pid)}
        self._seen_children |= pids
        return pids

    def wait(self, timeout_s: float = 30.0) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the pool still runs after {timeout_s:g} s\n{self.log()}") from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-8_000:]

    def close(self) -> None:
        """Kill the pool and every child it was seen with, whatever state the test left them in."""
        self.children()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pid in self._seen_children:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


def running(pid: int) -> bool:
    """True while `pid` is a process that has not exited (a zombie waiting to be reaped has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


StartPool = Callable[..., Pool]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def start_pool(app_dir: Path) -> Iterator[StartPool]:
    """Start `streamq worker <app_dir>/<module>:app --processes N ...`; every pool is killed afterwards."""
    started: list[Pool] = []

    def start(module_source: str, processes: int, *extra: str, app_path: str = "pool_app:app") -> Pool:
        (app_dir / "pool_app.py").write_text(module_source, encoding="utf-8")
        pool = Pool(app_dir, app_path, processes, *extra)
        started.append(pool)
        return pool

    yield start
    for pool in started:
        pool.close()


def app_source(url: str, unique: str, *, sleep_ms: int = 0) -> str:
    return APP_SOURCE.format(url=url, stream=unique, group="g", ledger=unique, sleep_ms=sleep_ms)


def hash_of(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}  # type: ignore[union-attr]


def publish(client: redis.Redis, stream: str, count: int) -> None:
    SyncProducer(client).publish_many(stream, [Ping(n=n) for n in range(count)])


# ---------------------------------------------------------------------------------------------- options


def test_processes_must_be_a_positive_whole_number_or_auto(capsys: pytest.CaptureFixture[str]) -> None:
    """`--processes 0`, a negative number or a word other than `auto` is a usage error naming the problem,
    before anything starts."""
    for value, message in (("0", "must be at least 1"), ("-2", "must be at least 1"),
                           ("abc", "expected a whole number or auto, got 'abc'")):  # fmt: skip
        assert main(["worker", "cli_app:app", "--processes", value]) == USAGE
        assert message in capsys.readouterr().err


def test_auto_is_one_process_per_core() -> None:
    """`--processes auto` means os.cpu_count() processes; without the option, 1 (no supervisor)."""
    parser = build_parser()
    assert parser.parse_args(["worker", "m:app", "--processes", "auto"]).processes == os.cpu_count()
    assert parser.parse_args(["worker", "m:app", "--processes", "3"]).processes == 3
    assert parser.parse_args(["worker", "m:app"]).processes == 1


# ---------------------------------------------------------------------------------------------- running


def test_every_child_consumes_under_its_own_consumer_name(
    start_pool: StartPool, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """With --processes 2, two worker processes run as children of the pool, each a consumer of the group
    under its own name, and both handle events; SIGTERM then stops the pool with exit 0."""
    pool = start_pool(app_source(redis_url, unique, sleep_ms=100), 2)
    names = wait_until(lambda: len(pool.consumers()) == 2 and pool.consumers(), timeout_s=20,
                       message="two consumers started")  # fmt: skip
    children = wait_until(lambda: len(pool.children()) == 2 and pool.children(), message="two children")
    publish(sync_client, unique, 40)
    wait_until(lambda: len(hash_of(sync_client, f"{unique}:done")) == 40, timeout_s=20,
               message="all 40 events handled")  # fmt: skip

    by_pid = hash_of(sync_client, f"{unique}:by_pid")
    assert {int(pid) for pid in by_pid} == children, pool.log()  # both children handled events
    assert sum(int(count) for count in by_pid.values()) == 40
    assert all(any(f"-{pid}-" in name for name in names) for pid in children), names
    assert {line["pid"] for line in pool.lines("worker process started")} == children
    pool.process.send_signal(signal.SIGTERM)
    assert pool.wait() == OK, pool.log()


def test_a_killed_child_is_restarted_and_what_it_held_is_handled(
    start_pool: StartPool, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A child killed with SIGKILL while its handler holds events is started again in its slot (a new pid),
    and the events it held are reclaimed once their lease runs out and handled: none is lost."""
    pool = start_pool(app_source(redis_url, unique, sleep_ms=1_000), 2)
    wait_until(lambda: len(pool.consumers()) == 2, timeout_s=20, message="two consumers started")
    publish(sync_client, unique, 20)

    def held() -> dict[int, set[int]]:
        """{pid: events it started and has not finished}."""
        done = hash_of(sync_client, f"{unique}:done")
        holding: dict[int, set[int]] = {}
        for n, pid in hash_of(sync_client, f"{unique}:started").items():
            if n not in done:
                holding.setdefault(int(pid), set()).add(int(n))
        return holding

    victim, events = next(iter(wait_until(held, message="a child holding events").items()))
    os.kill(victim, signal.SIGKILL)

    restarted = wait_until(
        lambda: [line for line in pool.lines("worker process started") if line["restarts"] == 1],
        message="the killed child's slot started again",
    )
    assert restarted[0]["pid"] != victim
    died = pool.lines("worker process died")
    assert [(line["pid"], line["exit"]) for line in died] == [(victim, "killed by SIGKILL")]
    wait_until(lambda: len(hash_of(sync_client, f"{unique}:done")) == 20, timeout_s=30,
               message="all 20 events handled")  # fmt: skip
    assert events <= {int(n) for n in hash_of(sync_client, f"{unique}:done")}
    assert victim not in pool.children() and len(pool.children()) == 2
    pool.process.send_signal(signal.SIGTERM)
    assert pool.wait() == OK, pool.log()


def test_a_child_killed_just_before_a_sigterm_is_a_death_not_a_failed_stop(
    start_pool: StartPool, redis_url: str, unique: str
) -> None:
    """A child killed -9 a moment before the pool's SIGTERM (before the pool's next look at its children)
    died before the stop: the pool stops cleanly and exits 0, not 1 as for a child failing to stop."""
    pool = start_pool(app_source(redis_url, unique, sleep_ms=10), 2)
    wait_until(lambda: len(pool.consumers()) == 2, timeout_s=20, message="two consumers started")
    victim = sorted(pool.children())[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not running(victim), message="the child dead, not yet seen by the pool")
    pool.process.send_signal(signal.SIGTERM)
    assert pool.wait() == OK, pool.log()


def test_sigterm_stops_every_child_gracefully(
    start_pool: StartPool, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """SIGTERM to the pool reaches every child, which finishes and settles the batch in its handler (all
    started events done, nothing pending); the pool exits 0 once all have exited, and no child runs on."""
    pool = start_pool(app_source(redis_url, unique, sleep_ms=1_500), 2)
    wait_until(lambda: len(pool.consumers()) == 2, timeout_s=20, message="two consumers started")
    publish(sync_client, unique, 40)
    wait_until(lambda: len(set(hash_of(sync_client, f"{unique}:started").values())) == 2,
               message="both children inside their handler")  # fmt: skip
    children = pool.children()
    assert len(children) == 2
    assert hash_of(sync_client, f"{unique}:done") == {}

    pool.process.send_signal(signal.SIGTERM)
    assert pool.wait() == OK, pool.log()
    started = hash_of(sync_client, f"{unique}:started")
    assert set(hash_of(sync_client, f"{unique}:done")) == set(started)  # the batches in hand finished
    assert sync_client.xpending(unique, "g")["pending"] == 0
    assert not any(running(pid) for pid in children)
    assert sorted(line["exit"] for line in pool.lines("worker process exited")) == ["exit 0", "exit 0"]


def test_a_second_signal_stops_every_child_at_once(
    start_pool: StartPool, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A second SIGTERM to the pool, while its children finish their batches, is forwarded too: they stop
    without waiting for their handlers, leave the entries pending for a later worker, and the pool exits
    INTERRUPTED (130)."""
    pool = start_pool(app_source(redis_url, unique, sleep_ms=120_000), 2)
    wait_until(lambda: len(pool.consumers()) == 2, timeout_s=20, message="two consumers started")
    publish(sync_client, unique, 20)
    wait_until(lambda: len(set(hash_of(sync_client, f"{unique}:started").values())) == 2,
               message="both children inside their handler")  # fmt: skip
    pool.process.send_signal(signal.SIGTERM)
    wait_until(lambda: len(pool.lines("stopping: finishing batches in hand")) == 2,
               message="both children stopping")  # fmt: skip
    pool.process.send_signal(signal.SIGTERM)
    assert pool.wait() == INTERRUPTED, pool.log()
    assert hash_of(sync_client, f"{unique}:done") == {}
    assert sync_client.xpending(unique, "g")["pending"] > 0


def test_burst_pool_exits_ok_once_drained(
    start_pool: StartPool, redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """`--burst --processes 2`: each child exits 0 once the stream is drained and is not restarted; the pool
    exits 0 when both have."""
    publish(sync_client, unique, 100)
    pool = start_pool(app_source(redis_url, unique), 2, "--burst")
    assert pool.wait() == OK, pool.log()
    assert len(hash_of(sync_client, f"{unique}:done")) == 100
    assert sync_client.xpending(unique, "g")["pending"] == 0
    assert [line["restarts"] for line in pool.lines("worker process started")] == [0, 0]
    assert sorted(line["exit"] for line in pool.lines("worker process exited")) == ["exit 0", "exit 0"]


# ---------------------------------------------------------------------------------------------- failures


def test_a_crash_looping_app_makes_the_pool_give_up(start_pool: StartPool, unique: str) -> None:
    """Children that die at every start (here killed while importing the app) are restarted with backoff
    only until CRASH_LOOP_DEATHS deaths in a row: then the pool stops and exits FAILURE, saying why."""
    source = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    pool = start_pool(source, 2)
    assert pool.wait(60) == FAILURE, pool.log()
    assert pool.lines("crash loop"), pool.log()
    deaths = pool.lines("worker process died")
    assert len(deaths) == CRASH_LOOP_DEATHS - 1  # the last death is the crash loop's own line
    assert {line["exit"] for line in deaths} == {"killed by SIGKILL"}
    assert len(pool.lines("worker process started")) <= CRASH_LOOP_DEATHS + 1


@pytest.mark.parametrize(
    ("source", "app_path", "code"),
    [
        ("raise RuntimeError('the app cannot start')\n", "pool_app:app", FAILURE),
        ("", "no_such_module_for_the_pool:app", USAGE),
    ],
    ids=["failure-at-import", "usage"],
)
def test_a_child_that_cannot_start_is_not_restarted(
    start_pool: StartPool, source: str, app_path: str, code: int
) -> None:
    """A child that exits FAILURE before it ran healthily (the app raised on import) or USAGE (no such
    app) would do it again: the pool restarts nothing, stops, and exits with that code."""
    pool = start_pool(source, 2, app_path=app_path)
    assert pool.wait() == code, pool.log()
    assert [line["restarts"] for line in pool.lines("worker process started")] == [0, 0]
    assert pool.lines("worker process failed: not restarting it"), pool.log()
    assert not pool.lines("worker process died")


def test_a_killed_pool_leaves_no_orphans(start_pool: StartPool, unique: str) -> None:
    """Children of a pool killed with SIGKILL (no chance to forward anything) are told by the kernel and
    stop: none runs on unsupervised. Here they wait for an unreachable server, so they are up for good."""
    source = f"from cli_app import make_app\napp = make_app({unique!r}, 'g')\n"
    pool = start_pool(source, 2, "--redis-url", UNREACHABLE_URL)
    children = wait_until(lambda: len(pool.children()) == 2 and pool.children(), timeout_s=20,
                          message="two children")  # fmt: skip
    wait_until(lambda: len(pool.lines("redis unavailable at start")) >= 2, timeout_s=20,
               message="both children running (waiting for their server)")  # fmt: skip
    pool.process.kill()
    pool.process.wait()
    wait_until(lambda: not any(running(pid) for pid in children), timeout_s=20,
               message="the orphaned children to exit")  # fmt: skip
