"""The worker fleet: N `python -m chaos.worker` subprocesses, kept at strength.

Each slot runs one worker at a time. A worker the nemesis kills is replaced at once; one that dies by itself
(a failpoint, or a crash) is replaced by the supervisor on its next poll, whether or not the server is up:
a worker must wait for a server that is down. Every process gets a fresh pid, hence a fresh consumer
name: a restarted worker never inherits a dead one's identity, as in production.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import streamq

from .worker import FAILPOINTS_ENV

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_TIMEOUT_S = 20.0  # SIGTERM to exit: the app's grace period plus a blocked read


@dataclass
class WorkerSettings:
    redis_url: str
    stream: str
    group: str
    ledger_dir: str
    log_dir: str
    batch_size: int
    lease_ms: int
    max_attempts: int
    retry_base_ms: int
    retry_max_ms: int
    max_event_bytes: int
    work_ms: int
    seed: int
    fsync: bool = False
    sabotage: str = ""

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "chaos.worker",
            "--redis-url", self.redis_url, "--stream", self.stream, "--group", self.group,
            "--ledger-dir", self.ledger_dir, "--batch-size", str(self.batch_size),
            "--lease-ms", str(self.lease_ms), "--max-attempts", str(self.max_attempts),
            "--retry-base-ms", str(self.retry_base_ms), "--retry-max-ms", str(self.retry_max_ms),
            "--max-event-bytes", str(self.max_event_bytes), "--work-ms", str(self.work_ms),
            "--seed", str(self.seed),
        ]  # fmt: skip
        if self.sabotage:
            args += ["--sabotage", self.sabotage]
        return [*args, "--fsync"] if self.fsync else args


@dataclass
class Worker:
    slot: int
    generation: int
    process: subprocess.Popen[bytes]
    failpoints: str
    started: float
    log_path: str
    stopped: bool = False  # SIGSTOPped by the nemesis

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Exit:
    """A worker that died by itself (not by the nemesis' hand)."""

    slot: int
    pid: int
    returncode: int
    failpoints: str
    at: float
    log_tail: str


@dataclass
class Fleet:
    settings: WorkerSettings
    size: int
    workers: dict[int, Worker] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    spawned: int = 0
    stopping: bool = False
    _generations: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        for slot in range(self.size):
            self.spawn(slot)

    def spawn(self, slot: int, failpoints: str = "") -> Worker:
        generation = self._generations.get(slot, 0) + 1
        self._generations[slot] = generation
        env = dict(os.environ)
        env[FAILPOINTS_ENV] = failpoints
        # Make sure the worker imports this very harness and this very streamq, installed or not, whatever
        # the harness's working directory.
        roots = dict.fromkeys(str(Path(path).resolve().parents[1]) for path in (__file__, streamq.__file__))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*roots, env.get("PYTHONPATH", "")]))
        log_path = os.path.join(self.settings.log_dir, f"slot{slot}-gen{generation}.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                self.settings.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        worker = Worker(slot, generation, process, failpoints, time.monotonic(), log_path)
        self.workers[slot] = worker
        self.spawned += 1
        return worker

    def running(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.process.poll() is None]

    def kill(self, worker: Worker) -> None:
        """SIGKILL (no cleanup at all) and reap."""
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()

    def supervise(self, on_exit: Callable[[Exit], None]) -> None:
        """Reap workers that died by themselves and start replacements (even while the server is down)."""
        for slot, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            if self.stopping:
                continue
            gone = Exit(slot, worker.pid, code, worker.failpoints, time.monotonic(), _tail(worker.log_path))
            self.exits.append(gone)
            on_exit(gone)
            self.spawn(slot)

    def terminate_all(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[int, int | None]:
        """SIGTERM every worker (a graceful stop: batches in hand are settled); SIGKILL any straggler."""
        self.stopping = True
        for worker in self.running():
            if worker.stopped:
                worker.process.send_signal(signal.SIGCONT)
                worker.stopped = False
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[int, int | None] = {}
        for worker in self.workers.values():
            try:
                codes[worker.pid] = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                codes[worker.pid] = None  # had to be killed
        return codes


@dataclass
class WorkersOutcome:
    """What running the workers through the fault window and the drain gave, whoever ran them (the fleet,
    or a process pool: chaos/pool.py)."""

    publish_s: float  # the fault window, publishing included
    drained: bool
    drain_s: float
    exit_codes: dict[int, int | None]  # pid -> exit code on SIGTERM (None: had to be killed)
    faults_done: dict[str, int]
    faults_skipped: dict[str, int]
    spawned: int  # worker processes started
    pool: dict[str, int] = field(default_factory=dict)  # a pool run's own figures (chaos/pool.py)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent() -> Callable[[], None] | None:
    """Linux only: the kernel SIGKILLs the worker if the harness dies without cleaning up."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return arm
