"""A standalone streamq worker for tests that kill, signal or race real worker processes.

Run as a script, it builds an App with one consumer of `Job` events and runs it with
``streamq.app.run_app`` (signal handling, uvloop), exactly as a deployed worker would:

    python tests/worker_proc.py --url redis://127.0.0.1:6379/0 --stream s --group g --ledger t-1234 \
        --lease-ms 500 --sleep-ms 2000 --mode block [--burst]

Its handler writes what it does to Redis hashes, a ledger outside the worker that a test reads:
``<ledger>:started`` and ``<ledger>:done`` count, per event number, handler calls begun and finished;
``<ledger>:retried`` counts retries it asked for. ``--kill-on N`` makes the handler SIGKILL its own
process when its batch holds event number N (after recording it as started): a poison event that kills
every worker that takes it. ``--mode`` says how the handler spends ``--sleep-ms``:
``async`` awaits asyncio.sleep, ``block`` calls time.sleep inside an async handler (hogging the event
loop), ``sync`` is a plain ``def`` handler (run in an executor thread).

Imported by tests, it offers `Job` and `WorkerProcess`, which starts the script and cleans up after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import redis
import redis.asyncio

import streamq
from streamq.app import run_app

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parents[1]


class Job(streamq.Event, tag="test.worker.job"):
    n: int


# --------------------------------------------------------------------------------------------- the worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--ledger", required=True, help="key prefix of the ledger hashes")
    parser.add_argument("--name", default="worker", help="consumer name prefix")
    parser.add_argument("--mode", choices=("async", "block", "sync"), default="async")
    parser.add_argument("--sleep-ms", type=int, default=0, help="time the handler takes per batch")
    parser.add_argument("--retry-first-ms", type=int, default=0, help="retry first attempts after this delay")
    parser.add_argument("--lease-ms", type=int, default=1_000)
    parser.add_argument("--block-ms", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--max-deliveries", type=int, default=None, help="default: the library's")
    parser.add_argument("--kill-on", type=int, default=None, help="SIGKILL the worker on event number N")
    parser.add_argument("--grace-ms", type=int, default=30_000)
    parser.add_argument("--burst", action="store_true", help="exit once the group is drained")
    return parser.parse_args(argv)


def build_app(args: argparse.Namespace) -> streamq.App:
    app = streamq.App(args.url, shutdown_grace_ms=args.grace_ms)
    settings: dict[str, Any] = {
        "group": args.group, "lease_ms": args.lease_ms, "block_ms": args.block_ms,
        "batch_size": args.batch_size, "max_attempts": args.max_attempts, "consumer_prefix": args.name,
    }  # fmt: skip
    if args.max_deliveries is not None:
        settings["max_deliveries"] = args.max_deliveries
    started, done, retried = f"{args.ledger}:started", f"{args.ledger}:done", f"{args.ledger}:retried"
    sleep_s = args.sleep_ms / 1000

    def to_retry(batch: streamq.Batch[Job]) -> list[streamq.Message[Job]]:
        if not args.retry_first_ms:
            return []
        chosen = [m for m in batch if m.attempt == 1]
        for message in chosen:
            batch.retry(message, delay_ms=args.retry_first_ms)
        return chosen

    if args.mode == "sync":
        sync_ledger = redis.Redis.from_url(args.url)

        def handle_sync(batch: streamq.Batch[Job]) -> None:
            _record_sync(sync_ledger, started, batch.events)
            _kill_if_poisoned(args.kill_on, batch.events)
            time.sleep(sleep_s)
            _record_sync(sync_ledger, retried, [m.event for m in to_retry(batch)])
            _record_sync(sync_ledger, done, batch.events)

        app.add_consumer(handle_sync, args.stream, **settings)
        return app

    ledger = redis.asyncio.Redis.from_url(args.url)

    async def handle(batch: streamq.Batch[Job]) -> None:
        await _record(ledger, started, batch.events)
        _kill_if_poisoned(args.kill_on, batch.events)
        if args.mode == "block":
            time.sleep(sleep_s)  # noqa: ASYNC251 - on purpose: a handler that hogs the event loop
        else:
            await asyncio.sleep(sleep_s)
        await _record(ledger, retried, [m.event for m in to_retry(batch)])
        await _record(ledger, done, batch.events)

    app.add_consumer(handle, args.stream, **settings)
    return app


async def _record(ledger: redis.asyncio.Redis, key: str, events: list[Job]) -> None:
    if events:
        pipe = ledger.pipeline(transaction=False)
        for event in events:
            pipe.hincrby(key, str(event.n), 1)
        await pipe.execute()


def _record_sync(ledger: redis.Redis, key: str, events: list[Job]) -> None:
    if events:
        pipe = ledger.pipeline(transaction=False)
        for event in events:
            pipe.hincrby(key, str(event.n), 1)
        pipe.execute()


def _kill_if_poisoned(kill_on: int | None, events: list[Job]) -> None:
    """Die at once, as a segfault or the OOM killer would: no settling, no giving back."""
    if kill_on is not None and any(event.n == kill_on for event in events):
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_app(build_app(args), burst=args.burst)


# ------------------------------------------------------------------------------------- for the tests


def read_ledger(client: redis.Redis, ledger: str, kind: str) -> dict[int, int]:
    """{event number: count} of one ledger hash ('started', 'done' or 'retried')."""
    return {int(k): int(v) for k, v in client.hgetall(f"{ledger}:{kind}").items()}  # type: ignore[union-attr]


class WorkerProcess:
    """One worker_proc.py subprocess; its output goes to a log file quoted by failing assertions."""

    def __init__(
        self, log_path: Path, *, url: str, stream: str, group: str, ledger: str, **options: Any
    ) -> None:
        argv = ["--url", url, "--stream", stream, "--group", group, "--ledger", ledger]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (False, None):
                argv += [flag, str(value)]
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *argv],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to exit and return its exit code; fail with its log if it does not."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout_s:g} s\n{self.log()}"
            ) from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6_000:]

    def close(self) -> None:
        """SIGKILL the worker if it still runs, reap it, close the log. Idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


# What the `spawn_worker` fixture (conftest.py) hands a test: start a worker subprocess.
SpawnWorker = Callable[..., WorkerProcess]


if __name__ == "__main__":
    sys.exit(main())
